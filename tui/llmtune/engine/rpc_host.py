"""A llama.cpp RPC server in a supervised child process, and its parent-side handle.

``python -m llmtune.engine.rpc_host --endpoint HOST:PORT --threads N`` runs
llama.cpp's own server (ggml-rpc.cpp ggml_backend_rpc_start_server, which never
returns) with the devices tools/rpc/rpc-server.cpp would pick. The server's C
call holds the main thread for good, so it runs in a child that the parent can
stop with a signal, and that dies with it (Linux parent-death signal).

:class:`RpcServerProcess` starts the child, reads what llama.cpp prints, waits
until the endpoint answers an RPC probe, and stops it (SIGTERM, then SIGKILL,
always reaped).
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import ipaddress
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from llmtune.hardware.rpc import DEFAULT_PORT, RpcError, RpcHost, probe

READY_TIMEOUT_S = 20.0
_OUTPUT_LINES = 200
# ggml-rpc.cpp ggml_backend_rpc_start_server: "  %s: %s (%zu MiB, %zu MiB free)" under "Devices:".
_DEVICE_LINE_RE = re.compile(r"^  (\S+): (.*) \((\d+) MiB, (\d+) MiB free\)$")
# The last line start_server prints before it listens.
_TRANSPORT_RE = re.compile(r"^  transport\s*:")


@dataclass(frozen=True)
class ServerDevice:
    """One device a server lends, from the ``Devices:`` lines llama.cpp prints at start."""

    name: str
    description: str
    total_mib: int
    free_mib: int


def default_threads() -> int:
    """tools/rpc/rpc-server.cpp rpc_server_params: half the hardware threads, at least 1."""
    return max(1, (os.cpu_count() or 1) // 2)


def default_cache_dir() -> Path:
    """llama.cpp's RPC tensor cache: fs_get_cache_directory() / "rpc" (tools/rpc/rpc-server.cpp):
    ``$LLAMA_CACHE``, else the platform cache directory + ``llama.cpp``."""
    override = os.environ.get("LLAMA_CACHE")
    if override:
        return Path(override) / "rpc"
    if sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    elif sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA", str(Path.home())))
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "llama.cpp" / "rpc"


def check_bind_address(host: str) -> None:
    """llama.cpp's server binds an IPv4 address given as digits (transport.cpp
    socket_t::create_server: inet_addr, AF_INET); anything else is refused here."""
    try:
        ipaddress.IPv4Address(host)
    except ValueError as exc:
        raise RpcError(
            f"--host {host!r} is not an IPv4 address (llama.cpp's RPC server binds IPv4 "
            "addresses only, e.g. 127.0.0.1 or 0.0.0.0)"
        ) from exc


def bind_problem(host: str, port: int) -> str | None:
    """Why llama.cpp could not listen on ``host:port``, found by binding it the same way
    (transport.cpp socket_t::create_server: SO_REUSEADDR, bind); None when it can."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(1)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            return f"port {port} is in use (another RPC server, or another program)"
        if exc.errno == errno.EADDRNOTAVAIL:
            return f"{host} is not an address of this machine"
        if exc.errno == errno.EACCES:
            return f"no permission to listen on port {port}"
        return f"cannot listen on {host}:{port} ({exc.strerror or exc})"
    finally:
        sock.close()
    return None


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (the kernel's pick for port 0), for tests."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class RpcServerProcess:
    """llama.cpp's RPC server in a child process; a context manager that stops it on exit.

    ``start()`` returns once the endpoint answers a probe (``host_info``), or raises
    :class:`RpcError` with llama.cpp's reason when the child exits first.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        threads: int | None = None,
        cache_dir: str | Path | None = None,
        devices: tuple[str, ...] = (),
        ready_timeout_s: float = READY_TIMEOUT_S,
        python: str = sys.executable,
    ) -> None:
        self.host = host
        self.port = port
        self.endpoint = f"{host}:{port}"
        self.threads = default_threads() if threads is None else threads
        self.cache_dir = None if cache_dir is None else str(cache_dir)
        self.devices = devices
        self.ready_timeout_s = ready_timeout_s
        self.python = python
        self.host_info: RpcHost | None = None
        self._popen: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._lock = threading.Lock()
        self._output: list[str] = []
        self._device_lines: list[str] = []
        self._listening = threading.Event()

    # ---- what the child printed --------------------------------------------
    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen is not None else None

    @property
    def output(self) -> tuple[str, ...]:
        """The child's last lines of output (llama.cpp's and Python's), oldest first."""
        with self._lock:
            return tuple(self._output)

    @property
    def device_lines(self) -> tuple[str, ...]:
        """llama.cpp's ``Devices:`` lines: ``CPU: <description> (<total> MiB, <free> MiB free)``."""
        with self._lock:
            return tuple(self._device_lines)

    @property
    def server_devices(self) -> tuple[ServerDevice, ...]:
        found = []
        for line in self.device_lines:
            match = _DEVICE_LINE_RE.match("  " + line)
            if match:
                name, description, total, free = match.groups()
                found.append(ServerDevice(name, description, int(total), int(free)))
        return tuple(found)

    @property
    def probe_endpoint(self) -> str:
        """Where a client on this machine reaches the server (0.0.0.0 listens on loopback too)."""
        host = "127.0.0.1" if self.host == "0.0.0.0" else self.host
        return f"{host}:{self.port}"

    def returncode(self) -> int | None:
        return self._popen.poll() if self._popen is not None else None

    def wait(self, timeout_s: float | None = None) -> int | None:
        """The child's exit status once it has exited, or None after ``timeout_s``."""
        if self._popen is None:
            return None
        try:
            return self._popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None

    # ---- lifecycle ---------------------------------------------------------
    def start(self) -> RpcServerProcess:
        if self._popen is not None:
            raise RuntimeError("this RPC server was started already")
        if not 1 <= self.port <= 65535:
            raise RpcError(f"--port {self.port} is not between 1 and 65535")
        check_bind_address(self.host)
        problem = bind_problem(self.host, self.port)
        if problem:
            raise RpcError(f"cannot start an RPC server on {self.endpoint}: {problem}")
        env = dict(os.environ)
        env["GGML_NO_BACKTRACE"] = "1"
        env["PYTHONUNBUFFERED"] = "1"
        cmd = [self.python, "-m", "llmtune.engine.rpc_host", "--endpoint", self.endpoint]
        cmd += ["--threads", str(self.threads), "--parent", str(os.getpid())]
        if self.cache_dir:
            cmd += ["--cache-dir", self.cache_dir]
        if self.devices:
            cmd += ["--device", ",".join(self.devices)]
        # The parent-death signal follows the thread that forks: only the main thread lives long enough.
        if threading.current_thread() is threading.main_thread():
            cmd.append("--pdeathsig")
        self._popen = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
        )
        self._reader = threading.Thread(
            target=self._read_output, name=f"rpc-server-{self._popen.pid}", daemon=True
        )
        self._reader.start()
        try:
            self.host_info = self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _read_output(self) -> None:
        popen = self._popen
        assert popen is not None and popen.stdout is not None
        in_devices = False
        for raw in popen.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            with self._lock:
                self._output.append(line)
                del self._output[:-_OUTPUT_LINES]
                # Backend logs on stderr may come between the device lines: the
                # list ends with the transport line, not with the first other line.
                if line == "Devices:":
                    in_devices = True
                elif _TRANSPORT_RE.match(line):
                    in_devices = False
                elif in_devices and _DEVICE_LINE_RE.match(line):
                    self._device_lines.append(line.strip())
            if _TRANSPORT_RE.match(line) or line == "Accepted client connection":
                self._listening.set()
        popen.stdout.close()

    def _wait_ready(self) -> RpcHost:
        deadline = time.monotonic() + self.ready_timeout_s
        last_error: RpcError | None = None
        while time.monotonic() < deadline:
            if self.returncode() is not None:
                raise RpcError(self._exit_reason("could not start"))
            try:
                # A fresh server answers HELLO at once; a short wait lets a child that
                # failed to bind (another program holds the port) be noticed sooner.
                info = probe(self.probe_endpoint, timeout_s=1.0, measure_bandwidth=False)
            except RpcError as exc:
                last_error = exc
                time.sleep(0.05)
                continue
            # The Devices lines come before the listening socket, or with the flush
            # after the probe's connection if C's stdout stayed fully buffered.
            self._listening.wait(2.0)
            return info
        why = f" ({last_error.one_line()})" if last_error else ""
        raise RpcError(
            f"the RPC server on {self.endpoint} did not answer within "
            f"{self.ready_timeout_s:g} s{why}"
        )

    def _exit_reason(self, what: str) -> str:
        """One sentence for an exited child: llama.cpp's own reason where it printed one."""
        self.wait(2.0)
        if self._reader is not None:
            self._reader.join(timeout=2.0)
        lines = [line.strip() for line in self.output if line.strip()]
        code = self.returncode()
        prefix = f"the RPC server on {self.endpoint} {what}"
        if any("Failed to create server socket" in line for line in lines):
            # transport.cpp create_server returns NULL without errno: bind again to say why.
            problem = bind_problem(self.host, self.port)
            return f"{prefix}: {problem or 'llama.cpp could not listen there'}"
        for line in reversed(lines):
            if line.startswith("llmtune rpc-server: "):
                return f"{prefix}: {line.removeprefix('llmtune rpc-server: ')}"
            if line.startswith(("error:", "Invalid host address", "Failed", "No devices")):
                return f"{prefix}: llama.cpp says {line!r}"
        if code is not None and code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            return f"{prefix}: the process was killed by {name}"
        tail = f"; its last line: {lines[-1]!r}" if lines else ""
        return f"{prefix}: the process exited with status {code}{tail}"

    def exit_reason(self) -> str:
        """Why a server that had started has exited (for a caller that saw ``wait()`` return)."""
        return self._exit_reason("stopped")

    def stop(self, timeout_s: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout_s``; the child is always reaped."""
        popen = self._popen
        if popen is None:
            return
        if popen.poll() is None:
            try:
                popen.terminate()
                popen.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait()
        if self._reader is not None and self._reader is not threading.current_thread():
            self._reader.join(timeout=2.0)

    def kill(self) -> None:
        """SIGKILL the child and reap it (for fault tests)."""
        popen = self._popen
        if popen is not None and popen.poll() is None:
            popen.kill()
            popen.wait()

    def __enter__(self) -> RpcServerProcess:
        if self._popen is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# ---- the child ----------------------------------------------------------------


def _line_buffer_c_stdout() -> None:
    """llama.cpp prints with printf; a pipe would hold its lines until the first client
    connects (start_server flushes only then), so make C's stdout line-buffered."""
    try:
        libc = ctypes.CDLL(None)
        stdout = ctypes.c_void_p.in_dll(libc, "stdout")
        libc.setvbuf(stdout, None, 1, 0)  # _IOLBF
    except (OSError, ValueError, AttributeError):
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llmtune.engine.rpc_host")
    parser.add_argument("--endpoint", required=True, metavar="HOST:PORT")
    parser.add_argument("--threads", type=int, default=default_threads())
    parser.add_argument("--cache-dir")
    parser.add_argument("--device", help="comma-separated device names (default: as rpc-server)")
    parser.add_argument("--parent", type=int, help="exit if this process is no longer the parent")
    parser.add_argument("--pdeathsig", action="store_true")
    args = parser.parse_args(argv)
    # The parent stops the server with SIGTERM; Ctrl-C reaches the whole process
    # group, and the parent decides (the C call would never let Python see it anyway).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if args.pdeathsig:
        from llmtune.engine.worker import set_parent_death_signal

        set_parent_death_signal(signal.SIGKILL)
    if args.parent is not None and os.getppid() != args.parent:
        return 1  # the parent died before the death signal was set
    _line_buffer_c_stdout()
    from llmtune.engine.ggml_rpc import start_server

    devices = tuple(d for d in (args.device or "").split(",") if d)
    try:
        start_server(args.endpoint, args.cache_dir, args.threads, devices or None)
    except RpcError as exc:
        print(f"llmtune rpc-server: {exc.one_line()}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
