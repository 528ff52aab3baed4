"""Samples: immutable snapshots of the machine at one instant.

The sampler thread builds them and hands them to the UI thread, which appends
them to its series; being frozen, they are safe to share between threads.
A field is ``None`` when the probe behind it failed or the driver does not
report it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class HostSample:
    ram_total_bytes: int | None
    ram_available_bytes: int | None
    swap_used_bytes: int | None
    cpu_percent: float | None  # all cores, 0-100; None on the first tick

    @property
    def ram_used_bytes(self) -> int | None:
        if self.ram_total_bytes is None or self.ram_available_bytes is None:
            return None
        return self.ram_total_bytes - self.ram_available_bytes


@dataclass(frozen=True)
class GPUSample:
    index: int
    memory_used_bytes: int | None = None
    memory_total_bytes: int | None = None
    utilization_percent: float | None = None
    temperature_c: float | None = None
    power_w: float | None = None
    # Memory other processes than llmtune and its worker hold on this GPU.
    other_processes_bytes: int | None = None
    name: str | None = None


@dataclass(frozen=True)
class WorkerSample:
    pid: int
    rss_bytes: int | None
    tokens_per_s: float | None = None


@dataclass(frozen=True)
class Sample:
    """One tick. ``timestamp`` is ``time.monotonic()`` seconds (for graphs and
    ordering, not for display as a date); ``host`` is ``None`` when the host
    probe failed outright, ``gpus`` is empty without NVML, ``worker`` is
    ``None`` when no worker is running or its probe failed."""

    timestamp: float
    host: HostSample | None
    gpus: tuple[GPUSample, ...] = ()
    worker: WorkerSample | None = None
