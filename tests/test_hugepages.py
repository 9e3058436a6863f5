"""The arena int4-a8's weights move into at load: copies, alignment, copy-free joins."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from pytest_llmcheck.engines.transformers import hugepages
from pytest_llmcheck.engines.transformers.hugepages import HUGE_PAGE, Arena, adjacent, offered

torch = pytest.importorskip("torch")


def test_take_copies_in_order_on_cache_lines_from_a_2mb_boundary() -> None:
    parts = [torch.arange(100, dtype=torch.int16).view(10, 10), torch.full((3, 5), 7, dtype=torch.uint8),
             torch.randn(4, 2).to(torch.bfloat16)]
    arena = Arena(Arena.size_of(parts))
    taken = [arena.take(p) for p in parts]
    assert taken[0].data_ptr() % HUGE_PAGE == 0
    assert [t.data_ptr() - taken[0].data_ptr() for t in taken] == [0, 256, 320]  # 200 and 15 bytes, padded
    for got, want in zip(taken, parts, strict=True):
        assert (got.dtype, got.shape) == (want.dtype, want.shape)
        assert torch.equal(got, want)
        assert got.data_ptr() != want.data_ptr()
    with pytest.raises(ValueError, match="no room for 2 more"):
        arena.take(torch.zeros(1, dtype=torch.int16))


def test_the_views_keep_the_mapping_alive() -> None:
    view = Arena(4096).take(torch.full((1024,), 3, dtype=torch.int32))
    view += 1  # the Arena object is gone; its mapping lives as long as a view does
    assert int(view.sum()) == 4 * 1024


def test_the_arena_is_advised_where_the_kernel_offers_2mb_pages(monkeypatch: pytest.MonkeyPatch) -> None:
    setting = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    expected = sys.platform == "linux" and setting.is_file() and "[never]" not in setting.read_text()
    assert offered() is expected
    assert Arena(HUGE_PAGE).advised is offered()
    monkeypatch.setattr(hugepages, "offered", lambda: False)  # THP off: ordinary pages, the same copies
    arena = Arena(HUGE_PAGE)
    assert not arena.advised
    assert torch.equal(arena.take(torch.arange(10)), torch.arange(10))


@pytest.mark.skipif(not offered(), reason="this kernel gives no 2 MB pages")
def test_the_pages_are_2mb_where_offered() -> None:
    """AnonHugePages counts this process's 2 MB pages: 64 MB copied in adds about 64 MB."""

    def huge_kb() -> int:
        text = Path("/proc/self/smaps_rollup").read_text()
        return int(text.split("AnonHugePages:")[1].split()[0])

    before = huge_kb()
    arena = Arena(64 << 20)
    view = arena.take(torch.ones(64 << 20, dtype=torch.uint8))
    assert huge_kb() - before >= 32 << 10  # at least half in 2 MB pages (the kernel may refuse some)
    del view


def test_adjacent_joins_neighbours_without_a_copy_and_nothing_else() -> None:
    parts = [torch.randint(0, 255, (n, 4, 64), dtype=torch.uint8) for n in (3, 1, 2)]
    arena = Arena(Arena.size_of(parts))
    a, b, c = (arena.take(p) for p in parts)
    joined = adjacent([a, b, c])
    assert joined is not None
    assert joined.shape == (6, 4, 64)
    assert joined.data_ptr() == a.data_ptr()
    assert torch.equal(joined, torch.cat(parts))
    assert adjacent([b, c]) is not None
    assert adjacent([a, c]) is None  # a gap
    assert adjacent([b, a]) is None  # out of order
    assert adjacent([a, parts[1]]) is None  # another storage
    assert adjacent([torch.zeros(2, 3), torch.zeros(2, 4)]) is None  # another row shape


def test_empty_hands_out_room_without_copying() -> None:
    arena = Arena(256)
    block = arena.empty((3, 4), torch.float32)
    assert (block.shape, block.dtype) == ((3, 4), torch.float32)
    block.fill_(2.0)
    assert arena.take(torch.ones(2, dtype=torch.int64)).data_ptr() == block.data_ptr() + 64  # 48 B, padded
    with pytest.raises(ValueError, match="has no room for 1024 more"):
        arena.empty((256,), torch.float32)
