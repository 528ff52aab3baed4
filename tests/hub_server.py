"""A loopback stand-in for the Hugging Face Hub, for tests and the remote bench.

It serves real files with the Hub's endpoints as huggingface_hub and llmtune
call them: ``/api/models/OWNER/REPO`` (the listing, ``?blobs=true`` sizes and
LFS SHA-256), ``/api/models?search=`` (search), ``/OWNER/REPO/resolve/REV/FILE``
(a 302 to ``/storage/...`` with ``X-Linked-Etag``/``X-Linked-Size``, as the Hub
redirects to its CDN) and ``/storage/...`` (range requests, ETags). Plain files
are also served at ``/files/NAME`` for URL tests.

Faults are switched on per server (:class:`Faults`): a delay per request (an
injected round-trip time), a server that ignores ``Range``, a connection cut
after N body bytes, a trickle, a redirect loop, gated and private repos, a
token check. Every request is counted, with the body bytes sent.

Every wait is bounded: a handler never sleeps longer than ``Faults.max_sleep_s``.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

# Files past this size get a pseudo SHA-256 (of their first MiB and size): hashing a
# sparse 40 GB file would take minutes, and only downloads check it.
REAL_SHA_MAX_BYTES = 256 << 20


@dataclass
class Faults:
    delay_s: float = 0.0  # before each reply: an injected round trip
    ignore_range: bool = False
    cut_after: int | None = None  # close the connection after this many body bytes
    trickle_s: float = 0.0  # sleep between 1 KiB pieces of a body
    redirect_loop: bool = False
    gated: set[str] = field(default_factory=set)  # repos whose files need an accepted token
    private: set[str] = field(default_factory=set)  # repos hidden without the token
    token: str | None = None  # the one valid token
    max_sleep_s: float = 5.0


@dataclass
class Counters:
    requests: int = 0
    connections: int = 0
    body_bytes: int = 0
    log: list[tuple[str, str, str]] = field(default_factory=list)  # method, path, range


@dataclass
class HostedFile:
    path: Path
    size: int
    sha256: str


def _sha(path: Path) -> str:
    size = path.stat().st_size
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        if size > REAL_SHA_MAX_BYTES:
            h.update(fh.read(1 << 20))
            h.update(str(size).encode())
        else:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


class FakeHub:
    def __init__(self) -> None:
        self.repos: dict[str, dict[str, HostedFile]] = {}
        self.downloads: dict[str, int] = {}
        self.plain: dict[str, HostedFile] = {}
        self.faults = Faults()
        self.counters = Counters()
        self._lock = threading.Lock()
        hub = self

        class Handler(_Handler):
            pass

        Handler.hub = hub
        self.server = _QuietServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def add_repo(self, repo_id: str, files: dict[str, Path], downloads: int = 0) -> None:
        self.repos[repo_id] = {
            name: HostedFile(Path(p), Path(p).stat().st_size, _sha(Path(p)))
            for name, p in files.items()
        }
        self.downloads[repo_id] = downloads

    def add_file(self, name: str, path: Path) -> str:
        self.plain[name] = HostedFile(path, path.stat().st_size, _sha(path))
        return f"{self.endpoint}/files/{name}"

    def commit(self, repo_id: str) -> str:
        return hashlib.sha1(repo_id.encode()).hexdigest()

    def reset(self) -> None:
        with self._lock:
            self.counters = Counters()
        old = self.faults
        self.faults = Faults(gated=old.gated, private=old.private, token=old.token)

    def count(self, method: str, path: str, rng: str) -> None:
        with self._lock:
            self.counters.requests += 1
            self.counters.log.append((method, path, rng))

    def sent(self, n: int) -> None:
        with self._lock:
            self.counters.body_bytes += n

    def __enter__(self) -> FakeHub:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client that gave up (a timeout test) is not the server's error


class _Handler(BaseHTTPRequestHandler):
    hub: FakeHub
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the base's name)
        pass

    def setup(self) -> None:
        super().setup()
        with self.hub._lock:
            self.hub.counters.connections += 1

    def _sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(min(seconds, self.hub.faults.max_sleep_s))

    def do_HEAD(self) -> None:
        self._route(head=True)

    def do_GET(self) -> None:
        self._route(head=False)

    def _route(self, head: bool) -> None:
        parts = urlsplit(self.path)
        path = unquote(parts.path)
        self.hub.count(self.command, path, self.headers.get("Range", ""))
        faults = self.hub.faults
        self._sleep(faults.delay_s)
        if path == "/api/models":
            return self._search(parse_qs(parts.query))
        if path.startswith("/api/models/"):
            rest = path[len("/api/models/") :]
            repo_id = "/".join(rest.split("/")[:2])
            return self._listing(repo_id)
        if path.startswith("/files/"):
            hosted = self.hub.plain.get(path[len("/files/") :])
            if hosted is None:
                return self._error(404, "EntryNotFound")
            return self._serve(hosted, head)
        if path.startswith("/storage/"):
            sha = path.split("/")[2]
            for files in self.hub.repos.values():
                for hosted in files.values():
                    if hosted.sha256 == sha:
                        return self._serve(hosted, head)
            return self._error(404, "EntryNotFound")
        if "/resolve/" in path:
            repo_part, _, rest = path.lstrip("/").partition("/resolve/")
            _rev, _, name = rest.partition("/")
            return self._resolve(repo_part, name)
        return self._error(404, "")

    def _auth_ok(self) -> bool | None:
        """None without a token, else whether it is the valid one."""
        given = self.headers.get("Authorization", "")
        if not given:
            return None
        return given == f"Bearer {self.hub.faults.token}"

    def _listing(self, repo_id: str) -> None:
        faults = self.hub.faults
        auth = self._auth_ok()
        if auth is False:
            return self._error(401, "", "Invalid credentials in Authorization header")
        files = self.hub.repos.get(repo_id)
        if files is None or (repo_id in faults.private and not auth):
            return self._error(401, "RepoNotFound", "Repository not found")
        siblings = [
            {
                "rfilename": name,
                "size": f.size,
                "blobId": hashlib.sha1(f.sha256.encode()).hexdigest(),
                "lfs": {"size": f.size, "sha256": f.sha256, "pointerSize": 134},
            }
            for name, f in files.items()
        ]
        body = {
            "id": repo_id,
            "sha": self.hub.commit(repo_id),
            "private": repo_id in faults.private,
            "gated": "manual" if repo_id in faults.gated else False,
            "downloads": self.hub.downloads.get(repo_id, 0),
            "likes": 0,
            "siblings": siblings,
        }
        self._json(body)

    def _search(self, query: dict[str, list[str]]) -> None:
        text = (query.get("search") or [""])[0].lower()
        limit = int((query.get("limit") or ["10"])[0])
        found = [r for r in self.hub.repos if text in r.lower()]
        found.sort(key=lambda r: -self.hub.downloads.get(r, 0))
        self._json(
            [
                {"id": r, "downloads": self.hub.downloads.get(r, 0), "likes": 0}
                for r in found[:limit]
            ]
        )

    def _resolve(self, repo_id: str, name: str) -> None:
        faults = self.hub.faults
        auth = self._auth_ok()
        if auth is False:
            return self._error(401, "", "Invalid credentials in Authorization header")
        files = self.hub.repos.get(repo_id)
        if files is None or (repo_id in faults.private and not auth):
            return self._error(401, "RepoNotFound", "Repository not found")
        if repo_id in faults.gated and not auth:
            return self._error(401, "GatedRepo", "Access to this model is restricted")
        hosted = files.get(name)
        if hosted is None:
            return self._error(404, "EntryNotFound", "Entry not found")
        if faults.redirect_loop:
            return self._redirect(self.path)
        self._redirect(
            f"/storage/{hosted.sha256}/{name.rsplit('/', 1)[-1]}",
            {
                "X-Linked-Etag": f'"{hosted.sha256}"',
                "X-Linked-Size": str(hosted.size),
                "X-Repo-Commit": self.hub.commit(repo_id),
            },
        )

    def _redirect(self, location: str, extra: dict[str, str] | None = None) -> None:
        body = b"redirect"
        self.send_response(302)
        self.send_header("Location", location)
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _serve(self, hosted: HostedFile, head: bool) -> None:
        faults = self.hub.faults
        size = hosted.size
        rng = self.headers.get("Range")
        start, end = 0, size - 1
        partial = False
        if rng and not faults.ignore_range and rng.startswith("bytes="):
            first, _, last = rng[6:].partition("-")
            start = int(first)
            end = min(int(last), size - 1) if last else size - 1
            if start >= size:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            partial = True
        length = end - start + 1
        self.send_response(206 if partial else 200)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", f'"{hosted.sha256}"')
        self.send_header("Content-Length", str(length))
        if partial:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if head:
            return
        with open(hosted.path, "rb") as fh:
            fh.seek(start)
            left = length
            budget = faults.cut_after
            while left > 0:
                piece = 1024 if faults.trickle_s else min(left, 1 << 20)
                if budget is not None:
                    if budget <= 0:
                        self.close_connection = True
                        self.wfile.flush()
                        self.connection.shutdown(2)
                        return
                    piece = min(piece, budget)
                    budget -= piece
                data = fh.read(min(piece, left))
                try:
                    self.wfile.write(data)
                except OSError:
                    self.close_connection = True
                    return
                self.hub.sent(len(data))
                left -= len(data)
                if faults.trickle_s:
                    self._sleep(faults.trickle_s)

    def _json(self, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, code: str, message: str = "") -> None:
        data = json.dumps({"error": message or code}).encode()
        self.send_response(status)
        if code:
            self.send_header("X-Error-Code", code)
        if message:
            self.send_header("X-Error-Message", message)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def hub_env(hub: FakeHub, cache: Path, hf_home: Path) -> dict[str, str]:
    """The environment that points llmtune at ``hub`` with private caches (holding
    this machine's probes, as any machine's cache does after its first start)."""
    from machine_probes import seed_probes

    seed_probes(cache)
    return {
        "HF_ENDPOINT": hub.endpoint,
        "LLMTUNE_CACHE_DIR": str(cache),
        "HF_HOME": str(hf_home),
        "LLMTUNE_HTTP_TIMEOUT": "10",
        "LLMTUNE_QUIET": "",
        "HF_HUB_OFFLINE": "",
        "HF_TOKEN": "",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "NO_PROXY": "127.0.0.1",
        "no_proxy": "127.0.0.1",
        "PATH": os.environ.get("PATH", ""),
    }


def big_sparse_model(folder: Path) -> Path:
    """A llama-shaped F16 model of about 1.6 GB whose data is a sparse hole."""
    from synth import llama_like

    (path,) = llama_like(
        folder / "big-F16.gguf",
        n_layer=16,
        n_embd=2048,
        n_head=16,
        n_head_kv=4,
        n_ff=5504,
        n_vocab=32000,
        name="big sparse",
    )
    return path


def split_models(folder: Path) -> list[Path]:
    """A small llama-shaped model split in three shards, as gguf-split names them."""
    from gguf import GGMLQuantizationType

    from synth import llama_like

    return llama_like(
        folder / "tiny-Q8_0.gguf",
        n_layer=4,
        n_vocab=2000,
        weight_type=GGMLQuantizationType.Q8_0,
        file_type=7,
        split_max_tensors=16,
    )


def standard_hub(folder: Path, demo: Path) -> FakeHub:
    """Repos the tests share: the demo model; a 1.6 GB sparse model; a split set with a
    second quant and an mmproj file; gated and private copies of the demo."""
    from gguf import GGMLQuantizationType

    from synth import llama_like

    hub = FakeHub()
    big = big_sparse_model(folder)
    shards = split_models(folder)
    (q4,) = llama_like(
        folder / "tiny-Q4_0.gguf",
        n_layer=4,
        n_vocab=2000,
        weight_type=GGMLQuantizationType.Q4_0,
        file_type=2,
    )
    (mmproj,) = llama_like(folder / "mmproj-tiny-f16.gguf", n_layer=1, n_vocab=100)
    hub.add_repo("test/smol", {demo.name: demo, "README.md": folder / "tiny-Q4_0.gguf"}, 500)
    hub.add_repo("test/big", {big.name: big}, 100)
    split = {f"Q8_0/{p.name}": p for p in shards}
    hub.add_repo("test/split", {**split, q4.name: q4, mmproj.name: mmproj}, 50)
    hub.add_repo("test/gated", {demo.name: demo})
    hub.add_repo("test/private", {demo.name: demo})
    hub.faults.gated.add("test/gated")
    hub.faults.private.add("test/private")
    return hub
