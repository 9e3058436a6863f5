"""The arena int4-a8's weights move into at load: copies, alignment, copy-free joins."""

from __future__ import annotations

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


def test_the_arena_is_advised_only_where_the_system_offers_2mb_pages(monkeypatch: pytest.MonkeyPatch) -> None:
    if Arena(HUGE_PAGE).advised:
        assert offered()
    monkeypatch.setattr(hugepages, "offered", lambda: False)  # THP off: ordinary pages, the same copies
    arena = Arena(HUGE_PAGE)
    assert not arena.advised
    assert torch.equal(arena.take(torch.arange(10)), torch.arange(10))


def _huge_kb(address: int) -> int:
    """AnonHugePages of the mapping that holds ``address`` (/proc/self/smaps)."""
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split(" ", 1)[0]
        if "-" in head and ":" not in head:  # a mapping's first line: start-end perms ...
            start, end = (int(part, 16) for part in head.split("-"))
            inside = start <= address < end
        elif inside and line.startswith("AnonHugePages:"):
            return int(line.split()[1])
    return 0


def _defrag_never() -> bool:
    setting = Path("/sys/kernel/mm/transparent_hugepage/defrag")
    return setting.is_file() and "[never]" in setting.read_text()


@pytest.mark.skipif(not offered() or _defrag_never(), reason="this system gives no 2 MB pages on advice")
def test_the_arena_lies_in_2mb_pages_where_offered() -> None:
    arena = Arena(64 << 20)
    if not arena.advised:
        pytest.skip("madvise(MADV_HUGEPAGE) refused here")
    block = arena.empty((64 << 20,), torch.uint8)
    block.fill_(1)  # written in place: no source tensor of our own that could be in 2 MB pages
    assert _huge_kb(block.data_ptr()) >= 32 << 10  # at least half (the kernel may refuse some)


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
    assert adjacent([a, torch.zeros((), dtype=torch.uint8)]) is None  # no rows to join


def test_adjacent_gives_contiguous_strides_whatever_the_first_row_says() -> None:
    buffer = torch.arange(12, dtype=torch.uint8)
    first = torch.as_strided(buffer, (1, 4), (99, 1))  # one row: torch calls it contiguous
    assert first.is_contiguous()
    joined = adjacent([first, buffer[4:].view(2, 4)])
    assert joined is not None
    assert joined.stride() == (4, 1)
    assert torch.equal(joined, buffer.view(3, 4))


def test_empty_hands_out_room_without_copying() -> None:
    arena = Arena(256)
    block = arena.empty((3, 4), torch.float32)
    assert (block.shape, block.dtype) == ((3, 4), torch.float32)
    block.fill_(2.0)
    assert arena.take(torch.ones(2, dtype=torch.int64)).data_ptr() == block.data_ptr() + 64  # 48 B, padded
    with pytest.raises(ValueError, match="has no room for 1024 more"):
        arena.empty((256,), torch.float32)


@pytest.mark.skipif(not offered(), reason="this system gives no 2 MB pages on advice")
def test_settle_moves_pages_written_as_4kb_into_2mb_pages() -> None:
    import mmap

    arena = Arena(32 << 20)
    if not arena.advised:
        pytest.skip("madvise(MADV_HUGEPAGE) refused here")
    arena._map.madvise(mmap.MADV_NOHUGEPAGE)  # the faults take 4 KB pages, as on a fragmented machine
    block = arena.empty((32 << 20,), torch.uint8)
    block.fill_(7)
    assert _huge_kb(block.data_ptr()) == 0
    arena._map.madvise(mmap.MADV_HUGEPAGE)
    arena.settle()
    if _huge_kb(block.data_ptr()) == 0:
        pytest.skip("MADV_COLLAPSE refused here (Linux before 6.1, or no memory to compact into)")
    assert _huge_kb(block.data_ptr()) >= 16 << 10
    assert int(block.sum()) == 7 * (32 << 20)  # the same bytes
