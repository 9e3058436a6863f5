"""The cache keyed by file content: one entry for the same weights in two installs, file
digests memoized so unchanged files are not read again, and ``llmcheck list`` / ``gc``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from filelock import FileLock

from pytest_llmcheck.cli.commands import main
from pytest_llmcheck.storage import filehash
from pytest_llmcheck.storage.cache import Cache
from pytest_llmcheck.storage.filehash import MEMO_FILE, FileHashes

DAY = 86400.0


@pytest.fixture
def hashed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every file the memo had to read, in order."""
    calls: list[str] = []
    real = filehash.sha256_file

    def counting(path: Path) -> str:
        calls.append(str(path))
        return real(path)

    monkeypatch.setattr(filehash, "sha256_file", counting)
    return calls


def settle(*paths: Path) -> None:
    """Date files a minute back, out of the memo's racy window (as any real install is)."""
    old = time.time() - 60
    for path in paths:
        for p in [path, *path.rglob("*")] if path.is_dir() else [path]:
            os.utime(p, (old, old))


# -- the memo


def test_memo_reads_each_file_version_once(tmp_path: Path, hashed: list[str]) -> None:
    root = tmp_path / "cache"
    weights = tmp_path / "a" / "model.gguf"
    weights.parent.mkdir()
    weights.write_bytes(b"GGUF" + bytes(range(256)) * 64)
    settle(weights)
    first = FileHashes(root).digests([weights])[weights]
    assert len(first) == 64
    assert hashed == [str(weights)]
    assert FileHashes(root).digests([weights]) == {weights: first}  # a new session: from the memo
    assert hashed == [str(weights)]
    memo = json.loads((root / MEMO_FILE).read_text(encoding="utf-8"))
    assert memo["files"][str(weights.resolve())]["sha256"] == first

    # same size, new bytes, new mtime: read again, new digest
    weights.write_bytes(b"GGUF" + bytes(reversed(range(256))) * 64)
    settle(weights)
    changed = FileHashes(root).digests([weights])[weights]
    assert changed != first
    assert len(hashed) == 2

    # a copy elsewhere (another install): read once (new inode), same content, same digest
    copy = tmp_path / "b" / "model.gguf"
    copy.parent.mkdir()
    shutil.copy2(weights, copy)
    settle(copy)
    assert FileHashes(root).digests([copy])[copy] == changed
    assert FileHashes(root).digests([copy, weights]) == {copy: changed, weights: changed}
    assert len(hashed) == 3


def test_a_file_written_just_now_is_not_memoized(tmp_path: Path, hashed: list[str]) -> None:
    fresh = tmp_path / "fresh.bin"
    fresh.write_bytes(b"x" * 100)  # could still change within this clock tick
    hashes = FileHashes(tmp_path / "cache")
    assert hashes.digests([fresh]) == hashes.digests([fresh])
    assert len(hashed) == 2
    assert not (tmp_path / "cache" / MEMO_FILE).exists()


def test_a_corrupt_memo_only_costs_a_rehash(tmp_path: Path, hashed: list[str]) -> None:
    root = tmp_path / "cache"
    root.mkdir()
    (root / MEMO_FILE).write_text("{not json", encoding="utf-8")
    f = tmp_path / "w.bin"
    f.write_bytes(b"abc")
    settle(f)
    abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"  # sha256("abc")
    assert FileHashes(root).digests([f])[f] == abc
    assert FileHashes(root).digests([f])[f] == abc
    assert len(hashed) == 1  # the memo was rewritten whole


WRITER = """
import sys
from pathlib import Path
from pytest_llmcheck.storage.filehash import FileHashes
root, files = Path(sys.argv[1]), [Path(p) for p in sys.argv[2:]]
for f in files:
    FileHashes(root).digests([f])
"""


def test_concurrent_sessions_keep_a_whole_memo(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    groups = []
    for g in range(4):
        files = []
        for i in range(5):
            f = tmp_path / f"g{g}" / f"f{i}.bin"
            f.parent.mkdir(exist_ok=True)
            f.write_bytes(f"{g}-{i}".encode() * 1000)
            files.append(f)
        settle(*files)
        groups.append(files)
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(root), *map(str, files)], stderr=subprocess.PIPE)
        for files in groups
    ]
    for p in procs:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err.decode()[-2000:]
    memo = json.loads((root / MEMO_FILE).read_text(encoding="utf-8"))
    assert set(memo["files"]) == {str(f.resolve()) for files in groups for f in files}
    assert not [p for p in root.iterdir() if ".tmp-" in p.name]


# -- two installs, one entry


def test_the_same_model_in_two_installs_is_quantized_once(
    tiny_model: Path, tmp_path: Path, hashed: list[str]
) -> None:
    from pytest_llmcheck.config.registry import resolve
    from pytest_llmcheck.engines.transformers.engine import TransformersEngine
    from pytest_llmcheck.engines.transformers.quantize import get_quantizer

    installs = [tmp_path / f"venv{i}" / "lib" / "site-packages" / "tiny-llama" for i in (1, 2)]
    for folder in installs:
        shutil.copytree(tiny_model, folder)  # new files, new inodes, new mtimes
        settle(folder)
    cache = Cache(tmp_path / "cache")

    def load(folder: Path) -> bool:
        ref = resolve(str(folder))
        engine = TransformersEngine.load(ref, folder, get_quantizer("int4"), threads=1, cache=cache)
        engine.close()
        return bool(engine.facts.from_cache)

    assert [load(folder) for folder in installs] == [False, True]
    assert len([e for e in cache.list() if e["kind"] == "quantized"]) == 1
    files = len([p for p in installs[0].rglob("*") if p.is_file()])
    assert len(hashed) == 2 * files  # each install's files read once
    assert load(installs[0]) is True
    assert len(hashed) == 2 * files  # and never again while they are unchanged


# -- list and gc


def make_entry(cache: Cache, kind: str, key: dict[str, object], size: int, days_ago: float) -> Path:
    with cache.entry(kind, key).build() as tmp:
        assert tmp is not None
        (tmp / "weights.pt").write_bytes(b"w" * size)
    entry = cache.entry(kind, key)
    stamp = time.time() - days_ago * DAY
    os.utime(entry.path / ".complete", (stamp, stamp))
    return entry.path


def test_asking_for_an_entry_marks_it_used(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "c")
    key = {"name": "m", "content": "abc"}
    make_entry(cache, "quantized", key, 10, days_ago=30)
    assert time.time() - float(str(cache.list()[0]["last_used"])) > 29 * DAY
    cache.entry("quantized", key)
    assert time.time() - float(str(cache.list()[0]["last_used"])) < 60


def test_list_says_what_tells_alike_entries_apart(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cache = Cache(tmp_path / "c")
    recipe = {"method": "int4", "group_size": 32}
    base = {"name": "SmolLM2", "recipe": recipe, "versions": {"torch": "2.13.0"}, "content": "1a2b3c4d5e6f7a"}
    make_entry(cache, "quantized", base, 2048, days_ago=3)
    make_entry(cache, "quantized", {**base, "versions": {"torch": "2.12.0"}}, 1024, days_ago=40)
    make_entry(cache, "quantized", {**base, "name": "Other", "content": "ffff"}, 10, days_ago=0)
    assert main(["list", "--cache-dir", str(cache.root)]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [line.split() for line in lines if line.strip().startswith("quantized")]
    smol = sorted((r for r in rows if r[1] == "SmolLM2"), key=lambda r: r[-1])
    assert [r[-1] for r in smol] == ["versions.torch=2.12.0", "versions.torch=2.13.0"]
    assert smol[0][:5] == ["quantized", "SmolLM2", "int4", "g32", "sha256:1a2b3c4d5e6f"]
    assert 1.0 <= float(smol[0][5]) < 1.2  # 1 KiB of weights, key and marker
    assert smol[0][6] == "KiB"
    assert smol[0][7:10] == ["40", "d", "ago"]
    assert smol[1][7:10] == ["3", "d", "ago"]
    other = next(r for r in rows if r[1] == "Other")
    assert other[-1] == "yes"  # unique name: nothing to tell apart


def test_gc_by_age_and_by_size_never_touches_a_build_in_progress(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = Cache(tmp_path / "c")
    old = make_entry(cache, "quantized", {"name": "old"}, 1000, days_ago=60)
    busy = make_entry(cache, "converted", {"name": "busy"}, 1000, days_ago=90)
    mid = make_entry(cache, "download", {"name": "mid"}, 3000, days_ago=10)
    new = make_entry(cache, "quantized", {"name": "new"}, 2000, days_ago=1)

    sizes = {Path(str(e["path"])): int(str(e["size"])) for e in cache.list()}  # weights + key + marker
    assert main(["gc", "--older-than", "30", "--dry-run", "--cache-dir", str(cache.root)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split(" (")[0] for line in out[:2]] == [
        "would remove converted busy", "would remove quantized old"
    ]
    assert out[1].endswith(", last used 60 d ago)")
    assert old.exists()
    assert busy.exists()

    with FileLock(str(busy.with_name(busy.name + ".lock"))):  # another process is (re)building it
        assert main(["gc", "--older-than", "30", "--cache-dir", str(cache.root)]) == 0
    out = capsys.readouterr().out
    assert "removed quantized old (1.0 KiB, last used 60 d ago)" in out
    assert f"removed 1 entry from {cache.root}; freed {sizes[old]} bytes (1.0 KiB)" in out
    assert "kept 1 entry being built now" in out
    assert not old.exists()
    assert [p.exists() for p in (busy, mid, new)] == [True, True, True]

    # size cap: least recently used first (busy, then mid) until the rest fits
    cap = 5500 / 1024**3  # mid + new and their key and marker files fit, not busy too
    assert main(["gc", "--max-size", f"{cap:.12f}", "--cache-dir", str(cache.root)]) == 0
    out = capsys.readouterr().out
    assert [line.split()[2] for line in out.splitlines() if "last used" in line] == [
        "busy"
    ]
    assert [p.exists() for p in (busy, mid, new)] == [False, True, True]
    assert sum(int(str(e["size"])) for e in cache.list()) <= 5500

    assert main(["gc", "--max-size", "0", "--cache-dir", str(cache.root)]) == 0
    assert cache.list() == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["gc"], "gc needs --older-than DAYS and/or --max-size GB"),
        (["gc", "--older-than", "-1"], "argument --older-than: '-1' is negative; expected a number >= 0"),
        (["gc", "--max-size", "lots"], "argument --max-size: 'lots' is not a number"),
    ],
)
def test_gc_bad_input_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert main([*args, "--cache-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"llmcheck: error: {message}\n"
