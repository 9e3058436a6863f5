"""Secrets never leave the request: not in pytest's output, not in any file a run writes.

A secret is planted in a model reference (URL userinfo and a credential-like query value)
and every line of the inner session's stdout/stderr and every file under its folder
(report.json/.md/.html, JUnit XML, pytest-benchmark JSON, snapshots, the cache, the step
summary) is searched for it. The ``openai`` engine refuses credentials in a URL with one
line; a plugin engine's reference keeps working, shown with the credentials masked. The
ITREX worker, which may run a model's own code, gets an allow-listed environment.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from pytest_llmcheck.config.registry import ModelRefError, resolve
from pytest_llmcheck.engines.itrex.engine import worker_env
from pytest_llmcheck.text.redact import has_credentials, redact
from tests import fake_engine
from tests.conftest import itrex_worker_env
from tests.openai_standin import StandIn

REFUSAL = (
    "openai: the server URL carries credentials (user:password@ or api_key=...); put the key in an "
    "environment variable and name it with --llm-openai-key-env"
)
SUITE = """\
questions:
  - id: q1
    prompt: "What is the capital?"
  - id: q2
    prompt: "What is 2 + 2?"
"""


def secrets() -> tuple[str, str]:
    """Two fresh secrets: one for a URL's password, one for its api_key."""
    return f"pw-{uuid.uuid4().hex}", f"key-{uuid.uuid4().hex}"


def leaks(pytester: pytest.Pytester, result: pytest.RunResult, *planted: str) -> list[str]:
    """Where a planted secret shows: output lines, and the names and bytes of everything
    under the run's folder."""
    lines = result.outlines + result.errlines
    found = [f"output: {line}" for line in lines if any(s in line for s in planted)]
    for path in pytester.path.rglob("*"):
        name = path.relative_to(pytester.path).as_posix()
        if any(s in name for s in planted):  # a snapshot file is named after its test id
            found.append(f"file name: {name}")
        elif path.is_file() and any(s.encode() in path.read_bytes() for s in planted):
            found.append(f"file: {name}")
    return found


def artifacts(pytester: pytest.Pytester, *, benchmark: bool = True) -> list[str]:
    """The options that make a run write every artifact CI uploads, into ``out/`` (no
    benchmark JSON for a run without answers: pytest-benchmark would only warn)."""
    pytester._monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(pytester.path / "out" / "step-summary.md"))
    (pytester.path / "out").mkdir(exist_ok=True)
    bench = ["--benchmark-json=out/bench.json"] if benchmark else []
    return ["--llm-report=out", "--junitxml=out/junit.xml", *bench, "-v", "-rA"]


# -- the one place: redact


def test_redact_masks_userinfo_and_credential_query_values_and_nothing_else() -> None:
    assert redact("openai:http://user:S3CRET@127.0.0.1:9/v1?api_key=K#m") == (
        "openai:http://***@127.0.0.1:9/v1?api_key=***#m"
    )
    assert redact("https://tok@host/x?a=1&Token=t&API-KEY=k&access_token=x&sig=s;password=p&page=2") == (
        "https://***@host/x?a=1&Token=***&API-KEY=***&access_token=***&sig=***;password=***&page=2"
    )
    assert redact("cannot connect to http://u:p@ss@h:1/v1/models?secret=z (refused)") == (
        "cannot connect to http://***@h:1/v1/models?secret=*** (refused)"
    )
    assert redact("s3://b/o?X-Amz-Signature=abc&X-Amz-Credential=AKIA") == (
        "s3://b/o?X-Amz-Signature=***&X-Amz-Credential=***"
    )
    for plain in ("http://127.0.0.1:8080/v1", "https://h/v1?model=qwen&page=2#frag", "hf:owner/name@main",
                  "/models/tiny.gguf", "smollm2@llamacpp", "who likes whom?", "mail me@example.com"):
        assert redact(plain) == plain
        assert not has_credentials(plain)
    assert has_credentials("http://u@h/")
    assert has_credentials("http://h/?auth=x")


def test_reference_errors_and_names_never_carry_the_secret() -> None:
    password, key = secrets()
    for spec in (f"hf:https://u:{password}@h/x?token={key}", f"nosuch:http://u:{password}@h/?key={key}"):
        with pytest.raises(ModelRefError) as info:
            resolve(spec)
        assert password not in str(info.value), str(info.value)
        assert key not in str(info.value), str(info.value)
    with pytest.raises(ModelRefError) as info:
        resolve(f"openai:http://user:{password}@127.0.0.1:9/v1?api_key={key}#m")
    assert str(info.value) == REFUSAL


# -- whole runs


def test_openai_reference_with_credentials_is_refused_in_one_line_and_written_nowhere(
    fake: pytest.Pytester,
) -> None:
    password, key = secrets()
    fake.makefile(".llm.yaml", quiz=SUITE)
    result = fake.runpytest(f"--llm-model=openai:http://user:{password}@127.0.0.1:9/v1?api_key={key}#m",
                            *artifacts(fake))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert [line for line in result.errlines if line.strip()] == [f"ERROR: --llm-model: {REFUSAL}"]
    assert leaks(fake, result, password, key) == []


def test_openai_url_option_with_credentials_fails_each_test_in_one_line(fake: pytest.Pytester) -> None:
    """``--llm-openai-url`` is not part of the reference: its refusal is the load error of
    each test, and nothing reaches the server (it would have answered)."""
    password, key = secrets()
    fake.makefile(".llm.yaml", quiz=SUITE)
    with StandIn() as standin:
        url = standin.url.replace("http://", f"http://user:{password}@") + f"?api_key={key}"
        result = fake.runpytest(
            "--llm-model=openai:stand-in", f"--llm-openai-url={url}", *artifacts(fake, benchmark=False)
        )
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(
        [f"*model 'stand-in@openai' (openai:stand-in) failed to load: OpenAIError: {REFUSAL}"]
    )
    assert standin.requests == []
    assert (fake.path / "out" / "report.json").is_file()
    assert leaks(fake, result, password, key) == []


def test_plugin_engine_reference_with_credentials_runs_and_is_shown_masked(fake: pytest.Pytester) -> None:
    """A scheme another plugin owns may take a URL: it gets the reference whole, while test
    ids, snapshot files, progress lines, the summary, fingerprints and every artifact show it
    masked."""
    password, key = secrets()
    fake.makefile(".llm.yaml", quiz=SUITE)
    fake.makepyfile(test_py="def test_plain_llm(llm):\n    llm.ask('What is the capital?')\n")
    spec = f"fake:http://user:{password}@models.example/m?api_key={key}"
    result = fake.runpytest(f"--llm-model={spec}", "--snapshot-update", *artifacts(fake))
    result.assert_outcomes(passed=3)
    assert leaks(fake, result, password, key) == []
    loaded = fake_engine.LOADS
    assert loaded == [spec.split(":", 1)[1]]  # the engine got the reference as the user wrote it
    result.stdout.fnmatch_lines(["*quiz.llm.yaml::q1[[]http-models.example-m-api_key[]] PASSED*",
                                 "*(fake:http://***@models.example/m?api_key=***)*"])
    written = {p.relative_to(fake.path).as_posix() for p in fake.path.rglob("*") if p.is_file()}
    assert {"out/report.json", "out/report.md", "out/report.html", "out/junit.xml", "out/bench.json",
            "out/step-summary.md"} <= written
    assert any("__snapshots__" in name for name in written)


# -- the ITREX worker's environment


def test_itrex_worker_gets_an_allow_listed_environment() -> None:
    environ = {
        "PATH": "/usr/bin", "HOME": "/home/me", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "TMPDIR": "/tmp/x",
        "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2", "KMP_AFFINITY": "granularity=fine",
        "GOMP_SPINCOUNT": "3000", "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_VERBOSE": "0",
        "LLMCHECK_ITREX_FAULT": "crash",
        "HF_TOKEN": "hf_x", "OPENAI_API_KEY": "sk-x", "AWS_SECRET_ACCESS_KEY": "aws",
        "AWS_ACCESS_KEY_ID": "id", "GITHUB_TOKEN": "gh", "GH_TOKEN": "gh", "DB_PASSWORD": "pw",
        "ANTHROPIC_API_KEY": "k",
        "LLMCHECK_HUB_TOKEN": "t", "MY_SECRET": "s", "SSH_AUTH_SOCK": "/run/agent", "HF_HUB_OFFLINE": "0",
    }
    env = worker_env(environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    assert env == {
        "PATH": "/usr/bin", "HOME": "/home/me", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "TMPDIR": "/tmp/x",
        "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2", "KMP_AFFINITY": "granularity=fine",
        "GOMP_SPINCOUNT": "3000", "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_VERBOSE": "0",
        "LLMCHECK_ITREX_FAULT": "crash", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
    }


def test_itrex_engine_starts_its_worker_with_that_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """ItrexEngine.start builds the worker's environment with ``worker_env``, not from the
    whole of ``os.environ``."""
    monkeypatch.setenv("HF_TOKEN", "hf_planted")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-planted")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    seen = itrex_worker_env(monkeypatch, tmp_path)
    assert seen["OMP_NUM_THREADS"] == "1"
    assert seen["HF_HUB_OFFLINE"] == "1"
    assert "HF_TOKEN" not in seen
    assert "OPENAI_API_KEY" not in seen
