"""NVIDIA GPUs through NVML (``import pynvml``, from nvidia-ml-py), never raising.

One :func:`snapshot` per tick reads every GPU in one pass. NVML starts lazily on
the first call and only once: no library, no driver or no GPU leaves the app in
CPU-only mode, and :func:`nvml_status` says why in one sentence. A field whose
call fails is ``None``; a function the driver or the card does not support is
logged once and not called again (nvitop's ``api/libnvml.py`` does the same).

Memory bandwidth follows the NVIDIA forum's reading of NVML's memory clock
("RTX 3090 & A100 memory frequency", forums.developer.nvidia.com/t/198730):
NVML reports a double-data-rate-equivalent clock, so for GDDR5/5X/6/6X and HBM
alike::

    bandwidth (bytes/s) = bus_width_bits / 8 * max_memory_clock_hz * 2

An RTX 3090 reports 9751 MHz on 384 bits (GDDR6X at 19.5 Gbit/s per pin, twice
the reported clock): 48 B * 9751 MHz * 2 = 936 GB/s, the published figure; an
A100 40GB reports 1215 MHz on 5120 bits: 1555 GB/s. The *maximum* memory clock
is used because an idle card drops its current memory clock to a few hundred MHz.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Literal

from llmtune.units import format_bytes

logger = logging.getLogger(__name__)

ProcessKind = Literal["compute", "graphics", "compute+graphics"]

# Error codes from nvml.h, used when the binding lacks the constant.
_NOT_SUPPORTED = 3
_NO_PERMISSION = 4
_DRIVER_NOT_LOADED = 9
_LIBRARY_NOT_FOUND = 12
_FUNCTION_NOT_FOUND = 13
_GPU_IS_LOST = 15


@dataclass(frozen=True)
class GPUProcess:
    """A process holding memory on a GPU (``used_bytes`` is None on Windows WDDM)."""

    pid: int
    used_bytes: int | None
    kind: ProcessKind


@dataclass(frozen=True)
class GPUState:
    """One GPU at one instant. Every measurement is ``None`` when NVML (or amdsmi)
    could not give it."""

    index: int
    name: str | None = None
    uuid: str | None = None
    memory_total_bytes: int | None = None
    memory_used_bytes: int | None = None
    memory_free_bytes: int | None = None
    utilization_gpu_percent: int | None = None
    utilization_memory_percent: int | None = None
    temperature_c: int | None = None
    power_draw_w: float | None = None
    power_limit_w: float | None = None
    clock_graphics_mhz: int | None = None
    clock_memory_mhz: int | None = None
    max_clock_memory_mhz: int | None = None
    memory_bus_width_bits: int | None = None
    pcie_generation: int | None = None
    pcie_width: int | None = None
    pcie_max_generation: int | None = None
    pcie_max_width: int | None = None
    processes: tuple[GPUProcess, ...] | None = None
    # Memory held by processes other than llmtune and its worker; None when
    # NVML cannot list processes (a container without the host's pid namespace).
    other_processes_bytes: int | None = None
    lost: bool = False  # NVML says the GPU fell off the bus or vanished this tick
    # The ggml backend llama.cpp drives this GPU with (hardware.amd reads ROCm GPUs
    # into the same state).
    backend: str = "CUDA"

    @property
    def bandwidth_gbps(self) -> float | None:
        """Theoretical memory bandwidth in GB/s (see the module docstring)."""
        if not self.memory_bus_width_bits or not self.max_clock_memory_mhz:
            return None
        return self.memory_bus_width_bits / 8 * self.max_clock_memory_mhz * 2 / 1000

    def other_processes_note(self) -> str | None:
        """'other processes hold 3.1 GiB of this GPU', or None when they hold nothing."""
        if not self.other_processes_bytes:
            return None
        return f"other processes hold {format_bytes(self.other_processes_bytes)} of this GPU"


class _Lost(Exception):
    """The GPU answered NVML_ERROR_GPU_IS_LOST: stop asking it this tick."""


# Fields that do not change while the driver is loaded, read once per GPU.
_STATIC_FIELDS = (
    "name",
    "uuid",
    "memory_bus_width_bits",
    "max_clock_memory_mhz",
    "pcie_max_generation",
    "pcie_max_width",
)


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


class NVMLSession:
    """Lazy NVML state: the module, the handles' static facts, what is unsupported.

    Thread-safe: the telemetry sampler and the UI may both ask for a snapshot.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._clear()

    def _clear(self) -> None:
        self._started = False
        self._nvml: ModuleType | None = None
        self._reason = ""
        self._count = 0
        self._static: dict[int, dict[str, Any]] = {}
        self._unsupported: set[tuple[int, str]] = set()
        self._logged: set[str] = set()

    # -- start-up -------------------------------------------------------------

    def status(self) -> tuple[bool, str]:
        """(GPUs available, one sentence saying what NVML found or why not)."""
        with self._lock:
            self._start()
            return self._nvml is not None, self._reason

    def _start(self) -> None:
        if self._started:
            return
        self._started = True
        try:
            import pynvml
        except Exception:
            self._reason = "nvidia-ml-py is not installed, so llmtune cannot see NVIDIA GPUs: running CPU-only."
            return
        try:
            pynvml.nvmlInit()
        except Exception as err:
            self._reason = self._init_failure(pynvml, err)
            return
        try:
            count = int(pynvml.nvmlDeviceGetCount())
        except Exception as err:
            self._reason = (
                f"NVML started but could not count GPUs ({_text(err)}): running CPU-only."
            )
            self._shutdown(pynvml)
            return
        if count <= 0:
            self._reason = "The NVIDIA driver is loaded but reports no GPU: running CPU-only."
            self._shutdown(pynvml)
            return
        self._nvml = pynvml
        self._count = count
        try:
            driver = f"driver {_text(pynvml.nvmlSystemGetDriverVersion())}"
        except Exception:
            driver = "driver version unknown"
        plural = "GPU" if count == 1 else "GPUs"
        self._reason = f"NVML sees {count} NVIDIA {plural} ({driver})."

    @staticmethod
    def _init_failure(pynvml: ModuleType, err: Exception) -> str:
        code = getattr(err, "value", None)
        if code == getattr(pynvml, "NVML_ERROR_LIBRARY_NOT_FOUND", _LIBRARY_NOT_FOUND):
            return "No NVIDIA driver found (the NVML library libnvidia-ml is missing): running CPU-only."
        if code == getattr(pynvml, "NVML_ERROR_DRIVER_NOT_LOADED", _DRIVER_NOT_LOADED):
            return "The NVIDIA driver is installed but not loaded: running CPU-only."
        if code == getattr(pynvml, "NVML_ERROR_NO_PERMISSION", _NO_PERMISSION):
            return "No permission to query the NVIDIA driver: running CPU-only."
        return f"NVML could not start ({_text(err) or type(err).__name__}): running CPU-only."

    @staticmethod
    def _shutdown(pynvml: ModuleType) -> None:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass

    def close(self) -> None:
        """Shut NVML down; the next call starts it again."""
        with self._lock:
            if self._nvml is not None:
                self._shutdown(self._nvml)
            self._clear()

    # -- one tick -------------------------------------------------------------

    def snapshot(self, exclude_pids: Iterable[int] = ()) -> tuple[GPUState, ...]:
        """Every GPU now, in NVML index order; empty in CPU-only mode.

        ``exclude_pids`` (the worker's pid) and this process are not counted in
        ``other_processes_bytes``.
        """
        excluded = frozenset(exclude_pids) | {os.getpid()}
        with self._lock:
            self._start()
            nvml = self._nvml
            if nvml is None:
                return ()
            try:
                count = int(nvml.nvmlDeviceGetCount())
            except Exception as err:
                self._log_once("count", f"NVML could not count GPUs this tick: {_text(err)}")
                count = self._count
            if count != self._count:
                # A GPU came or went: the card behind an index may have changed.
                self._static.clear()
                self._unsupported.clear()
                self._count = count
            states = []
            for index in range(count):
                try:
                    states.append(self._read(nvml, index, excluded))
                except Exception as err:  # never let one GPU break the tick
                    self._log_once(
                        f"read:{type(err).__name__}", f"reading GPU {index} failed: {err!r}"
                    )
                    states.append(GPUState(index=index, lost=True))
            return tuple(states)

    def _read(self, nvml: ModuleType, index: int, excluded: frozenset[int]) -> GPUState:
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
        except Exception as err:
            self._log_once(f"handle:{index}", f"GPU {index} cannot be reached: {_text(err)}")
            self._static.pop(index, None)
            return GPUState(index=index, lost=True)
        try:
            return self._read_handle(nvml, index, handle, excluded)
        except _Lost:
            self._static.pop(index, None)
            self._log_once(f"lost:{index}", f"GPU {index} is lost (fell off the bus?)")
            return GPUState(index=index, lost=True)

    def _read_handle(
        self, nvml: ModuleType, index: int, handle: Any, excluded: frozenset[int]
    ) -> GPUState:
        clock_mem = getattr(nvml, "NVML_CLOCK_MEM", 2)
        static = self._static.setdefault(index, {})

        def fixed(field: str, fn: str, *args: Any) -> Any:
            if field not in static:
                value = self._call(nvml, index, field, fn, handle, *args)
                if value is None:
                    return None
                static[field] = value
            return static[field]

        name = fixed("name", "nvmlDeviceGetName")
        uuid = fixed("uuid", "nvmlDeviceGetUUID")
        bus_width = fixed("memory_bus_width_bits", "nvmlDeviceGetMemoryBusWidth")
        max_mem_clock = fixed("max_clock_memory_mhz", "nvmlDeviceGetMaxClockInfo", clock_mem)
        pcie_max_gen = fixed("pcie_max_generation", "nvmlDeviceGetMaxPcieLinkGeneration")
        pcie_max_width = fixed("pcie_max_width", "nvmlDeviceGetMaxPcieLinkWidth")

        def now(field: str, fn: str, *args: Any) -> Any:
            return self._call(nvml, index, field, fn, handle, *args)

        memory = now("memory", "nvmlDeviceGetMemoryInfo")
        utilization = now("utilization", "nvmlDeviceGetUtilizationRates")
        temperature = now(
            "temperature", "nvmlDeviceGetTemperature", getattr(nvml, "NVML_TEMPERATURE_GPU", 0)
        )
        power_mw = now("power_draw", "nvmlDeviceGetPowerUsage")
        limit_mw = now("power_limit", "nvmlDeviceGetEnforcedPowerLimit")
        clock_gr = now(
            "clock_graphics", "nvmlDeviceGetClockInfo", getattr(nvml, "NVML_CLOCK_GRAPHICS", 0)
        )
        clock_mem_now = now("clock_memory", "nvmlDeviceGetClockInfo", clock_mem)
        pcie_gen = now("pcie_generation", "nvmlDeviceGetCurrPcieLinkGeneration")
        pcie_width = now("pcie_width", "nvmlDeviceGetCurrPcieLinkWidth")
        compute = now("compute_processes", "nvmlDeviceGetComputeRunningProcesses")
        graphics = now("graphics_processes", "nvmlDeviceGetGraphicsRunningProcesses")

        processes = _merge_processes(compute, graphics)
        others = None
        if processes is not None:
            others = sum(p.used_bytes or 0 for p in processes if p.pid not in excluded)
        return GPUState(
            index=index,
            name=None if name is None else _text(name),
            uuid=None if uuid is None else _text(uuid),
            memory_total_bytes=_int_attr(memory, "total"),
            memory_used_bytes=_int_attr(memory, "used"),
            memory_free_bytes=_int_attr(memory, "free"),
            utilization_gpu_percent=_int_attr(utilization, "gpu"),
            utilization_memory_percent=_int_attr(utilization, "memory"),
            temperature_c=_int(temperature),
            power_draw_w=None if power_mw is None else float(power_mw) / 1000,
            power_limit_w=None if limit_mw is None else float(limit_mw) / 1000,
            clock_graphics_mhz=_int(clock_gr),
            clock_memory_mhz=_int(clock_mem_now),
            max_clock_memory_mhz=_int(max_mem_clock),
            memory_bus_width_bits=_int(bus_width),
            pcie_generation=_int(pcie_gen),
            pcie_width=_int(pcie_width),
            pcie_max_generation=_int(pcie_max_gen),
            pcie_max_width=_int(pcie_max_width),
            processes=processes,
            other_processes_bytes=others,
        )

    def _call(self, nvml: ModuleType, index: int, field: str, fn_name: str, *args: Any) -> Any:
        """``nvml.fn_name(*args)``, or None when it fails; remembers what is unsupported."""
        key = (index, field)
        if key in self._unsupported:
            return None
        fn = getattr(nvml, fn_name, None)
        if fn is None:
            self._unsupported.add(key)
            self._log_once(
                fn_name, f"{fn_name} is missing from this nvidia-ml-py; {field} stays empty"
            )
            return None
        try:
            return fn(*args)
        except nvml.NVMLError as err:
            code = getattr(err, "value", None)
            if code == getattr(nvml, "NVML_ERROR_GPU_IS_LOST", _GPU_IS_LOST):
                raise _Lost from None
            permanent = {
                getattr(nvml, "NVML_ERROR_NOT_SUPPORTED", _NOT_SUPPORTED),
                getattr(nvml, "NVML_ERROR_FUNCTION_NOT_FOUND", _FUNCTION_NOT_FOUND),
                getattr(nvml, "NVML_ERROR_NO_PERMISSION", _NO_PERMISSION),
            }
            if code in permanent:
                self._unsupported.add(key)
                self._log_once(
                    fn_name, f"{fn_name} is not available ({_text(err)}); {field} stays empty"
                )
            else:
                self._log_once(f"{fn_name}:{code}", f"{fn_name} failed ({_text(err)}); will retry")
            return None
        except Exception as err:
            # NVMLLibraryMismatchError and friends: the binding and driver disagree for good.
            self._unsupported.add(key)
            self._log_once(fn_name, f"{fn_name} failed ({err!r}); {field} stays empty")
            return None

    def _log_once(self, key: str, message: str) -> None:
        if key not in self._logged:
            self._logged.add(key)
            logger.info(message)


def _int(value: Any) -> int | None:
    try:
        return None if value is None else int(value)
    except (TypeError, ValueError):
        return None


def _int_attr(obj: Any, name: str) -> int | None:
    return None if obj is None else _int(getattr(obj, name, None))


def _merge_processes(compute: Any, graphics: Any) -> tuple[GPUProcess, ...] | None:
    """One entry per pid; a process with both contexts reports the same memory in both lists."""
    if compute is None and graphics is None:
        return None
    by_pid: dict[int, GPUProcess] = {}
    lists: tuple[tuple[ProcessKind, Any], ...] = (
        ("compute", compute or ()),
        ("graphics", graphics or ()),
    )
    for kind, items in lists:
        for item in items:
            pid = _int(getattr(item, "pid", None))
            if pid is None:
                continue
            used = _int(getattr(item, "usedGpuMemory", None))
            seen = by_pid.get(pid)
            if seen is None:
                by_pid[pid] = GPUProcess(pid=pid, used_bytes=used, kind=kind)
            else:
                known = [b for b in (seen.used_bytes, used) if b is not None]
                by_pid[pid] = GPUProcess(
                    pid=pid, used_bytes=max(known) if known else None, kind="compute+graphics"
                )
    return tuple(sorted(by_pid.values(), key=lambda p: p.pid))


_session = NVMLSession()


def snapshot(exclude_pids: Iterable[int] = ()) -> tuple[GPUState, ...]:
    """Every NVIDIA GPU now (empty in CPU-only mode). Never raises."""
    try:
        return _session.snapshot(exclude_pids)
    except Exception as err:  # the device layer must never crash the UI
        logger.warning("NVML snapshot failed: %r", err)
        return ()


def nvml_status() -> tuple[bool, str]:
    """(GPUs available, one sentence: what NVML sees, or why llmtune runs CPU-only)."""
    try:
        return _session.status()
    except Exception as err:
        return False, f"NVML failed unexpectedly ({err!r}): running CPU-only."


def reset() -> None:
    """Forget NVML's state so the next call starts it again (tests; after a driver reload)."""
    global _session
    try:
        _session.close()
    except Exception:
        pass
    _session = NVMLSession()
