"""A stand-in model hub on 127.0.0.1 so download tests never reach a real hub.

It serves plain folders in both the ModelScope API shape (``/api/v1/models/...``) and
the Hugging Face shape (``/api/models/...`` + ``/<repo>/resolve/<sha>/<path>``), records
every request, and can be told to fail: a repo that 404s, a file whose bytes are
corrupted (same size, wrong hash), a file that 404s, or a server error.

Files are hashed once when a repo is added and their bodies streamed from disk per
request, so the same server stands in for a 15 GB model (``benchmarks/bench_size.py``).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

LFS_SUFFIXES = (".bin", ".safetensors", ".gguf", ".pt")
MS_REPO = "qwen/Tiny"  # the names the fixtures in tests/conftest_hub.py serve
HF_REPO = "org/Tiny"
CHUNK = 4 << 20  # bytes read at a time: big files are never held whole in memory


@dataclass(frozen=True)
class Request:
    """One recorded request: enough to assert which endpoints a client called."""

    method: str
    path: str
    query: dict[str, str]


@dataclass(frozen=True)
class RepoFile:
    """A served file: where it lies and what the listings say of it, hashed once at load."""

    path: Path
    size: int
    sha256: str
    blob_id: str  # the id git (and the HF tree API) gives a non-LFS file

    @classmethod
    def hash(cls, path: Path) -> RepoFile:
        """Hash the file in chunks: sha256 and git's blob id in one read."""
        size = path.stat().st_size
        sha256, blob = hashlib.sha256(), hashlib.sha1(b"blob %d\0" % size)
        with path.open("rb") as fh:
            while chunk := fh.read(CHUNK):
                sha256.update(chunk)
                blob.update(chunk)
        return cls(path=path, size=size, sha256=sha256.hexdigest(), blob_id=blob.hexdigest())

    def served_size(self, corrupt: bool) -> int:
        """The size the server answers with (an empty corrupted file gets one stray byte)."""
        return 1 if corrupt and self.size == 0 else self.size

    def chunks(self, start: int, stop: int, *, corrupt: bool = False) -> Iterator[bytes]:
        """Bytes ``[start, stop)`` as served: when corrupt, the first byte flipped (size kept)."""
        if corrupt and self.size == 0:
            yield b"x"[start:stop]
            return
        with self.path.open("rb") as fh:
            fh.seek(start)
            pos = start
            while pos < stop and (chunk := fh.read(min(CHUNK, stop - pos))):
                if corrupt and pos == 0:
                    chunk = bytes([chunk[0] ^ 0xFF]) + chunk[1:]
                yield chunk
                pos += len(chunk)


@dataclass
class Repo:
    """A served folder: per file its metadata (``files``), and the commit sha built from them."""

    folder: Path
    files: dict[str, RepoFile] = field(default_factory=dict)
    sha: str = ""

    @classmethod
    def load(cls, folder: Path) -> Repo:
        """Hash every file once; the sha is a stable stand-in commit (same files, same sha)."""
        files = {
            p.relative_to(folder).as_posix(): RepoFile.hash(p)
            for p in sorted(folder.rglob("*"))
            if p.is_file()
        }
        digest = hashlib.sha1()
        for name, info in files.items():
            digest.update(name.encode() + b"\0" + bytes.fromhex(info.sha256))
        return cls(folder=folder, files=files, sha=digest.hexdigest())


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
        """The bytes a download of the file gets (corruption included), read whole: small files only."""
        repo = self.repos.get(repo_id)
        if repo is None or path not in repo.files:
            return None
        info = repo.files[path]
        corrupt = (repo_id, path) in self.corrupt
        return b"".join(info.chunks(0, info.served_size(corrupt), corrupt=corrupt))


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
    def _start(self, status: int, length: int, headers: dict[str, str] | None) -> None:
        """Status line and headers for a body of ``length`` bytes (JSON unless told otherwise)."""
        self.send_response(status)
        all_headers = {
            "Content-Type": "application/json",
            "Content-Length": str(length),
            "Connection": "close",
        }
        all_headers.update(headers or {})
        for key, value in all_headers.items():
            self.send_header(key, value)
        self.end_headers()

    def _send(
        self, status: int, body: bytes, headers: dict[str, str] | None = None, *, head: bool = False
    ) -> None:
        self._start(status, len(body), headers)
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
                "Size": info.size,
                "Sha256": info.sha256,
                "Revision": repo.sha,
            }
            for name, info in repo.files.items()
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
        for name, info in repo.files.items():
            if sub and not name.startswith(sub.rstrip("/") + "/"):
                continue
            entry: dict[str, object] = {
                "type": "file",
                "path": name,
                "size": info.size,
                "oid": info.blob_id,
            }
            if is_lfs(name):
                entry["lfs"] = {
                    "oid": info.sha256,
                    "size": info.size,
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
        info = repo.files.get(file_path)
        if info is None or (repo_id, file_path) in hub.missing_files:
            if hf:
                self._json(
                    404, {"error": "Entry not found"}, head=head, headers={"X-Error-Code": "EntryNotFound"}
                )
            else:
                self._ms_not_found(f"file {file_path}", head)
            return
        etag = info.sha256 if is_lfs(file_path) else info.blob_id
        headers = {"Content-Type": "application/octet-stream", "ETag": f'"{etag}"', "X-Repo-Commit": repo.sha}
        if is_lfs(file_path):
            headers["X-Linked-Etag"] = f'"{etag}"'
            headers["X-Linked-Size"] = str(info.size)
        corrupt = (repo_id, file_path) in hub.corrupt
        size = info.served_size(corrupt)
        start, end, status = 0, size - 1, 200
        range_header = self.headers.get("Range")
        if range_header and (m := re.fullmatch(r"bytes=(\d+)-(\d*)", range_header.strip())):
            start = int(m.group(1))
            end = int(m.group(2)) if m.group(2) else size - 1
            if start >= size:
                self._send(416, b"", {"Content-Range": f"bytes */{size}"}, head=head)
                return
            end = min(end, size - 1)
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
            headers["Accept-Ranges"] = "bytes"
            status = 206
        self._start(status, max(0, end - start + 1), headers)
        if head:
            return
        try:
            for chunk in info.chunks(start, end + 1, corrupt=corrupt):
                self.wfile.write(chunk)
        except (BrokenPipeError, ConnectionResetError):  # the client stopped reading: its business
            pass
