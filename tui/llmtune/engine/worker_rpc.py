"""The worker's RPC hosts: registered with llama.cpp before a load, watched while loaded.

Runs inside the worker process (``llmtune.engine.worker``). llama.cpp keeps a
registered RPC host for the life of the process and places every later model on
its devices too (src/llama.cpp ``llama_model_load_from_file_impl`` lists every
registered device), so a worker serves one set of hosts; the session starts a
new worker for another set.

A host lost mid-run must be said, not waited for. llama.cpp aborts when a
connection breaks (ggml-rpc.cpp ``RPC_STATUS_ASSERT``), and the supervisor names
the host; but a network that goes silent breaks nothing: llama.cpp's sockets
have no timeout and its client waits forever. So the worker gives them one: TCP
keepalive and ``TCP_USER_TIMEOUT`` on every socket it holds to a host (found in
``/proc/self/fd``), which turn a silent network into a broken connection within
about two seconds (a host's kernel answers keepalives, so a slow graph is not
mistaken for a lost host). A host whose process stops (its kernel still
answers) is caught by the memory readings: one unanswered for
``RPC_STALL_S`` while no graph is running means the host is gone.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Sequence

from llmtune.engine.protocol import DeviceMemory, DeviceReading, Failed

RPC_MEMORY_INTERVAL_S = 1.0  # how often the hosts' memory is read while a model is loaded
RPC_STALL_S = 5.0  # a reading unanswered this long while no graph runs: the host is gone
LINK_TIMEOUT_MS = 2000  # TCP_USER_TIMEOUT: data unacknowledged this long breaks the link
KEEPALIVE_S = 1  # idle before the first keepalive probe, and between probes
SOCKET_SCAN_S = 0.5  # how often the worker looks for new connections to its hosts


class RpcHosts:
    """One worker's RPC hosts; ``send`` posts an event to the parent."""

    def __init__(self, send: Callable[[object], None]) -> None:
        self._send = send
        self.hosts: tuple[str, ...] | None = None  # registered for good
        self.devices: tuple[tuple[str, str], ...] = ()  # (device name, endpoint)
        self._stop: threading.Event | None = None
        self.busy = threading.Event()  # set while llama.cpp runs a graph or loads (worker)
        self._hardened: set[int] = set()

    def register(self, wanted: Sequence[str]) -> bool:
        """Register ``wanted`` before the first load that names hosts; False (and
        ``Failed`` sent) when that cannot be done or another set is registered."""
        wanted = tuple(wanted)
        if self.hosts is not None:
            if wanted == self.hosts:
                return True
            self._send(
                Failed(
                    f"this worker uses the RPC hosts {', '.join(self.hosts)} for good "
                    "(llama.cpp cannot drop one); restart it (ctrl+r) to load elsewhere"
                )
            )
            return False
        if not wanted:
            return True
        from llmtune.engine.ggml_rpc import RPC_REBUILD_HINT, register_servers, rpc_supported
        from llmtune.errors import LlmtuneError

        if not rpc_supported():
            self._send(Failed(f"this llama-cpp-python has no RPC backend: {RPC_REBUILD_HINT}"))
            return False
        devices: list[tuple[str, str]] = []
        try:
            for endpoint in wanted:
                # register_servers probes first: llama.cpp aborts the process on a dead host.
                devices += [(name, endpoint) for name in register_servers([endpoint])]
        except LlmtuneError as exc:
            self._send(Failed(exc.one_line()))
            return False
        self.hosts = wanted
        self.devices = tuple(devices)
        threading.Thread(target=self._guard_links, name="rpc-links", daemon=True).start()
        return True

    def _guard_links(self) -> None:
        """Give every connection this process holds to a host a timeout (see the
        module docstring), as llama.cpp opens them: at registration, at load."""
        targets: set[tuple[str, int]] = set()
        for endpoint in self.hosts or ():
            host, _, port = endpoint.rpartition(":")
            try:
                for info in socket.getaddrinfo(host, int(port), proto=socket.IPPROTO_TCP):
                    targets.add((str(info[4][0]), int(info[4][1])))
            except (OSError, ValueError):
                continue
        while True:
            harden_sockets(targets, self._hardened)
            time.sleep(SOCKET_SCAN_S)

    def watch_memory(self) -> None:
        """Report each RPC device's memory about once a second, through llama.cpp's
        own connection to its host (a server serves one client at a time)."""
        self.stop_watching()
        if not self.devices:
            return
        from llmtune.engine.ggml_rpc import device_memory

        stop = self._stop = threading.Event()
        devices = self.devices

        asking: list[tuple[str, float, bool]] = []  # (endpoint, since, a graph was running)

        def watch() -> None:
            while not stop.is_set():
                readings: list[DeviceReading] = []
                for name, endpoint in devices:
                    asking[:] = [(endpoint, time.monotonic(), self.busy.is_set())]
                    memory = device_memory(name)
                    asking.clear()
                    if memory is not None:
                        readings.append(DeviceReading(name, endpoint, memory[0], memory[1]))
                if stop.is_set():
                    return
                self._send(DeviceMemory(tuple(readings), time.monotonic()))
                stop.wait(RPC_MEMORY_INTERVAL_S)

        def stalls() -> None:
            # A reading queues behind the graph running on that host; with none
            # running it is a round trip, so a long wait means the host is gone.
            while not stop.wait(0.25):
                current = list(asking)
                if not current:
                    continue
                endpoint, since, was_busy = current[0]
                waited = time.monotonic() - since
                if was_busy or self.busy.is_set() or waited < RPC_STALL_S:
                    continue
                self._send(
                    Failed(
                        f"lost the RPC host {endpoint} (it stopped answering for "
                        f"{waited:.0f} s; is its process stopped or its network gone?)",
                        fatal=True,
                    )
                )
                os._exit(3)  # llama.cpp waits on that host for good: nothing else to do

        threading.Thread(target=watch, name="rpc-memory", daemon=True).start()
        threading.Thread(target=stalls, name="rpc-stalls", daemon=True).start()

    def stop_watching(self) -> None:
        if self._stop is not None:
            self._stop.set()
            self._stop = None


def harden_sockets(targets: set[tuple[str, int]], done: set[int]) -> None:
    """TCP keepalive and a user timeout on this process's sockets connected to
    ``targets`` (address, port); ``done`` holds the ones already set (by inode)."""
    try:
        fds = os.listdir("/proc/self/fd")
    except OSError:
        return
    for name in fds:
        try:
            link = os.readlink(f"/proc/self/fd/{name}")  # socket:[inode] for a socket
        except OSError:
            continue
        if not link.startswith("socket:[") or not link.endswith("]"):
            continue  # files, pipes: skipped without touching them
        inode = int(link[len("socket:[") : -1])
        if inode in done:
            continue
        fd = int(name)
        try:
            s = socket.socket(fileno=os.dup(fd))
        except OSError:
            continue  # not a socket
        try:
            if s.type != socket.SOCK_STREAM or s.getpeername()[:2] not in targets:
                done.add(inode)  # connected elsewhere for good: not looked at again
                continue
            s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            if hasattr(socket, "TCP_KEEPIDLE"):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_S)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_S)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 1)
            if hasattr(socket, "TCP_USER_TIMEOUT"):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, LINK_TIMEOUT_MS)
            done.add(inode)
        except OSError:
            continue
        finally:
            s.close()  # the duplicate only: llama.cpp's descriptor stays open
