"""llama.cpp RPC hosts: the ``--rpc`` list, and a probe that speaks the RPC protocol.

A host runs ``ggml-rpc-server`` (or ``llmtune rpc-server``) and lends its devices
to a llama.cpp elsewhere. Before planning for one, llmtune asks it what it has,
with the same requests llama.cpp's client sends (ggml/src/ggml-rpc/ggml-rpc.cpp):

- a request is ``| cmd (1 byte) | size (u64) | payload |`` and a reply
  ``| size (u64) | payload |``, little-endian, packed (``send_rpc_cmd``);
- ``HELLO`` comes first and the server checks it before anything else
  (``rpc_serve_client``); the client refuses a major version other than its own
  or a newer minor (``negotiate_hello``);
- ``DEVICE_COUNT`` and ``GET_DEVICE_MEMORY`` say what the host lends.

The link speed matters as much as the memory (every token's activations cross
it), so the probe also times a round trip and, briefly, a write of a few MiB into
a buffer on the host. A server serves one client at a time, so the probe closes
its connection as soon as it has its answers.

Pure Python: no llama.cpp, no ctypes; the engine registers hosts with llama.cpp
itself (``llmtune.engine.ggml_rpc``).
"""

from __future__ import annotations

import errno
import re
import socket
import statistics
import struct
import time
from dataclasses import dataclass

from llmtune.errors import LlmtuneError
from llmtune.units import MIB

# ggml/include/ggml-rpc.h RPC_PROTO_{MAJOR,MINOR,PATCH}_VERSION of the llama.cpp we build.
PROTO_MAJOR = 7
PROTO_MINOR = 0
PROTO_PATCH = 0
PROTO_VERSION = f"{PROTO_MAJOR}.{PROTO_MINOR}.{PROTO_PATCH}"
# tools/rpc/rpc-server.cpp rpc_server_params: the port a server listens on unless told.
DEFAULT_PORT = 50052

# ggml-rpc.cpp enum rpc_cmd (RPC_CMD_HELLO is fixed at 14 by a static_assert there).
CMD_ALLOC_BUFFER = 0
CMD_BUFFER_GET_BASE = 3
CMD_FREE_BUFFER = 4
CMD_SET_TENSOR = 6
CMD_GET_DEVICE_MEMORY = 11
CMD_HELLO = 14
CMD_DEVICE_COUNT = 15

# transport.h RPC_CONN_CAPS_SIZE: zeroed caps ask for plain TCP (transport.cpp get_caps).
CONN_CAPS_SIZE = 24
_HELLO_RSP_SIZE = 4 + CONN_CAPS_SIZE  # rpc_msg_hello_rsp: major, minor, patch, padding, caps

# ggml-rpc.cpp struct rpc_tensor, packed: id, type, buffer, ne[4], nb[4], op,
# op_params[16], flags, src[10], view_src, view_offs, data, name[64], use_count.
# GGML_MAX_DIMS 4, GGML_MAX_OP_PARAMS 64 bytes, GGML_MAX_SRC 10, GGML_MAX_NAME 64 (ggml.h).
_RPC_TENSOR = struct.Struct("<QIQ4I4II16ii10QQQQ64si")
RPC_TENSOR_SIZE = _RPC_TENSOR.size  # 296; ggml-rpc.cpp asserts a multiple of 8
_GGML_TYPE_F32 = 0  # ggml.h enum ggml_type
_GGML_OP_NONE = 0  # ggml.h enum ggml_op

RTT_SAMPLES = 5
BANDWIDTH_BYTES = 4 * MIB
_BANDWIDTH_WARMUP_BYTES = 256 * 1024
# The timed write is sized to take about this long at the warm-up's rate, so a
# slow link costs a fraction of a second, not the whole BANDWIDTH_BYTES.
_BANDWIDTH_TARGET_S = 0.3
BANDWIDTH_STEP_TIMEOUT_S = 0.5

_HOSTNAME_LABEL_RE = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$")


class RpcError(LlmtuneError):
    """An RPC host that cannot be used: a bad ``--rpc`` item, or a host that does not answer."""


@dataclass(frozen=True)
class RpcDevice:
    """One device a host lends, as its server reports it (``GET_DEVICE_MEMORY``)."""

    index: int
    free_bytes: int
    total_bytes: int


@dataclass(frozen=True)
class RpcHost:
    """What a probe found at one endpoint."""

    endpoint: str
    devices: tuple[RpcDevice, ...]
    protocol_version: str
    rtt_s: float
    bandwidth_bytes_per_s: float | None

    @property
    def total_free_bytes(self) -> int:
        return sum(d.free_bytes for d in self.devices)

    @property
    def total_bytes(self) -> int:
        return sum(d.total_bytes for d in self.devices)


def split_endpoint(endpoint: str) -> tuple[str, int]:
    """``HOST:PORT`` as (host, port); raises :class:`RpcError` for anything else."""
    return _parse_one(endpoint.strip(), endpoint)


def parse_endpoints(text: str) -> tuple[str, ...]:
    """The servers of llama.cpp's ``--rpc HOST:PORT[,HOST:PORT...]`` (common/arg.cpp
    add_rpc_devices splits on commas), checked before llama.cpp sees them: its own
    parse_endpoint (ggml-rpc.cpp) takes anything after the first colon that starts
    with digits, and an unreachable one aborts the process."""
    if not text.strip():
        raise RpcError("--rpc: no servers given (expected HOST:PORT[,HOST:PORT...])")
    endpoints: list[str] = []
    seen: set[tuple[str, int]] = set()
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            raise RpcError(
                f"--rpc: an empty item in {text.strip()!r} (expected HOST:PORT,HOST:PORT)"
            )
        host, port = _parse_one(item, item)
        key = (host.lower(), port)
        if key in seen:
            raise RpcError(f"--rpc: {item!r} is given twice")
        seen.add(key)
        endpoints.append(f"{host}:{port}")
    return tuple(endpoints)


def _parse_one(item: str, shown: str) -> tuple[str, int]:
    if item.startswith("[") or item.count(":") > 1:
        # transport.cpp socket_t::connect resolves with gethostbyname into an AF_INET socket.
        raise RpcError(f"--rpc: {shown!r}: llama.cpp's RPC client speaks IPv4 only")
    host, sep, port_text = item.partition(":")
    if not sep or not host or not port_text:
        raise RpcError(f"--rpc: {shown!r} is not HOST:PORT")
    if not port_text.isdecimal() or not port_text.isascii():
        raise RpcError(f"--rpc: {shown!r} is not HOST:PORT (the port is not a number)")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise RpcError(f"--rpc: port {port_text} in {shown!r} is not between 1 and 65535")
    if not _valid_host(host):
        raise RpcError(
            f"--rpc: {shown!r} is not HOST:PORT ({host!r} is not a host name or IPv4 address)"
        )
    return host, port


def _valid_host(host: str) -> bool:
    if not host.isascii() or len(host) > 253:
        return False
    if re.fullmatch(r"[0-9.]+", host):
        parts = host.split(".")
        return len(parts) == 4 and all(p.isdecimal() and int(p) <= 255 for p in parts)
    return all(_HOSTNAME_LABEL_RE.match(label) for label in host.split("."))


class _Closed(Exception):
    """The server closed the connection (or reset it) in the middle of a step."""


class _Connection:
    """One TCP connection to a server, every operation bounded by ``timeout_s``."""

    def __init__(self, sock: socket.socket, timeout_s: float) -> None:
        self.sock = sock
        self.timeout_s = timeout_s

    def send(self, cmd: int, payload: bytes, tail: bytes | memoryview = b"") -> None:
        """A request: ``| cmd | size | payload tail |`` (ggml-rpc.cpp send_rpc_cmd)."""
        self.sock.settimeout(self.timeout_s)
        header = struct.pack("<BQ", cmd, len(payload) + len(tail))
        try:
            self.sock.sendall(header + payload)
            if tail:
                self.sock.sendall(tail)
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise _Closed from exc

    def receive(self, expected_size: int) -> bytes:
        """A reply of exactly ``expected_size`` bytes (ggml-rpc.cpp recv_msg)."""
        size = struct.unpack("<Q", self.read_exact(8))[0]
        if size != expected_size:
            raise _WrongSize(size)
        return self.read_exact(expected_size)

    def call(self, cmd: int, payload: bytes, expected_size: int) -> bytes:
        self.send(cmd, payload)
        return self.receive(expected_size)

    def read_exact(self, n: int) -> bytes:
        deadline = time.monotonic() + self.timeout_s
        chunks: list[bytes] = []
        remaining = n
        while remaining:
            left_s = deadline - time.monotonic()
            if left_s <= 0:
                raise TimeoutError
            self.sock.settimeout(left_s)
            try:
                chunk = self.sock.recv(remaining)
            except ConnectionResetError as exc:
                raise _Closed from exc
            if not chunk:
                raise _Closed
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)


class _WrongSize(Exception):
    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.size = size


def _seconds(timeout_s: float) -> str:
    return f"{timeout_s:g} s"


def _connect(endpoint: str, timeout_s: float) -> socket.socket:
    """A TCP connection to ``endpoint`` as llama.cpp's client makes it (transport.cpp
    socket_t::connect: IPv4, TCP_NODELAY); raises :class:`RpcError` naming the host."""
    host, port = split_endpoint(endpoint)
    try:
        infos = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise RpcError(f"{endpoint}: cannot resolve host {host!r} ({_reason(exc)})") from exc
    if not infos:
        raise RpcError(f"{endpoint}: cannot resolve host {host!r}")
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(timeout_s)
        sock.connect(address)
    except ConnectionRefusedError as exc:
        sock.close()
        raise RpcError(
            f"{endpoint}: connection refused (is ggml-rpc-server or llmtune rpc-server running there?)"
        ) from exc
    except TimeoutError as exc:
        sock.close()
        raise RpcError(
            f"{endpoint}: no answer to the connection within {_seconds(timeout_s)} "
            "(the host is down or a firewall drops it)"
        ) from exc
    except OSError as exc:
        sock.close()
        if exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EHOSTDOWN):
            raise RpcError(f"{endpoint}: unreachable ({_reason(exc)})") from exc
        raise RpcError(f"{endpoint}: cannot connect ({_reason(exc)})") from exc
    return sock


def _reason(exc: BaseException) -> str:
    text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return text or type(exc).__name__


def _hello(conn: _Connection, endpoint: str) -> str:
    """The HELLO exchange (ggml-rpc.cpp negotiate_hello); returns the server's version."""
    conn.send(CMD_HELLO, bytes(CONN_CAPS_SIZE))
    size = struct.unpack("<Q", conn.read_exact(8))[0]
    # A reply of the wrong size is not llama.cpp's, unless it at least starts with a
    # version: older servers answered three bytes, major.minor.patch.
    if size < 3 or size > _HELLO_RSP_SIZE:
        raise RpcError(
            f"{endpoint} is not a llama.cpp RPC server (its first reply is not an RPC HELLO)"
        )
    reply = conn.read_exact(size)
    major, minor, patch = reply[0], reply[1], reply[2]
    version = f"{major}.{minor}.{patch}"
    if major != PROTO_MAJOR or minor > PROTO_MINOR:
        raise RpcError(
            f"{endpoint}: the server speaks RPC protocol {version} and this llama.cpp speaks "
            f"{PROTO_VERSION}; run the same llama.cpp version on both sides"
        )
    if size != _HELLO_RSP_SIZE:
        raise RpcError(
            f"{endpoint} is not a llama.cpp RPC server (its HELLO reply has {size} bytes, "
            f"not {_HELLO_RSP_SIZE})"
        )
    return version


def _device_count(conn: _Connection) -> int:
    """``DEVICE_COUNT`` (ggml-rpc.cpp ggml_backend_rpc_get_device_count)."""
    return int(struct.unpack("<I", conn.call(CMD_DEVICE_COUNT, b"", 4))[0])


def _device_memory(conn: _Connection, index: int) -> tuple[int, int]:
    """``GET_DEVICE_MEMORY``: (free, total) bytes (ggml-rpc.cpp ggml_backend_rpc_get_device_memory)."""
    free, total = struct.unpack(
        "<QQ", conn.call(CMD_GET_DEVICE_MEMORY, struct.pack("<I", index), 16)
    )
    return int(free), int(total)


def rpc_tensor_bytes(buffer: int, data: int, nbytes: int, name: bytes = b"llmtune-probe") -> bytes:
    """An F32 vector of ``nbytes`` at ``data`` in the remote ``buffer``, serialised as
    ggml-rpc.cpp serialize_tensor does. rpc_server::deserialize_tensor aborts the
    server (GGML_ASSERT) when the tensor reaches past its buffer, so callers pass a
    region inside one ALLOC_BUFFER returned."""
    if nbytes <= 0 or nbytes % 4:
        raise ValueError("nbytes must be a positive multiple of 4")
    ne = (nbytes // 4, 1, 1, 1)
    nb = (
        4,
        nbytes,
        nbytes,
        nbytes,
    )  # ggml_new_tensor_impl: nb[0] = type size, nb[i] = nb[i-1] * ne[i-1]
    return _RPC_TENSOR.pack(
        1,  # id: any non-zero value; set_tensor does not look it up
        _GGML_TYPE_F32,
        buffer,
        *ne,
        *nb,
        _GGML_OP_NONE,
        *([0] * 16),  # op_params
        0,  # flags
        *([0] * 10),  # src
        0,  # view_src
        0,  # view_offs
        data,
        name[:63],
        0,  # use_count
    )


def _measure_bandwidth(conn: _Connection) -> float | None:
    """Bytes per second of a write into a buffer on device 0; None when the server
    will not lend one. The write is ``SET_TENSOR`` (no reply) followed by
    ``BUFFER_GET_BASE``, which the server answers only after it has stored the
    data (rpc_serve_client handles one command at a time), so the time includes
    one round trip. A warm-up write sizes the timed one, and every step waits at
    most BANDWIDTH_STEP_TIMEOUT_S, so a slow link costs well under a second."""
    reply = conn.call(CMD_ALLOC_BUFFER, struct.pack("<IQ", 0, BANDWIDTH_BYTES), 16)
    remote_ptr, remote_size = struct.unpack("<QQ", reply)
    if remote_ptr == 0:
        return None
    base_payload = struct.pack("<Q", remote_ptr)
    if remote_size < BANDWIDTH_BYTES:
        conn.send(CMD_FREE_BUFFER, base_payload)
        return None
    base_ptr = struct.unpack("<Q", conn.call(CMD_BUFFER_GET_BASE, base_payload, 8))[0]
    if base_ptr == 0:
        conn.send(CMD_FREE_BUFFER, base_payload)
        return None
    # rpc_server::set_tensor: | rpc_tensor | cache_flag (u8) | offset (u64) | data |;
    # the tensor spans the whole buffer and each write fills its start.
    header = rpc_tensor_bytes(remote_ptr, base_ptr, BANDWIDTH_BYTES) + struct.pack("<BQ", 0, 0)
    data = memoryview(bytes(BANDWIDTH_BYTES))

    def timed_write(nbytes: int) -> float:
        start = time.perf_counter()
        conn.send(CMD_SET_TENSOR, header, data[:nbytes])
        conn.call(CMD_BUFFER_GET_BASE, base_payload, 8)
        return time.perf_counter() - start

    # A step that times out leaves the connection mid-message; the caller closes
    # it, and ~rpc_server frees every buffer a client left behind.
    warmup_s = timed_write(_BANDWIDTH_WARMUP_BYTES)
    rate = _BANDWIDTH_WARMUP_BYTES / max(warmup_s, 1e-9)
    if warmup_s < _BANDWIDTH_TARGET_S:
        nbytes = int(min(BANDWIDTH_BYTES, max(_BANDWIDTH_WARMUP_BYTES, rate * _BANDWIDTH_TARGET_S)))
        nbytes -= nbytes % 4
        rate = max(rate, nbytes / max(timed_write(nbytes), 1e-9))
    conn.send(CMD_FREE_BUFFER, base_payload)  # rpc_server::free_buffer sends no reply
    return rate


def probe(endpoint: str, timeout_s: float = 3.0, measure_bandwidth: bool = True) -> RpcHost:
    """Ask the RPC server at ``endpoint`` what it lends and how fast it answers.

    Each step (connect, each request) waits at most ``timeout_s``; the bandwidth
    write takes a fraction of a second, and when it fails the probe still succeeds
    with ``bandwidth_bytes_per_s=None``. Raises :class:`RpcError`, one line naming
    the host and the reason. The connection is always closed before returning.
    """
    endpoint = ":".join(str(part) for part in split_endpoint(endpoint))
    sock = _connect(endpoint, timeout_s)
    conn = _Connection(sock, timeout_s)
    step = "HELLO"
    try:
        try:
            version = _hello(conn, endpoint)
        except TimeoutError as exc:
            raise RpcError(
                f"{endpoint}: accepted the connection but did not answer within "
                f"{_seconds(timeout_s)}: not an RPC server, or busy serving another client"
            ) from exc
        except _Closed as exc:
            raise RpcError(
                f"{endpoint} closed the connection at HELLO: it is not a llama.cpp RPC server, "
                f"or one older than protocol {PROTO_MAJOR}"
            ) from exc
        step = "DEVICE_COUNT"
        count = _device_count(conn)
        if count == 0:
            raise RpcError(f"{endpoint}: the RPC server lends no devices")
        step = "GET_DEVICE_MEMORY"
        devices = tuple(RpcDevice(i, *_device_memory(conn, i)) for i in range(count))
        rtts: list[float] = []
        for _ in range(RTT_SAMPLES):
            start = time.perf_counter()
            _device_memory(conn, 0)
            rtts.append(time.perf_counter() - start)
        bandwidth: float | None = None
        if measure_bandwidth:
            step = "the bandwidth test"
            conn.timeout_s = min(timeout_s, BANDWIDTH_STEP_TIMEOUT_S)
            try:
                bandwidth = _measure_bandwidth(conn)
            except (OSError, _Closed, _WrongSize):
                bandwidth = None
        return RpcHost(
            endpoint=endpoint,
            devices=devices,
            protocol_version=version,
            rtt_s=statistics.median(rtts),
            bandwidth_bytes_per_s=bandwidth,
        )
    except TimeoutError as exc:
        raise RpcError(
            f"{endpoint}: stopped answering within {_seconds(timeout_s)} ({step})"
        ) from exc
    except _Closed as exc:
        raise RpcError(f"{endpoint}: closed the connection during {step}") from exc
    except _WrongSize as exc:
        raise RpcError(
            f"{endpoint} is not a llama.cpp RPC server (a reply of {exc.size} bytes to {step})"
        ) from exc
    except OSError as exc:
        raise RpcError(f"{endpoint}: connection failed during {step} ({_reason(exc)})") from exc
    finally:
        sock.close()
