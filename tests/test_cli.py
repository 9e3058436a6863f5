"""The ``llmcheck`` command: list, pull and clear the per-machine model cache."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_llmcheck.cli.commands import KIND_CHOICES, main
from pytest_llmcheck.config.registry import resolve
from pytest_llmcheck.engines.itrex.engine import CACHE_KIND as ITREX_KIND
from pytest_llmcheck.engines.llamacpp import KIND as LLAMACPP_KIND
from pytest_llmcheck.engines.transformers.decode_check import KIND as DECODE_CHECK_KIND
from pytest_llmcheck.engines.transformers.w4a8 import CACHE_KIND as W4A8_KIND
from pytest_llmcheck.storage.cache import Cache
from pytest_llmcheck.storage.hub import cache_entry
from tests.hubserver import HF_REPO, MS_REPO, HubServer

pytest_plugins = ["tests.conftest_hub"]

MS, HF = f"modelscope:{MS_REPO}", f"hf:{HF_REPO}"


@pytest.fixture
def hub_model_dir(tiny_model: Path) -> Path:
    return tiny_model


@pytest.fixture
def endpoints(hub_server: HubServer, monkeypatch: pytest.MonkeyPatch) -> HubServer:
    monkeypatch.setenv("LLMCHECK_MODELSCOPE_ENDPOINT", hub_server.url)
    monkeypatch.setenv("LLMCHECK_HF_ENDPOINT", hub_server.url)
    return hub_server


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def kinds(root: Path, *, ready: bool = True) -> list[str]:
    """The kinds of the cache's entries, less the C++ decode step's library: a load builds it
    into the cache unless an earlier test already loaded it into this process."""
    entries = Cache(root).list()
    return sorted(str(e["kind"]) for e in entries if e["ready"] is ready and e["kind"] != "kernel")


def test_list_shows_the_registry_and_the_cache(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "c"
    cache = Cache(root)
    with cache_entry(resolve(MS), cache).build() as tmp:
        assert tmp is not None
        (tmp / "weights").write_bytes(b"x" * 3000)
    half = cache.entry("quantized", {"name": "Tiny", "spec": HF, "recipe": {"method": "m", "group_size": 32}})
    half.path.mkdir(parents=True)  # an entry without its marker: shown, but not ready

    assert main(["list", "--cache-dir", str(root)]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    for alias in ("smollm2", "qwen", "chatglm3", "qwen2.5"):
        assert alias in rows
    assert "modelscope:qwen/Qwen-7B-Chat" in rows["qwen"]
    for alias in ("qwen", "chatglm3", "smollm2"):  # the seed's models are converted natively
        assert "needs --llm-trust-remote-code" not in rows[alias]
    assert "converted to Qwen2" in rows["qwen"]
    assert "converted to GLM" in rows["chatglm3"]
    assert f"Cache {root}: 2 entries" in out
    download = rows["download"].split()
    assert download[1] == MS
    assert download[-4:] == ["KiB", "just", "now", "yes"]  # size, last used, ready
    assert 2.9 <= float(download[-5]) < 3.5
    assert rows["quantized"].split()[1:4] == [half.path.name, "(no", "key)"]  # no key.json yet
    assert rows["quantized"].endswith("no (incomplete)")


def test_list_of_an_empty_cache(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "--cache-dir", str(tmp_path / "none")]) == 0
    assert f"Cache {tmp_path / 'none'}: 0 entries, 0 B" in capsys.readouterr().out


def test_default_cache_dir_comes_from_the_environment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMCHECK_CACHE_DIR", str(tmp_path / "env-cache"))
    assert main(["list"]) == 0
    assert f"Cache {tmp_path / 'env-cache'}: 0 entries" in capsys.readouterr().out


def test_pull_then_pull_again_then_clear(
    endpoints: HubServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "c"
    assert main(["pull", MS, HF, "--cache-dir", str(root), "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert out.count(f"download: downloaded from {endpoints.url} in ") == 2
    # both hubs serve the same files: keyed by content, they share one INT4 entry
    assert out.count("quantized (INT4): built and cached; load ") == 1
    assert out.count("quantized (INT4): from cache; load ") == 1
    assert "int4: 14/14 linear layers" in out
    # one INT4 entry and one check of the fast decode loop for the two references' one model
    assert kinds(root) == ["decode-check", "download", "download", "quantized"]
    assert kinds(root, ready=False) == []
    assert len(endpoints.requests) > 0

    seen = len(endpoints.requests)
    assert main(["pull", MS, HF, "--cache-dir", str(root), "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert len(endpoints.requests) == seen  # no hub request at all
    assert out.count("download: cached, no hub request in ") == 2
    assert out.count("quantized (INT4): from cache; load ") == 2
    assert "downloaded from" not in out
    assert "built and cached" not in out

    assert main(["list", "--cache-dir", str(root)]) == 0
    listed = capsys.readouterr().out
    assert f"Cache {root}: {len(Cache(root).list())} entries" in listed
    assert len(Cache(root).list()) - len(kinds(root)) in (0, 1)  # at most the decode step's library
    assert sum(line.split()[:2] == ["download", MS] for line in listed.splitlines()) == 1

    quantized = sum(int(str(e["size"])) for e in Cache(root).list() if e["kind"] == "quantized")
    assert main(["clear", "--kind", "quantized", "--cache-dir", str(root), "--yes"]) == 0
    out = capsys.readouterr().out
    assert f"removed 1 quantized entry from {root}; freed {quantized} bytes" in out
    assert kinds(root) == ["decode-check", "download", "download"]

    left = len(Cache(root).list())
    assert main(["clear", "--cache-dir", str(root), "--yes"]) == 0
    out = capsys.readouterr().out
    assert f"removed {left} entries from {root}; freed " in out
    freed = int(out.split("freed ")[1].split()[0])
    assert freed > 2 * (tiny_size := sum(p.stat().st_size for p in endpoints.repos[MS_REPO].folder.rglob("*")
                                         if p.is_file())), (freed, tiny_size)
    assert Cache(root).list() == []


def test_clear_asks_for_yes_when_not_interactive(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "c"
    with Cache(root).entry("download", {"name": "x"}).build() as tmp:
        assert tmp is not None
    assert main(["clear", "--cache-dir", str(root)]) == 2
    assert "pass --yes" in one_error_line(capsys.readouterr().err)
    assert kinds(root) == ["download"]  # nothing removed


def test_pull_of_a_missing_model_is_one_line_and_exit_1(
    endpoints: HubServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    endpoints.missing.add(MS_REPO)
    assert main(["pull", MS, "--cache-dir", str(tmp_path / "c")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0] == f"llmcheck: {MS}: model {MS} not found on {endpoints.url} (404)"
    assert kinds(tmp_path / "c") == []


def test_pull_offline_not_cached_says_what_is_missing(
    hub_env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMCHECK_OFFLINE", "1")
    assert main(["pull", HF, "--cache-dir", str(tmp_path / "c")]) == 1
    assert f"offline: {HF} is not in the cache" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["pull", "nosuchmodel"], "llmcheck: error: unknown model 'nosuchmodel'; use one of: "),
        (["pull", "modelscope:../../x"], "llmcheck: error: bad modelscope model id '../../x'"),
        (["pull", "hf:a/b/../../c"], "llmcheck: error: bad hf model id 'a/b/../../c'"),
        (["pull", "qwen", "--quant", "int8"], "llmcheck: error: argument --quant: invalid choice: 'int8'"),
        (["pull", "qwen", "--threads", "0"], "llmcheck: error: argument --threads: 0 is too small"),
        (["pull"], "llmcheck: error: the following arguments are required: MODEL"),
        (["clear", "--kind", "bogus"], "llmcheck: error: argument --kind: invalid choice: 'bogus'"),
        (["list", "--bogus"], "llmcheck: error: unrecognized arguments: --bogus"),
        (["frobnicate"], "llmcheck: error: argument COMMAND: invalid choice: 'frobnicate'"),
        ([], "llmcheck: error: the following arguments are required: COMMAND"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LLMCHECK_CACHE_DIR", str(tmp_path / "c"))
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert one_error_line(captured.err).startswith(message)
    assert captured.out == ""
    assert not (tmp_path / "c").exists()  # nothing was created or fetched


def test_console_script_help() -> None:
    script = Path(sys.executable).parent / "llmcheck"
    assert script.is_file(), f"console script missing: {script}"
    done = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: llmcheck")
    for command in ("list", "pull", "clear"):
        assert command in done.stdout
    done = subprocess.run([str(script), "pull", "--help"], capture_output=True, text=True, timeout=60)
    assert "--trust-remote-code" in done.stdout
    assert "--quant" in done.stdout


def test_the_cli_imports_no_heavy_modules() -> None:
    code = (
        "import sys; from pytest_llmcheck.cli.commands import main; rc = main(['pull', 'nosuchmodel']);"
        "heavy = [m for m in ('torch', 'transformers', 'modelscope', 'huggingface_hub') if m in sys.modules];"
        "print(rc, heavy)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "2 []", done.stdout + done.stderr


# the engines' own constants
@pytest.mark.parametrize("kind", [LLAMACPP_KIND, ITREX_KIND, W4A8_KIND, DECODE_CHECK_KIND])
def test_engine_cache_kinds_can_be_listed_and_cleared(
    kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pytest_llmcheck.storage.cache import Cache

    assert kind in KIND_CHOICES
    cache = Cache(tmp_path)
    with cache.entry(kind, {"name": "m", "recipe": "itrex-rtn-int4-compute-int8"}).build() as tmp:
        assert tmp is not None
        (tmp / "w.bin").write_bytes(b"x" * 10)
    with cache.entry("quantized", {"name": "other"}).build():
        pass
    assert main(["list", "--cache-dir", str(tmp_path)]) == 0
    assert re.search(rf"^  {kind} +m ", capsys.readouterr().out, re.MULTILINE)
    assert main(["clear", "--kind", kind, "--cache-dir", str(tmp_path), "--yes"]) == 0
    assert [e["kind"] for e in cache.list()] == ["quantized"]
