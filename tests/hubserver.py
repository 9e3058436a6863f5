"""A stand-in model hub on 127.0.0.1 so download tests never reach a real hub.

It serves plain folders in both the ModelScope API shape (``/api/v1/models/...``) and
the Hugging Face shape (``/api/models/...`` + ``/<repo>/resolve/<sha>/<path>``), records
every request, and can be told to fail: a repo that 404s, a file whose bytes are
corrupted (same size, wrong hash), a file that 404s, or a server error.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

LFS_SUFFIXES = (".bin", ".safetensors", ".gguf", ".pt")
MS_REPO = "qwen/Tiny"  # the names the fixtures in tests/conftest_hub.py serve
HF_REPO = "org/Tiny"


@dataclass(frozen=True)
class Request:
    """One recorded request: enough to assert which endpoints a client called."""

    method: str
    path: str
    query: dict[str, str]


@dataclass
class Repo:
    folder: Path
    files: dict[str, bytes] = field(default_factory=dict)
    sha: str = ""

    @classmethod
    def load(cls, folder: Path) -> Repo:
        files = {
            p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
        }
        digest = hashlib.sha1()
        for name, data in files.items():
            digest.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
        return cls(folder=folder, files=files, sha=digest.hexdigest())


def git_blob_id(data: bytes) -> str:
    """The id git (and the HF tree API) gives a non-LFS file."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def is_lfs(path: str) -> bool:
    return path.endswith(LFS_SUFFIXES)


class HubServer:
    """Serve model folders in the ModelScope and Hugging Face API shapes on 127.0.0.1."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.requests: list[Request] = []
        self.missing: set[str] = set()  # repo ids answered with 404
        self.corrupt: set[tuple[str, str]] = set()  # (repo id, path): bytes flipped, size kept
        self.missing_files: set[tuple[str, str]] = set()  # (repo id, path): file download 404s
        self.broken: set[str] = set()  # repo ids whose file downloads answer 500
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- set-up --------------------------------------------------------
    def add_repo(self, repo_id: str, folder: Path) -> Repo:
        repo = Repo.load(folder)
        self.repos[repo_id] = repo
        return repo

    def start(self) -> HubServer:
        handler = type("Handler", (_Handler,), {"hub": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        httpd = self._httpd
        self._thread = threading.Thread(
            target=lambda: httpd.serve_forever(poll_interval=0.02), name="hubserver", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Shut down and close the socket: later connections are refused."""
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def record(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)

    def calls(self) -> list[tuple[str, str]]:
        """(method, path) of every request so far, in order."""
        with self._lock:
            return [(r.method, r.path) for r in self.requests]

    def file_bytes(self, repo_id: str, path: str) -> bytes | None:
        repo = self.repos.get(repo_id)
        if repo is None or path not in repo.files:
            return None
        data = repo.files[path]
        if (repo_id, path) in self.corrupt:
            data = bytes(b ^ 0xFF for b in data[:1]) + data[1:] if data else b"x"
        return data


_MS_FILES = re.compile(r"^/api/v1/models/([^/]+/[^/]+)/repo/files$")
_MS_FILE = re.compile(r"^/api/v1/models/([^/]+/[^/]+)/repo$")
_HF_REVISION = re.compile(r"^/api/models/([^/]+/[^/]+)/revision/(.+)$")
_HF_TREE = re.compile(r"^/api/models/([^/]+/[^/]+)/tree/([^/]+)(?:/(.*))?$")
_HF_RESOLVE = re.compile(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")


class _Handler(BaseHTTPRequestHandler):
    hub: HubServer
    protocol_version = "HTTP/1.0"  # one request per connection: nothing lingers at shutdown

    def log_message(self, format: str, *args: object) -> None:  # silence the default stderr log
        pass

    def do_GET(self) -> None:  # http.server naming
        self._handle(head=False)

    def do_HEAD(self) -> None:
        self._handle(head=True)

    # -- helpers ---------------------------------------------------------
    def _send(
        self, status: int, body: bytes, headers: dict[str, str] | None = None, *, head: bool = False
    ) -> None:
        self.send_response(status)
        all_headers = {
            "Content-Type": "application/json",
            "Content-Length": str(len(body)),
            "Connection": "close",
        }
        all_headers.update(headers or {})
        for key, value in all_headers.items():
            self.send_header(key, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _json(
        self, status: int, payload: object, *, head: bool = False, headers: dict[str, str] | None = None
    ) -> None:
        self._send(status, json.dumps(payload).encode(), headers, head=head)

    def _ms_not_found(self, what: str, head: bool) -> None:
        self._json(404, {"Code": 10010205001, "Success": False, "Message": f"{what} not exist"}, head=head)

    def _hf_not_found(self, head: bool) -> None:
        self._json(
            404, {"error": "Repository not found"}, head=head, headers={"X-Error-Code": "RepoNotFound"}
        )

    def _handle(self, *, head: bool) -> None:
        split = urlsplit(self.path)
        path = unquote(split.path)
        query = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        hub = self.hub
        hub.record(Request(self.command, path, query))

        if path == "/api/v1/repos/internalAccelerationInfo":
            self._json(404, {"Code": 404, "Success": False, "Message": "not found"}, head=head)
            return
        if m := _MS_FILES.match(path):
            self._ms_files(m.group(1), head)
            return
        if m := _MS_FILE.match(path):
            self._file(m.group(1), query.get("FilePath", ""), head, hf=False)
            return
        if m := _HF_REVISION.match(path):
            self._hf_revision(m.group(1), head)
            return
        if m := _HF_TREE.match(path):
            self._hf_tree(m.group(1), m.group(3) or "", head)
            return
        if m := _HF_RESOLVE.match(path):
            self._file(m.group(1), m.group(3), head, hf=True)
            return
        self._json(404, {"error": f"no route for {path}"}, head=head)

    def _repo(self, repo_id: str) -> Repo | None:
        if repo_id in self.hub.missing:
            return None
        return self.hub.repos.get(repo_id)

    def _ms_files(self, repo_id: str, head: bool) -> None:
        repo = self._repo(repo_id)
        if repo is None:
            self._ms_not_found(f"model {repo_id}", head)
            return
        files = [
            {
                "Name": name.rsplit("/", 1)[-1],
                "Path": name,
                "Type": "blob",
                "Size": len(data),
                "Sha256": hashlib.sha256(data).hexdigest(),
                "Revision": repo.sha,
            }
            for name, data in repo.files.items()
        ]
        self._json(
            200, {"Code": 200, "Success": True, "Message": "success", "Data": {"Files": files}}, head=head
        )

    def _hf_revision(self, repo_id: str, head: bool) -> None:
        repo = self._repo(repo_id)
        if repo is None:
            self._hf_not_found(head)
            return
        info = {
            "id": repo_id,
            "modelId": repo_id,
            "sha": repo.sha,
            "private": False,
            "siblings": [{"rfilename": name} for name in repo.files],
        }
        self._json(200, info, head=head)

    def _hf_tree(self, repo_id: str, sub: str, head: bool) -> None:
        repo = self._repo(repo_id)
        if repo is None:
            self._hf_not_found(head)
            return
        entries: list[dict[str, object]] = []
        for name, data in repo.files.items():
            if sub and not name.startswith(sub.rstrip("/") + "/"):
                continue
            entry: dict[str, object] = {
                "type": "file",
                "path": name,
                "size": len(data),
                "oid": git_blob_id(data),
            }
            if is_lfs(name):
                entry["lfs"] = {
                    "oid": hashlib.sha256(data).hexdigest(),
                    "size": len(data),
                    "pointerSize": 134,
                }
            entries.append(entry)
        self._json(200, entries, head=head)

    def _file(self, repo_id: str, file_path: str, head: bool, *, hf: bool) -> None:
        hub = self.hub
        repo = self._repo(repo_id)
        if repo is None:
            self._hf_not_found(head) if hf else self._ms_not_found(f"model {repo_id}", head)
            return
        if repo_id in hub.broken:
            self._json(500, {"error": "internal error"}, head=head)
            return
        data = hub.file_bytes(repo_id, file_path)
        if data is None or (repo_id, file_path) in hub.missing_files:
            if hf:
                self._json(
                    404, {"error": "Entry not found"}, head=head, headers={"X-Error-Code": "EntryNotFound"}
                )
            else:
                self._ms_not_found(f"file {file_path}", head)
            return
        real = repo.files[file_path]
        etag = hashlib.sha256(real).hexdigest() if is_lfs(file_path) else git_blob_id(real)
        headers = {"Content-Type": "application/octet-stream", "ETag": f'"{etag}"', "X-Repo-Commit": repo.sha}
        if is_lfs(file_path):
            headers["X-Linked-Etag"] = f'"{etag}"'
            headers["X-Linked-Size"] = str(len(real))
        status = 200
        range_header = self.headers.get("Range")
        if range_header and (m := re.fullmatch(r"bytes=(\d+)-(\d*)", range_header.strip())):
            start = int(m.group(1))
            end = int(m.group(2)) if m.group(2) else len(data) - 1
            if start >= len(data):
                self._send(416, b"", {"Content-Range": f"bytes */{len(data)}"}, head=head)
                return
            end = min(end, len(data) - 1)
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            headers["Accept-Ranges"] = "bytes"
            data = data[start : end + 1]
            status = 206
        self._send(status, data, headers, head=head)
