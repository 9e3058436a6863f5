"""The cache's promises: a folder is complete or absent, built once, never outside the root."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pytest_llmcheck.storage.cache import Cache, CacheError, canonical_key, default_cache_dir

REPO_ROOT = Path(__file__).resolve().parents[1]
KEY = {"name": "qwen/Qwen-7B-Chat", "revision": "v1.0"}


def run_python(code: str, *args: str) -> subprocess.Popen[str]:
    """Start a python child that can import pytest_llmcheck from this checkout."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(path: Path, proc: subprocess.Popen[str], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"child exited early: {proc.communicate()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} never appeared")
        time.sleep(0.02)


def test_layout_is_readable_slug_plus_key_hash(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    entry = cache.entry("download", KEY)
    digest = hashlib.sha256(canonical_key(KEY).encode()).hexdigest()[:16]
    assert entry.path == tmp_path / "download" / f"qwen-Qwen-7B-Chat-{digest}"
    # the canonical key ignores order; any other difference is another folder
    assert cache.entry("download", dict(reversed(list(KEY.items())))).path == entry.path
    assert cache.entry("download", {**KEY, "revision": "v1.1"}).path != entry.path
    assert cache.entry("gguf", KEY).path.parent == tmp_path / "gguf"
    assert cache.entry("x", {"no": "name"}).path.name.startswith("entry-")


@pytest.mark.parametrize(
    "name", ["../../x", "/etc/passwd", "..", "a/../../b", "~root", "C:\\x\\..\\..", ".hidden"]
)
def test_keys_never_leave_the_root(tmp_path: Path, name: str) -> None:
    root = tmp_path / "cache"
    entry = Cache(root).entry("download", {"name": name})
    resolved = entry.path.resolve()
    assert resolved.parent == (root / "download").resolve()
    assert not entry.path.name.startswith(".")
    with entry.build() as tmp:
        assert tmp is not None
        (tmp / "f").write_text("x")
    assert entry.ready
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]


@pytest.mark.parametrize("kind", ["../x", "a/b", "", ".", ".."])
def test_bad_kind_is_refused(tmp_path: Path, kind: str) -> None:
    with pytest.raises(CacheError):
        Cache(tmp_path).entry(kind, KEY)


def test_build_is_atomic(tmp_path: Path) -> None:
    entry = Cache(tmp_path).entry("download", KEY)
    assert not entry.ready
    with entry.build() as tmp:
        assert tmp is not None
        assert tmp.parent == entry.path.parent
        assert tmp.name.startswith(f"{entry.path.name}.tmp-{os.getpid()}-")
        (tmp / "weights.bin").write_bytes(b"\x01" * 10)
        # nothing visible under the final name while building
        assert not entry.path.exists()
        assert not entry.ready
    assert entry.ready
    assert (entry.path / "weights.bin").read_bytes() == b"\x01" * 10
    assert json.loads((entry.path / "key.json").read_text()) == KEY
    assert entry.temp_folders() == []
    with entry.build() as again:
        assert again is None  # already complete: nothing to do


def test_exception_leaves_no_entry(tmp_path: Path) -> None:
    entry = Cache(tmp_path).entry("download", KEY)

    def half_build() -> None:
        with entry.build() as tmp:
            assert tmp is not None
            (tmp / "half.bin").write_bytes(b"half")
            raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        half_build()
    assert not entry.ready
    assert not entry.path.exists()
    assert entry.temp_folders() == []


def test_incomplete_leftover_is_not_ready_and_gets_replaced(tmp_path: Path) -> None:
    entry = Cache(tmp_path).entry("download", KEY)
    entry.path.mkdir(parents=True)
    (entry.path / "stale.bin").write_text("old")  # e.g. copied by hand, no marker
    assert not entry.ready
    with entry.build() as tmp:
        assert tmp is not None
        (tmp / "new.bin").write_text("new")
    assert entry.ready
    assert sorted(p.name for p in entry.path.iterdir()) == [".complete", "key.json", "new.bin"]


def test_sigkill_mid_build_is_rebuilt(tmp_path: Path) -> None:
    root, started = tmp_path / "cache", tmp_path / "started"
    child = run_python(
        """
        import sys, time
        from pathlib import Path
        from pytest_llmcheck.storage.cache import Cache
        entry = Cache(Path(sys.argv[1])).entry("download", {"name": "victim"})
        with entry.build() as tmp:
            (tmp / "part.bin").write_bytes(b"partial")
            Path(sys.argv[2]).write_text(str(tmp))
            time.sleep(60)
        """,
        str(root),
        str(started),
    )
    try:
        wait_for(started, child)
        half_built = Path(started.read_text())
        assert (half_built / "part.bin").exists()
        entry = Cache(root).entry("download", {"name": "victim"})
        assert not entry.ready
    finally:
        child.send_signal(signal.SIGKILL)
        child.communicate(timeout=10)
    assert child.returncode == -signal.SIGKILL
    assert half_built.exists()  # the crash left its temp folder ...
    assert not entry.ready  # ... which is never taken as ready
    with entry.build() as tmp:
        assert tmp is not None  # rebuilt, not skipped
        assert not half_built.exists()  # dead builder's leftovers cleaned
        (tmp / "part.bin").write_bytes(b"complete")
    assert entry.ready
    assert (entry.path / "part.bin").read_bytes() == b"complete"
    assert entry.temp_folders() == []


def test_concurrent_builders_do_the_work_once(tmp_path: Path) -> None:
    root, go, log = tmp_path / "cache", tmp_path / "go", tmp_path / "built.log"
    code = """
        import sys, time
        from pathlib import Path
        from pytest_llmcheck.storage.cache import Cache
        root, go, log, me = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
        entry = Cache(root).entry("download", {"name": "shared"})
        Path(str(go) + "." + me).write_text("waiting")
        while not go.exists():
            time.sleep(0.005)
        with entry.build() as tmp:
            if tmp is not None:
                with open(log, "a") as f:
                    f.write(me + "\\n")
                time.sleep(0.5)  # long enough that the other one is surely waiting
                (tmp / "data.txt").write_text("built by " + me)
        print((entry.path / "data.txt").read_text())
    """
    children = [run_python(code, str(root), str(go), str(log), name) for name in ("a", "b")]
    for name, child in zip(("a", "b"), children, strict=True):
        wait_for(Path(f"{go}.{name}"), child)
    go.write_text("go")
    outputs = [child.communicate(timeout=30) for child in children]
    assert [c.returncode for c in children] == [0, 0], outputs
    builders = log.read_text().split()
    assert len(builders) == 1
    # both saw the same, complete result
    assert [out.strip() for out, _ in outputs] == [f"built by {builders[0]}"] * 2


def test_list_and_clear(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    for kind, name, size in [("download", "a", 100), ("download", "b", 50), ("gguf", "c", 7)]:
        with cache.entry(kind, {"name": name}).build() as tmp:
            assert tmp is not None
            (tmp / "blob").write_bytes(b"x" * size)
    broken = cache.entry("download", {"name": "broken"})
    broken.path.mkdir()
    listing = {(item["kind"], Path(str(item["path"])).name.split("-")[0]): item for item in cache.list()}
    assert set(listing) == {("download", "a"), ("download", "b"), ("gguf", "c"), ("download", "broken")}
    assert listing[("download", "a")]["ready"] is True
    assert listing[("download", "broken")]["ready"] is False
    assert listing[("download", "a")]["key"] == {"name": "a"}
    size_a = int(str(listing[("download", "a")]["size"]))
    assert size_a >= 100 + len(canonical_key({"name": "a"}))

    (cache.scratch("hf") / "refs").mkdir(parents=True)
    (cache.scratch("hf") / "refs" / "main").write_bytes(b"r" * 40)
    assert len(cache.list()) == 4  # scratch folders are not entries
    freed = cache.clear("gguf")
    assert 7 <= freed < 200
    assert {item["kind"] for item in cache.list()} == {"download"}
    freed = cache.clear()
    assert freed >= 150 + 40
    assert cache.list() == []
    assert not cache.scratch("hf").exists()
    assert cache.clear() == 0


def test_clear_removes_dead_builds_but_not_live_ones(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    entry = cache.entry("download", {"name": "x"})
    entry.path.parent.mkdir(parents=True)
    dead = entry.path.with_name(f"{entry.path.name}.tmp-999999999-dead")
    dead.mkdir()
    (dead / "junk").write_bytes(b"j" * 10)
    with entry.build() as tmp:  # ours is live while clear runs
        assert tmp is not None
        assert not dead.exists()  # a build cleans dead builders' folders of its own entry
        dead.mkdir()
        (dead / "junk").write_bytes(b"j" * 10)
        # the entry's lock is held: for all clear knows, both folders are a live build's
        # (the pid in a name proves nothing across containers); see test_nothing_lost.py
        assert cache.clear() == 0
        assert tmp.exists()
        assert dead.exists()
        (tmp / "ok").write_text("ok")
    assert entry.ready
    assert cache.clear() >= 10  # the lock is free now: the leftover goes, with the entry
    assert not dead.exists()


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LLMCHECK_CACHE_DIR", str(tmp_path / "mine"))
    assert default_cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("LLMCHECK_CACHE_DIR")
    assert default_cache_dir().name == "pytest-llmcheck"
