"""GGUF headers over HTTP: range requests on one kept-alive connection.

A header is a few megabytes at the front of a file of many gigabytes. The
first request asks for :data:`FIRST_READ_BYTES` (a whole header for most
models); when the parser reaches the end of the bytes at hand it says where
it expects the header to end (:class:`~llmtune.model.gguf_file.HeaderIncomplete`,
estimated from the strings walked so far and the tensor entries still ahead),
and one more request fetches that much. No HEAD: a 206 reply's Content-Range
names the file's size and its ETag the version.

Headers are cached on disk keyed by the file's ETag and size (the Hub's
``X-Linked-Etag`` is the file's SHA-256), so a second look at the same file
reads no header bytes. The cache gets a file only after its header parsed,
written to a temporary name and renamed.

Every fault is a :class:`~llmtune.errors.RemoteError` in one sentence: no
connection, a timeout (per socket operation and for each whole reply, so a
trickling server cannot hold a read forever), a redirect loop, a server that
ignores ``Range`` (refused: it would send the whole file), a reply cut short.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import ssl
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urljoin, urlsplit

from llmtune.errors import GGUFError, RemoteError
from llmtune.model.gguf_file import GGUFFile, HeaderIncomplete, parse_header
from llmtune.paths import write_atomic

# A file's first read: most headers end within it (llama 3's 128k-token vocabulary
# and its merges reach ~9 MB: the second read then knows the merges' size).
FIRST_READ_BYTES = 4 << 20
# A split model's later shards hold no vocabulary: their header is the tensor table.
LATER_SHARD_READ_BYTES = 256 << 10
# A header larger than this is not a real model's (llama 3's is ~9 MB).
MAX_HEADER_BYTES = 256 << 20
MAX_REDIRECTS = 10
DEFAULT_TIMEOUT_S = 30.0
_CHUNK = 1 << 16
_REDIRECTS = (301, 302, 303, 307, 308)


def timeout_s() -> float:
    """Seconds a socket operation, and one whole reply, may take (``LLMTUNE_HTTP_TIMEOUT``)."""
    raw = os.environ.get("LLMTUNE_HTTP_TIMEOUT", "")
    try:
        value = float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        return DEFAULT_TIMEOUT_S
    return value if value > 0 else DEFAULT_TIMEOUT_S


def short_url(url: str) -> str:
    """A URL without its query (signed storage URLs carry long tokens)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


@dataclass
class Traffic:
    """What the network cost: requests (each one round trip), new connections, bytes."""

    requests: int = 0
    connections: int = 0
    bytes_read: int = 0


@dataclass(frozen=True)
class RangeReply:
    data: bytes
    total_bytes: int
    etag: str | None
    final_url: str


class HttpClient:
    """Ranged GETs with redirects followed, one kept-alive connection per origin.

    ``auth`` headers go only to ``auth_host`` (the Hub), never to the storage a
    redirect leads to.
    """

    def __init__(
        self,
        auth: Mapping[str, str] | None = None,
        auth_host: str | None = None,
        timeout: float | None = None,
    ) -> None:
        self.auth = dict(auth or {})
        self.auth_host = auth_host
        self.timeout = timeout_s() if timeout is None else timeout
        self.traffic = Traffic()
        self._connections: dict[tuple[str, str], http.client.HTTPConnection] = {}
        # Where each URL's redirects ended: later reads of a file skip the hop.
        self._resolved: dict[str, str] = {}

    def close(self) -> None:
        for conn in self._connections.values():
            conn.close()
        self._connections.clear()

    def __enter__(self) -> HttpClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get_range(self, url: str, start: int, end: int) -> RangeReply:
        """Bytes ``start`` to ``end`` (exclusive) of the file at ``url``."""
        headers = {"Range": f"bytes={start}-{end - 1}", "Accept-Encoding": "identity"}
        response, key, current, linked_etag = self._follow(url, headers)
        try:
            data, total, etag = self._range_body(response, current, start, end)
        except BaseException:
            self._drop(key)
            raise
        self._resolved[url] = current
        return RangeReply(data, total, linked_etag or etag, current)

    def stream(self, url: str, start: int, on_total: Callable[[int], None]) -> Iterator[bytes]:
        """The file from byte ``start`` to its end, in pieces (a download)."""
        headers = {"Range": f"bytes={start}-", "Accept-Encoding": "identity"}
        response, key, current, _ = self._follow(url, headers)
        where = short_url(current)
        try:
            if response.status == 206:
                first, last, total = _content_range(response.getheader("Content-Range"), where)
                if first != start:
                    raise RemoteError(f"the server resumed at byte {first}, not {start}", where)
            elif response.status == 200 and start == 0:
                length = response.getheader("Content-Length") or ""
                total = last = int(length) - 1 if length.isdigit() else -1
                if total < 0:
                    raise RemoteError("the server does not say how long the file is", where)
                total += 1
            else:
                raise RemoteError(_status_sentence(response.status, response), where)
            on_total(total)
            left = last - start + 1
            while left > 0:
                try:
                    chunk = response.read1(min(1 << 20, left))
                except TimeoutError:
                    raise RemoteError(
                        f"the server stopped sending (no data for {self.timeout:g} s)", where
                    ) from None
                except (OSError, http.client.HTTPException) as exc:
                    raise RemoteError(
                        f"the connection failed ({type(exc).__name__})", where
                    ) from None
                if not chunk:
                    raise RemoteError(f"the connection closed with {left:,} bytes to go", where)
                left -= len(chunk)
                self.traffic.bytes_read += len(chunk)
                yield chunk
        finally:
            self._drop(key)

    def _follow(
        self, url: str, headers: Mapping[str, str]
    ) -> tuple[http.client.HTTPResponse, tuple[str, str], str, str | None]:
        """Send, following redirects: the final response, its connection, URL, linked ETag."""
        seen: set[str] = set()
        current = self._resolved.get(url, url)
        linked_etag: str | None = None
        for _ in range(MAX_REDIRECTS + 1):
            if current in seen:
                raise RemoteError("the server redirects in a loop", short_url(url))
            seen.add(current)
            response, key = self._send(current, headers)
            if response.status not in _REDIRECTS:
                return response, key, current, linked_etag
            location = response.getheader("Location")
            linked_etag = linked_etag or _etag(response.getheader("X-Linked-Etag"))
            self._drain(response, key)
            if not location:
                raise RemoteError(f"HTTP {response.status} without a Location", short_url(current))
            current = urljoin(current, location)
        raise RemoteError(f"more than {MAX_REDIRECTS} redirects", short_url(url))

    def _range_body(
        self, response: http.client.HTTPResponse, url: str, start: int, end: int
    ) -> tuple[bytes, int, str | None]:
        status = response.status
        where = short_url(url)
        if status == 206:
            first, last, total = _content_range(response.getheader("Content-Range"), where)
            if first != start or last >= end or total < last + 1:
                raise RemoteError(
                    f"the server sent bytes {first}-{last} for a request of {start}-{end - 1}",
                    where,
                )
            data = self._read(response, last - first + 1, where)
            return data, total, _etag(response.getheader("ETag"))
        if status == 200:
            length = response.getheader("Content-Length")
            size = int(length) if length and length.isdigit() else None
            if start == 0 and size is not None and size <= end:
                # A file smaller than the read: the whole of it is the answer.
                return self._read(response, size, where), size, _etag(response.getheader("ETag"))
            shown = f" of {size:,} bytes" if size is not None else ""
            raise RemoteError(
                f"the server ignores HTTP range requests: reading the header would download "
                f"the whole file{shown}; download it instead",
                where,
            )
        if status == 416:
            raise RemoteError("the file is shorter than a GGUF header (HTTP 416)", where)
        raise RemoteError(_status_sentence(status, response), where)

    def _send(
        self, url: str, headers: Mapping[str, str]
    ) -> tuple[http.client.HTTPResponse, tuple[str, str]]:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise RemoteError("only http:// and https:// URLs can be read", short_url(url))
        key = (parts.scheme, parts.netloc)
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        sent = dict(headers)
        if self.auth and parts.hostname == self.auth_host:
            sent.update(self.auth)
        for attempt in range(2):
            reused = key in self._connections
            conn = self._connection(key)
            try:
                conn.request("GET", target, headers=sent)
                self.traffic.requests += 1
                response = conn.getresponse()
                return response, key
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                self._drop(key)
                # A kept-alive connection the server closed meanwhile: one fresh try.
                if reused and attempt == 0:
                    continue
                raise RemoteError(
                    f"the server closed the connection ({type(exc).__name__})", short_url(url)
                ) from None
            except TimeoutError:
                self._drop(key)
                raise RemoteError(
                    f"no answer within {self.timeout:g} s (LLMTUNE_HTTP_TIMEOUT)", short_url(url)
                ) from None
            except ssl.SSLError as exc:
                self._drop(key)
                raise RemoteError(f"TLS failed: {exc.reason or exc}", short_url(url)) from None
            except OSError as exc:
                self._drop(key)
                reason = exc.strerror or str(exc) or type(exc).__name__
                raise RemoteError(f"cannot connect: {reason}", short_url(url)) from None
        raise AssertionError("unreachable")

    def _connection(self, key: tuple[str, str]) -> http.client.HTTPConnection:
        conn = self._connections.get(key)
        if conn is None:
            scheme, netloc = key
            if scheme == "https":
                conn = http.client.HTTPSConnection(
                    netloc, timeout=self.timeout, context=ssl.create_default_context()
                )
            else:
                conn = http.client.HTTPConnection(netloc, timeout=self.timeout)
            self._connections[key] = conn
            self.traffic.connections += 1
        return conn

    def _drop(self, key: tuple[str, str]) -> None:
        conn = self._connections.pop(key, None)
        if conn is not None:
            conn.close()

    def _drain(self, response: http.client.HTTPResponse, key: tuple[str, str]) -> None:
        """Read a redirect's short body so the connection can be reused; drop it if long."""
        length = response.getheader("Content-Length")
        if length is not None and length.isdigit() and int(length) <= _CHUNK:
            try:
                response.read()
                return
            except (OSError, http.client.HTTPException):
                pass
        self._drop(key)

    def _read(self, response: http.client.HTTPResponse, n: int, where: str) -> bytes:
        """``n`` bytes of the body, within one timeout for the whole reply."""
        deadline = time.monotonic() + self.timeout
        parts: list[bytes] = []
        got = 0
        try:
            while got < n:
                if time.monotonic() > deadline:
                    raise RemoteError(
                        f"the server sent {got:,} of {n:,} bytes in {self.timeout:g} s "
                        "(LLMTUNE_HTTP_TIMEOUT)",
                        where,
                    )
                chunk = response.read1(min(_CHUNK, n - got))
                if not chunk:
                    raise RemoteError(f"the connection closed after {got:,} of {n:,} bytes", where)
                parts.append(chunk)
                got += len(chunk)
                self.traffic.bytes_read += len(chunk)
            # read1 leaves a finished reply open; read() closes it so the connection is reused.
            response.read()
        except TimeoutError:
            raise RemoteError(
                f"the server stopped sending after {got:,} of {n:,} bytes "
                f"(no data for {self.timeout:g} s)",
                where,
            ) from None
        except (OSError, http.client.HTTPException) as exc:
            raise RemoteError(
                f"the connection failed after {got:,} of {n:,} bytes ({type(exc).__name__})",
                where,
            ) from None
        return b"".join(parts)


def _content_range(value: str | None, where: str) -> tuple[int, int, int]:
    try:
        assert value is not None
        unit, _, rest = value.partition(" ")
        span, _, total = rest.partition("/")
        first, _, last = span.partition("-")
        assert unit == "bytes"
        return int(first), int(last), int(total)
    except (AssertionError, ValueError):
        raise RemoteError(f"the server's Content-Range is {value!r}", where) from None


def _etag(value: str | None) -> str | None:
    """A strong ETag without its quotes; weak ones (W/) do not name exact bytes."""
    if not value or value.startswith("W/"):
        return None
    return value.strip('"') or None


def _status_sentence(status: int, response: http.client.HTTPResponse) -> str:
    code = response.getheader("X-Error-Code") or ""
    if code == "GatedRepo":
        return "the repository is gated: accept its terms on its page, then set HF_TOKEN"
    if status == 401:
        return "the server asks for a token (HTTP 401): set HF_TOKEN to one that can read it"
    if status == 403:
        return "access denied (HTTP 403)"
    if status == 404 or code in ("EntryNotFound", "RepoNotFound"):
        return "no such file (HTTP 404)"
    if status == 429:
        return "the server asks to slow down (HTTP 429); try again later"
    return f"the server answered HTTP {status} {response.reason}".rstrip()


# ---- the header cache ----------------------------------------------------------


@dataclass(frozen=True)
class CachedHeader:
    data: bytes
    total_bytes: int
    store: str  # the cache file: a prefix of the model file holding its header


@dataclass
class HeaderCache:
    """Headers on disk, one file per (ETag, size), plus a note of each URL's last ETag."""

    folder: Path
    writable: bool = field(default=True)

    def _key(self, etag: str, total_bytes: int) -> str:
        return hashlib.sha256(f"{etag}\0{total_bytes}".encode()).hexdigest()[:40]

    def path(self, etag: str, total_bytes: int) -> str:
        return str(self.folder / f"{self._key(etag, total_bytes)}.gguf")

    def get(self, etag: str, total_bytes: int) -> CachedHeader | None:
        path = Path(self.path(etag, total_bytes))
        try:
            data = path.read_bytes()
        except OSError:
            return None
        return CachedHeader(data, total_bytes, str(path))

    def put(self, etag: str, total_bytes: int, data: bytes) -> bool:
        """Keep ``data`` (a parsed header); False when the disk refused."""
        return _write_atomic(Path(self.path(etag, total_bytes)), data)

    def url_etag(self, url: str) -> tuple[str, int] | None:
        note = self.folder / f"url-{hashlib.sha256(url.encode()).hexdigest()[:40]}.json"
        try:
            saved = json.loads(note.read_text(encoding="utf-8"))
            return str(saved["etag"]), int(saved["size"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def note_url(self, url: str, etag: str, total_bytes: int) -> None:
        note = self.folder / f"url-{hashlib.sha256(url.encode()).hexdigest()[:40]}.json"
        _write_atomic(note, json.dumps({"etag": etag, "size": total_bytes}).encode())


def _write_atomic(path: Path, data: bytes) -> bool:
    """A cache entry written whole or not at all; False when the disk refused."""
    try:
        write_atomic(path, data)
    except OSError:
        return False
    return True


def default_cache() -> HeaderCache:
    from llmtune.paths import cache_dir

    return HeaderCache(cache_dir() / "headers")


# ---- reading one header --------------------------------------------------------


@dataclass(frozen=True)
class RemoteHeader:
    gguf: GGUFFile
    url: str
    etag: str | None
    cached: bool


def read_remote_gguf(
    client: HttpClient,
    url: str,
    shard: int = 0,
    *,
    display: str | None = None,
    etag: str | None = None,
    size: int | None = None,
    cache: HeaderCache | None = None,
    first_read: int = FIRST_READ_BYTES,
) -> RemoteHeader:
    """The header of the GGUF file at ``url``, fetched only as far as it goes.

    ``etag`` and ``size``, when known beforehand (the Hub's listing), find a cached
    header without any request.
    """
    shown = display or url
    if cache is not None and etag and size:
        hit = cache.get(etag, size)
        if hit is not None:
            return RemoteHeader(_parse(hit.data, size, shown, shard, hit.store), url, etag, True)
    if cache is not None and etag is None:
        known = cache.url_etag(url)
        if known is not None:
            # One byte asks whether the file is still the one cached.
            probe = client.get_range(url, 0, 1)
            if (probe.etag, probe.total_bytes) == known:
                hit = cache.get(*known)
                if hit is not None:
                    gf = _parse(hit.data, hit.total_bytes, shown, shard, hit.store)
                    return RemoteHeader(gf, url, probe.etag, True)
    want = first_read
    buf = b""
    total: int | None = None
    seen_etag: str | None = None
    while True:
        reply = client.get_range(url, len(buf), want if total is None else min(want, total))
        if (
            total is not None
            and reply.total_bytes != total
            or (seen_etag is not None and reply.etag != seen_etag)
        ):
            raise RemoteError("the file changed while its header was read", short_url(url))
        total, seen_etag = reply.total_bytes, reply.etag
        buf += reply.data
        key_etag = etag or seen_etag
        # Lazy values (the vocabulary) will read from the cached copy: same offsets.
        store = cache.path(key_etag, total) if cache is not None and key_etag else None
        try:
            gf = parse_header(buf, total, shown, shard, store=store)
            break
        except HeaderIncomplete as more:
            if len(buf) >= total:
                raise GGUFError("the header runs past the end of the file", shown) from None
            want = max(more.end + more.end // 10 + _CHUNK, len(buf) * 3 // 2)
            if want > MAX_HEADER_BYTES and more.end > MAX_HEADER_BYTES:
                raise GGUFError(
                    f"the header claims more than {MAX_HEADER_BYTES >> 20} MiB "
                    "(corrupt, or not a model)",
                    shown,
                ) from None
            want = min(want, total, MAX_HEADER_BYTES)
    if cache is not None and key_etag and cache.put(key_etag, total, buf[: gf.header_bytes]):
        if etag is None:
            cache.note_url(url, key_etag, total)
    return RemoteHeader(gf, url, key_etag, False)


def _parse(data: bytes, total: int, shown: str, shard: int, store: str) -> GGUFFile:
    try:
        return parse_header(data, total, shown, shard, store=store)
    except HeaderIncomplete:
        raise GGUFError("the cached header is incomplete", store) from None
