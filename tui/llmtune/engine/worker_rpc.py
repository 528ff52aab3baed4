"""The worker's RPC hosts: registered with llama.cpp before a load, watched while loaded.

Runs inside the worker process (``llmtune.engine.worker``). llama.cpp keeps a
registered RPC host for the life of the process and places every later model on
its devices too (llama.cpp.cpp ``llama_model_load_from_file_impl`` lists every
registered device), so a worker serves one set of hosts; the session starts a
new worker for another set.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

from llmtune.engine.protocol import DeviceMemory, DeviceReading, Failed

RPC_MEMORY_INTERVAL_S = 1.0  # how often the hosts' memory is read while a model is loaded


class RpcHosts:
    """One worker's RPC hosts; ``send`` posts an event to the parent."""

    def __init__(self, send: Callable[[object], None]) -> None:
        self._send = send
        self.hosts: tuple[str, ...] | None = None  # registered for good
        self.devices: tuple[tuple[str, str], ...] = ()  # (device name, endpoint)
        self._stop: threading.Event | None = None

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
        return True

    def watch_memory(self) -> None:
        """Report each RPC device's memory about once a second, through llama.cpp's
        own connection to its host (a server serves one client at a time)."""
        self.stop_watching()
        if not self.devices:
            return
        from llmtune.engine.ggml_rpc import device_memory

        stop = self._stop = threading.Event()
        devices = self.devices

        def watch() -> None:
            while not stop.is_set():
                readings: list[DeviceReading] = []
                for name, endpoint in devices:
                    memory = device_memory(name)
                    if memory is not None:
                        readings.append(DeviceReading(name, endpoint, memory[0], memory[1]))
                if stop.is_set():
                    return
                self._send(DeviceMemory(tuple(readings), time.monotonic()))
                stop.wait(RPC_MEMORY_INTERVAL_S)

        threading.Thread(target=watch, name="rpc-memory", daemon=True).start()

    def stop_watching(self) -> None:
        if self._stop is not None:
            self._stop.set()
            self._stop = None
