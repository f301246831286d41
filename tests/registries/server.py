"""A local stand-in for the model registries, written from their public protocol
documentation, in one threaded HTTP/1.1 server (`Registries`), started in the test's
own process so the test reads its counters directly.

Hugging Face (huggingface_hub's `HF_ENDPOINT` points here):
  GET  /api/models?search=Q&limit=N                   the model list (id, downloads, likes, siblings)
  GET  /api/models/{org}/{repo}/tree/{rev}            the file list: path, size, oid, lfs {oid (sha256), size}
  GET  /api/models/{org}/{repo}/revision/{rev}        sha (the commit) and siblings
  HEAD|GET /{org}/{repo}/resolve/{rev}/{path}         an LFS file: 302 to the CDN with X-Linked-Etag,
                                                      X-Linked-Size, X-Repo-Commit and ETag, as the hub does
Ollama registry (v2, the distribution API):
  GET  /v2/{name}/manifests/{tag}                     the image manifest: config and layers, the model layer
                                                      `application/vnd.ollama.image.model` with digest and size
  GET  /v2/{name}/blobs/sha256:{hex}                  307 to the CDN
Plain files:
  HEAD|GET /files/{name}                              ETag, Content-Length, Range
The CDN (where the redirects go):
  HEAD|GET /cdn/{sha256}                              ETag, Accept-Ranges, Content-Length, Range (206)

Faults (attributes, set by the test): `rate_bps` throttles the bodies of the connections
that start while it is set; `drop_after`
closes the connection after that many body bytes, `drops` times; `fail_5xx` answers
that many body requests with a 503; `wrong_digest` publishes a sha256 that is not the
content's; `stall_after` stops sending (and holds the connection) after that many bytes,
once. `served` counts the body bytes sent per content sha256; `requests` logs each
request (method, path, Range).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

COMMIT = "0123456789abcdef0123456789abcdef01234567"
OLLAMA_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MODEL_LAYER = "application/vnd.ollama.image.model"
CHUNK = 64 << 10


@dataclass
class Blob:
    path: Path
    size: int
    sha256: str

    @classmethod
    def of(cls, path: Path) -> Blob:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        return cls(Path(path), os.path.getsize(path), digest.hexdigest())


@dataclass
class Registries:
    hf: dict[str, dict[str, Blob]] = field(default_factory=dict)  # repo -> {path in repo: blob}
    ollama: dict[str, Blob] = field(default_factory=dict)  # "library/name:tag" -> model blob
    files: dict[str, Blob] = field(default_factory=dict)  # /files/{name}
    downloads: dict[str, int] = field(default_factory=dict)  # repo -> its download count in the search
    rate_bps: float | None = None
    drop_after: int | None = None
    drops: int = 0
    fail_5xx: int = 0
    wrong_digest: bool = False
    stall_after: int | None = None
    served: dict[str, int] = field(default_factory=dict)
    requests: list[dict] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None

    # ---- set-up ----------------------------------------------------------------------

    def add_hf(self, repo: str, files: dict[str, Path], downloads: int = 0) -> None:
        self.hf[repo] = {name: Blob.of(p) for name, p in files.items()}
        self.downloads[repo] = downloads

    def add_ollama(self, name: str, tag: str, path: Path) -> None:
        full = name if "/" in name else f"library/{name}"
        self.ollama[f"{full}:{tag}"] = Blob.of(path)

    def add_file(self, name: str, path: Path) -> None:
        self.files[name] = Blob.of(path)

    def start(self) -> Registries:
        registries = self

        class Handler(_Handler):
            state = registries

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, name="registries", daemon=True).start()
        return self

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def served_of(self, blob: Blob) -> int:
        with self.lock:
            return self.served.get(blob.sha256, 0)

    def blobs(self) -> dict[str, Blob]:
        out = {b.sha256: b for files in self.hf.values() for b in files.values()}
        out.update({b.sha256: b for b in self.ollama.values()})
        out.update({b.sha256: b for b in self.files.values()})
        return out

    def published_sha(self, blob: Blob) -> str:
        return hashlib.sha256(b"not the content").hexdigest() if self.wrong_digest else blob.sha256


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: Registries

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        pass

    # ---- dispatch --------------------------------------------------------------------

    def do_HEAD(self) -> None:
        self._route(head=True)

    def do_GET(self) -> None:
        self._route(head=False)

    def _route(self, head: bool) -> None:
        parts = urlsplit(self.path)
        path, query = unquote(parts.path), parse_qs(parts.query)
        with self.state.lock:
            self.state.requests.append({"method": self.command, "path": path, "range": self.headers.get("Range"),
                                        "if_range": self.headers.get("If-Range"), "at": time.time()})
        if path == "/api/models":
            return self._search(query)
        if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)", path):
            return self._tree(m.group(1))
        if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/revision/([^/]+)", path):
            return self._revision(m.group(1))
        if m := re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path):
            return self._resolve(m.group(1), m.group(3), head)
        if m := re.fullmatch(r"/v2/(.+)/manifests/([^/]+)", path):
            return self._manifest(m.group(1), m.group(2))
        if m := re.fullmatch(r"/v2/(.+)/blobs/sha256:([0-9a-f]{64})", path):
            return self._redirect(f"/cdn/{m.group(2)}", 307) if m.group(2) in self.state.blobs() else self._json(
                404, {"errors": [{"code": "BLOB_UNKNOWN", "message": "blob unknown to registry"}]})
        if m := re.fullmatch(r"/files/(.+)", path):
            blob = self.state.files.get(m.group(1))
            return self._body(blob, head) if blob else self._json(404, {"error": "not found"})
        if m := re.fullmatch(r"/cdn/([0-9a-f]{64})", path):
            blob = self.state.blobs().get(m.group(1))
            return self._body(blob, head) if blob else self._json(404, {"error": "not found"})
        self._json(404, {"error": f"no route {path}"})

    # ---- the hub ---------------------------------------------------------------------

    def _search(self, query: dict) -> None:
        text = (query.get("search") or [""])[0].lower()
        limit = int((query.get("limit") or ["20"])[0])
        found = [{"_id": repo, "id": repo, "modelId": repo, "downloads": self.state.downloads.get(repo, 0), "likes": 1,
                  "tags": ["gguf"], "siblings": [{"rfilename": name} for name in files]}
                 for repo, files in self.state.hf.items() if text in repo.lower()]
        found.sort(key=lambda m: -m["downloads"])
        self._json(200, found[:limit])

    def _tree(self, repo: str) -> None:
        files = self.state.hf.get(repo)
        if files is None:
            return self._json(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
        self._json(200, [{"type": "file", "oid": hashlib.sha1(b.sha256.encode()).hexdigest(), "size": b.size, "path": name,
                          "lfs": {"oid": self.state.published_sha(b), "size": b.size, "pointerSize": 134}}
                         for name, b in files.items()])

    def _revision(self, repo: str) -> None:
        files = self.state.hf.get(repo)
        if files is None:
            return self._json(404, {"error": "Repository not found"})
        self._json(200, {"id": repo, "sha": COMMIT, "siblings": [{"rfilename": n} for n in files]})

    def _resolve(self, repo: str, name: str, head: bool) -> None:
        blob = self.state.hf.get(repo, {}).get(name)
        if blob is None:
            return self._json(404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound"})
        sha = self.state.published_sha(blob)
        self._redirect(f"/cdn/{blob.sha256}", 302, {"X-Linked-Etag": f'"{sha}"', "X-Linked-Size": str(blob.size),
                                                    "X-Repo-Commit": COMMIT, "ETag": f'"{sha}"'})

    # ---- the Ollama registry -----------------------------------------------------------

    def _manifest(self, name: str, tag: str) -> None:
        blob = self.state.ollama.get(f"{name}:{tag}")
        if blob is None:
            return self._json(404, {"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown"}]})
        config = json.dumps({"model_format": "gguf", "model_family": "llama"}).encode()
        self._json(200, {
            "schemaVersion": 2, "mediaType": OLLAMA_MANIFEST,
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                       "digest": f"sha256:{hashlib.sha256(config).hexdigest()}", "size": len(config)},
            "layers": [{"mediaType": MODEL_LAYER, "digest": f"sha256:{self.state.published_sha(blob)}", "size": blob.size},
                       {"mediaType": "application/vnd.ollama.image.params", "digest": "sha256:" + "0" * 64, "size": 30}],
        }, content_type=OLLAMA_MANIFEST)

    # ---- bodies ------------------------------------------------------------------------

    def _json(self, status: int, body, headers: dict | None = None, content_type: str = "application/json") -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _redirect(self, location: str, status: int, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()

    def _body(self, blob: Blob, head: bool) -> None:
        state = self.state
        etag = f'"{blob.sha256}"'
        if not head and state.fail_5xx > 0:
            with state.lock:
                state.fail_5xx -= 1
            return self._json(503, {"error": "temporarily unavailable"}, {"Retry-After": "1"})
        start, status = 0, 200
        wanted = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        if wanted and (if_range is None or if_range == etag):
            m = re.fullmatch(r"bytes=(\d+)-", wanted.strip())
            if m:
                start = int(m.group(1))
                if start >= blob.size:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{blob.size}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                status = 206
        length = blob.size - start
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", etag)
        self.send_header("Content-Length", str(length))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{blob.size - 1}/{blob.size}")
        self.end_headers()
        if head:
            return
        self._send(blob, start, length)

    def _send(self, blob: Blob, start: int, length: int) -> None:
        state = self.state
        with state.lock:
            drop = state.drop_after if state.drops > 0 else None
            if drop is not None:
                state.drops -= 1
            stall, state.stall_after = state.stall_after, None
            rate = state.rate_bps  # for this connection: a change applies to the next ones
        plain = rate is None and drop is None and stall is None
        sent = 0
        with open(blob.path, "rb") as f:
            if plain:  # as fast as the kernel goes (the bench's case)
                try:
                    sent = self.connection.sendfile(f, start, length)
                finally:
                    self._count(blob, sent)
                return
            f.seek(start)
            began = time.monotonic()
            while sent < length:
                n = min(CHUNK, length - sent)
                if drop is not None:
                    n = min(n, drop - sent)
                if stall is not None:
                    n = min(n, stall - sent)
                if n <= 0:
                    break
                data = f.read(n)
                try:
                    self.wfile.write(data)
                except OSError:
                    break
                sent += len(data)
                self._count(blob, len(data))
                if rate:
                    ahead = sent / rate - (time.monotonic() - began)
                    if ahead > 0:
                        time.sleep(ahead)
        if stall is not None and sent >= stall:
            time.sleep(30)  # hold the connection without a byte: the client's stall timer fires
        if sent < length:
            self.close_connection = True
            try:
                self.connection.shutdown(2)
            except OSError:
                pass

    def _count(self, blob: Blob, n: int) -> None:
        with self.state.lock:
            self.state.served[blob.sha256] = self.state.served.get(blob.sha256, 0) + n
