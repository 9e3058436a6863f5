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

Only the standard library is used (``http.client``): streaming needs nothing more, and
the engine then works in every install without an extra.
"""

from __future__ import annotations

import http.client
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ..errors import LlmcheckError
from ..redact import has_credentials, redact
from ..registry import ModelRef
from ..settings import Settings
from .base import Answer, GenerationConfig, LoadFacts
from .registry import OPENAI_URL_CREDENTIALS

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
    sent: float | None = None  # perf_counter when the request that answered was sent (after any retries)
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

    # -- HTTP

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
        key = os.environ.get(self.endpoint.key_env, "").strip()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _connection(self) -> http.client.HTTPConnection:
        parts = urlsplit(self.endpoint.base_url)
        cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        return cls(parts.hostname or "", parts.port, timeout=self.endpoint.timeout)

    def _send(
        self, method: str, path: str, body: dict[str, Any] | None
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse, float]:
        """One request; a 2xx response stays open for the caller, with the time (perf_counter)
        its attempt was sent: an answer's time leaves out the backoff of earlier ones. Retries
        429 and 5xx."""
        url = f"{self.endpoint.shown_url}{path}"
        prefix = urlsplit(self.endpoint.base_url).path.rstrip("/")
        data = json.dumps(body).encode("utf-8") if body is not None else None
        attempt = 0
        while True:
            conn = self._connection()
            sent = time.perf_counter()
            try:
                conn.request(method, prefix + path, body=data, headers=self._headers())
                response = conn.getresponse()
            except ConnectionRefusedError:
                conn.close()
                raise OpenAIError(
                    f"cannot connect to {url}: connection refused (is the server running?)"
                ) from None
            except TimeoutError:
                conn.close()
                raise OpenAIError(
                    f"{url} did not answer within {self.endpoint.timeout:g}s (--llm-openai-timeout)"
                ) from None
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                raise OpenAIError(f"request to {url} failed: {type(exc).__name__}: {exc}") from None
            if 200 <= response.status < 300:
                return conn, response, sent
            detail = _error_detail(response)
            conn.close()
            status = f"{response.status} {response.reason}".strip()
            if response.status in RETRY_STATUS and attempt < self.endpoint.retries:
                time.sleep(_backoff(attempt, response.getheader("Retry-After")))
                attempt += 1
                continue
            raise self._http_error(url, response.status, status, detail, attempt)

    def _http_error(self, url: str, code: int, status: str, detail: str, retries: int) -> OpenAIError:
        why = f": {detail}" if detail else ""
        if code in (401, 403):
            key = os.environ.get(self.endpoint.key_env, "").strip()
            if not key:
                return OpenAIError(f"{url} wants an API key ({status}); set ${self.endpoint.key_env}")
            return OpenAIError(f"{url} refused the API key in ${self.endpoint.key_env} ({status}){why}")
        if code == 404:
            return NotFound(
                f"model {self.endpoint.model!r} not found at {self.endpoint.shown_url} ({status}){why}"
            )
        if code in RETRY_STATUS:
            return OpenAIError(f"{url} answered {status} after {retries} retries (--llm-openai-retries){why}")
        return OpenAIError(f"{url} answered {status}{why}")

    def _json(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        conn, response, _ = self._send(method, path, body)
        try:
            raw = response.read()
        except TimeoutError:
            raise OpenAIError(
                f"{self.endpoint.shown_url}{path} did not answer within {self.endpoint.timeout:g}s"
            ) from None
        finally:
            conn.close()
        try:
            return json.loads(raw)
        except ValueError:
            raise OpenAIError(f"{self.endpoint.shown_url}{path} sent no JSON: {raw[:80]!r}") from None

    # -- loading

    def connect(self, *, seed: int) -> None:
        """Check the server, key and model; learn the served model id and system fingerprint."""
        start = time.perf_counter()
        url = self.endpoint.shown_url
        try:
            listing = self._json("GET", "/models")
        except NotFound:
            listing = None  # a server without /models: the probe below still checks the model
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
        path = "/chat/completions"
        url = f"{self.endpoint.shown_url}{path}"
        conn, response, sent = self._send("POST", path, self._body(prompt, system, config))
        result = _Stream(sent=sent)
        try:
            if "text/event-stream" not in (response.getheader("Content-Type") or ""):
                _read_whole(response, result, url)  # a server that ignores "stream": one JSON body
                result.first = result.first or time.perf_counter()
                return result
            for event in _events(response, url, self.endpoint.timeout):
                if event == "[DONE]":
                    result.done = True
                    break
                _take_chunk(event, result, url)
        finally:
            conn.close()
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
        end = time.perf_counter()
        start = stream.sent if stream.sent is not None else end
        seconds = end - start
        self._note(stream)
        first = stream.first if stream.first is not None else start + seconds
        return Answer(
            text=stream.text.strip(),
            prompt=prompt,
            system=system,
            prompt_tokens=stream.prompt_tokens or 0,
            new_tokens=stream.completion_tokens if stream.completion_tokens is not None else stream.chunks,
            seconds=seconds,
            ttft=first - start,
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
        """Nothing held: each request has its own connection."""


# -- the wire format


def _backoff(attempt: int, retry_after: str | None) -> float:
    if retry_after is not None:
        try:
            return min(max(float(retry_after), 0.0), BACKOFF_MAX)
        except ValueError:
            pass  # an HTTP date: fall back to our own schedule
    return float(min(BACKOFF_START * 2**attempt, BACKOFF_MAX))


def _error_detail(response: http.client.HTTPResponse) -> str:
    """The server's own one-line reason from an error body, if it gave one."""
    try:
        raw = response.read(4096)
    except (OSError, http.client.HTTPException):
        return ""
    text = raw.decode("utf-8", errors="replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        error = data.get("error", data.get("detail", data.get("message")))
        if isinstance(error, dict):
            error = error.get("message", error)
        text = str(error) if error is not None else text
    line = text.splitlines()[0] if text else ""
    return line[:200]


def _events(response: http.client.HTTPResponse, url: str, timeout: float) -> Iterator[str]:
    """The ``data:`` payloads of a server-sent event stream (one per event)."""
    data: list[str] = []
    while True:
        try:
            raw = response.readline()
        except TimeoutError:
            raise OpenAIError(
                f"{url} sent nothing for {timeout:g}s in the middle of an answer (--llm-openai-timeout)"
            ) from None
        except (OSError, http.client.HTTPException):
            return  # connection dropped: the caller reports the unfinished answer
        if not raw:
            if data:
                yield "\n".join(data)
            return
        line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
        if not line:
            if data:
                yield "\n".join(data)
                data = []
            continue
        if line.startswith(":"):
            continue  # a comment / keep-alive ping
        field, _, value = line.partition(":")
        if field == "data":
            data.append(value[1:] if value.startswith(" ") else value)


def _take_chunk(event: str, result: _Stream, url: str) -> None:
    try:
        chunk = json.loads(event)
    except ValueError:
        raise OpenAIError(f"malformed answer stream from {url}: {event[:80]!r} is not JSON") from None
    if not isinstance(chunk, dict):
        raise OpenAIError(f"malformed answer stream from {url}: {event[:80]!r} is not a JSON object")
    if "error" in chunk:
        error = chunk["error"]
        message = error.get("message", error) if isinstance(error, dict) else error
        raise OpenAIError(f"{url} failed in the middle of an answer: {str(message)[:200]}")
    result.model = chunk.get("model") or result.model
    result.system_fingerprint = chunk.get("system_fingerprint") or result.system_fingerprint
    usage = chunk.get("usage")
    if isinstance(usage, dict):
        result.prompt_tokens = usage.get("prompt_tokens", result.prompt_tokens)
        result.completion_tokens = usage.get("completion_tokens", result.completion_tokens)
    choices = chunk.get("choices")
    if not isinstance(choices, list):
        if usage is None:
            raise OpenAIError(f"malformed answer stream from {url}: a chunk without choices: {event[:80]!r}")
        return
    for choice in choices:
        if not isinstance(choice, dict):
            raise OpenAIError(f"malformed answer stream from {url}: {event[:80]!r}")
        delta = choice.get("delta") or {}
        content = delta.get("content") if isinstance(delta, dict) else None
        if content:
            if result.first is None:
                result.first = time.perf_counter()
            result.text += str(content)
            result.chunks += 1
        if choice.get("finish_reason"):
            result.finish_reason = str(choice["finish_reason"])


def _read_whole(response: http.client.HTTPResponse, result: _Stream, url: str) -> None:
    """A non-streamed completion (a server that ignores ``stream``)."""
    raw = response.read()
    try:
        body = json.loads(raw)
        message = body["choices"][0]["message"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise OpenAIError(f"malformed answer from {url}: {raw[:80]!r}") from None
    result.text = str(message.get("content") or "")
    result.chunks = 1 if result.text else 0
    result.finish_reason = body["choices"][0].get("finish_reason") or "stop"
    result.model = body.get("model")
    result.system_fingerprint = body.get("system_fingerprint")
    usage = body.get("usage") or {}
    result.prompt_tokens = usage.get("prompt_tokens")
    result.completion_tokens = usage.get("completion_tokens")
    result.done = True
