"""Stand-ins for llama.cpp RPC hosts, all on 127.0.0.1: a port that refuses, a
listener that never answers, one that answers garbage, a small fake server
speaking the protocol (ggml-rpc.cpp rpc_serve_client), and real servers.

Every listener runs in a daemon thread and is closed when its ``with`` ends.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from llmtune.engine.rpc_host import RpcServerProcess, free_port
from llmtune.hardware import rpc

__all__ = [
    "FakeRpcServer",
    "free_port",
    "garbage_listener",
    "real_servers",
    "refusing_endpoint",
    "silent_listener",
]


def refusing_endpoint() -> str:
    """An endpoint where nothing listens: a connection is refused."""
    return f"127.0.0.1:{free_port()}"


class _Listener:
    """A listening socket whose accepted connections ``handle`` serves, one thread each."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.endpoint = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.connections: list[socket.socket] = []
        self.closed_by_client = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def _accept(self) -> None:
        self.sock.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            self.handle(conn)
        except OSError:
            pass

    def handle(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def __enter__(self) -> _Listener:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()
        for conn in self.connections:
            conn.close()


class _Silent(_Listener):
    def handle(self, conn: socket.socket) -> None:
        self._stop.wait()


class _Garbage(_Listener):
    def handle(self, conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        self._stop.wait()


@contextlib.contextmanager
def silent_listener() -> Iterator[str]:
    """Accepts connections and never says a word (a server busy with another client)."""
    with _Silent() as listener:
        yield listener.endpoint


@contextlib.contextmanager
def garbage_listener() -> Iterator[str]:
    """Answers any connection with an HTTP error: some other service on that port."""
    with _Garbage() as listener:
        yield listener.endpoint


def _read_exact(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


@dataclass
class _Buffer:
    base: int
    size: int


class FakeRpcServer(_Listener):
    """A few commands of llama.cpp's RPC server, checked as strictly as the real one.

    SET_TENSOR's tensor is validated as rpc_server::deserialize_tensor and
    ggml_backend_tensor_set do (the real server aborts on a tensor outside its
    buffer); a violation is recorded in ``errors``.
    """

    def __init__(
        self,
        version: tuple[int, int, int] = (rpc.PROTO_MAJOR, rpc.PROTO_MINOR, rpc.PROTO_PATCH),
        devices: tuple[tuple[int, int], ...] = ((3 << 30, 4 << 30),),
        lend_buffers: bool = True,
        hang_up: bool = False,
    ) -> None:
        super().__init__()
        self.hang_up = hang_up  # close every connection at once
        self.version = version
        self.devices = devices  # (free, total) bytes each
        self.lend_buffers = lend_buffers
        self.commands: list[int] = []
        self.errors: list[str] = []
        self.bytes_written = 0
        self.buffers: dict[int, _Buffer] = {}

    def __enter__(self) -> FakeRpcServer:
        super().__enter__()
        return self

    def handle(self, conn: socket.socket) -> None:
        try:
            if not self.hang_up:
                self._serve_client(conn)
        except EOFError:
            pass
        conn.close()
        self.closed_by_client.set()
        self.buffers.clear()  # ~rpc_server frees what a client left

    def _reply(self, conn: socket.socket, payload: bytes) -> None:
        conn.sendall(struct.pack("<Q", len(payload)) + payload)

    def _serve_client(self, conn: socket.socket) -> None:
        cmd, size = struct.unpack("<BQ", _read_exact(conn, 9))
        if cmd != rpc.CMD_HELLO or size != rpc.CONN_CAPS_SIZE:
            self.errors.append(f"first command {cmd} of {size} bytes, not HELLO")
            return
        _read_exact(conn, size)
        self._reply(conn, bytes([*self.version, 0]) + bytes(rpc.CONN_CAPS_SIZE))
        while True:
            cmd, size = struct.unpack("<BQ", _read_exact(conn, 9))
            payload = _read_exact(conn, size)
            self.commands.append(cmd)
            if cmd == rpc.CMD_DEVICE_COUNT:
                self._reply(conn, struct.pack("<I", len(self.devices)))
            elif cmd == rpc.CMD_GET_DEVICE_MEMORY:
                (index,) = struct.unpack("<I", payload)
                if index >= len(self.devices):
                    return
                self._reply(conn, struct.pack("<QQ", *self.devices[index]))
            elif cmd == rpc.CMD_ALLOC_BUFFER:
                _, want = struct.unpack("<IQ", payload)
                if not self.lend_buffers:
                    self._reply(conn, struct.pack("<QQ", 0, 0))
                    continue
                handle = 0x1000 + len(self.buffers)
                self.buffers[handle] = _Buffer(base=0x7F0000000000 + handle * 0x10000000, size=want)
                self._reply(conn, struct.pack("<QQ", handle, want))
            elif cmd == rpc.CMD_BUFFER_GET_BASE:
                (handle,) = struct.unpack("<Q", payload)
                if handle not in self.buffers:
                    return
                self._reply(conn, struct.pack("<Q", self.buffers[handle].base))
            elif cmd == rpc.CMD_SET_TENSOR:
                self._set_tensor(payload)
            elif cmd == rpc.CMD_FREE_BUFFER:
                (handle,) = struct.unpack("<Q", payload)
                self.buffers.pop(handle, None)
            else:
                self.errors.append(f"unexpected command {cmd}")
                return

    def _set_tensor(self, payload: bytes) -> None:
        header = rpc.RPC_TENSOR_SIZE + 1 + 8
        fields = struct.unpack("<QIQ4I4II16ii10QQQQ64si", payload[: rpc.RPC_TENSOR_SIZE])
        kind, handle = fields[1], fields[2]
        ne, nb = fields[3:7], fields[7:11]
        data_ptr = fields[-3]
        _, offset = struct.unpack("<BQ", payload[rpc.RPC_TENSOR_SIZE : header])
        size = len(payload) - header
        buffer = self.buffers.get(handle)
        if kind != 0 or buffer is None:
            self.errors.append(f"SET_TENSOR: type {kind}, buffer {handle:#x}")
            return
        # ggml_nbytes for a type of block size 1 (F32: 4 bytes).
        nbytes = 4 + sum((n - 1) * stride for n, stride in zip(ne, nb, strict=True))
        if not (buffer.base <= data_ptr and data_ptr + nbytes <= buffer.base + buffer.size):
            self.errors.append("SET_TENSOR: tensor outside its buffer (the real server aborts)")
        if offset + size > nbytes:
            self.errors.append(
                "SET_TENSOR: write past the tensor (ggml_backend_tensor_set asserts)"
            )
        self.bytes_written += size


@contextlib.contextmanager
def real_servers(count: int, threads: int = 1) -> Iterator[list[RpcServerProcess]]:
    """``count`` llama.cpp RPC servers on free loopback ports, stopped and reaped at the end."""
    with contextlib.ExitStack() as stack:
        servers = [
            stack.enter_context(RpcServerProcess(port=free_port(), threads=threads))
            for _ in range(count)
        ]
        yield servers
