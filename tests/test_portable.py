"""Portable numerics (``config/numerics.py``): the same greedy answer on every x86-64-v3 CPU.

This process runs natively (pyproject.toml) and torch here already chose its kernels, so the
tests of the portable path start fresh pytest processes, as a user's project would, with
the repository's own ``LLMCHECK_NUMERICS=native`` taken away (``user_env``). What needs no
fresh torch (the refusals, fingerprints on a stand-in CPU, the snapshot comparison) runs here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pytest_llmcheck.config.numerics import BEFORE_ENV, CHOICE_ENV, PORTABLE_ENV, recipe
from pytest_llmcheck.engines.transformers import w4a8
from tests.conftest import itrex_worker_env

ROOT = Path(__file__).resolve().parent.parent
RIDDLES = ROOT / "examples" / "riddles" / "riddles.llm.yaml"
CAPS = (*PORTABLE_ENV, BEFORE_ENV)
INT4_A8_CPU = w4a8.cpu_problem()

TORCH_FIRST_LINE = (
    "portable numerics need torch's kernels held to AVX2, but torch chose its kernels ({level}) before "
    "pytest-llmcheck could set ATEN_CPU_CAPABILITY=avx2 (something ran torch first, e.g. another plugin "
    "at import); set ATEN_CPU_CAPABILITY=avx2 in the environment, or use --llm-numerics=native"
)


def user_env(**changes: str | None) -> dict[str, str]:
    """This process's environment as a user's shell would have it: no numerics chosen, none of
    portable mode's variables set; then ``changes`` (None removes a name)."""
    env = {k: v for k, v in os.environ.items() if k not in (*CAPS, CHOICE_ENV)}
    for name, value in changes.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def run_pytest(
    project: Path, *args: str, env: dict[str, str], timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:randomly", *args],
        cwd=project, env=env, capture_output=True, text=True, timeout=timeout,
    )


# -- (a) the environment, set before any conftest can import torch

CONFTEST_SEES = f"""\
import json, os

SEEN = {{name: os.environ.get(name) for name in {CAPS!r}}}  # at conftest import: before any test


def pytest_sessionstart(session):
    print("SEEN " + json.dumps(SEEN, sort_keys=True))
"""


@pytest.mark.parametrize(
    ("args", "env", "portable"),
    [
        ((), {}, True),
        (("--llm-numerics=native",), {}, False),
        ((), {CHOICE_ENV: "native"}, False),
        (("--llm-numerics", "portable"), {CHOICE_ENV: "native"}, True),  # the command line wins
    ],
    ids=["default", "option", "env", "option-over-env"],
)
def test_the_plugin_sets_the_portable_environment_before_conftests(
    tmp_path: Path, args: tuple[str, ...], env: dict[str, str], portable: bool
) -> None:
    (tmp_path / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")
    (tmp_path / "conftest.py").write_text(CONFTEST_SEES, encoding="utf-8")
    (tmp_path / "test_x.py").write_text("def test_x():\n    pass\n", encoding="utf-8")
    mine = {"ATEN_CPU_CAPABILITY": "avx512"}  # the user's own
    result = run_pytest(tmp_path, "-s", *args, env=user_env(**mine, **env), timeout=120)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    line = next(x for x in result.stdout.splitlines() if x.startswith("SEEN "))
    seen = json.loads(line[len("SEEN "):])
    if portable:
        assert {k: seen[k] for k in PORTABLE_ENV} == PORTABLE_ENV
        # what it replaced, for the workers that run natively (itrex)
        assert json.loads(seen[BEFORE_ENV]) == {name: mine.get(name) for name in PORTABLE_ENV}
    else:  # untouched
        assert seen == {name: ("avx512" if name == "ATEN_CPU_CAPABILITY" else None) for name in CAPS}


# -- (b) torch run before the plugin: one line, not answers that belong to this CPU

TINY_TEST = """\
import json, os


def test_fingerprint(llm):
    llm.ask("hello")
    with open(os.environ["OUT_FILE"], "w", encoding="utf-8") as f:
        json.dump({"fingerprint": llm.fingerprint(), "summary": llm.engine.facts.summary}, f)
"""


def _native_level() -> str:
    import torch

    return str(torch.backends.cpu.get_cpu_capability())


@pytest.fixture(scope="module")
def tiny_project(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Path:
    project = tmp_path_factory.mktemp("portable-tiny")
    (project / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")
    (project / "test_tiny.py").write_text(TINY_TEST, encoding="utf-8")
    # imports torch and runs a kernel at import, as a plugin loading a model there would
    (project / "torchfirst.py").write_text("import torch\n\ntorch.ones(64).sum()\n", encoding="utf-8")
    return project


def test_portable_tiny_model_in_a_fresh_process(tiny_project: Path, tiny_model: Path) -> None:
    """Portable by default: the fingerprint names the recipe and no CPU, the INT4 cache entry is
    keyed so that every machine shares it and no native entry collides with it."""
    from pytest_llmcheck.storage.cache import Cache

    out, cache = tiny_project / "portable.json", tiny_project / "cache"
    result = run_pytest(tiny_project, f"--llm-model={tiny_model}", "--llm-max-new-tokens=8",
                        f"--llm-cache-dir={cache}", env=user_env(OUT_FILE=str(out)))
    assert result.returncode == 0, result.stdout[-3000:]
    data = json.loads(out.read_text(encoding="utf-8"))
    fingerprint = data["fingerprint"]
    assert fingerprint["numerics"] == recipe() == "portable-v1"
    assert "cpu" not in fingerprint
    assert "numerics_note" not in fingerprint
    assert fingerprint["decode"] == {"loop": "fast", "step": "c++", "lm_head": "linear", "int4": "int4_mm",
                                     "argmax": "screened"}
    assert "native numerics" not in data["summary"]
    keys = [e["key"] for e in Cache(cache).list() if e["kind"] == "quantized"]
    assert len(keys) == 1
    assert isinstance(keys[0], dict)
    assert (keys[0]["cpu"], keys[0]["numerics"]) == ("AVX2", "portable-v1")


def test_torch_run_before_the_plugin_fails_the_portable_load_in_one_line(
    tiny_project: Path, tiny_model: Path
) -> None:
    level = _native_level()
    # Where torch would pick AVX2 anyway (no AVX-512), a user's own lower level shows the same trap.
    changes = {} if level.startswith("AVX512") else {"ATEN_CPU_CAPABILITY": "default"}
    if not level.startswith(("AVX512", "AVX2")):
        pytest.skip(f"portable numerics need an x86-64 CPU with AVX2; torch reports {level}")
    shown = level if level.startswith("AVX512") else "DEFAULT"
    args = ("-p", "torchfirst", f"--llm-model={tiny_model}", "--llm-max-new-tokens=8",
            f"--llm-cache-dir={tiny_project / 'cache'}")
    never = str(tiny_project / "never.json")
    result = run_pytest(tiny_project, *args, env=user_env(OUT_FILE=never, **changes))
    assert result.returncode == 1, result.stdout[-3000:]
    assert TORCH_FIRST_LINE.format(level=shown) in result.stdout
    assert "Traceback" not in result.stdout
    # and natively it loads
    result = run_pytest(tiny_project, *args, "--llm-numerics=native",
                        env=user_env(OUT_FILE=str(tiny_project / "native.json"), **changes))
    assert result.returncode == 0, result.stdout[-3000:]


# -- in this process: refusals and fingerprints (torch here is native; its level is stood in)


def _load(folder: Path, quant: str = "int4", **kwargs: Any) -> Any:
    from pytest_llmcheck.config.registry import resolve
    from pytest_llmcheck.engines.transformers.engine import TransformersEngine
    from pytest_llmcheck.engines.transformers.quantize import get_quantizer

    return TransformersEngine.load(resolve(str(folder)), folder, get_quantizer(quant), threads=1, **kwargs)


def test_in_process_portable_load_with_torch_at_avx512_is_refused(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    from pytest_llmcheck.engines.transformers.engine import ModelLoadError

    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    with pytest.raises(ModelLoadError) as caught:
        _load(tiny_model, numerics="portable")
    assert str(caught.value) == TORCH_FIRST_LINE.format(level="AVX512")


@pytest.mark.skipif(INT4_A8_CPU is not None, reason=f"int4-a8 cannot run here: {INT4_A8_CPU}")
def test_int4_a8_in_portable_numerics_names_the_recipe_not_the_cpu(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """int4-a8's kernel computes the same bits on AVX512-VNNI and AVX2 (tests/test_w4a8.py), so
    it runs in portable numerics like int4: its fingerprint names the recipe (with the kernel's
    digest), not this CPU; the summary says which body ran."""
    import torch

    from pytest_llmcheck.engines.base import GenerationConfig

    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")  # as under the plugin
    engine = _load(tiny_model, "int4-a8", numerics="portable")
    try:
        fingerprint = engine.fingerprint()
        assert fingerprint["numerics"] == recipe()
        assert "cpu" not in fingerprint
        assert "numerics_note" not in fingerprint
        assert fingerprint["quantization"]["kernel"].startswith("w4a8.cpp ")
        assert engine.quant.details["w4a8_layers"] == 14
        from pytest_llmcheck.engines.transformers.hugepages import HUGE_PAGE, Arena

        pages = "; weights advised for 2 MB pages" if Arena(HUGE_PAGE).advised else ""
        assert engine.facts.summary.endswith(f" body){pages}")
        assert "native numerics" not in engine.facts.summary
        answer = engine.generate("hello", system=None, config=GenerationConfig(max_new_tokens=4, threads=1))
        assert answer.new_tokens == 4
    finally:
        engine.close()


def test_native_fingerprint_names_the_cpu(tiny_model: Path) -> None:
    from pytest_llmcheck.engines.transformers.cpu import cpu_capability

    engine = _load(tiny_model)  # direct API callers: native unless they ask
    try:
        fingerprint = engine.fingerprint()
        assert fingerprint["numerics"] == "native"
        assert fingerprint["cpu"] == cpu_capability()
        assert "numerics_note" not in fingerprint
    finally:
        engine.close()


def test_portable_fingerprint_and_cache_key_on_a_stand_in_avx2_cpu(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torch reporting AVX2 (as under the plugin, or on an AVX2-only CPU): the recipe, no CPU;
    oneDNN off while it computes; the quantized entry apart from the native one."""
    import torch

    from pytest_llmcheck.engines.transformers.cpu import cpu_capability
    from pytest_llmcheck.storage.cache import Cache

    cache = Cache(tmp_path / "cache")
    native_cpu = cpu_capability()
    native = _load(tiny_model, cache=cache)
    native.close()
    seen: list[bool] = []
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    engine = _load(tiny_model, cache=cache, numerics="portable")
    try:
        original = engine.model.forward

        def forward(*args: Any, **kwargs: Any) -> Any:
            seen.append(torch.backends.mkldnn.enabled)
            return original(*args, **kwargs)

        monkeypatch.setattr(engine.model, "forward", forward)
        fingerprint = engine.fingerprint()
        assert fingerprint["numerics"] == "portable-v1"
        assert "cpu" not in fingerprint
        assert fingerprint["decode"]["lm_head"] == "linear"  # never a kernel timed on this machine
        from pytest_llmcheck.engines.base import GenerationConfig

        engine.generate("hello", system=None, config=GenerationConfig(max_new_tokens=4, threads=1))
        assert seen
        assert not any(seen)  # the prompt's forward ran with oneDNN off
        assert torch.backends.mkldnn.enabled  # and it is back on after
    finally:
        engine.close()
    keys = sorted((e["key"] for e in cache.list() if e["kind"] == "quantized"), key=lambda k: "numerics" in k)
    assert len(keys) == 2
    assert "numerics" not in keys[0]
    assert keys[0]["cpu"] == native_cpu  # as before portable numerics
    assert (keys[1]["cpu"], keys[1]["numerics"]) == ("AVX2", "portable-v1")


def test_a_cpu_without_avx2_runs_natively_and_says_why(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import platform

    import torch

    from pytest_llmcheck.engines.transformers import engine as module

    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "DEFAULT")
    monkeypatch.setattr(module, "cpu_supports", lambda name: False)
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    engine = _load(tiny_model, numerics="portable")
    try:
        why = "portable needs x86-64 with AVX2+FMA; torch reports DEFAULT on aarch64"
        fingerprint = engine.fingerprint()
        assert fingerprint["numerics"] == "native"
        assert fingerprint["numerics_note"] == why
        assert fingerprint["cpu"].startswith("DEFAULT")
        assert f"; native numerics ({why})" in engine.facts.summary
    finally:
        engine.close()


# -- itrex: native whatever is asked


def test_itrex_worker_gets_the_users_environment_back(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from pytest_llmcheck.config.numerics import apply_portable_env

    for name in CAPS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx512")
    monkeypatch.setenv("MKL_CBWR", "COMPATIBLE")
    apply_portable_env()  # as the plugin did at startup
    seen = itrex_worker_env(monkeypatch, tmp_path, numerics="portable")
    assert seen["ATEN_CPU_CAPABILITY"] == "avx512"
    assert seen["MKL_CBWR"] == "COMPATIBLE"
    assert not {"ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", BEFORE_ENV} & seen.keys()


def test_itrex_fingerprint_and_summary_say_native(tmp_path: Path) -> None:
    from pytest_llmcheck.config.registry import ModelRef
    from pytest_llmcheck.engines.itrex import engine as itrex
    from pytest_llmcheck.engines.itrex.env import ItrexPython

    class Worker:
        def __init__(self) -> None:
            self.ready: dict[str, Any] = {"versions": {}}
            self.pid = 1

    ref = ModelRef(name="tiny@itrex", source="local", location=str(tmp_path), engine="itrex")
    python = ItrexPython(path=Path("/nonexistent/python"), origin="test", versions={})
    engine = itrex.ItrexEngine(ref, Worker(), python, quant="int4", threads=1, timeout=1.0,  # type: ignore[arg-type]
                               workdir=tmp_path)
    fingerprint = engine.fingerprint()
    assert fingerprint["numerics"] == "native"
    assert fingerprint["numerics_note"] == "ITREX's kernels pick by CPU"
    assert fingerprint["cpu"] == itrex.cpu_flags()
    loaded = {"layers_total": 2, "layers_converted": 2, "seconds": 1.0, "recipe": {}}
    assert "native numerics" not in engine._facts(loaded, 0.0, False).summary
    engine.numerics_asked = "portable"
    summary = engine._facts(loaded, 0.0, False).summary
    assert summary.endswith("; native numerics (ITREX's kernels pick by CPU)")


# -- (e) snapshots: native answers of another CPU are not comparable

SUITE = """\
questions:
  - id: q1
    prompt: "Capital of France?"
"""
SNAPSHOT = "__snapshots__/riddles.llm/q1[a].txt"
AMX = {"numerics": "native", "cpu": "AVX512 BF16 VNNI AMX"}
ZEN = {"numerics": "native", "cpu": "AVX512 BF16 VNNI"}


def _answers(pytester: pytest.Pytester, answer: str, fingerprint: dict[str, Any]) -> None:
    table = {"a": {"Capital of France?": answer, "__fingerprint__": fingerprint}}
    (pytester.path / "fake_answers.json").write_text(json.dumps(table), encoding="utf-8")


def _record(fake: pytest.Pytester, fingerprint: dict[str, Any]) -> bytes:
    fake.makefile(".llm.yaml", riddles=SUITE)
    _answers(fake, "Paris", fingerprint)
    fake.runpytest("--llm-model=fake:a", "--snapshot-update").assert_outcomes(passed=1)
    return (fake.path / SNAPSHOT).read_bytes()


def test_a_native_snapshot_of_another_cpu_is_not_comparable(fake: pytest.Pytester) -> None:
    from pytest_llmcheck.reporting.report import validate_json

    recorded = _record(fake, AMX)
    _answers(fake, "Paris, France", ZEN)
    result = fake.runpytest("--llm-model=fake:a", "-rs", "--llm-report=report")
    result.assert_outcomes(skipped=1)
    line = (f"answer snapshot {SNAPSHOT} was recorded with native numerics on CPU 'AVX512 BF16 VNNI AMX'; "
            "this CPU is 'AVX512 BF16 VNNI': not comparable (record it with --llm-numerics=portable)")
    result.stdout.fnmatch_lines(["*q1 * PASS * not comparable (native numerics, another CPU)",
                                 "*1 answer snapshot(s) not comparable (tests skipped)",
                                 f"SKIPPED [[]1[]] riddles.llm.yaml:*: {line.replace('[', '[[]')}"])
    assert (fake.path / SNAPSHOT).read_bytes() == recorded  # left alone
    assert not list(fake.path.rglob("*.txt.new"))  # nothing to review: it would fail where it was recorded
    report = json.loads((fake.path / "report" / "report.json").read_text(encoding="utf-8"))
    validate_json(report)
    cases = report["models"][0]["cases"]
    assert [c["snapshot"] for c in cases] == ["not-comparable"]
    assert cases[0]["verdict"] == "pass"  # the answer itself met its (no) expectations
    assert "not comparable" in (fake.path / "report" / "report.md").read_text(encoding="utf-8")


def test_on_the_same_cpu_a_native_snapshot_compares_as_ever(fake: pytest.Pytester) -> None:
    _record(fake, AMX)
    _answers(fake, "Paris, France", AMX)
    result = fake.runpytest("--llm-model=fake:a")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*answer changed from snapshot*", "*fingerprint unchanged*"])
    assert list(fake.path.rglob("*.txt.new"))  # the pending candidate, as ever


def test_a_snapshot_from_before_numerics_with_a_cpu_counts_as_native(fake: pytest.Pytester) -> None:
    _record(fake, {"cpu": "AVX512 BF16 VNNI AMX"})
    _answers(fake, "Paris, France", ZEN)
    result = fake.runpytest("--llm-model=fake:a", "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*was recorded with native numerics on CPU 'AVX512 BF16 VNNI AMX'; "
                                 "this CPU is 'AVX512 BF16 VNNI': not comparable*"])


def test_native_to_portable_is_a_change_to_re_record(fake: pytest.Pytester) -> None:
    _record(fake, {"cpu": "AVX512 BF16 VNNI AMX"})  # recorded before numerics were named
    _answers(fake, "Paris, France", {"numerics": "portable-v1"})
    result = fake.runpytest("--llm-model=fake:a")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*fingerprint changed: numerics native -> portable-v1; "
                                 "cpu AVX512 BF16 VNNI AMX -> (none)*"])


def test_portable_snapshot_where_portable_cannot_run_is_not_comparable(fake: pytest.Pytester) -> None:
    _record(fake, {"numerics": "portable-v1"})
    why = "portable needs x86-64 with AVX2+FMA; torch reports DEFAULT on aarch64"
    _answers(fake, "Paris, France", {"numerics": "native", "cpu": "DEFAULT", "numerics_note": why})
    result = fake.runpytest("--llm-model=fake:a", "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*was recorded with portable-v1 numerics; this machine runs native "
                                 f"numerics: not comparable (no portable numerics here: {why})*"])


def test_not_comparable_rules() -> None:
    from pytest_llmcheck.snapshots.extension import not_comparable

    assert not_comparable(AMX, AMX) is None
    assert not_comparable({"numerics": "portable-v1"}, {"numerics": "portable-v1"}) is None
    assert not_comparable(AMX, {"numerics": "portable-v1"}) is None  # a change: fails
    assert not_comparable({"numerics": "portable-v1"}, AMX) is None  # native by choice: fails
    assert not_comparable({"engine": "openai"}, {"engine": "openai"}) is None  # nothing said: compared
    itrex = {"numerics": "native", "cpu": "avx512_vnni+avx512f+avx2",
             "numerics_note": "ITREX's kernels pick by CPU"}
    assert not_comparable({"cpu": "avx512_vnni+avx512f+avx_vnni+avx2"}, itrex) == (
        "was recorded with native numerics on CPU 'avx512_vnni+avx512f+avx_vnni+avx2'; this CPU is "
        "'avx512_vnni+avx512f+avx2': not comparable (no portable numerics here: ITREX's kernels pick by CPU)"
    )


# -- (f) SmolLM2: one answer on every stand-in CPU and thread count; native differs (the control)

ANSWERS_TEST = """\
import json, os

PROMPTS = json.loads(os.environ["PROMPTS"])


def test_answers(llm):
    answers = {key: llm.ask(prompt).text for key, prompt in PROMPTS.items()}
    with open(os.environ["OUT_FILE"], "w", encoding="utf-8") as f:
        json.dump({"answers": answers, "fingerprint": llm.fingerprint()}, f, ensure_ascii=False)
"""
# The riddles whose native answers differ between torch's AVX-512 and AVX2 kernels on an AMD
# EPYC (riddle-4 from its first tokens, riddle-2 after about a dozen), at 32 new tokens.
CONTROL_RIDDLES = ("riddle-2", "riddle-4")


@pytest.mark.slow
def test_smollm2_portable_answers_hold_across_stand_in_cpus_and_threads(tmp_path: Path) -> None:
    import yaml

    questions = yaml.safe_load(RIDDLES.read_text(encoding="utf-8"))["questions"]
    prompts = {q["id"]: q["prompt"] for q in questions if q["id"] in CONTROL_RIDDLES}
    (tmp_path / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")
    (tmp_path / "test_answers.py").write_text(ANSWERS_TEST, encoding="utf-8")

    def answers(name: str, *args: str, **env: str | None) -> dict[str, Any]:
        out = tmp_path / f"{name}.json"
        result = run_pytest(tmp_path, "--llm-model=smollm2", "--llm-max-new-tokens=32", *args,
                            env=user_env(OUT_FILE=str(out), PROMPTS=json.dumps(prompts), **env))
        assert result.returncode == 0, f"{name}: {result.stdout[-3000:]}"
        data: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
        return data

    portable = {
        "avx512, 1 thread": answers("p-avx512", "--llm-threads=1", ATEN_CPU_CAPABILITY="avx512"),
        "avx2, 3 threads": answers("p-avx2", "--llm-threads=3", ATEN_CPU_CAPABILITY="avx2"),
        "default env, 2 threads": answers("p-default", "--llm-threads=2"),
    }
    first = next(iter(portable.values()))["answers"]
    for name, data in portable.items():
        assert data["answers"] == first, name
        assert data["fingerprint"]["numerics"] == "portable-v1", name
        assert "cpu" not in data["fingerprint"], name
    # the control: native answers do differ between the kernels portable mode stands in for
    if not _native_level().startswith("AVX512"):
        pytest.skip("the native control needs a CPU with AVX-512 (torch here picks AVX2 anyway)")
    native = answers("n-default", "--llm-numerics=native")
    capped = answers("n-avx2", "--llm-numerics=native", ATEN_CPU_CAPABILITY="avx2")
    assert native["fingerprint"]["cpu"].startswith("AVX512")
    assert capped["fingerprint"]["cpu"].startswith("AVX2")
    assert native["answers"] != capped["answers"], "no difference in the control: the matrix proves nothing"
