"""A stand-in OpenAI-compatible server on 127.0.0.1, for what a real server cannot be made to do.

The real server (llama-cpp-python's) covers answers, concurrency, a wrong model, a bad
key and a server that dies mid-answer. This one covers the rest: 429 and 5xx answers
(then recovery), a malformed stream, a stalled stream, and a ``system_fingerprint``
that changes between sessions. Its behaviour is a list of steps, one per chat request
(the last one repeats); every request is recorded.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Step:
    """How to answer one chat request."""

    status: int = 200
    text: str = "Paris."
    system_fingerprint: str | None = None
    malformed: bool = False  # send a chunk that is not JSON
    stall: float = 0.0  # seconds to wait after the first chunk
    interrupt: bool = False  # "[DONE]" right after the first chunk, no finish_reason
    retry_after: str | None = "0"


@dataclass
class StandIn:
    model: str = "stand-in"
    steps: list[Step] = field(default_factory=lambda: [Step()])
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def next_step(self) -> Step:
        index = min(len(self.requests) - 1, len(self.steps) - 1)
        return self.steps[max(index, 0)]

    def __enter__(self) -> StandIn:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _json(self, status: int, body: dict[str, Any], extra: dict[str, str] | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in (extra or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # http.server naming
                if self.path == "/v1/models":
                    self._json(200, {"object": "list", "data": [{"id": standin.model, "object": "model"}]})
                else:
                    self._json(404, {"error": {"message": "no such path"}})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
                standin.requests.append(body)
                standin.headers.append(dict(self.headers))
                step = standin.next_step()
                if step.status != 200:
                    extra = {"Retry-After": step.retry_after} if step.retry_after is not None else {}
                    self._json(step.status, {"error": {"message": f"stand-in says {step.status}"}}, extra)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()

                def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
                    payload = {
                        "id": "c1",
                        "object": "chat.completion.chunk",
                        "model": standin.model,
                        "system_fingerprint": step.system_fingerprint,
                        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                    }
                    return f"data: {json.dumps(payload)}\n\n".encode()

                words = step.text.split(" ")[: body.get("max_tokens", 100)]
                self.wfile.write(chunk({"role": "assistant", "content": words[0]}))
                self.wfile.flush()
                if step.stall:
                    time.sleep(step.stall)
                if step.interrupt:
                    self.wfile.write(b"data: [DONE]\n\n")
                    self.wfile.flush()
                    return
                if step.malformed:
                    self.wfile.write(b'data: {"choices": [oops\n\n')
                for word in words[1:]:
                    self.wfile.write(chunk({"content": " " + word}))
                self.wfile.write(chunk({}, "stop"))
                usage = {"prompt_tokens": 5, "completion_tokens": len(words), "total_tokens": 5 + len(words)}
                self.wfile.write(f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n".encode())
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()

        class Server(ThreadingHTTPServer):
            def handle_error(self, request: object, client_address: object) -> None:
                pass  # a client that hung up on a stalled answer, as the tests intend

        self._server = Server(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()
