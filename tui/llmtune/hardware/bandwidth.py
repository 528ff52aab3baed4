"""A short host memory-bandwidth probe, cached per machine.

Token generation on the CPU reads every weight once per token, so it runs at
memory bandwidth; the speed model needs a number for this machine rather than a
guess. The probe copies a 256 MiB array with numpy a few times, split across the
physical cores (numpy releases the GIL while copying, and llama.cpp also reads
with every core), and keeps the best run. Bytes moved count the read and the
write (STREAM's "Copy" convention: 2 x size per copy).

A copy can only be slowed down, never sped up, by other work on the machine
(one probe taken while the machine was busy read 7.1 GB/s where a quiet one
reads 28), so the probe runs in a few rounds with pauses between them and
keeps the best, and the cache keeps the last few probes and plans with the
best of them. When a run measures much faster than predicted from this figure
(``engine.calibration``), :func:`reprobe_host_bandwidth` probes again.

The result is kept in ``host_bandwidth.json`` in the user cache directory
(``LLMTUNE_CACHE_DIR`` overrides it), keyed on CPU model and RAM size, so the
probe runs once per machine: ``hardware.detect()`` (what ``llmtune fit`` and
``llmtune bench`` plan this machine with) runs it when nothing is cached.
``host_device()`` stays pure and fast; ``host_device_measured()`` reads the
cache and probes only when asked.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from llmtune.paths import read_json, write_atomic
from llmtune.units import GIB, MIB

logger = logging.getLogger(__name__)

PROBE_BYTES = 256 * MIB
PROBE_REPEATS = 5
PROBE_BUDGET_S = 0.5  # per round
PROBE_ROUNDS = 3
PROBE_PAUSE_S = 0.2  # between rounds: a burst of other work may pass
KEPT_PROBES = 5  # the cache plans with the best of the last few
CACHE_FILE = "host_bandwidth.json"
MAX_CACHE_BYTES = 1 << 20  # an entry per machine takes about 200 bytes
CACHE_VERSION = 1
_MAX_THREADS = 16
_MIN_CHUNK_BYTES = 8 * MIB


@dataclass(frozen=True)
class BandwidthMeasurement:
    bandwidth_gbps: float
    array_bytes: int
    repeats: int
    threads: int


def cpu_model_name() -> str:
    """The CPU's model name ('AMD Ryzen 9 7950X 16-Core Processor'), or the architecture."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "cpu model") and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _ram_bytes() -> int:
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except Exception:
        try:
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            return 0


def machine_key() -> str:
    """CPU model and RAM (to the nearest GiB, which the kernel's reserve does not move)."""
    return f"{cpu_model_name()} | {round(_ram_bytes() / GIB)} GiB"


def cache_path() -> Path:
    from llmtune.paths import cache_dir

    return cache_dir() / CACHE_FILE


def _physical_cores() -> int:
    try:
        import psutil

        return int(psutil.cpu_count(logical=False) or os.cpu_count() or 1)
    except Exception:
        return os.cpu_count() or 1


def measure_host_bandwidth(
    array_bytes: int = PROBE_BYTES,
    repeats: int = PROBE_REPEATS,
    threads: int | None = None,
    budget_s: float = PROBE_BUDGET_S,
    rounds: int = 1,
    pause_s: float = PROBE_PAUSE_S,
) -> BandwidthMeasurement:
    """Copy ``array_bytes`` ``repeats`` times (at least twice, fewer once ``budget_s`` of
    copying is spent) in each of ``rounds`` rounds ``pause_s`` apart, and keep the
    best copy."""
    import numpy as np

    n = max(int(array_bytes), MIB)
    src = np.ones(n, dtype=np.uint8)
    dst = np.zeros(n, dtype=np.uint8)
    dst[::4096] = 1  # touch every page so the first copy does not pay page faults
    wanted = threads if threads is not None else min(_physical_cores(), _MAX_THREADS)
    workers = max(1, min(wanted, n // _MIN_CHUNK_BYTES))
    bounds = [(i * n // workers, (i + 1) * n // workers) for i in range(workers)]

    def copy(bound: tuple[int, int]) -> None:
        lo, hi = bound
        np.copyto(dst[lo:hi], src[lo:hi])

    best = math.inf
    done = 0
    wanted_repeats = max(1, repeats)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for round_number in range(max(1, rounds)):
            if round_number:
                time.sleep(pause_s)
            # The budget starts after allocation, whose page faults vary a lot between
            # runs; at least two copies, as the first may still be warming caches and TLBs.
            started = time.perf_counter()
            copies = 0
            while copies < wanted_repeats:
                t0 = time.perf_counter()
                list(pool.map(copy, bounds))
                best = min(best, time.perf_counter() - t0)
                copies += 1
                if copies >= 2 and time.perf_counter() - started > budget_s:
                    break
            done += copies
    gbps = 2 * n / max(best, 1e-9) / 1e9
    return BandwidthMeasurement(bandwidth_gbps=gbps, array_bytes=n, repeats=done, threads=workers)


def read_machine_cache(
    path: Path, version: int, max_bytes: int = MAX_CACHE_BYTES
) -> dict[str, Any]:
    """A per-machine probe cache's entries (``{"version": v, "machines": {key:
    entry}}``, this one and :mod:`.cpu_kernels`'); an unreadable, malformed,
    oversized or older file is treated as empty (and replaced by the next probe)."""
    try:
        data = read_json(path, max_bytes)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        logger.info("ignoring unreadable probe cache %s: %s", path, err)
        return {}
    if not isinstance(data, dict) or data.get("version") != version:
        return {}
    machines = data.get("machines")
    return dict(machines) if isinstance(machines, dict) else {}


def write_machine_cache(path: Path, version: int, machines: dict[str, Any]) -> None:
    """Replace a per-machine probe cache with ``machines``, atomically. Raises OSError."""
    text = json.dumps({"version": version, "machines": machines}, indent=1, sort_keys=True)
    write_atomic(path, text)


def _read_cache(path: Path) -> dict[str, Any]:
    return read_machine_cache(path, CACHE_VERSION)


def cached_host_bandwidth_gbps(key: str | None = None) -> float | None:
    """The measured bandwidth of this machine (or ``key``), if the probe ever ran."""
    entry = _read_cache(cache_path()).get(key or machine_key())
    if not isinstance(entry, dict):
        return None
    value = entry.get("bandwidth_gbps")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if not math.isfinite(value) or value <= 0:
        return None
    return float(value)


@dataclass(frozen=True)
class HostBandwidth:
    """The figure plans use for this machine: the best of the last probes."""

    bandwidth_gbps: float
    measured_at: str  # when the best of them was measured (ISO 8601, UTC)
    probes: int  # how many probes it is the best of
    checked_at: str  # the latest probe

    def describe(self) -> str:
        """``host 28.4 GB/s (best of 3 probes, 2026-12-04)``."""
        best_of = f"best of {self.probes} probes, " if self.probes > 1 else "probed "
        return f"host {self.bandwidth_gbps:.1f} GB/s ({best_of}{self.measured_at[:10]})"


def _probes(entry: dict[str, Any]) -> list[dict[str, Any]]:
    """An entry's probes, oldest first (an entry from before probes were kept is one)."""
    kept = entry.get("probes")
    probes = [p for p in kept if _valid(p)] if isinstance(kept, list) else []
    if not probes and _valid(entry):
        probes = [
            {"bandwidth_gbps": entry["bandwidth_gbps"], "measured_at": entry.get("measured_at", "")}
        ]
    return probes


def _valid(probe: object) -> bool:
    if not isinstance(probe, dict):
        return False
    value = probe.get("bandwidth_gbps")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return math.isfinite(value) and value > 0


def host_bandwidth_record(key: str | None = None) -> HostBandwidth | None:
    """What the cache holds for this machine (or ``key``), or None before any probe."""
    try:
        entry = _read_cache(cache_path()).get(key or machine_key())
    except Exception:
        return None
    if not isinstance(entry, dict):
        return None
    probes = _probes(entry)
    if not probes:
        return None
    best = max(probes, key=lambda p: float(p["bandwidth_gbps"]))
    return HostBandwidth(
        bandwidth_gbps=float(best["bandwidth_gbps"]),
        measured_at=str(best.get("measured_at", "")),
        probes=len(probes),
        checked_at=str(probes[-1].get("measured_at", "")),
    )


def store_host_bandwidth(measurement: BandwidthMeasurement, key: str | None = None) -> None:
    """Add this probe to the machine's last :data:`KEPT_PROBES`, atomically (write a
    temp file, then rename); the entry's figure is the best of them."""
    path = cache_path()
    machines = _read_cache(path)
    key = key or machine_key()
    previous = machines.get(key)
    probes = _probes(previous) if isinstance(previous, dict) else []
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    probes = [*probes, {"bandwidth_gbps": round(measurement.bandwidth_gbps, 2), "measured_at": now}]
    probes = probes[-KEPT_PROBES:]
    best = max(probes, key=lambda p: float(p["bandwidth_gbps"]))
    machines[key] = {
        "bandwidth_gbps": best["bandwidth_gbps"],
        "measured_at": best["measured_at"],
        "array_bytes": measurement.array_bytes,
        "repeats": measurement.repeats,
        "threads": measurement.threads,
        "probes": probes,
    }
    write_machine_cache(path, CACHE_VERSION, machines)


def reprobe_host_bandwidth(array_bytes: int = PROBE_BYTES) -> tuple[float | None, float | None]:
    """Probe again (a prediction from the cached figure disagreed with a run) and keep
    the probe beside the others; (the figure before, the figure now). Never raises."""
    before = cached_host_bandwidth_gbps_safe()
    try:
        measurement = measure_host_bandwidth(array_bytes=array_bytes, rounds=PROBE_ROUNDS)
    except Exception as err:
        logger.warning("host bandwidth probe failed: %r", err)
        return before, before
    try:
        store_host_bandwidth(measurement)
    except Exception as err:
        logger.info("could not cache the host bandwidth: %r", err)
        fresh = round(measurement.bandwidth_gbps, 2)
        return before, max(before or 0.0, fresh)
    return before, cached_host_bandwidth_gbps_safe()


def cached_host_bandwidth_gbps_safe() -> float | None:
    try:
        return cached_host_bandwidth_gbps()
    except Exception as err:
        logger.info("bandwidth cache unavailable: %r", err)
        return None


def host_bandwidth_gbps(probe: bool = True, array_bytes: int = PROBE_BYTES) -> float | None:
    """This machine's bandwidth: the cached value, else (when ``probe``) measure and cache it.

    Never raises: a failed probe or an unwritable cache gives the measurement
    (or None) without storing it.
    """
    cached = cached_host_bandwidth_gbps_safe()
    if cached is not None or not probe:
        return cached
    try:
        measurement = measure_host_bandwidth(array_bytes=array_bytes, rounds=PROBE_ROUNDS)
    except Exception as err:  # MemoryError on a small machine, numpy missing
        logger.warning("host bandwidth probe failed: %r", err)
        return None
    try:
        store_host_bandwidth(measurement)
    except Exception as err:
        logger.info("could not cache the host bandwidth: %r", err)
    # As cached, so the first plan on a machine predicts what the later ones do.
    return round(measurement.bandwidth_gbps, 2)
