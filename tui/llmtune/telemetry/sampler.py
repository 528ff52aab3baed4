"""The sampler thread: one tick per interval, each probe called once, one Sample out.

The probes are plain callables so tests script them; the defaults read the
host through psutil, the GPUs through ``llmtune.hardware.gpus.snapshot`` (one
NVML snapshot per tick) and the worker process through a reused
``psutil.Process``. Nothing here raises out of the thread: a probe that fails
leaves its field ``None`` (or no GPUs) and is logged once, the way nvitop's
``libnvml`` treats an unsupported call. The callback runs on the sampler thread
and must only hand the sample over (the UI's ``post_message``).
"""

from __future__ import annotations

import importlib
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from llmtune.telemetry.sample import GPUSample, HostSample, Sample, WorkerSample

log = logging.getLogger("llmtune.telemetry")

DEFAULT_INTERVAL_S = 1.0
MIN_INTERVAL_S = 0.2

HostProbe = Callable[[], HostSample]
GPUProbe = Callable[[], Sequence[GPUSample]]
WorkerProbe = Callable[[], WorkerSample | None]
SampleCallback = Callable[[Sample], None]

_T = TypeVar("_T")


def clamp_interval(interval_s: float) -> float:
    """The interval actually used: at least ``MIN_INTERVAL_S`` (a NaN or
    infinite request gets the default)."""
    if not math.isfinite(interval_s):
        return DEFAULT_INTERVAL_S
    return max(MIN_INTERVAL_S, float(interval_s))


def next_deadline(previous: float, now: float, interval_s: float) -> float:
    """The next tick on the grid ``previous + k * interval_s`` that is after ``now``.

    Ticks sit on absolute deadlines, so the time a tick takes does not add up
    as drift; ticks missed (a slow probe, a suspended laptop) are skipped, not
    replayed in a burst.
    """
    deadline = previous + interval_s
    if deadline <= now:
        deadline = previous + (math.floor((now - previous) / interval_s) + 1) * interval_s
    return deadline


class _Once:
    """Logs each distinct failure once, so a broken probe does not flood the log."""

    def __init__(self) -> None:
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def warn(self, key: str, message: str, *args: object, exc_info: bool = True) -> None:
        with self._lock:
            if key in self._seen:
                return
            self._seen.add(key)
        log.warning(message, *args, exc_info=exc_info)


class PsutilHostProbe:
    """RAM, swap and CPU load through psutil; each call that fails leaves its field ``None``.

    ``psutil.cpu_percent(interval=None)`` measures since the previous call *in
    the same thread*, so the first tick reports ``None`` rather than a
    meaningless 0.
    """

    def __init__(self) -> None:
        self._once = _Once()
        self._cpu_primed: set[int] = set()

    def _guard(self, name: str, read: Callable[[], _T]) -> _T | None:
        try:
            return read()
        except Exception:
            self._once.warn(f"host.{name}", "telemetry: reading the host's %s failed", name)
            return None

    def _cpu_percent(self) -> float | None:
        import psutil

        percent = float(psutil.cpu_percent(interval=None))
        thread = threading.get_ident()
        if thread not in self._cpu_primed:
            self._cpu_primed.add(thread)
            return None
        return percent

    def __call__(self) -> HostSample:
        import psutil

        memory = self._guard("memory", psutil.virtual_memory)
        swap = self._guard("swap", psutil.swap_memory)
        return HostSample(
            ram_total_bytes=int(memory.total) if memory is not None else None,
            ram_available_bytes=int(memory.available) if memory is not None else None,
            swap_used_bytes=int(swap.used) if swap is not None else None,
            cpu_percent=self._guard("cpu", self._cpu_percent),
        )


class ProcessProbe:
    """The worker's resident memory, from one ``psutil.Process`` reused every tick.

    ``tokens_per_s`` is called on the sampler thread: it must only read a value
    (for example the supervisor's latest rate), never block. When the worker
    exits, call ``Sampler.watch_worker(None)`` (or the new pid): the probe does
    not check whether a reused pid is still the worker.
    """

    def __init__(self, pid: int, tokens_per_s: Callable[[], float | None] | None = None) -> None:
        self.pid = pid
        self._tokens_per_s = tokens_per_s
        self._process: Any = None  # psutil.Process, created on the first tick
        self._once = _Once()

    def _rss_bytes(self) -> int | None:
        import psutil

        try:
            if self._process is None:
                self._process = psutil.Process(self.pid)
            return int(self._process.memory_info().rss)
        except psutil.NoSuchProcess:
            return None  # the worker exited; the supervisor reports why
        except Exception:
            self._once.warn("rss", "telemetry: reading the RSS of process %d failed", self.pid)
            return None

    def __call__(self) -> WorkerSample:
        rate: float | None = None
        if self._tokens_per_s is not None:
            try:
                rate = self._tokens_per_s()
            except Exception:
                self._once.warn("rate", "telemetry: reading the worker's tokens/s failed")
        return WorkerSample(pid=self.pid, rss_bytes=self._rss_bytes(), tokens_per_s=rate)


def _number(state: object, name: str) -> float | None:
    value = getattr(state, name, None)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    return None


def gpu_sample_from_state(state: object, position: int) -> GPUSample:
    """A GPUSample from one ``llmtune.hardware.nvml.GPUState``.

    Read by attribute name, so a field that state lacks (or holds as ``None``)
    is ``None`` here rather than an error.
    """
    if isinstance(state, GPUSample):
        return state
    index = getattr(state, "index", None)
    name = getattr(state, "name", None)
    used = _number(state, "memory_used_bytes")
    total = _number(state, "memory_total_bytes")
    others = _number(state, "other_processes_bytes")
    utilization = _number(state, "utilization_gpu_percent")
    temperature = _number(state, "temperature_c")
    power = _number(state, "power_draw_w")
    return GPUSample(
        index=index if isinstance(index, int) else position,
        memory_used_bytes=int(used) if used is not None else None,
        memory_total_bytes=int(total) if total is not None else None,
        utilization_percent=float(utilization) if utilization is not None else None,
        temperature_c=float(temperature) if temperature is not None else None,
        power_w=float(power) if power is not None else None,
        other_processes_bytes=int(others) if others is not None else None,
        name=name if isinstance(name, str) else None,
    )


class NvmlGPUProbe:
    """All GPUs from one ``llmtune.hardware.gpus.snapshot()`` call per tick.

    The module is imported on the first tick (on the sampler thread, so NVML's
    initialisation never delays the UI); without it, or when a snapshot fails,
    the tick has no GPUs.
    """

    def __init__(self) -> None:
        # The worker's pid, set by Sampler.watch_worker: its memory is not "other processes'".
        self.exclude_pids: tuple[int, ...] = ()
        self._snapshot: Callable[..., Iterable[object]] | None = None
        self._unavailable = False
        self._once = _Once()

    def _load(self) -> Callable[..., Iterable[object]] | None:
        if self._snapshot is None and not self._unavailable:
            try:
                # By name: the hardware layer may be absent or without NVML support.
                module = importlib.import_module("llmtune.hardware.gpus")
                snapshot: Callable[..., Iterable[object]] = module.snapshot
                self._snapshot = snapshot
            except Exception:
                self._unavailable = True
                log.info("telemetry: no NVML snapshot available; sampling the host only")
        return self._snapshot

    def __call__(self) -> tuple[GPUSample, ...]:
        snapshot = self._load()
        if snapshot is None:
            return ()
        try:
            states = snapshot(exclude_pids=self.exclude_pids)
            return tuple(gpu_sample_from_state(s, i) for i, s in enumerate(states))
        except Exception:
            self._once.warn("snapshot", "telemetry: the NVML snapshot failed")
            return ()


class Sampler:
    """One daemon thread calling each probe once per tick and passing a Sample on.

    ``interval_s`` is clamped to at least 0.2 s. Ticks are scheduled on
    absolute deadlines of ``clock`` (monotonic); the first tick is at
    ``start()``. ``stop()`` wakes the thread at once and joins it.
    """

    def __init__(
        self,
        callback: SampleCallback,
        *,
        interval_s: float = DEFAULT_INTERVAL_S,
        host_probe: HostProbe | None = None,
        gpu_probe: GPUProbe | None = None,
        worker_probe: WorkerProbe | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval_s = clamp_interval(interval_s)
        self._callback = callback
        self._host_probe: HostProbe = host_probe if host_probe is not None else PsutilHostProbe()
        self._gpu_probe: GPUProbe = gpu_probe if gpu_probe is not None else NvmlGPUProbe()
        # Replaced by set_worker_probe from any thread: one reference, read once per tick.
        self._worker_probe = worker_probe
        self._clock = clock
        self._once = _Once()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.ticks = 0
        self.cpu_time_s = 0.0  # CPU time the latest thread has used (time.thread_time)

    # -- control (any thread) ---------------------------------------------------

    def set_worker_probe(self, probe: WorkerProbe | None) -> None:
        """Sample another worker (a restart gives a new pid), or none."""
        self._worker_probe = probe

    def watch_worker(
        self, pid: int | None, tokens_per_s: Callable[[], float | None] | None = None
    ) -> None:
        """Sample the worker process ``pid`` (``None``: no worker)."""
        if isinstance(self._gpu_probe, NvmlGPUProbe):
            self._gpu_probe.exclude_pids = (pid,) if pid is not None else ()
        self.set_worker_probe(ProcessProbe(pid, tokens_per_s) if pid is not None else None)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        if self.running:
            return
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(self._stop,), name="llmtune-telemetry", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread; returns within one interval even if a probe hangs."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=self.interval_s)
            if not thread.is_alive():
                self._thread = None

    # -- the thread -------------------------------------------------------------

    def _call(self, name: str, probe: Callable[[], _T], default: _T) -> _T:
        try:
            return probe()
        except Exception:
            self._once.warn(name, "telemetry: the %s probe failed", name)
            return default

    def tick(self) -> Sample:
        """Call each probe once and build the Sample (never raises)."""
        timestamp = self._clock()
        host = self._call("host", self._host_probe, None)
        no_gpus: tuple[GPUSample, ...] = ()
        gpus = self._call("gpu", lambda: tuple(self._gpu_probe()), no_gpus)
        worker_probe = self._worker_probe
        worker = self._call("worker", worker_probe, None) if worker_probe is not None else None
        return Sample(timestamp=timestamp, host=host, gpus=gpus, worker=worker)

    def _run(self, stop: threading.Event) -> None:
        cpu_start = time.thread_time()
        deadline = self._clock()
        while not stop.is_set():
            try:
                sample = self.tick()
                if stop.is_set():
                    break
                self._callback(sample)
            except Exception:
                self._once.warn("callback", "telemetry: the sample callback failed")
            self.ticks += 1
            self.cpu_time_s = time.thread_time() - cpu_start
            now = self._clock()
            deadline = next_deadline(deadline, now, self.interval_s)
            if stop.wait(max(0.0, deadline - now)):
                break
