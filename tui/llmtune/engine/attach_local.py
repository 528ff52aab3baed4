"""llama-server processes on this machine: found through psutil, read through psutil and NVML.

:func:`find_servers` lists the processes whose program is llama-server, with
their command line read back into settings (:mod:`llmtune.fit.serverline`)
and the address they listen on; :class:`LocalProcess` is the attacher's probe
of one of them: resident memory, and what NVML's per-process list says each
GPU holds for it (through :func:`llmtune.hardware.gpus.snapshot`, so the
scripted NVML of the tests stands in for it too).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from llmtune.engine.attach import ProcessReading
from llmtune.errors import LlmtuneError
from llmtune.fit.serverline import ServerLine, is_llama_server, parse_server_args

MAX_PROCESSES = 100_000  # a bound on the scan, far above any real process table


@dataclass(frozen=True)
class LocalServer:
    """One llama-server process here."""

    pid: int
    argv: tuple[str, ...]
    cwd: str | None
    url: str
    line: ServerLine | None
    problem: str | None = None  # why its command line could not be read

    @property
    def model_path(self) -> str | None:
        """Its model as a path to open (relative to its working directory), or a URL or -hf."""
        line = self.line
        if line is None or line.model is None:
            return None
        if line.model_kind == "path" and not os.path.isabs(line.model) and self.cwd:
            return os.path.join(self.cwd, line.model)
        return line.model

    @property
    def label(self) -> str:
        model = self.model_path or "no model on its command line"
        return f"pid {self.pid} · {self.url} · {os.path.basename(model)}"


def _listening(proc: Any) -> list[tuple[str, int]]:
    """The TCP addresses ``proc`` listens on (empty when psutil may not see them)."""
    import psutil

    try:
        reader = getattr(proc, "net_connections", None) or proc.connections
        conns = reader(kind="tcp")
    except (psutil.Error, OSError):
        return []
    return [(c.laddr.ip, c.laddr.port) for c in conns if c.status == psutil.CONN_LISTEN and c.laddr]


def _url(host: str, port: int) -> str:
    try:
        address = ipaddress.ip_address(host)
        if address.is_unspecified:
            host = "127.0.0.1" if address.version == 4 else "::1"
        if address.version == 6:
            host = f"[{host}]"
    except ValueError:
        pass  # a host name
    return f"http://{host}:{port}"


def server_of(
    pid: int, argv: Sequence[str], cwd: str | None, listening: Iterable[tuple[str, int]]
) -> LocalServer:
    """A LocalServer from what psutil read of a process."""
    line: ServerLine | None = None
    problem = None
    try:
        line = parse_server_args(argv)
    except LlmtuneError as exc:
        problem = exc.one_line()
    addresses = list(listening)
    host, port = (line.host, line.port) if line is not None else ("127.0.0.1", 8080)
    chosen = next((a for a in addresses if a[1] == port), addresses[0] if addresses else None)
    if chosen is not None:
        host, port = chosen
    return LocalServer(pid, tuple(argv), cwd, _url(host, port), line, problem)


def find_servers() -> list[LocalServer]:
    """Every llama-server process this user may read, oldest first."""
    import psutil

    found: list[tuple[float, LocalServer]] = []
    for count, proc in enumerate(psutil.process_iter(["pid", "cmdline", "create_time"])):
        if count >= MAX_PROCESSES:
            break
        info = proc.info
        argv = info.get("cmdline") or []
        if not is_llama_server(argv):
            continue
        try:
            cwd: str | None = proc.cwd()
        except (psutil.Error, OSError):
            cwd = None
        server = server_of(int(info["pid"]), argv, cwd, _listening(proc))
        found.append((float(info.get("create_time") or 0.0), server))
    return [server for _, server in sorted(found, key=lambda item: item[0])]


def server_for_url(url: str, servers: Iterable[LocalServer]) -> LocalServer | None:
    """The local process behind ``url``, when it is on this machine and listed."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    local = host in ("localhost", "127.0.0.1", "::1") or host.startswith("127.")
    if not local:
        try:
            import socket

            local = host in (socket.gethostname(), socket.getfqdn())
        except OSError:
            local = False
    if not local:
        return None
    port = parts.port or 80
    for server in servers:
        if urlsplit(server.url).port == port:
            return server
    return None


Snapshot = Callable[[], Sequence[object]]


def _nvml_snapshot() -> Sequence[object]:
    from llmtune.hardware.gpus import snapshot

    return snapshot()


class LocalProcess:
    """The attacher's probe of a local server: RSS, and its memory on each GPU."""

    def __init__(self, pid: int, snapshot: Snapshot = _nvml_snapshot) -> None:
        self.pid = pid
        self._snapshot = snapshot
        self._process: Any = None

    def __call__(self) -> ProcessReading:
        import psutil

        alive = True
        rss: int | None = None
        try:
            if self._process is None:
                self._process = psutil.Process(self.pid)
            rss = int(self._process.memory_info().rss)
        except psutil.NoSuchProcess:
            alive = False
        except (psutil.Error, OSError):
            pass
        vram: list[int | None] = []
        totals: list[int | None] = []
        ram_total = None
        try:
            ram_total = int(psutil.virtual_memory().total)
        except (psutil.Error, OSError):
            pass
        if alive:
            try:
                for gpu in self._snapshot():
                    totals.append(getattr(gpu, "memory_total_bytes", None))
                    mine = [p for p in (getattr(gpu, "processes", None) or ()) if p.pid == self.pid]
                    vram.append(sum(p.used_bytes or 0 for p in mine) if mine else None)
            except Exception:
                vram, totals = [], []
        return ProcessReading(self.pid, rss, tuple(vram), alive, tuple(totals), ram_total)
