"""The itrex engine: ITREX INT4 in its own pinned Python, driven through a worker process.

Most tests run the real worker in the real ITREX environment, which ``.ci/run`` builds
with ``llmcheck env create itrex``. The environment is found in the default cache or
through $LLMCHECK_ITREX_PYTHON; in CI a missing environment fails these tests, it never
skips them. The lifecycle tests read the process table: no worker may outlive its pytest,
however that pytest ends.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from pytest_llmcheck.cli.commands import main
from pytest_llmcheck.config.registry import resolve
from pytest_llmcheck.engines.base import GenerationConfig
from pytest_llmcheck.engines.itrex import env
from pytest_llmcheck.engines.itrex.compat import legacy_config, legacy_tokenizer, legacy_view
from pytest_llmcheck.engines.itrex.engine import WORKER, ItrexEngine, WorkerError
from pytest_llmcheck.storage.cache import Cache, default_cache_dir

ROOT = Path(__file__).resolve().parents[1]
SEED_MODELS = [ROOT.parent / "shared" / "seed-models", Path("/work/shared/seed-models")]
QUESTION = "Write three sentences about the city of Paris."


# -- fixtures


@pytest.fixture(scope="session")
def itrex_python() -> str:
    """The ITREX environment's interpreter: $LLMCHECK_ITREX_PYTHON or the default cache's env."""
    try:
        return str(env.locate(default_cache_dir()).path)
    except env.ItrexEnvError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI must build the ITREX environment first (llmcheck env create itrex): {exc}")
        pytest.skip(f"no ITREX environment on this machine: {exc}")


@pytest.fixture
def inner(pytester: pytest.Pytester, itrex_python: str, tiny_model: Path) -> pytest.Pytester:
    """An inner project that runs the tiny model on the itrex engine, with a private cache."""
    pytester.makeini(
        textwrap.dedent(
            f"""
            [pytest]
            addopts = -p no:cacheprovider
            llmcheck_cache_dir = {pytester.path / "cache"}
            llmcheck_itrex_python = {itrex_python}
            llmcheck_model = {tiny_model}@itrex
            llmcheck_threads = 1
            llmcheck_max_new_tokens = 12
            """
        )
    )
    pytester.makepyfile(
        test_itrex_inner="""
        import json, os

        def test_answer(llm):
            info = {"pytest": os.getpid(), "worker": llm.engine.worker.pid}
            with open(os.environ["ITREX_INFO"], "w") as f:
                json.dump(info, f)
            answer = llm.ask("明明和白白谁喜欢谁？")
            with open(os.environ["ITREX_ANSWERS"], "ab") as f:
                f.write(answer.text.encode("utf-8") + b"\\0")
            assert answer.new_tokens == 12
            with open(os.environ["ITREX_INFO"] + ".times", "a") as f:  # the worker computes: its CPU time
                f.write(json.dumps([answer.seconds, answer.cpu_seconds]) + "\\n")

        def test_second(llm):
            assert llm.ask("What is the capital of France?").new_tokens == 12
        """
    )
    pytester._monkeypatch.setenv("ITREX_INFO", str(pytester.path / "info.json"))
    pytester._monkeypatch.setenv("ITREX_ANSWERS", str(pytester.path / "answers.bin"))
    return pytester


def _state(pid: int) -> str | None:
    """The process's state letter from /proc (None when it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def running(pid: int) -> bool:
    return _state(pid) not in (None, "Z")  # a zombie has ended; only its exit status is left


def workers_of(parent: int) -> list[int]:
    """Live worker processes started by the pytest process ``parent`` (from their command line)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        ours = str(WORKER).encode() in args and b"--parent" in args
        if ours and args[args.index(b"--parent") + 1] == str(parent).encode() and running(int(proc.name)):
            found.append(int(proc.name))
    return found


def wait_for(predicate: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.1)
    return False


def start_inner(pytester: pytest.Pytester, *args: str, fault: str | None = None) -> subprocess.Popen[str]:
    environ = {**os.environ, "PYTHONPATH": str(ROOT)}
    if fault:
        environ["LLMCHECK_ITREX_FAULT"] = fault
    return subprocess.Popen(
        [sys.executable, "-m", "pytest", "-v", *args],
        cwd=pytester.path, env=environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        # Ctrl-C as in a terminal: a run started in the background (`cmd &` in a script) inherits SIGINT
        # ignored, and Python then installs no KeyboardInterrupt handler in the inner pytest
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def inner_info(pytester: pytest.Pytester, proc: subprocess.Popen[str]) -> dict[str, int]:
    info = pytester.path / "info.json"
    assert wait_for(lambda: info.is_file() or proc.poll() is not None, 120), "the inner session never started"
    assert info.is_file(), proc.communicate()[0]
    data: dict[str, int] = json.loads(info.read_text())
    return data


# -- the environment and options, without the ITREX stack


def test_missing_environment_is_one_line_naming_the_command(
    pytester: pytest.Pytester, tiny_model: Path
) -> None:
    pytester.makepyfile("def test_a(llm):\n    llm.ask('hi')\n")
    pytester._monkeypatch.delenv(env.PYTHON_ENV, raising=False)
    cache = pytester.path / "empty-cache"
    result = pytester.runpytest(
        f"--llm-model={tiny_model}@itrex", f"--llm-cache-dir={cache}", "-p", "no:cacheprovider"
    )
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [f"model 'tiny-llama@itrex' * failed to load: ItrexEnvError: the itrex engine needs its own Python "
         f"environment *; create it with: llmcheck env create itrex --cache-dir {cache}"]
    )
    assert "Traceback" not in result.stdout.str()


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("--llm-itrex-quant=int8", "--llm-itrex-quant: invalid value 'int8'; allowed: int4, none"),
        ("--llm-itrex-timeout=soon", "--llm-itrex-timeout: invalid value 'soon'; expected seconds > 0"),
        ("--llm-itrex-python=/no/such", "--llm-itrex-python: /no/such is not an executable Python"),
    ],
)
def test_bad_option_values_are_one_line(
    pytester: pytest.Pytester, tiny_model: Path, option: str, message: str
) -> None:
    pytester.makepyfile("def test_a(llm):\n    llm.ask('hi')\n")
    result = pytester.runpytest(
        f"--llm-model={tiny_model}@itrex", option, f"--llm-cache-dir={pytester.path}/c",
        "-p", "no:cacheprovider",
    )
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([f"model 'tiny-llama@itrex' * failed to load: *{message}*"])


def test_legacy_config_carries_rope_theta_and_dtype() -> None:
    new = {"model_type": "llama", "dtype": "bfloat16",
           "rope_parameters": {"rope_theta": 100000.0, "rope_type": "default"}}
    old, notes = legacy_config(new)
    assert old["rope_theta"] == 100000.0
    assert "rope_parameters" not in old
    assert old["torch_dtype"] == "bfloat16"
    assert "rope_scaling" not in old
    assert notes == ["rope_theta=100000.0", "torch_dtype"]
    scaled, _ = legacy_config(
        {"rope_parameters": {"rope_theta": 1e6, "rope_type": "linear", "factor": 4.0}}
    )
    assert scaled["rope_theta"] == 1e6
    assert scaled["rope_scaling"] == {"rope_type": "linear", "type": "linear", "factor": 4.0}
    per_layer, _ = legacy_config({"rope_parameters": {"full_attention": {"rope_theta": 5.0},
                                                      "sliding_attention": {"rope_theta": 1.0}}})
    assert per_layer["rope_theta"] == 5.0
    as_is = {"model_type": "qwen", "rotary_emb_base": 10000, "torch_dtype": "bfloat16"}
    assert legacy_config(as_is) == (as_is, [])


def test_legacy_tokenizer_writes_merges_as_strings() -> None:
    new = {"model": {"type": "BPE", "merges": [["Ġ", "t"], ["h", "e"]]}}
    old, notes = legacy_tokenizer(new)
    assert old["model"]["merges"] == ["Ġ t", "h e"]
    assert notes == ["bpe merges"]
    assert legacy_tokenizer({"model": {"type": "BPE", "merges": [["a b", "c"]]}})[1] == []  # not expressible


def test_legacy_view_links_weights_and_rewrites_json(tiny_model: Path, tmp_path: Path) -> None:
    notes = legacy_view(tiny_model, tmp_path / "view")
    assert notes == ["rope_theta=10000.0", "torch_dtype", "chat_template", "tokenizer_class", "bpe merges"]
    weights = tmp_path / "view" / "model.safetensors"
    assert weights.is_symlink()
    assert weights.resolve() == (tiny_model / "model.safetensors").resolve()
    tok = json.loads((tmp_path / "view" / "tokenizer_config.json").read_text())
    assert tok["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert "<|assistant|>" in tok["chat_template"]


def test_seed_model_without_its_code_is_one_clear_line(tmp_path: Path) -> None:
    folder = next((p / "qwen-7b-chat-tiny" for p in SEED_MODELS if (p / "qwen-7b-chat-tiny").is_dir()), None)
    if folder is None:
        pytest.fail(f"the seed fixtures are missing: looked in {', '.join(map(str, SEED_MODELS))}")
    ref = resolve(f"{folder}@itrex")
    python = env.ItrexPython(Path(sys.executable), "test", {})
    with pytest.raises(WorkerError, match=r"ships its own modeling code; allow it with "
                                          r"--llm-trust-remote-code=qwen-7b-chat-tiny$"):
        ItrexEngine.start(ref, folder, python, workdir=tmp_path / "w1")
    with pytest.raises(WorkerError, match=r"runs its own modeling code, but configuration_qwen.py, "
                                          r"modeling_qwen.py, tokenization_qwen.py are not in"):
        ItrexEngine.start(replace(ref, trust_remote_code=True), folder, python, workdir=tmp_path / "w2")


def test_env_create_never_leaves_a_half_built_environment(tmp_path: Path) -> None:
    """A build killed midway (SIGKILL) leaves only a temp folder: never found, cleaned later."""
    slow = tmp_path / "slow-python"
    slow.write_text("#!/bin/sh\nmkdir -p \"$3\"; echo $$ > \"$3/started\"; exec sleep 60\n")
    slow.chmod(0o755)
    root = tmp_path / "cache"
    cmd = [sys.executable, "-m", "pytest_llmcheck.cli", "env", "create", "itrex", "--python", str(slow),
           "--cache-dir", str(root)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    envs = root / env.KIND
    assert wait_for(lambda: list(envs.glob("itrex-*.tmp-*/venv/started")), 60), proc.communicate()
    proc.kill()
    proc.wait()
    sleeper = next(envs.glob("itrex-*.tmp-*/venv/started"))
    with contextlib.suppress(ProcessLookupError, ValueError):
        os.kill(int(sleeper.read_text()), signal.SIGKILL)
    assert [p for p in envs.iterdir() if ".tmp-" in p.name]  # the half-built folder is still there...
    assert not env.env_entry(Cache(root)).ready  # ...but it is never taken for the environment
    with pytest.raises(env.ItrexEnvError, match="create it with: llmcheck env create itrex"):
        env.locate(root)
    assert main(["env", "list", "--cache-dir", str(root)]) == 0
    # A failed build (the venv step fails) leaves nothing, and says so in one line.
    failed = subprocess.run([*cmd[:-4], "--python", "/bin/false", "--cache-dir", str(root)],
                            cwd=ROOT, capture_output=True, text=True)
    assert failed.returncode == 1
    assert failed.stderr.strip() == (
        "llmcheck: creating the venv (/bin/false) failed with exit status 1; "
        "nothing of the environment was kept"
    )
    assert not [p for p in envs.iterdir() if ".tmp-" in p.name]  # the dead build was cleaned up too
    assert main(["env", "remove", "itrex", "--cache-dir", str(root)]) == 0



@pytest.mark.skipif(os.name == "nt", reason="a POSIX venv layout (bin/)")
def test_the_base_python_of_a_venv_made_from_a_venv_is_the_installation(tmp_path: Path) -> None:
    """The ITREX venv is built from the installed interpreter, never from a venv's link to it
    (that venv could move or go), even when pytest runs in a venv made from another venv."""
    import sysconfig

    outer, inner = tmp_path / "outer", tmp_path / "inner"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(outer)], check=True, timeout=120)
    subprocess.run([str(outer / "bin" / "python"), "-m", "venv", "--without-pip", str(inner)], check=True,
                   timeout=120)
    paths = os.pathsep.join([str(ROOT), sysconfig.get_paths()["purelib"]])  # this checkout, its packages
    done = subprocess.run(
        [str(inner / "bin" / "python"), "-c",
         "from pytest_llmcheck.engines.itrex.env import base_interpreter; print(base_interpreter())"],
        capture_output=True, text=True, check=True, timeout=120, env={**os.environ, "PYTHONPATH": paths},
    )
    found = Path(done.stdout.strip())
    home = next(line.split("=", 1)[1].strip() for line in (inner / "pyvenv.cfg").read_text().splitlines()
                if line.startswith("home"))
    assert found.parent == Path(home)  # the installation's bin/, as venv itself recorded it
    assert found.is_file()
    assert not found.is_relative_to(tmp_path)
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert found.name == f"python{version}"

# -- the real worker


def test_tiny_model_int4_through_pytest_twice_byte_identical(inner: pytest.Pytester) -> None:
    """The first session quantizes and saves the INT4 weights; the second loads them."""
    answers = inner.path / "answers.bin"
    for when in ("[0-9]*.*s", "from cache (built in *s)"):
        result = inner.runpytest_subprocess()
        result.assert_outcomes(passed=2)
        result.stdout.fnmatch_lines([
            "llmcheck: tiny-llama@itrex ready in *itrex rtn int4: 14/14 linear layers "
            f"(int4_clip, group 32, compute int8), {when}",
        ])
        info = json.loads((inner.path / "info.json").read_text())
        assert not running(info["worker"])
        assert workers_of(info["pytest"]) == []
    first, second, rest = answers.read_bytes().split(b"\0")
    assert len(first) > 12
    # CPU time is the worker's, which computes at 1 thread (pytest's own process only waits on a pipe)
    for line in (inner.path / "info.json.times").read_text().splitlines():
        seconds, cpu = json.loads(line)
        assert cpu is not None
        assert cpu >= 0.05 * seconds, (seconds, cpu)  # pytest's waiting would be ~0.001x
    assert first == second
    assert rest == b""
    entries = [e for e in Cache(inner.path / "cache").list() if e["kind"] == "itrex-int4"]
    assert len(entries) == 1
    assert entries[0]["ready"]
    # a damaged entry is not trusted: it is removed and built again, with the same answer
    (Path(str(entries[0]["path"])) / "model.safetensors").write_bytes(b"not safetensors")
    result = inner.runpytest_subprocess()
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["llmcheck: tiny-llama@itrex ready in *compute int8), [0-9]*.*s"])
    assert answers.read_bytes().split(b"\0")[2] == first
    (entry,) = [e for e in Cache(inner.path / "cache").list() if e["kind"] == "itrex-int4"]
    assert entry["ready"]
    assert (Path(str(entry["path"])) / "model.safetensors").stat().st_size > 1000
    # without the cache it quantizes again, and answers the same
    result = inner.runpytest_subprocess("--llm-no-cache")
    result.stdout.fnmatch_lines(["llmcheck: tiny-llama@itrex ready in *compute int8), [0-9]*.*s"])
    assert answers.read_bytes().split(b"\0")[3] == first


MINI_CONFIG = """
from transformers import LlamaConfig


class MiniConfig(LlamaConfig):
    pass
"""
MINI_MODEL = """
from transformers import LlamaForCausalLM

from .configuration_mini import MiniConfig  # relative imports, as Qwen's and ChatGLM's code has
from .mini_utils import NAME


class MiniForCausalLM(LlamaForCausalLM):
    config_class = MiniConfig
    mini_name = NAME
"""


def test_model_with_its_own_code_is_cached_and_reloaded(
    pytester: pytest.Pytester, itrex_python: str, tiny_model: Path
) -> None:
    """A model whose config names its own code: the saved INT4 copy carries the code and
    loads through it (from the cache's temp folder too, whose name is no module name)."""
    folder = pytester.path / "mini.llama"
    shutil.copytree(tiny_model, folder)
    (folder / "configuration_mini.py").write_text(MINI_CONFIG, encoding="utf-8")
    (folder / "modeling_mini.py").write_text(MINI_MODEL, encoding="utf-8")
    (folder / "mini_utils.py").write_text("NAME = 'mini'\n", encoding="utf-8")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "configuration_mini.MiniConfig",
                          "AutoModelForCausalLM": "modeling_mini.MiniForCausalLM"}
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    pytester.makepyfile(
        """
        import os
        def test_answer(llm):
            assert llm.engine.loaded["model_class"] == "MiniForCausalLM"
            with open(os.environ["ITREX_ANSWERS"], "ab") as f:
                f.write(llm.ask("明明和白白谁喜欢谁？").text.encode("utf-8") + b"\\0")
        """
    )
    answers = pytester.path / "answers.bin"
    args = [f"--llm-model={folder}@itrex", "--llm-trust-remote-code=mini.llama",
            f"--llm-itrex-python={itrex_python}", f"--llm-cache-dir={pytester.path / 'cache'}",
            "--llm-threads=1", "--llm-max-new-tokens=8", "-p", "no:cacheprovider"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ITREX_ANSWERS", str(answers))
        for when in ("[0-9]*.*s", "from cache (built in *s)"):
            result = pytester.runpytest_subprocess(*args)
            result.assert_outcomes(passed=1)
            result.stdout.fnmatch_lines(
                [f"mini.llama@itrex (*): loaded 1x in *; itrex rtn int4: 14/14 *, {when}"]
            )
    first, second, _ = answers.read_bytes().split(b"\0")
    assert first == second
    assert len(first) > 4


def test_zero_converted_layers_is_a_clear_error(itrex_python: str, tiny_model: Path, tmp_path: Path) -> None:
    """GPT-2 keeps its weights in Conv1D modules: ITREX converts nothing, and says so."""
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = tmp_path / "tiny-gpt2"
    config = GPT2Config(n_embd=64, n_layer=1, n_head=2, vocab_size=400, n_positions=64,
                        bos_token_id=0, eos_token_id=0)
    GPT2LMHeadModel(config).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(tiny_model / name, folder / name)
    python = env.ItrexPython(Path(itrex_python), "test", {})
    with pytest.raises(WorkerError, match=r"load failed: RuntimeError: ITREX converted 0 of 0 linear layers"):
        ItrexEngine.start(resolve(f"{folder}@itrex"), folder, python, threads=1, workdir=tmp_path / "w")


def test_fp32_parity_with_the_transformers_engine_on_converted_smollm2(
    itrex_python: str, tmp_path: Path
) -> None:
    """The rope trap: the worker must answer exactly as transformers 5 does on the same fp32 weights.

    The converted folder's config.json says ``rope_parameters: {rope_theta: 100000}``; without
    the rewrite transformers 4.40 uses 10000, and the answer changes (the control below).
    """
    from pytest_llmcheck.config.settings import Settings
    from pytest_llmcheck.engines.itrex.engine import load_itrex
    from pytest_llmcheck.engines.transformers.loader import load_transformers

    config = GenerationConfig(max_new_tokens=32, threads=1)
    settings = Settings(cache_dir=tmp_path / "cache", quant="none", threads=1, numerics="native",
                        engine_options={"itrex-python": itrex_python, "itrex-quant": "none"})
    reference = load_transformers(resolve("smollm2"), settings)
    expected = reference.generate(QUESTION, system=None, config=config)
    reference.close()

    engine = load_itrex(resolve("smollm2@itrex"), settings)  # the same `converted` cache entry
    try:
        assert engine.facts.from_cache
        assert "rope_theta=100000.0" in engine.rewrites
        got = engine.generate(QUESTION, system=None, config=config)
    finally:
        engine.close()
    assert expected.new_tokens == 32
    assert got.prompt_tokens == expected.prompt_tokens
    assert got.text == expected.text

    # Control: the same folder with no RoPE base in its config, as 4.40 reads the unconverted one.
    converted = next(p for p in (tmp_path / "cache" / "converted").iterdir() if p.is_dir())
    wrong = tmp_path / "no-rope"
    shutil.copytree(converted, wrong, symlinks=True)
    raw = json.loads((wrong / "config.json").read_text())
    raw.pop("rope_parameters")
    (wrong / "config.json").write_text(json.dumps(raw))
    python = env.ItrexPython(Path(itrex_python), "test", {})
    control = ItrexEngine.start(resolve(f"{wrong}@itrex"), wrong, python, quant="none", threads=1)
    try:
        assert control.generate(QUESTION, system=None, config=config).text != expected.text
    finally:
        control.close()


# -- lifecycle: the worker never outlives pytest


@pytest.fixture
def no_orphans() -> Iterator[list[int]]:
    """Worker pids a test saw; each must be gone at its end."""
    seen: list[int] = []
    yield seen
    for pid in seen:
        if running(pid):
            os.kill(pid, signal.SIGKILL)
            pytest.fail(f"itrex worker {pid} outlived its pytest")


def test_ctrl_c_of_pytest_stops_the_worker(inner: pytest.Pytester, no_orphans: list[int]) -> None:
    proc = start_inner(inner, "-k", "test_answer", fault="hang")
    info = inner_info(inner, proc)
    no_orphans.append(info["worker"])
    assert running(info["worker"])
    time.sleep(1.0)  # the worker is inside generate now
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2, out  # pytest's "interrupted"
    assert "KeyboardInterrupt" in out
    assert wait_for(lambda: not running(info["worker"]), 15)
    assert workers_of(info["pytest"]) == []


def test_kill_9_of_pytest_takes_the_worker_along(inner: pytest.Pytester, no_orphans: list[int]) -> None:
    proc = start_inner(inner, "-k", "test_answer", fault="hang")
    info = inner_info(inner, proc)
    no_orphans.append(info["worker"])
    proc.kill()
    proc.wait()
    assert wait_for(lambda: not running(info["worker"]), 15), "the worker outlived a SIGKILLed pytest"


def test_worker_crash_fails_the_test_in_one_line_with_its_log(
    inner: pytest.Pytester, no_orphans: list[int]
) -> None:
    inner._monkeypatch.setenv("LLMCHECK_ITREX_FAULT", "crash")
    result = inner.runpytest_subprocess("-rA")
    info = json.loads((inner.path / "info.json").read_text())
    no_orphans.append(info["worker"])
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines([
        f"model 'tiny-llama@itrex': the itrex worker (pid {info['worker']}) died of SIGKILL "
        "during generate",
        "*Captured llmcheck engine call*",
        f"model 'tiny-llama@itrex': the itrex worker (pid {info['worker']}) is not running: "
        "died of SIGKILL",
    ])
    assert not running(info["worker"])
    assert workers_of(info["pytest"]) == []


def test_worker_exception_and_timeout_are_one_line_never_a_hang(
    inner: pytest.Pytester, no_orphans: list[int]
) -> None:
    inner._monkeypatch.setenv("LLMCHECK_ITREX_FAULT", "raise")
    result = inner.runpytest_subprocess("-k", "test_answer")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "model 'tiny-llama@itrex': itrex worker: generate failed: RuntimeError: injected fault "
        "for a test",
        "*Captured llmcheck engine call*",
        "Traceback (most recent call last):",
        "*in _fault*",
    ])
    inner._monkeypatch.setenv("LLMCHECK_ITREX_FAULT", "hang")
    start = time.monotonic()
    result = inner.runpytest_subprocess("-k", "test_answer", "--llm-itrex-timeout=3")
    info = json.loads((inner.path / "info.json").read_text())
    no_orphans.append(info["worker"])
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "model 'tiny-llama@itrex': the itrex worker gave no answer to generate within 3s "
        "(--llm-itrex-timeout); it was stopped",
    ])
    assert time.monotonic() - start < 90
    assert not running(info["worker"])


@pytest.mark.parametrize("name", ["qwen-7b-chat-tiny", "chatglm3-6b-tiny"])
def test_seed_fixture_through_its_own_chat_reproduces_the_reference(
    name: str, itrex_python: str, tmp_path: Path
) -> None:
    """The seed recipe's answer path: the model's own ``chat()`` in the worker, fp32, 1 thread.

    The fixtures ship no .py files and their code may not be copied into this project, so
    this runs where $LLMCHECK_SEED_CODE_DIR holds ``<fixture name>/*.py`` (the model repos'
    own code); without it, only the one-line error above is checked.
    """
    code_root = os.environ.get("LLMCHECK_SEED_CODE_DIR", "")
    source = next((p / name for p in SEED_MODELS if (p / name).is_dir()), None)
    if source is None:
        pytest.fail(f"the seed fixture {name} is missing: looked in {', '.join(map(str, SEED_MODELS))}")
    if not code_root or not list((Path(code_root) / name).glob("*.py")):
        pytest.skip(f"set LLMCHECK_SEED_CODE_DIR to a folder with {name}/*.py (the model repo's own code)")
    folder = tmp_path / name
    folder.mkdir()
    for path in [*source.iterdir(), *(Path(code_root) / name).glob("*.py")]:
        (folder / path.name).symlink_to(path)
    reference = json.loads((source / "reference.json").read_text())
    ref = replace(resolve(f"{folder}@itrex"), trust_remote_code=True)
    engine = ItrexEngine.start(ref, folder, env.ItrexPython(Path(itrex_python), "test", {}), quant="none")
    try:
        assert engine.loaded["chat_mode"] == "chat"
        for riddle in reference["riddles"]:
            config = GenerationConfig(max_new_tokens=16)
            out = engine.generate_raw(riddle["prompt"], system=None, config=config, return_ids=True)
            assert out["prompt_tokens"] == len(riddle["prompt_ids"])
            assert out["ids"] == [i for i in riddle["greedy_ids"] if i not in reference["stop_ids"]]
    finally:
        engine.close()
