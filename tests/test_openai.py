"""The ``openai`` engine against a real server (llama-cpp-python's, on 127.0.0.1) and a stand-in.

The real server, started once for this module with ``--api_key``, serves the embedded
SmolLM2 GGUF: answers through pytest, ``-n 2``, a wrong model name, a bad or missing key,
a server killed in the middle of an answer. The stand-in (tests/openai_standin.py) does
what the real one cannot be made to: 429/5xx, a malformed or stalled stream, a
``system_fingerprint`` that changes.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_llmcheck.config.registry import resolve, smollm2_path
from pytest_llmcheck.config.settings import Settings
from pytest_llmcheck.engines import openai as openai_engine
from pytest_llmcheck.engines.base import GenerationConfig
from pytest_llmcheck.engines.openai import OpenAIError, load_openai
from tests.openai_standin import StandIn, Step

ROOT = Path(__file__).resolve().parents[1]
KEY = "sk-llmcheck-test-5f0c9e"  # what the real server requires; must never be written anywhere
KEY_ENV = "LLMCHECK_TEST_OPENAI_KEY"
SUITE = """\
suite: capitals
questions:
  - id: france
    prompt: "What is the capital of France?"
  - id: italy
    prompt: "What is the capital of Italy?"
  - id: spain
    prompt: "What is the capital of Spain?"
  - id: japan
    prompt: "What is the capital of Japan?"
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LlamaServer:
    """llama-cpp-python's server on a free port; ``stop()`` kills it (also mid-answer)."""

    def __init__(self, log: Path, *, api_key: str | None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.api_key = api_key
        args = [
            sys.executable,
            "-m",
            "pytest_llmcheck.cli.llama_server",
            "--model",
            str(smollm2_path()),
            "--model_alias",
            "smollm2",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--n_threads",
            "1",
            "--n_threads_batch",
            "1",
            "--n_ctx",
            "2048",
            "--seed",
            "0",
            # Queue concurrent requests instead of cutting the running answer off (its default).
            "--interrupt_requests",
            "false",
        ]
        if api_key:
            args += ["--api_key", api_key]
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(args, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        self._wait()

    def _wait(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        request = urllib.request.Request(f"{self.url}/models")
        if self.api_key:
            request.add_header("Authorization", f"Bearer {self.api_key}")
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"llama_cpp.server exited: {self.log.read_text(errors='replace')[-2000:]}")
            try:
                with urllib.request.urlopen(request, timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        self.stop()
        pytest.fail(
            f"llama_cpp.server did not start in {timeout}s: {self.log.read_text(errors='replace')[-2000:]}"
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    """The real server, requiring an API key, for the whole module."""
    running = LlamaServer(tmp_path_factory.mktemp("server") / "server.log", api_key=KEY)
    yield running
    running.stop()


@pytest.fixture
def key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(KEY_ENV, KEY)
    return KEY


def settings(tmp_path: Path, **options: str) -> Settings:
    return Settings(cache_dir=tmp_path / "cache", engine_options={"openai-key-env": KEY_ENV, **options})


def write_ini(pytester: pytest.Pytester, url: str) -> None:
    pytester.makeini(
        textwrap.dedent(
            f"""
            [pytest]
            addopts = -p no:cacheprovider
            llmcheck_cache_dir = {pytester.path / "cache"}
            llmcheck_openai_url = {url}
            llmcheck_openai_key_env = {KEY_ENV}
            llmcheck_max_new_tokens = 12
            llmcheck_threads = 1
            """
        )
    )
    pytester.makefile(".llm.yaml", capitals=SUITE)


# -- the real server


def test_suite_runs_against_the_server_and_the_key_is_written_nowhere(
    pytester: pytest.Pytester, server: LlamaServer, key: str
) -> None:
    write_ini(pytester, server.url)
    result = pytester.runpytest("--llm-model=openai:smollm2", "--llm-report=out", "--snapshot-update", "-v")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(["*capitals.llm.yaml::france[[]smollm2@openai[]] PASSED*"])
    report = json.loads((pytester.path / "out" / "report.json").read_text(encoding="utf-8"))
    (model,) = report["models"]
    assert model["name"] == "smollm2@openai"
    assert model["fingerprint"]["served_model"] == "smollm2"
    assert model["fingerprint"]["base_url"] == server.url
    answers = [case["answer"] for case in model["cases"]]
    assert len(answers) == 4
    assert all(answers), answers
    for case in model["cases"]:
        assert case["new_tokens"][0] > 0
        assert 0 < case["ttft"][0] <= case["seconds"][0]
    written = [p for p in pytester.path.rglob("*") if p.is_file()]
    assert any("__snapshots__" in p.parts for p in written)
    for path in written:
        assert KEY.encode() not in path.read_bytes(), path
    assert KEY not in result.stdout.str() + result.stderr.str()


def test_committed_riddle_snapshots_hold_against_the_real_server(
    pytester: pytest.Pytester, server: LlamaServer, key: str
) -> None:
    """examples/riddles' ``smollm2@openai`` snapshots were recorded against the README's server
    command (default threads); this server runs 1 thread on another port: the same answers."""
    riddles = ROOT / "examples" / "riddles"
    shutil.copy(riddles / "riddles.llm.yaml", pytester.path)
    snapshots = pytester.path / "__snapshots__" / "riddles.llm"
    snapshots.mkdir(parents=True)
    committed = sorted((riddles / "__snapshots__" / "riddles.llm").glob("*[[]smollm2@openai].txt"))
    assert len(committed) == 5
    for path in committed:
        shutil.copy(path, snapshots)
    pytester.makeini(
        f"[pytest]\naddopts = -p no:cacheprovider\nllmcheck_openai_url = {server.url}\n"
        f"llmcheck_openai_key_env = {KEY_ENV}\n"
    )
    result = pytester.runpytest("--llm-model=openai:smollm2", "--llm-soft", "--llm-report=out")
    result.assert_outcomes(passed=5)
    result.stdout.fnmatch_lines(["5 snapshots passed."])
    # The server computes: pytest's own CPU time is not the answer's and is not reported as such.
    (model,) = json.loads((pytester.path / "out" / "report.json").read_text(encoding="utf-8"))["models"]
    assert model["median_cpu_seconds"] is None
    assert all(case["cpu_seconds"] == [] for case in model["cases"])


def test_xdist_two_workers_share_the_server_and_the_report_gathers(
    pytester: pytest.Pytester, server: LlamaServer, key: str
) -> None:
    write_ini(pytester, server.url)
    result = pytester.runpytest_subprocess(
        "--llm-model=openai:smollm2", "--llm-report=out", "-n", "2", "-p", "no:syrupy"
    )
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(
        [
            "created: 2/2 workers",
            "*llmcheck summary*",
            "smollm2@openai (openai:smollm2): loaded 2x *",
            "*(4/4)*",
        ]
    )
    report = json.loads((pytester.path / "out" / "report.json").read_text(encoding="utf-8"))
    (model,) = report["models"]
    assert sorted(case["case_id"] for case in model["cases"]) == ["france", "italy", "japan", "spain"]
    assert all(case["answer"] and case["new_tokens"][0] > 0 for case in model["cases"])


def test_wrong_model_name_is_one_line(tmp_path: Path, server: LlamaServer, key: str) -> None:
    # llama-cpp-python's server would silently answer with its own model: the engine checks.
    with pytest.raises(OpenAIError) as info:
        load_openai(resolve(f"openai:{server.url}#gpt-4o"), settings(tmp_path))
    assert str(info.value) == f"model 'gpt-4o' is not served at {server.url}; served: smollm2"


def test_bad_and_missing_key(tmp_path: Path, server: LlamaServer, monkeypatch: pytest.MonkeyPatch) -> None:
    ref = resolve(f"openai:{server.url}#smollm2")
    monkeypatch.setenv(KEY_ENV, "sk-wrong")
    with pytest.raises(OpenAIError) as info:
        load_openai(ref, settings(tmp_path))
    assert str(info.value) == (
        f"{server.url}/models refused the API key in ${KEY_ENV} (401 Unauthorized): Invalid API key"
    )
    assert "sk-wrong" not in str(info.value)
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(
        OpenAIError,
        match=rf"^{server.url}/models wants an API key \(401 Unauthorized\); "
        rf"set \${KEY_ENV}$",
    ):
        load_openai(ref, settings(tmp_path))


def test_bad_key_errors_each_test_with_one_line(
    pytester: pytest.Pytester, server: LlamaServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_ini(pytester, server.url)
    monkeypatch.setenv(KEY_ENV, "sk-wrong")
    result = pytester.runpytest("--llm-model=openai:smollm2", "-k", "france")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [
            "*model 'smollm2@openai' (openai:smollm2) failed to load: "
            f"OpenAIError: {server.url}/models refused "
            f"the API key in ${KEY_ENV} (401 Unauthorized)*"
        ]
    )


def test_server_killed_in_the_middle_of_an_answer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    doomed = LlamaServer(tmp_path / "doomed.log", api_key=None)
    try:
        engine = load_openai(resolve(f"openai:{doomed.url}#smollm2"), settings(tmp_path))
        take = openai_engine._take_chunk

        def kill_after_first(event: str, result: object, url: str) -> None:
            take(event, result, url)  # type: ignore[arg-type]
            if getattr(result, "chunks", 0) == 1:
                doomed.stop()

        monkeypatch.setattr(openai_engine, "_take_chunk", kill_after_first)
        with pytest.raises(OpenAIError) as info:
            engine.generate(
                "Write a long story about a dragon.",
                system=None,
                config=GenerationConfig(max_new_tokens=200, threads=1),
            )
        assert str(info.value).startswith(
            f"the answer stream from {doomed.url}/chat/completions ended before the answer was complete"
        )
        monkeypatch.setattr(openai_engine, "_take_chunk", take)
        with pytest.raises(OpenAIError, match="connection refused"):
            engine.generate("Hi", system=None, config=GenerationConfig(max_new_tokens=4))
    finally:
        doomed.stop()


# -- without a server, and the stand-in


def test_connection_refused_names_the_url(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(OpenAIError) as info:
        load_openai(resolve(f"openai:{url}#m"), settings(tmp_path))
    assert str(info.value) == f"cannot connect to {url}/models: connection refused (is the server running?)"


def test_reference_syntax_and_names(tmp_path: Path) -> None:
    assert resolve("openai:qwen2.5-7b").name == "qwen2.5-7b@openai"
    ref = resolve("openai:http://10.0.0.5:8000/v1#Qwen/Qwen2.5-7B-Instruct")
    assert (ref.name, ref.engine) == ("Qwen-Qwen2.5-7B-Instruct@openai", "openai")
    endpoint = openai_engine.parse_endpoint(ref, settings(tmp_path))
    assert (endpoint.base_url, endpoint.model) == ("http://10.0.0.5:8000/v1", "Qwen/Qwen2.5-7B-Instruct")
    with pytest.raises(OpenAIError, match=r"needs the server's base URL: set --llm-openai-url"):
        openai_engine.parse_endpoint(resolve("openai:m"), settings(tmp_path))
    with pytest.raises(OpenAIError, match=r"names no model: write openai:<base url>#<served model>"):
        openai_engine.parse_endpoint(resolve("openai:http://h:1/v1"), settings(tmp_path))
    with pytest.raises(
        OpenAIError, match=r"^--llm-openai-timeout: invalid value 'soon'; expected seconds > 0$"
    ):
        openai_engine.parse_endpoint(
            resolve("openai:m"), settings(tmp_path, **{"openai-url": "http://h/v1", "openai-timeout": "soon"})
        )


def test_greedy_request_and_key_header(tmp_path: Path, key: str) -> None:
    with StandIn() as standin:
        engine = load_openai(resolve(f"openai:{standin.url}#stand-in"), settings(tmp_path))
        answer = engine.generate("Capital of France?", system="Be brief.", config=GenerationConfig(seed=7))
    assert answer.text == "Paris."
    body = standin.requests[-1]
    assert (body["temperature"], body["seed"], body["stream"]) == (0.0, 7, True)
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Capital of France?"},
    ]
    assert standin.headers[-1]["Authorization"] == f"Bearer {KEY}"
    assert KEY not in json.dumps(engine.fingerprint()) + engine.facts.summary


def test_429_is_retried_then_fails_in_one_line(tmp_path: Path) -> None:
    with StandIn(steps=[Step(), Step(status=429)]) as standin:
        engine = load_openai(resolve(f"openai:{standin.url}#stand-in"), settings(tmp_path))
        with pytest.raises(OpenAIError) as info:
            engine.generate("Hi", system=None, config=GenerationConfig())
    assert str(info.value) == (
        f"{standin.url}/chat/completions answered 429 Too Many Requests after 3 retries "
        "(--llm-openai-retries): stand-in says 429"
    )
    assert len(standin.requests) == 1 + 4  # the load's probe, then 1 try + 3 retries


def test_5xx_is_retried_with_backoff_and_recovers(tmp_path: Path) -> None:
    steps = [
        Step(),
        Step(status=503, retry_after=None),
        Step(status=502, retry_after=None),
        Step(text="Rome."),
    ]
    with StandIn(steps=steps) as standin:
        engine = load_openai(resolve(f"openai:{standin.url}#stand-in"), settings(tmp_path))
        start = time.perf_counter()
        answer = engine.generate("Hi", system=None, config=GenerationConfig())
        waited = time.perf_counter() - start
    assert answer.text == "Rome."
    assert waited >= 0.5 + 1.0  # the backoff: 0.5 s, then 1 s
    assert answer.seconds < 1.0  # the answer's own time: the attempt that answered, not the backoff
    assert 0 <= answer.ttft <= answer.seconds


def test_malformed_interrupted_and_stalled_streams(tmp_path: Path) -> None:
    with StandIn(steps=[Step(), Step(malformed=True), Step(interrupt=True), Step(stall=3.0)]) as standin:
        ref = resolve(f"openai:{standin.url}#stand-in")
        engine = load_openai(ref, settings(tmp_path, **{"openai-timeout": "1"}))
        with pytest.raises(OpenAIError) as info:
            engine.generate("Hi", system=None, config=GenerationConfig())
        assert str(info.value) == (
            f"malformed answer stream from {standin.url}/chat/completions: '{{\"choices\": [oops' is not JSON"
        )
        with pytest.raises(
            OpenAIError,
            match=r"ended without a finish_reason after 6 characters: the server "
            r"interrupted the answer .*--interrupt_requests false\)$",
        ):
            engine.generate("Hi", system=None, config=GenerationConfig())
        with pytest.raises(OpenAIError) as info:
            engine.generate("Hi", system=None, config=GenerationConfig())
        assert str(info.value) == (
            f"{standin.url}/chat/completions sent nothing for 1s in the middle of an answer "
            "(--llm-openai-timeout)"
        )


def test_server_upgrade_shows_as_fingerprint_change_in_the_snapshot_diff(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)
    with StandIn(steps=[Step(system_fingerprint="b4100-aaaa", text="Paris.")]) as before:
        write_ini(pytester, before.url)
        result = pytester.runpytest("--llm-model=openai:stand-in", "-k", "france", "--snapshot-update")
        result.assert_outcomes(passed=1)
    snapshot = next(pytester.path.rglob("france*.txt")).read_text(encoding="utf-8")
    assert '"system_fingerprint": "b4100-aaaa"' in snapshot
    assert KEY not in snapshot
    with StandIn(steps=[Step(system_fingerprint="b4200-bbbb", text="Lyon.")]) as after:
        write_ini(pytester, after.url)
        # Same port is not guaranteed: the URL may change too; only compare what the server says.
        result = pytester.runpytest("--llm-model=openai:stand-in", "-k", "france")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*fingerprint changed: *system_fingerprint b4100-aaaa -> b4200-bbbb*"])


def test_proxy_from_the_environment_is_honoured_except_for_loopback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A remote server is reached through $HTTP_PROXY (the stand-in plays the proxy, so nothing
    leaves this machine), $NO_PROXY bypasses it, and a server on 127.0.0.1 is reached directly
    even with a proxy set: no proxy can reach this machine's loopback."""
    remote = resolve("openai:http://llm.invalid/v1#stand-in")
    real_getaddrinfo = socket.getaddrinfo

    def no_dns(host: object, *args: object, **kwargs: object) -> object:
        if host == "llm.invalid":  # were the proxy skipped: fail here, never ask a resolver
            raise socket.gaierror("llm.invalid is not looked up in tests")
        return real_getaddrinfo(host, *args, **kwargs)  # type: ignore[arg-type]

    def proxy_env(proxy: str, no_proxy: str = "") -> None:
        for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
            monkeypatch.delenv(name, raising=False)
            monkeypatch.delenv(name.upper(), raising=False)
        monkeypatch.setenv("HTTP_PROXY", proxy)
        if no_proxy:
            monkeypatch.setenv("NO_PROXY", no_proxy)

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    with StandIn() as standin:
        proxy_env(standin.url.removesuffix("/v1"))
        engine = load_openai(remote, settings(tmp_path))  # its /models 404s at the "proxy": probed instead
        assert engine.generate("Hi", system=None, config=GenerationConfig()).text == "Paris."
        assert standin.headers[-1]["Host"] == "llm.invalid"
        assert engine.fingerprint()["base_url"] == "http://llm.invalid/v1"
        engine.close()

        proxy_env(standin.url.removesuffix("/v1"), no_proxy="llm.invalid")
        with pytest.raises(OpenAIError, match=r"^request to http://llm.invalid/v1/models failed: Connect"):
            load_openai(remote, settings(tmp_path))

        proxy_env(f"http://127.0.0.1:{free_port()}")  # nothing listens there
        engine = load_openai(resolve(f"openai:{standin.url}#stand-in"), settings(tmp_path))
        assert engine.generate("Hi", system=None, config=GenerationConfig()).text == "Paris."
        engine.close()
