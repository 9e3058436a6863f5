"""The ``openai`` engine: any OpenAI-compatible chat-completions server.

vLLM, TGI, SGLang, llama.cpp's server, llama-cpp-python's server and Ollama all speak
this API, so a suite that outgrows one CPU runs against a server instead, and ``-n N``
(xdist) sends N questions at once. A reference names the served model and where it is
served: ``openai:<model>`` with ``--llm-openai-url`` (ini ``llmcheck_openai_url``), or
``openai:<base url>#<model>``. The model is called ``<model>@openai`` in test ids,
snapshot files and reports.

- The API key comes from an environment variable (``--llm-openai-key-env``, default
  ``OPENAI_API_KEY``); it is sent only in the Authorization header and is never part of
  a message, a fingerprint, a snapshot or a report. A URL carrying credentials
  (``user:pass@``, ``?api_key=``) is refused with one line that says so.
- Answers are streamed, so time to first token is measured; greedy runs send
  ``temperature: 0`` and the seed.
- Loading checks the server: it answers, accepts the key and serves the model (some
  servers silently answer with another model when the name is wrong), and one
  one-token request learns the served model id and the server's ``system_fingerprint``,
  which go into every answer's fingerprint: a server upgrade shows in a snapshot diff.
- Failures are one line each; 429 and 5xx are retried a bounded number of times with
  exponential backoff (``Retry-After`` honoured, capped).
- Proxies come from the environment (``HTTP(S)_PROXY``, ``ALL_PROXY``, ``NO_PROXY``), but a
  server on a loopback address is always reached directly: no proxy can reach this machine's
  127.0.0.1.

HTTP is ``httpx2`` (Pydantic's continuation of ``httpx``), which ``huggingface_hub`` already
installs: connections, timeouts, proxies and the event-stream parser are its. Not the
``openai`` SDK: a new dependency tree (pydantic, jiter, distro) for one endpoint, whose retries
sleep inside the call (an answer's time could not leave the backoff out), whose errors are
multi-line dumps needing mapping back to these one-liners anyway, and whose typed chunks hide
the malformed or cut-off streams reported here. What is left here is the API's meaning.
"""

from __future__ import annotations

import ipaddress
import json
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from pytest_llmcheck.config.registry import ModelRef
from pytest_llmcheck.config.settings import Settings
from pytest_llmcheck.engines.base import Answer, GenerationConfig, LoadFacts
from pytest_llmcheck.engines.registry import OPENAI_URL_CREDENTIALS
from pytest_llmcheck.errors import LlmcheckError
from pytest_llmcheck.text.redact import has_credentials, redact

if TYPE_CHECKING:
    import httpx2

ENGINE = "openai"
DEFAULT_KEY_ENV = "OPENAI_API_KEY"
RETRY_STATUS = (429, 500, 502, 503, 504)
BACKOFF_START = 0.5  # seconds before the first retry; doubled for each next one
BACKOFF_MAX = 30.0


class OpenAIError(LlmcheckError):
    """The server cannot be used as asked; ``str()`` is one line naming the URL."""


class NotFound(OpenAIError):
    """A 404: the model (or, for ``/models``, the listing) does not exist there."""


@dataclass(frozen=True)
class Endpoint:
    """Where and how to reach the served model."""

    base_url: str  # e.g. http://127.0.0.1:8080/v1, no trailing slash
    model: str
    key_env: str
    timeout: float
    retries: int

    @property
    def shown_url(self) -> str:
        """The base URL without credentials or query, for messages and fingerprints."""
        parts = urlsplit(self.base_url)
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port else host
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _option(settings: Settings, name: str, default: str) -> str:
    return settings.engine_options.get(name, default).strip() or default


def parse_endpoint(ref: ModelRef, settings: Settings) -> Endpoint:
    """The endpoint of an ``openai:`` reference plus the engine's options; one-line errors."""
    rest = ref.location.split(":", 1)[1] if ref.location.startswith(f"{ENGINE}:") else ref.location
    if "://" in rest:
        url, sep, model = rest.rpartition("#")
        if not sep or not model:
            raise OpenAIError(f"{ref.spec!r} names no model: write openai:<base url>#<served model>")
    else:
        model, url = rest, settings.engine_options.get("openai-url", "").strip()
        if not url:
            raise OpenAIError(
                f"{ref.spec!r} needs the server's base URL: set --llm-openai-url "
                "(ini llmcheck_openai_url), e.g. http://127.0.0.1:8080/v1, or write openai:<base url>#<model>"
            )
    if has_credentials(url):  # only the Authorization header carries a key: refuse, never drop or show
        raise OpenAIError(OPENAI_URL_CREDENTIALS)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise OpenAIError(f"bad server URL {redact(url)!r}: expected http(s)://host[:port]/v1")
    try:
        timeout = float(_option(settings, "openai-timeout", "120"))
    except ValueError:
        timeout = -1.0
    if not timeout > 0:
        raise OpenAIError(
            f"--llm-openai-timeout: invalid value {settings.engine_options['openai-timeout']!r}; "
            "expected seconds > 0"
        )
    retries_text = _option(settings, "openai-retries", "3")
    if not retries_text.isdigit() or int(retries_text) > 10:
        raise OpenAIError(
            f"--llm-openai-retries: invalid value {retries_text!r}; expected a whole number 0..10"
        )
    key_env = _option(settings, "openai-key-env", DEFAULT_KEY_ENV)
    return Endpoint(url.rstrip("/"), model, key_env, timeout, int(retries_text))


def load_openai(ref: ModelRef, settings: Settings) -> OpenAIEngine:
    """The engine's loader (``EngineSpec.load``): check the server, then learn its identity."""
    engine = OpenAIEngine(parse_endpoint(ref, settings), ref)
    engine.connect(seed=settings.seed)
    return engine


@dataclass
class _Stream:
    """What one streamed answer carried besides its text."""

    text: str = ""
    chunks: int = 0  # content-bearing chunks: one token each on most servers
    sent: float = 0.0  # perf_counter when the request that answered was sent (after any retries)
    first: float | None = None  # perf_counter at the first content
    done: bool = False
    finish_reason: str | None = None
    model: str | None = None
    system_fingerprint: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class OpenAIEngine:
    """A model served over HTTP; ``generate`` is one streamed chat completion."""

    name = ENGINE

    def __init__(self, endpoint: Endpoint, ref: ModelRef) -> None:
        self.endpoint = endpoint
        self.ref = ref
        self.served_models: list[str] = []
        self.served_model: str | None = None  # the id the server answers with
        self.system_fingerprint: str | None = None
        self.facts = LoadFacts(
            seconds=0.0,
            summary=f"server {endpoint.shown_url}, model {endpoint.model}",
            in_process=False,
            uses_threads=False,
        )
        self._client: httpx2.Client | None = None

    # -- HTTP

    def _http(self) -> httpx2.Client:
        """One client (a connection pool) for the engine's life, made on first use."""
        if self._client is None:
            import httpx2

            host = urlsplit(self.endpoint.base_url).hostname or ""
            direct = {f"all://[{host}]" if ":" in host else f"all://{host}": None} if _loopback(host) else {}
            self._client = httpx2.Client(timeout=self.endpoint.timeout, mounts=direct)
        return self._client

    def _send(
        self, method: str, path: str, body: dict[str, Any] | None, *, stream: bool
    ) -> tuple[httpx2.Response, float]:
        """A 2xx response (with ``stream``, its body unread: the caller closes it) and the time
        (perf_counter) its attempt was sent: an answer's time leaves out the backoff of earlier
        ones. Retries 429 and 5xx."""
        import httpx2

        url = f"{self.endpoint.shown_url}{path}"
        headers = {"Accept": "application/json, text/event-stream"}
        if key := os.environ.get(self.endpoint.key_env, "").strip():
            headers["Authorization"] = f"Bearer {key}"
        attempt = 0
        while True:
            request = self._http().build_request(method, url, json=body, headers=headers)
            sent = time.perf_counter()
            try:
                response = self._http().send(request, stream=True)
                if not (stream and response.is_success):
                    response.read()
            except httpx2.TimeoutException:
                raise OpenAIError(
                    f"{url} did not answer within {self.endpoint.timeout:g}s (--llm-openai-timeout)"
                ) from None
            except httpx2.TransportError as exc:
                if _refused(exc):
                    raise OpenAIError(
                        f"cannot connect to {url}: connection refused (is the server running?)"
                    ) from None
                raise OpenAIError(f"request to {url} failed: {type(exc).__name__}: {exc}") from None
            if response.is_success:
                return response, sent
            if response.status_code not in RETRY_STATUS or attempt >= self.endpoint.retries:
                raise self._http_error(url, response, attempt, bool(key))
            time.sleep(_backoff(attempt, response.headers.get("Retry-After")))
            attempt += 1

    def _http_error(self, url: str, response: httpx2.Response, retries: int, keyed: bool) -> OpenAIError:
        code, status = response.status_code, f"{response.status_code} {response.reason_phrase}".strip()
        why = f": {detail}" if (detail := _error_detail(response.content)) else ""
        if code in (401, 403) and not keyed:
            return OpenAIError(f"{url} wants an API key ({status}); set ${self.endpoint.key_env}")
        if code in (401, 403):
            return OpenAIError(f"{url} refused the API key in ${self.endpoint.key_env} ({status}){why}")
        if code == 404:
            return NotFound(
                f"model {self.endpoint.model!r} not found at {self.endpoint.shown_url} ({status}){why}"
            )
        if code in RETRY_STATUS:
            return OpenAIError(f"{url} answered {status} after {retries} retries (--llm-openai-retries){why}")
        return OpenAIError(f"{url} answered {status}{why}")

    # -- loading

    def connect(self, *, seed: int) -> None:
        """Check the server, key and model; learn the served model id and system fingerprint."""
        start = time.perf_counter()
        url = self.endpoint.shown_url
        try:
            raw = self._send("GET", "/models", None, stream=False)[0].content
        except NotFound:
            raw = b"{}"  # a server without /models: the probe below still checks the model
        try:
            listing = json.loads(raw)
        except ValueError:
            raise OpenAIError(f"{url}/models sent no JSON: {raw[:80]!r}") from None
        if isinstance(listing, dict) and isinstance(listing.get("data"), list):
            self.served_models = [str(m.get("id")) for m in listing["data"] if isinstance(m, dict)]
            if self.served_models and self.endpoint.model not in self.served_models:
                raise OpenAIError(
                    f"model {self.endpoint.model!r} is not served at {url}; "
                    f"served: {', '.join(self.served_models)}"
                )
        probe = self._stream_answer("Hi", None, GenerationConfig(max_new_tokens=1, seed=seed))
        self._note(probe)
        served = self.served_model or self.endpoint.model
        fp = f", system_fingerprint {self.system_fingerprint}" if self.system_fingerprint else ""
        self.facts = LoadFacts(
            seconds=time.perf_counter() - start,
            summary=f"server {url}, model {served}{fp}",
            in_process=False,  # the server computes: pytest's CPU time is not the answer's
            uses_threads=False,  # nor are --llm-threads its threads
            details={"base_url": url, "model": self.endpoint.model, "served_model": served},
        )

    def _note(self, stream: _Stream) -> None:
        if stream.model:
            self.served_model = stream.model
        if stream.system_fingerprint:
            self.system_fingerprint = stream.system_fingerprint

    # -- answers

    def _body(self, prompt: str, system: str | None, config: GenerationConfig) -> dict[str, Any]:
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": prompt}
        ]
        return {
            "model": self.endpoint.model,
            "messages": messages,
            "max_tokens": config.max_new_tokens,
            "temperature": 0.0 if config.greedy else config.temperature,
            "top_p": 1.0,
            "seed": config.seed,
            "stream": True,
            "stream_options": {"include_usage": True},
        }

    def _stream_answer(self, prompt: str, system: str | None, config: GenerationConfig) -> _Stream:
        import httpx2

        path = "/chat/completions"
        url = f"{self.endpoint.shown_url}{path}"
        response, sent = self._send("POST", path, self._body(prompt, system, config), stream=True)
        result = _Stream(sent=sent)
        try:
            if "text/event-stream" not in response.headers.get("Content-Type", ""):
                # A server that ignores "stream": one JSON completion.
                _take_chunk(response.read().decode("utf-8", errors="replace"), result, url)
                result.first, result.done = time.perf_counter(), True
                result.finish_reason = result.finish_reason or "stop"
            for event in httpx2.EventSource(response) if not result.done else ():
                if event.data == "[DONE]":
                    result.done = True
                    break
                if event.data:  # not a bare "event:"/"id:"/"retry:" event
                    _take_chunk(event.data, result, url)
        except httpx2.TimeoutException:
            raise OpenAIError(
                f"{url} sent nothing for {self.endpoint.timeout:g}s in the middle of an answer "
                "(--llm-openai-timeout)"
            ) from None
        except httpx2.SSEError as exc:  # e.g. an event over its 1 MiB bound
            raise OpenAIError(f"malformed answer stream from {url}: {exc}") from None
        except httpx2.TransportError:
            pass  # the connection dropped: reported below as an unfinished answer
        finally:
            response.close()
        if result.finish_reason is None:
            if result.done:  # "[DONE]" without a finish_reason: the server cut the answer off
                raise OpenAIError(
                    f"the answer stream from {url} ended without a finish_reason after {len(result.text)} "
                    "characters: the server interrupted the answer (llama-cpp-python's server does when "
                    "another request waits; start it with --interrupt_requests false)"
                )
            raise OpenAIError(
                f"the answer stream from {url} ended before the answer was complete "
                f"({len(result.text)} characters received; did the server stop?)"
            )
        return result

    def generate(self, prompt: str, *, system: str | None, config: GenerationConfig) -> Answer:
        stream = self._stream_answer(prompt, system, config)
        seconds = time.perf_counter() - stream.sent
        self._note(stream)
        return Answer(
            text=stream.text.strip(),
            prompt=prompt,
            system=system,
            prompt_tokens=stream.prompt_tokens or 0,
            new_tokens=stream.completion_tokens if stream.completion_tokens is not None else stream.chunks,
            seconds=seconds,
            ttft=stream.first - stream.sent if stream.first is not None else seconds,
        )

    def fingerprint(self) -> dict[str, Any]:
        """The server as it identified itself; never the API key."""
        return {
            "engine": self.name,
            "base_url": self.endpoint.shown_url,
            "model": self.endpoint.model,
            "served_model": self.served_model,
            "system_fingerprint": self.system_fingerprint,
        }

    def close(self) -> None:
        """Close the connection pool."""
        if self._client is not None:
            self._client.close()
            self._client = None


# -- the wire format


def _loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _refused(exc: BaseException | None) -> bool:
    """Whether the OS refused the connection (httpx2 keeps the socket's error as the cause)."""
    while exc is not None and not isinstance(exc, ConnectionRefusedError):
        exc = exc.__cause__ or exc.__context__
    return exc is not None


def _backoff(attempt: int, retry_after: str | None) -> float:
    if retry_after is not None:
        try:
            return min(max(float(retry_after), 0.0), BACKOFF_MAX)
        except ValueError:
            pass  # an HTTP date: fall back to our own schedule
    return float(min(BACKOFF_START * 2**attempt, BACKOFF_MAX))


def _error_detail(raw: bytes) -> str:
    """The server's own one-line reason from an error body, if it gave one."""
    text = raw[:4096].decode("utf-8", errors="replace").strip()
    try:
        data = json.loads(text)
        error = data.get("error", data.get("detail", data.get("message")))
        error = error.get("message", error) if isinstance(error, dict) else error
        text = text if error is None else str(error)
    except (ValueError, AttributeError):
        pass  # not a JSON object: the body's first line
    return (text.splitlines() or [""])[0][:200]


def _take_chunk(event: str, result: _Stream, url: str) -> None:
    """One streamed chunk (or a whole non-streamed completion) into ``result``."""
    try:
        chunk = json.loads(event)
    except ValueError:
        raise OpenAIError(f"malformed answer stream from {url}: {event[:80]!r} is not JSON") from None
    try:
        if "error" in chunk:
            error = chunk["error"]
            message = error.get("message", error) if isinstance(error, dict) else error
            raise OpenAIError(f"{url} failed in the middle of an answer: {str(message)[:200]}")
        result.model = chunk.get("model") or result.model
        result.system_fingerprint = chunk.get("system_fingerprint") or result.system_fingerprint
        usage = chunk.get("usage") or {}
        result.prompt_tokens = usage.get("prompt_tokens", result.prompt_tokens)
        result.completion_tokens = usage.get("completion_tokens", result.completion_tokens)
        for choice in chunk.get("choices", [] if usage else None):  # a usage-only chunk may have none
            content = (choice.get("delta") or choice.get("message") or {}).get("content")
            if content:
                result.first = result.first if result.first is not None else time.perf_counter()
                result.text += str(content)
                result.chunks += 1
            if choice.get("finish_reason"):
                result.finish_reason = str(choice["finish_reason"])
    except (AttributeError, TypeError, KeyError):
        raise OpenAIError(f"malformed answer stream from {url}: {event[:80]!r}") from None
