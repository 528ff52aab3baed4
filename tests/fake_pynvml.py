"""A scripted stand-in for the pynvml functions llmtune calls.

``FakeNVML(gpus=[FakeGPU(...), ...]).module()`` is a module object with the
same function names, constants and ``NVMLError`` classes as nvidia-ml-py
(errors map their code to a subclass like the real ``NVMLError.__new__``).
Tests put it in ``sys.modules['pynvml']`` and script it: values per GPU,
functions that raise, a GPU that is lost, a library that is missing. ``calls``
counts every call by function name so tests can see what was retried.
"""

from __future__ import annotations

import types
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_FUNCTION_NOT_FOUND = 13
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_UNKNOWN = 999

NVML_TEMPERATURE_GPU = 0
NVML_CLOCK_GRAPHICS = 0
NVML_CLOCK_SM = 1
NVML_CLOCK_MEM = 2

_NAMES = {
    NVML_ERROR_UNINITIALIZED: "Uninitialized",
    NVML_ERROR_NOT_SUPPORTED: "Not Supported",
    NVML_ERROR_NO_PERMISSION: "Insufficient Permissions",
    NVML_ERROR_NOT_FOUND: "Not Found",
    NVML_ERROR_DRIVER_NOT_LOADED: "Driver Not Loaded",
    NVML_ERROR_LIBRARY_NOT_FOUND: "NVML Shared Library Not Found",
    NVML_ERROR_FUNCTION_NOT_FOUND: "Function Not Found",
    NVML_ERROR_GPU_IS_LOST: "GPU is lost",
    NVML_ERROR_UNKNOWN: "Unknown Error",
}


class NVMLError(Exception):
    """Like pynvml's: ``NVMLError(code)`` builds the subclass for that code."""

    _by_code: dict[int, type[NVMLError]] = {}
    value: int

    def __new__(cls, value: int) -> NVMLError:
        if cls is NVMLError:
            cls = NVMLError._by_code.get(value, cls)
        obj = Exception.__new__(cls)
        obj.value = value
        return obj

    def __init__(self, value: int) -> None:
        super().__init__(value)

    def __str__(self) -> str:
        return _NAMES.get(self.value, f"NVML Error with code {self.value}")


def _subclass(name: str, code: int) -> type[NVMLError]:
    cls = type(name, (NVMLError,), {})
    NVMLError._by_code[code] = cls
    return cls


NVMLError_Uninitialized = _subclass("NVMLError_Uninitialized", NVML_ERROR_UNINITIALIZED)
NVMLError_NotSupported = _subclass("NVMLError_NotSupported", NVML_ERROR_NOT_SUPPORTED)
NVMLError_NoPermission = _subclass("NVMLError_NoPermission", NVML_ERROR_NO_PERMISSION)
NVMLError_NotFound = _subclass("NVMLError_NotFound", NVML_ERROR_NOT_FOUND)
NVMLError_DriverNotLoaded = _subclass("NVMLError_DriverNotLoaded", NVML_ERROR_DRIVER_NOT_LOADED)
NVMLError_LibraryNotFound = _subclass("NVMLError_LibraryNotFound", NVML_ERROR_LIBRARY_NOT_FOUND)
NVMLError_FunctionNotFound = _subclass("NVMLError_FunctionNotFound", NVML_ERROR_FUNCTION_NOT_FOUND)
NVMLError_GpuIsLost = _subclass("NVMLError_GpuIsLost", NVML_ERROR_GPU_IS_LOST)
NVMLError_Unknown = _subclass("NVMLError_Unknown", NVML_ERROR_UNKNOWN)

MIB = 1024**2
GIB = 1024**3


@dataclass
class FakeProcess:
    pid: int
    usedGpuMemory: int | None  # noqa: N815 (pynvml's field name)


@dataclass
class FakeGPU:
    """One scripted GPU. Defaults describe an idle RTX 3090 as NVML reports it."""

    name: str = "NVIDIA GeForce RTX 3090"
    uuid: str = "GPU-00000000-0000-0000-0000-000000000000"
    total: int = 24576 * MIB
    used: int = 0
    utilization_gpu: int = 0
    utilization_memory: int = 0
    temperature: int = 40
    power_mw: int = 30_000
    power_limit_mw: int = 350_000
    clock_graphics: int = 210
    clock_memory: int = 405
    max_clock_memory: int = 9751
    bus_width: int = 384
    pcie_gen: int = 4
    pcie_width: int = 16
    pcie_max_gen: int = 4
    pcie_max_width: int = 16
    compute: list[FakeProcess] = field(default_factory=list)
    graphics: list[FakeProcess] = field(default_factory=list)
    # function name -> the NVML error code (or exception) it raises on this GPU
    errors: dict[str, int | BaseException] = field(default_factory=dict)
    lost: bool = False  # every call on the handle raises GPU_IS_LOST


@dataclass
class FakeHandle:
    index: int


class FakeNVML:
    """The script: GPUs, an init error, a driver version; ``calls`` records use."""

    def __init__(
        self,
        gpus: list[FakeGPU] | None = None,
        init_error: int | None = None,
        driver: str = "550.54.14",
    ) -> None:
        self.gpus = list(gpus or [])
        self.init_error = init_error
        self.driver = driver
        self.calls: Counter[str] = Counter()
        self.initialised = False

    # -- helpers ----------------------------------------------------------

    def _gpu(self, fn: str, handle: FakeHandle) -> FakeGPU:
        self.calls[fn] += 1
        if not self.initialised:
            raise NVMLError(NVML_ERROR_UNINITIALIZED)
        if handle.index >= len(self.gpus):
            raise NVMLError(NVML_ERROR_GPU_IS_LOST)
        gpu = self.gpus[handle.index]
        if gpu.lost:
            raise NVMLError(NVML_ERROR_GPU_IS_LOST)
        if fn in gpu.errors:
            err = gpu.errors[fn]
            raise err if isinstance(err, BaseException) else NVMLError(err)
        return gpu

    def module(self) -> types.ModuleType:
        """A module object that looks like ``pynvml`` to llmtune."""
        m = types.ModuleType("pynvml")
        for name, value in globals().items():
            if name.startswith(("NVML_", "NVMLError")):
                setattr(m, name, value)

        def nvmlInit() -> None:
            self.calls["nvmlInit"] += 1
            if self.init_error is not None:
                raise NVMLError(self.init_error)
            self.initialised = True

        def nvmlShutdown() -> None:
            self.calls["nvmlShutdown"] += 1
            self.initialised = False

        def nvmlSystemGetDriverVersion() -> str:
            self.calls["nvmlSystemGetDriverVersion"] += 1
            return self.driver

        def nvmlDeviceGetCount() -> int:
            self.calls["nvmlDeviceGetCount"] += 1
            if not self.initialised:
                raise NVMLError(NVML_ERROR_UNINITIALIZED)
            return len(self.gpus)

        def nvmlDeviceGetHandleByIndex(index: int) -> FakeHandle:
            self.calls["nvmlDeviceGetHandleByIndex"] += 1
            if index >= len(self.gpus):
                raise NVMLError(NVML_ERROR_NOT_FOUND)
            if self.gpus[index].lost:
                raise NVMLError(NVML_ERROR_GPU_IS_LOST)
            return FakeHandle(index)

        def simple(fn: str, getter: Any) -> Any:
            def call(handle: FakeHandle, *args: Any) -> Any:
                return getter(self._gpu(fn, handle), *args)

            call.__name__ = fn
            return call

        def clock(gpu: FakeGPU, kind: int) -> int:
            return gpu.clock_memory if kind == NVML_CLOCK_MEM else gpu.clock_graphics

        def max_clock(gpu: FakeGPU, kind: int) -> int:
            return gpu.max_clock_memory if kind == NVML_CLOCK_MEM else 2100

        functions: dict[str, Any] = {
            "nvmlDeviceGetName": lambda g: g.name,
            "nvmlDeviceGetUUID": lambda g: g.uuid,
            "nvmlDeviceGetMemoryInfo": lambda g: types.SimpleNamespace(
                total=g.total, used=g.used, free=g.total - g.used
            ),
            "nvmlDeviceGetUtilizationRates": lambda g: types.SimpleNamespace(
                gpu=g.utilization_gpu, memory=g.utilization_memory
            ),
            "nvmlDeviceGetTemperature": lambda g, sensor: g.temperature,
            "nvmlDeviceGetPowerUsage": lambda g: g.power_mw,
            "nvmlDeviceGetEnforcedPowerLimit": lambda g: g.power_limit_mw,
            "nvmlDeviceGetClockInfo": clock,
            "nvmlDeviceGetMaxClockInfo": max_clock,
            "nvmlDeviceGetMemoryBusWidth": lambda g: g.bus_width,
            "nvmlDeviceGetCurrPcieLinkGeneration": lambda g: g.pcie_gen,
            "nvmlDeviceGetCurrPcieLinkWidth": lambda g: g.pcie_width,
            "nvmlDeviceGetMaxPcieLinkGeneration": lambda g: g.pcie_max_gen,
            "nvmlDeviceGetMaxPcieLinkWidth": lambda g: g.pcie_max_width,
            "nvmlDeviceGetComputeRunningProcesses": lambda g: list(g.compute),
            "nvmlDeviceGetGraphicsRunningProcesses": lambda g: list(g.graphics),
        }
        for fn, getter in functions.items():
            setattr(m, fn, simple(fn, getter))
        for fn in (
            nvmlInit,
            nvmlShutdown,
            nvmlSystemGetDriverVersion,
            nvmlDeviceGetCount,
            nvmlDeviceGetHandleByIndex,
        ):
            setattr(m, fn.__name__, fn)
        return m


def install(monkeypatch: Any, fake: FakeNVML) -> FakeNVML:
    """Put ``fake`` in ``sys.modules['pynvml']`` and make llmtune start NVML afresh."""
    import sys

    from llmtune.hardware import nvml

    monkeypatch.setitem(sys.modules, "pynvml", fake.module())
    nvml.reset()
    return fake
