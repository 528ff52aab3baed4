"""TelemetryStore: the series the UI graphs, fed one Sample at a time.

UI thread only: the sampler's callback posts each Sample as a message and the
handler calls ``store.append(sample)``; the worker's readings of its RPC
devices' memory (``DeviceMemory`` events, immutable) come the same way, through
the worker session, to ``store.append_device_memory``. Every series has the same fixed
capacity (history / interval), so the store's memory does not grow with uptime.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from llmtune.telemetry.sample import GPUSample, Sample
from llmtune.telemetry.sampler import DEFAULT_INTERVAL_S, clamp_interval
from llmtune.telemetry.series import Series

DEFAULT_HISTORY_S = 600.0
# A bound on per-GPU series, so a misbehaving probe cannot grow the store.
MAX_GPUS = 64


def capacity_for(history_s: float, interval_s: float) -> int:
    """Points needed to cover ``history_s`` at one per (clamped) ``interval_s``."""
    return max(1, math.ceil(history_s / clamp_interval(interval_s)) + 1)


class HostSeries:
    __slots__ = (
        "cpu_percent",
        "ram_available_bytes",
        "ram_total_bytes",
        "ram_used_bytes",
        "swap_used_bytes",
    )

    def __init__(self, capacity: int) -> None:
        self.ram_used_bytes = Series(capacity)
        self.ram_available_bytes = Series(capacity)
        self.swap_used_bytes = Series(capacity)
        self.cpu_percent = Series(capacity)
        self.ram_total_bytes: int | None = None  # the latest reported, for the graph's scale


class GPUSeries:
    __slots__ = (
        "index",
        "memory_total_bytes",
        "memory_used_bytes",
        "name",
        "other_processes_bytes",
        "power_w",
        "temperature_c",
        "utilization_percent",
    )

    def __init__(self, index: int, capacity: int) -> None:
        self.index = index
        self.memory_used_bytes = Series(capacity)
        self.utilization_percent = Series(capacity)
        self.temperature_c = Series(capacity)
        self.power_w = Series(capacity)
        self.memory_total_bytes: int | None = None
        self.name: str | None = None
        # Memory other processes hold on this GPU, as of the latest tick.
        self.other_processes_bytes: int | None = None

    def append(self, timestamp: float, gpu: GPUSample | None) -> None:
        """Add one tick; ``None`` (the GPU was missing from this tick) leaves a gap."""
        if gpu is None:
            for series in (
                self.memory_used_bytes,
                self.utilization_percent,
                self.temperature_c,
                self.power_w,
            ):
                series.append(timestamp, None)
            return
        self.memory_used_bytes.append(timestamp, gpu.memory_used_bytes)
        self.utilization_percent.append(timestamp, gpu.utilization_percent)
        self.temperature_c.append(timestamp, gpu.temperature_c)
        self.power_w.append(timestamp, gpu.power_w)
        if gpu.memory_total_bytes is not None:
            self.memory_total_bytes = gpu.memory_total_bytes
        if gpu.name is not None:
            self.name = gpu.name
        self.other_processes_bytes = gpu.other_processes_bytes


def rpc_key(endpoint: str, ordinal: int) -> str:
    """An RPC device as its host's ``ordinal``-th device: llama.cpp's RPC0, RPC1...
    number the devices of every registered host, so they change with the hosts."""
    return f"{endpoint}#{ordinal}"


class RpcDeviceSeries:
    """One RPC device's memory as its server reports it (free of total)."""

    __slots__ = ("endpoint", "free_bytes", "key", "name", "total_bytes", "used_bytes")

    def __init__(self, key: str, capacity: int) -> None:
        self.key = key
        self.used_bytes = Series(capacity)  # total less free: everything on the device
        self.free_bytes = Series(capacity)
        self.total_bytes: int | None = None
        self.name = ""  # llama.cpp's, as of the latest reading: RPC0
        self.endpoint = ""

    def append(self, timestamp: float, free_bytes: int | None, total_bytes: int | None) -> None:
        if free_bytes is None or total_bytes is None:
            self.used_bytes.append(timestamp, None)
            self.free_bytes.append(timestamp, None)
            return
        self.used_bytes.append(timestamp, max(0, total_bytes - free_bytes))
        self.free_bytes.append(timestamp, free_bytes)
        self.total_bytes = total_bytes


class WorkerSeries:
    __slots__ = ("pid", "rss_bytes", "tokens_per_s")

    def __init__(self, capacity: int) -> None:
        self.rss_bytes = Series(capacity)
        self.tokens_per_s = Series(capacity)
        self.pid: int | None = None  # the latest worker's, None while none runs


class TelemetryStore:
    """Host, per-GPU and worker series covering the last ``history_s`` seconds."""

    def __init__(
        self, history_s: float = DEFAULT_HISTORY_S, interval_s: float = DEFAULT_INTERVAL_S
    ) -> None:
        self.capacity = capacity_for(history_s, interval_s)
        self.host = HostSeries(self.capacity)
        self.worker = WorkerSeries(self.capacity)
        self._gpus: dict[int, GPUSeries] = {}
        self.latest: Sample | None = None
        self._rpc: dict[str, RpcDeviceSeries] = {}
        self._rpc_shown: tuple[str, ...] = ()  # the latest reading's devices, in its order
        self._rpc_time: float | None = None

    @property
    def gpus(self) -> tuple[GPUSeries, ...]:
        """The GPUs seen so far, by index."""
        return tuple(self._gpus[i] for i in sorted(self._gpus))

    def gpu(self, index: int) -> GPUSeries | None:
        return self._gpus.get(index)

    @property
    def rpc_devices(self) -> tuple[RpcDeviceSeries, ...]:
        """The RPC devices of the latest reading, in its order (llama.cpp's)."""
        return tuple(self._rpc[key] for key in self._rpc_shown)

    def append_device_memory(
        self, timestamp: float, readings: Iterable[tuple[str, str, int, int]]
    ) -> bool:
        """Add one reading of the RPC devices: (name, endpoint, free, total) each, in
        llama.cpp's order. One older than the latest is dropped (``False``); a device
        missing from it leaves a gap in its series."""
        if self._rpc_time is not None and timestamp < self._rpc_time:
            return False
        shown: list[str] = []
        per_host: dict[str, int] = {}
        for name, endpoint, free, total in readings:
            ordinal = per_host.get(endpoint, 0)
            per_host[endpoint] = ordinal + 1
            key = rpc_key(endpoint, ordinal)
            series = self._rpc.get(key)
            if series is None:
                if len(self._rpc) >= MAX_GPUS:
                    continue
                series = self._rpc[key] = RpcDeviceSeries(key, self.capacity)
            series.name, series.endpoint = name, endpoint
            series.append(timestamp, free, total)
            shown.append(key)
        for key, series in self._rpc.items():
            if key not in shown:
                series.append(timestamp, None, None)
        self._rpc_shown = tuple(shown)
        self._rpc_time = timestamp
        return True

    def append(self, sample: Sample) -> bool:
        """Add one sample; one older than the latest (a stale message) is dropped
        and ``False`` returned."""
        if self.latest is not None and sample.timestamp < self.latest.timestamp:
            return False
        t = sample.timestamp
        host = sample.host
        self.host.ram_used_bytes.append(t, host.ram_used_bytes if host else None)
        self.host.ram_available_bytes.append(t, host.ram_available_bytes if host else None)
        self.host.swap_used_bytes.append(t, host.swap_used_bytes if host else None)
        self.host.cpu_percent.append(t, host.cpu_percent if host else None)
        if host is not None and host.ram_total_bytes is not None:
            self.host.ram_total_bytes = host.ram_total_bytes

        seen: set[int] = set()
        for gpu in sample.gpus:
            series = self._gpus.get(gpu.index)
            if series is None:
                if len(self._gpus) >= MAX_GPUS:
                    continue
                series = self._gpus[gpu.index] = GPUSeries(gpu.index, self.capacity)
            elif gpu.index in seen:
                continue  # a duplicate index in one tick: keep the first
            series.append(t, gpu)
            seen.add(gpu.index)
        for index, series in self._gpus.items():
            if index not in seen:
                series.append(t, None)

        worker = sample.worker
        self.worker.rss_bytes.append(t, worker.rss_bytes if worker else None)
        self.worker.tokens_per_s.append(t, worker.tokens_per_s if worker else None)
        self.worker.pid = worker.pid if worker else None
        self.latest = sample
        return True
