"""Models from ModelScope and Hugging Face, cached per machine.

End to end through pytest itself (inner sessions against the stand-in hub on 127.0.0.1,
serving a tiny random Llama), plus the cache's crash and concurrency guarantees with
real processes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pytest_llmcheck.config.registry import ModelRef, ModelRefError, resolve
from pytest_llmcheck.engines.transformers.quantize import get_quantizer
from pytest_llmcheck.storage.cache import Cache, CacheError
from pytest_llmcheck.storage.hub import ENDPOINT_ENV, HubError, download_key
from tests.hubserver import HF_REPO, MS_REPO, HubServer

pytest_plugins = ["tests.conftest_hub"]

SPECS = {"modelscope": f"modelscope:{MS_REPO}", "hf": f"hf:{HF_REPO}"}
SOURCES = sorted(SPECS)

ANSWER_TEST = """
import json, os

def test_answer(llm):
    answer = llm.ask("What is the capital of France?")
    with open(os.environ["LLMCHECK_TEST_OUT"], "a", encoding="utf-8") as f:
        row = {"text": answer.text, "from_cache": llm.engine.facts.from_cache}
        f.write(json.dumps(row) + "\\n")
"""

TWO_TESTS = """
def test_one(llm):
    llm.ask("hello")

def test_two(llm):
    llm.ask("world")
"""


@pytest.fixture
def hub_model_dir(tiny_model: Path) -> Path:
    """The stand-in hub serves the tiny Llama (overrides tests.conftest_hub's toy folder)."""
    return tiny_model


@pytest.fixture(autouse=True)
def _fast_modelscope_integrity_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    import modelscope_hub._download as ms_download

    monkeypatch.setattr(ms_download, "DOWNLOAD_INTEGRITY_RETRY_BACKOFF", 0.01, raising=False)


@pytest.fixture
def inner(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, hub_env: Path) -> pytest.Pytester:
    monkeypatch.setenv("LLMCHECK_TEST_OUT", str(pytester.path / "answers.jsonl"))
    pytester.makeini(
        """
        [pytest]
        filterwarnings = ignore::pytest.PytestAssertRewriteWarning
        """
    )
    return pytester


@pytest.fixture
def hub_cache(source: str, hub_server: HubServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Point `source`'s endpoint at the stand-in hub; the (not yet created) cache folder."""
    monkeypatch.setenv(ENDPOINT_ENV[source], hub_server.url)
    return tmp_path / "llm-cache"


def run(pytester: pytest.Pytester, cache: Path, *args: str) -> pytest.RunResult:
    return pytester.runpytest(
        "-p", "no:cacheprovider", f"--llm-cache-dir={cache}", "--llm-threads=1", "--llm-max-new-tokens=12",
        *args,
    )


def answers(pytester: pytest.Pytester) -> list[dict[str, object]]:
    out = pytester.path / "answers.jsonl"
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()] if out.exists() else []
    out.unlink(missing_ok=True)
    return rows


def ready_kinds(cache: Path) -> list[str]:
    """The kinds of the ready entries, less the C++ decode step's library (``kernel``: a load
    builds it into the cache unless this process already has it loaded) and the fast decode
    loop's check at load (``decode-check``, tests/test_fast_decode.py): the weights' entries."""
    return sorted(str(e["kind"]) for e in Cache(cache).list()
                  if e["ready"] and e["kind"] not in ("kernel", "decode-check"))


def failed_lines(result: pytest.RunResult) -> list[str]:
    """The reason shown for each test that could not get its model (one line each)."""
    return [line for line in result.outlines if line.startswith("model '")]


@pytest.mark.parametrize("source", SOURCES)
def test_second_session_uses_the_cache_without_the_hub(
    source: str, inner: pytest.Pytester, hub_server: HubServer, hub_cache: Path
) -> None:
    cache = hub_cache
    inner.makepyfile(test_answer=ANSWER_TEST)

    result = run(inner, cache, f"--llm-model={SPECS[source]}")
    result.assert_outcomes(passed=1)
    assert "(from cache)" not in result.stdout.str()
    first = answers(inner)
    assert len(hub_server.requests) > 0
    assert ready_kinds(cache) == ["download", "quantized"]
    assert first[0]["from_cache"] is False

    seen = len(hub_server.requests)
    result = run(inner, cache, f"--llm-model={SPECS[source]}")
    result.assert_outcomes(passed=1)
    second = answers(inner)
    assert len(hub_server.requests) == seen  # not one request: "download once, ever"
    assert second[0]["from_cache"] is True  # INT4 weights reloaded, not re-quantized
    assert second[0]["text"] == first[0]["text"]
    assert len(str(first[0]["text"])) > 0
    result.stdout.fnmatch_lines(["llmcheck: Tiny ready in *s (from cache); int4: 14/14 linear layers*"])
    result.stdout.fnmatch_lines([f"Tiny ({SPECS[source]}): loaded 1x in *s*; int4: * linear layers*"])


@pytest.mark.parametrize("source", ["hf"])
def test_offline_uses_the_cache_with_the_server_stopped(
    inner: pytest.Pytester, hub_server: HubServer, monkeypatch: pytest.MonkeyPatch, hub_cache: Path
) -> None:
    cache = hub_cache
    inner.makepyfile(test_answer=ANSWER_TEST)
    run(inner, cache, f"--llm-model={SPECS['hf']}").assert_outcomes(passed=1)
    expected = answers(inner)[0]["text"]
    hub_server.stop()
    for how in ("--llm-offline", "LLMCHECK_OFFLINE", "HF_HUB_OFFLINE"):
        with monkeypatch.context() as m:
            if how != "--llm-offline":
                m.setenv(how, "1")
            run(inner, cache, f"--llm-model={SPECS['hf']}", *([how] if how.startswith("--") else []))\
                .assert_outcomes(passed=1)
        got = answers(inner)
        assert got == [{"text": expected, "from_cache": True}], how


@pytest.mark.parametrize("source", ["modelscope"])
@pytest.mark.parametrize("how", ["--llm-offline", "LLMCHECK_OFFLINE", "HF_HUB_OFFLINE"])
def test_offline_not_cached_fails_every_test_with_one_line(
    how: str, inner: pytest.Pytester, hub_server: HubServer, monkeypatch: pytest.MonkeyPatch, hub_cache: Path
) -> None:
    if how != "--llm-offline":
        monkeypatch.setenv(how, "1")
    cache = hub_cache
    inner.makepyfile(test_two=TWO_TESTS)
    result = run(inner, cache, f"--llm-model={SPECS['modelscope']}", *([how] if how.startswith("--") else []))
    result.assert_outcomes(errors=2)
    lines = failed_lines(result)
    assert len(lines) == 2
    for line in lines:
        assert f"offline: {SPECS['modelscope']} is not in the cache {cache}" in line
        assert f"run 'llmcheck pull {SPECS['modelscope']}' while online" in line
    assert hub_server.requests == []
    assert Cache(cache).list() == []


@pytest.mark.parametrize("source", SOURCES)
def test_missing_model_is_one_line_per_test(
    source: str, inner: pytest.Pytester, hub_server: HubServer, hub_cache: Path
) -> None:
    hub_server.missing.update({MS_REPO, HF_REPO})
    cache = hub_cache
    inner.makepyfile(test_two=TWO_TESTS)
    result = run(inner, cache, f"--llm-model={SPECS[source]}")
    result.assert_outcomes(errors=2)
    lines = failed_lines(result)
    assert len(lines) == 2
    for line in lines:
        assert line.endswith(f"model {SPECS[source]} not found on {hub_server.url} (404)"), line
    assert ready_kinds(cache) == []


@pytest.mark.parametrize("source", SOURCES)
def test_corrupted_download_leaves_no_ready_entry(
    source: str, inner: pytest.Pytester, hub_server: HubServer, hub_cache: Path
) -> None:
    hub_server.corrupt.add((MS_REPO if source == "modelscope" else HF_REPO, "model.safetensors"))
    cache = hub_cache
    inner.makepyfile(test_two=TWO_TESTS)
    result = run(inner, cache, f"--llm-model={SPECS[source]}")
    result.assert_outcomes(errors=2)
    assert all("model.safetensors" in line for line in failed_lines(result))
    assert ready_kinds(cache) == []
    assert all(not e["ready"] for e in Cache(cache).list())


# -- remote code: only on opt-in

MODELING = '''
from transformers import LlamaConfig, LlamaForCausalLM


class TinyRemoteConfig(LlamaConfig):
    model_type = "tiny_remote_llama"


class TinyRemoteForCausalLM(LlamaForCausalLM):
    config_class = TinyRemoteConfig
'''


@pytest.fixture(scope="module")
def remote_folder(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("remote") / "tiny-remote"
    shutil.copytree(tiny_model, folder)
    (folder / "modeling_tiny.py").write_text(MODELING, encoding="utf-8")
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    config["model_type"] = "tiny_remote_llama"
    config["architectures"] = ["TinyRemoteForCausalLM"]
    config["auto_map"] = {
        "AutoConfig": "modeling_tiny.TinyRemoteConfig",
        "AutoModelForCausalLM": "modeling_tiny.TinyRemoteForCausalLM",
    }
    (folder / "config.json").write_text(json.dumps(config, indent=1), encoding="utf-8")
    return folder


def test_remote_code_only_on_opt_in(inner: pytest.Pytester, remote_folder: Path, tmp_path: Path) -> None:
    cache = tmp_path / "llm-cache"
    inner.makepyfile(test_two=TWO_TESTS)
    result = run(inner, cache, f"--llm-model={remote_folder}")
    result.assert_outcomes(errors=2)
    lines = failed_lines(result)
    assert len(lines) == 2
    for line in lines:
        assert "'tiny-remote'" in line
        assert "ships its own modeling code" in line
        assert "--llm-trust-remote-code=tiny-remote" in line
    assert ready_kinds(cache) == []

    inner.makepyfile(test_answer=ANSWER_TEST)
    (inner.path / "test_two.py").unlink()
    run(inner, cache, f"--llm-model={remote_folder}", "--llm-trust-remote-code=tiny-remote")\
        .assert_outcomes(passed=1)
    by_name = answers(inner)
    assert by_name[0]["from_cache"] is False
    run(inner, cache, f"--llm-model={remote_folder}", "--llm-trust-remote-code=all").assert_outcomes(passed=1)
    by_all = answers(inner)
    assert by_all == [{"text": by_name[0]["text"], "from_cache": True}]  # cached INT4 of a custom class
    # and a trusted cache entry does not bypass the opt-in
    result = run(inner, cache, f"--llm-model={remote_folder}", "--llm-trust-remote-code=other")
    result.assert_outcomes(errors=1)
    assert "--llm-trust-remote-code=tiny-remote" in failed_lines(result)[0]


# -- the cache under crashes and concurrency, with real processes

LOADER = textwrap.dedent(
    """
    import json, os, sys, time
    from pathlib import Path

    from pytest_llmcheck.storage.cache import Cache
    from pytest_llmcheck.engines.transformers.engine import TransformersEngine
    from pytest_llmcheck.engines.transformers.quantize import TorchaoInt4, get_quantizer
    from pytest_llmcheck.config.registry import resolve

    folder, cache, work, mode = sys.argv[1], sys.argv[2], Path(sys.argv[3]), sys.argv[4]
    original = TorchaoInt4.apply

    def apply(self, model):
        with open(work / "builds", "a") as f:
            f.write(f"{os.getpid()}\\n")
        if mode == "hang":
            (work / "started").write_text(str(os.getpid()))
            time.sleep(600)
        time.sleep(0.5)  # widen the window in which a second process could build too
        return original(self, model)

    TorchaoInt4.apply = apply
    (work / f"ready-{os.getpid()}").write_text("")
    while not (work / "go").exists():
        time.sleep(0.01)
    engine = TransformersEngine.load(
        resolve(folder), Path(folder), get_quantizer("int4"), threads=1, cache=Cache(cache)
    )
    print(json.dumps({"from_cache": engine.facts.from_cache}))
    """
)


def spawn(tmp_path: Path, folder: Path, cache: Path, mode: str) -> subprocess.Popen[str]:
    script = tmp_path / "loader.py"
    script.write_text(LOADER, encoding="utf-8")
    return subprocess.Popen(
        [sys.executable, str(script), str(folder), str(cache), str(tmp_path), mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(predicate: object, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def load_here(folder: Path, cache: Path) -> bool:
    from pytest_llmcheck.engines.transformers.engine import TransformersEngine
    from pytest_llmcheck.engines.transformers.quantize import get_quantizer

    engine = TransformersEngine.load(
        resolve(str(folder)), folder, get_quantizer("int4"), threads=1, cache=Cache(cache)
    )
    engine.close()
    return bool(engine.facts.from_cache)


def test_sigkill_mid_quantization_leaves_no_ready_entry(tiny_model: Path, tmp_path: Path) -> None:
    cache = tmp_path / "llm-cache"
    (tmp_path / "go").write_text("")
    proc = spawn(tmp_path, tiny_model, cache, "hang")
    try:
        wait_for(lambda: (tmp_path / "started").exists() or proc.poll() is not None, "the build to start")
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    entries = [e for e in Cache(cache).list() if e["kind"] == "quantized"]
    assert entries == []  # nothing looks like an entry, ready or not
    leftovers = list((cache / "quantized").glob("*.tmp-*"))
    assert leftovers
    assert all(f".tmp-{proc.pid}-" in p.name for p in leftovers)  # the killed build's folder

    assert load_here(tiny_model, cache) is False  # rebuilt
    assert list((cache / "quantized").glob("*.tmp-*")) == []  # the dead build's leftovers are gone
    assert ready_kinds(cache) == ["quantized"]
    assert load_here(tiny_model, cache) is True


def test_two_processes_build_the_int4_entry_once(tiny_model: Path, tmp_path: Path) -> None:
    cache = tmp_path / "llm-cache"
    procs = [spawn(tmp_path, tiny_model, cache, "build") for _ in range(2)]
    try:
        wait_for(lambda: len(list(tmp_path.glob("ready-*"))) == 2 or any(p.poll() is not None for p in procs),
                 "both processes to import")
        (tmp_path / "go").write_text("")  # both start loading at the same moment
        outs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-2000:]
    flags = sorted(json.loads(out.strip().splitlines()[-1])["from_cache"] for out, _ in outs)
    assert flags == [False, True]
    assert len((tmp_path / "builds").read_text().split()) == 1  # quantized exactly once
    assert ready_kinds(cache) == ["quantized"]
    kernels = [e["key"] for e in Cache(cache).list() if e["kind"] == "kernel"]
    if shutil.which(os.environ.get("CXX", "c++")):  # two fresh processes: the C++ step built once too
        assert [k["kernel"] for k in kernels] == ["decode_step"]  # type: ignore[index]


# -- path safety

BAD_SPECS = [
    "modelscope:../../x",
    "hf:a/b/../../c",
    "hf:../etc",
    "hf:a/..",
    "modelscope:a/b c",
    "hf:a/b;rm",
    "hf:a/$(id)",
    "modelscope:a\\b/c",
    "hf:a/b@../../x",
    "hf:/etc/passwd",
    "modelscope:a/b/c",
]


@pytest.mark.parametrize("spec", BAD_SPECS)
def test_bad_hub_ids_are_refused_with_one_line(spec: str) -> None:
    with pytest.raises(ModelRefError) as info:
        resolve(spec)
    assert "\n" not in str(info.value)
    assert "bad " in str(info.value)


def test_bad_hub_id_stops_pytest_with_one_line(inner: pytest.Pytester, tmp_path: Path) -> None:
    inner.makepyfile(test_two=TWO_TESTS)
    result = run(inner, tmp_path / "llm-cache", "--llm-model=modelscope:../../x")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--llm-model: bad modelscope model id '../../x'*"])
    assert not (tmp_path / "llm-cache").exists()


def test_refs_built_in_code_cannot_escape_either() -> None:
    for location in ("../../x", "a/../../b", "/etc/passwd", "a/b c"):
        with pytest.raises(HubError, match="bad "):
            download_key(ModelRef(name="x", source="hf", location=location))


@pytest.mark.parametrize(
    "name",
    ["../../x", "..", "/etc/passwd", "a/../../b", "~root", "", ".hidden", "a\x00b", "名前/../..", "x" * 500],
)
def test_cache_entries_stay_under_the_root(name: str, tmp_path: Path) -> None:
    cache = Cache(tmp_path / "c")
    root = cache.root.resolve()
    for kind in ("download", "quantized"):
        entry = cache.entry(kind, {"name": name, "spec": name})
        assert entry.path.resolve().parent == root / kind
        assert entry.lock_path.resolve().parent == root / kind
        with entry.build() as tmp:
            assert tmp is not None
            assert tmp.resolve().parent == root / kind
        assert entry.ready
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


@pytest.mark.parametrize("kind", ["../x", "..", "/abs", "a/b", ".hidden", ""])
def test_bad_cache_kinds_are_refused(kind: str, tmp_path: Path) -> None:
    with pytest.raises(CacheError):
        Cache(tmp_path / "c").entry(kind, {"name": "x"})


def test_entries_are_keyed_by_the_weights_not_the_name(tiny_model: Path, tmp_path: Path) -> None:
    """An alias and the reference it stands for share one INT4 entry."""
    import dataclasses

    from pytest_llmcheck.engines.transformers.engine import TransformersEngine

    cache = Cache(tmp_path / "cache")
    ref = resolve(str(tiny_model))
    first = TransformersEngine.load(ref, tiny_model, get_quantizer("int4"), threads=1, cache=cache)
    alias = dataclasses.replace(ref, name="my-alias")
    second = TransformersEngine.load(alias, tiny_model, get_quantizer("int4"), threads=1, cache=cache)
    assert (first.facts.from_cache, second.facts.from_cache) == (False, True)
    assert len([e for e in cache.list() if e["kind"] == "quantized"]) == 1
