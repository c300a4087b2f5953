"""A local stand-in for the Hugging Face Hub, enough for huggingface_hub and LlamaMan's downloader.

It serves what ``HfApi.model_info``/``list_repo_files``/``get_hf_file_metadata`` ask for
(``/api/models/{repo}[/revision/{rev}]``, ``/api/models/{repo}/tree/{rev}``, and HEAD/GET of
``/{repo}/resolve/{rev}/{file}`` with ``X-Repo-Commit`` and ``ETag``), Range requests (206), and
knobs a test needs: fail the next N file GETs, cut a transfer short, throttle, require a token.
Every request is logged with its Range header. It runs in a thread, so it keeps serving while a
test's event loop is busy.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from llamaman.testing.tiny_gguf import write_tiny_model

_API_RE = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)(?:/revision/(?P<rev>[^/]+))?/?$")
_TREE_RE = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?$")
_RESOLVE_RE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")
_CHUNK = 16 * 1024


@dataclass
class HubRequest:
    method: str
    path: str
    range: str | None
    authorization: str | None


@dataclass
class FakeRepo:
    repo_id: str
    files: dict[str, bytes] = field(default_factory=dict)
    sha: str = field(default_factory=lambda: secrets.token_hex(20))
    token: str | None = None

    def sha256(self, path: str) -> str:
        return hashlib.sha256(self.files[path]).hexdigest()


class FakeHub:
    def __init__(self) -> None:
        self.repos: dict[str, FakeRepo] = {}
        self.requests: list[HubRequest] = []
        self.throttle_bps: float = 0
        self._fail: list[int] = []
        self._cut: list[int] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # ---- content -----------------------------------------------------------------------------
    def add_file(self, repo_id: str, path: str, data: bytes) -> None:
        repo = self.repos.setdefault(repo_id, FakeRepo(repo_id))
        repo.files[path] = data

    def add_model(
        self,
        repo_id: str,
        filename: str,
        variant: Literal["A", "B"] = "A",
        *,
        n_parts: int = 1,
        pad_to: int = 0,
    ) -> list[str]:
        """Publish a tiny llama GGUF (split in ``n_parts``); ``pad_to`` grows the last file with zeros."""
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / Path(filename).name
            written = write_tiny_model(local, variant, n_parts=n_parts)
            folder = str(Path(filename).parent)
            names = []
            for i, p in enumerate(written):
                data = p.read_bytes()
                if pad_to and i == len(written) - 1 and len(data) < pad_to:
                    data += bytes(pad_to - len(data))  # llama.cpp ignores bytes after the tensor data
                name = p.name if folder == "." else f"{folder}/{p.name}"
                self.add_file(repo_id, name, data)
                names.append(name)
        return names

    def require_token(self, repo_id: str, token: str) -> None:
        self.repos[repo_id].token = token

    # ---- failure knobs -----------------------------------------------------------------------
    def fail_next(self, n: int, status: int = 500) -> None:
        """The next ``n`` file GETs answer ``status``."""
        with self._lock:
            self._fail += [status] * n

    def cut_next(self, n_bytes: int, times: int = 1) -> None:
        """The next file GETs send only ``n_bytes`` of their body, then drop the connection."""
        with self._lock:
            self._cut += [n_bytes] * times

    def file_gets(self, suffix: str = "") -> list[HubRequest]:
        gets = [r for r in self.requests if r.method == "GET" and "/resolve/" in r.path]
        return [r for r in gets if r.path.endswith(suffix)]

    # ---- serving -----------------------------------------------------------------------------
    @property
    def url(self) -> str:
        assert self._server is not None, "FakeHub.start() first"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> str:
        hub = self

        class Handler(_Handler):
            owner = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-hub", daemon=True)
        self._thread.start()
        return self.url

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeHub:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _take(self, queue: list[int]) -> int | None:
        with self._lock:
            return queue.pop(0) if queue else None


class _Handler(BaseHTTPRequestHandler):
    owner: FakeHub
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_HEAD(self) -> None:
        self._handle(head=True)

    def do_GET(self) -> None:
        self._handle(head=False)

    # ---- plumbing ----------------------------------------------------------------------------
    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, payload: Any, status: int = 200) -> None:
        self._send(status, json.dumps(payload).encode(), {"Content-Type": "application/json"})

    def _error(self, status: int, code: str, message: str) -> None:
        headers = {"X-Error-Code": code, "X-Error-Message": message, "Content-Type": "application/json"}
        self._send(status, json.dumps({"error": message}).encode(), headers)

    def _handle(self, head: bool) -> None:
        hub = self.owner
        path = unquote(urlsplit(self.path).path)
        auth = self.headers.get("Authorization")
        hub.requests.append(HubRequest(self.command, path, self.headers.get("Range"), auth))
        try:
            if m := _TREE_RE.match(path):
                self._tree(m["repo"], m["rev"], m["path"] or "")
            elif m := _API_RE.match(path):
                self._info(m["repo"], m["rev"] or "main")
            elif m := _RESOLVE_RE.match(path):
                self._resolve(m["repo"], m["rev"], m["path"], head)
            else:
                self._error(404, "NotFound", f"no route for {path}")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _repo(self, repo_id: str, rev: str) -> FakeRepo | None:
        repo = self.owner.repos.get(repo_id)
        if repo is None or (repo.token and self.headers.get("Authorization") != f"Bearer {repo.token}"):
            # Like the Hub: a private repo looks missing to those without access.
            self._error(401 if repo else 404, "RepoNotFound", "Repository not found")
            return None
        if rev not in ("main", repo.sha):
            self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
            return None
        return repo

    def _info(self, repo_id: str, rev: str) -> None:
        repo = self._repo(repo_id, rev)
        if repo is None:
            return
        siblings = [
            {
                "rfilename": name,
                "size": len(data),
                "blobId": hashlib.sha1(data).hexdigest(),
                "lfs": {"sha256": repo.sha256(name), "size": len(data), "pointerSize": 134},
            }
            for name, data in sorted(repo.files.items())
        ]
        self._json({"id": repo_id, "modelId": repo_id, "sha": repo.sha, "private": bool(repo.token),
                    "tags": ["gguf"], "siblings": siblings})  # fmt: skip

    def _tree(self, repo_id: str, rev: str, prefix: str) -> None:
        repo = self._repo(repo_id, rev)
        if repo is None:
            return
        entries: list[dict[str, Any]] = []
        folders: set[str] = set()
        for name, data in sorted(repo.files.items()):
            if prefix and not name.startswith(prefix.rstrip("/") + "/"):
                continue
            parts = name.split("/")
            for i in range(1, len(parts)):
                folders.add("/".join(parts[:i]))
            entries.append({
                "type": "file", "oid": hashlib.sha1(data).hexdigest(), "size": len(data), "path": name,
                "lfs": {"oid": repo.sha256(name), "size": len(data), "pointerSize": 134},
            })  # fmt: skip
        entries += [{"type": "directory", "oid": "0" * 40, "size": 0, "path": f} for f in sorted(folders)]
        self._json(entries)

    def _resolve(self, repo_id: str, rev: str, name: str, head: bool) -> None:
        hub = self.owner
        repo = self._repo(repo_id, rev)
        if repo is None:
            return
        data = repo.files.get(name)
        if data is None:
            self._error(404, "EntryNotFound", f"{name} does not exist on {rev}")
            return
        size = len(data)
        headers = {
            "X-Repo-Commit": repo.sha,
            "ETag": f'"{repo.sha256(name)}"',
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        if head:
            self.send_response(200)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(size))
            self.end_headers()
            return
        if (status := hub._take(hub._fail)) is not None:
            self._error(status, "ServerError", "injected failure")
            return
        start, end = 0, size - 1
        status = 200
        if rng := self.headers.get("Range"):
            m = re.match(r"bytes=(\d+)-(\d*)$", rng.strip())
            if m is None or int(m[1]) >= size:
                self._send(416, b"", {"Content-Range": f"bytes */{size}"})
                return
            start = int(m[1])
            end = min(int(m[2]), size - 1) if m[2] else size - 1
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        body = memoryview(data)[start : end + 1]
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        cut = hub._take(hub._cut)
        sent = 0
        began = time.monotonic()
        while sent < len(body):
            chunk = body[sent : sent + _CHUNK]
            if cut is not None and sent + len(chunk) > cut:
                self.wfile.write(chunk[: max(0, cut - sent)])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(chunk)
            sent += len(chunk)
            if hub.throttle_bps > 0:
                # Sleep until the bytes sent so far match the rate (measured from the first byte).
                ahead = sent / hub.throttle_bps - (time.monotonic() - began)
                if ahead > 0:
                    time.sleep(ahead)
