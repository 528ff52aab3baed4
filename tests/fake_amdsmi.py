"""A scripted stand-in for the amdsmi functions llmtune calls.

``FakeAmdSmi(gpus=[FakeRadeon(...)]).module()`` is a module object with the
names llmtune uses from AMD's ``amdsmi`` package (``amdsmi_init``,
``amdsmi_get_processor_handles``, ``amdsmi_get_gpu_memory_total``...,
``AmdSmiLibraryException`` with its error code, ``AmdSmiMemoryType``). Tests put
it in ``sys.modules['amdsmi']`` (:func:`install`) and script it: values per
GPU, functions that raise, an init that fails, the old process-handle API.
``calls`` counts every call by function name.
"""

from __future__ import annotations

import enum
import types
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

MIB = 1024**2
GIB = 1024**3

AMDSMI_STATUS_INVAL = 1
AMDSMI_STATUS_NOT_SUPPORTED = 2
AMDSMI_STATUS_DRM_ERROR = 6
AMDSMI_STATUS_NO_PERM = 10
AMDSMI_STATUS_RETRY = 9


class AmdSmiLibraryException(Exception):
    """Like amdsmi's: carries ``err_code`` and answers ``get_error_code()``."""

    def __init__(self, err_code: int) -> None:
        super().__init__(f"Error code:\n\t{err_code}")
        self.err_code = err_code

    def get_error_code(self) -> int:
        return self.err_code


class AmdSmiMemoryType(enum.IntEnum):
    VRAM = 0
    VIS_VRAM = 1
    GTT = 2


class AmdSmiInitFlags(enum.IntEnum):
    INIT_ALL_PROCESSORS = 0xFFFFFFFF
    INIT_AMD_CPUS = 1 << 0
    INIT_AMD_GPUS = 1 << 1


@dataclass
class FakeProc:
    pid: int
    vram: int
    name: str = "python3"


@dataclass
class FakeRadeon:
    """One scripted GPU; defaults describe an idle RX 7900 XTX."""

    name: str = "AMD Radeon RX 7900 XTX"
    uuid: str = "2eff744c-0000-1000-80f0-5a4c6c6b79b1"
    total: int = 24560 * MIB
    used: int = 300 * MIB
    gfx_activity: int | str = 0
    processes: list[FakeProc] = field(default_factory=list)
    # function name -> the amdsmi status code (or exception) it raises on this GPU
    errors: dict[str, int | BaseException] = field(default_factory=dict)


@dataclass(frozen=True)
class FakeHandle:
    index: int


@dataclass(frozen=True)
class FakeProcHandle:
    gpu: int
    pid: int


class FakeAmdSmi:
    """The script: GPUs, an init error, old (handles) or new (dicts) process lists."""

    def __init__(
        self,
        gpus: list[FakeRadeon] | None = None,
        init_error: int | None = None,
        process_handles: bool = False,
    ) -> None:
        self.gpus = list(gpus or [])
        self.init_error = init_error
        self.process_handles = process_handles
        self.calls: Counter[str] = Counter()
        self.initialised = False

    def _gpu(self, fn: str, handle: FakeHandle) -> FakeRadeon:
        self.calls[fn] += 1
        if not self.initialised:
            raise AmdSmiLibraryException(AMDSMI_STATUS_INVAL)
        gpu = self.gpus[handle.index]
        if fn in gpu.errors:
            err = gpu.errors[fn]
            raise err if isinstance(err, BaseException) else AmdSmiLibraryException(err)
        return gpu

    def module(self) -> types.ModuleType:
        m = types.ModuleType("amdsmi")
        m.AmdSmiLibraryException = AmdSmiLibraryException  # type: ignore[attr-defined]
        m.AmdSmiMemoryType = AmdSmiMemoryType  # type: ignore[attr-defined]
        m.AmdSmiInitFlags = AmdSmiInitFlags  # type: ignore[attr-defined]

        def amdsmi_init(flags: int = AmdSmiInitFlags.INIT_AMD_GPUS) -> None:
            self.calls["amdsmi_init"] += 1
            if self.init_error is not None:
                raise AmdSmiLibraryException(self.init_error)
            self.initialised = True

        def amdsmi_shut_down() -> None:
            self.calls["amdsmi_shut_down"] += 1
            self.initialised = False

        def amdsmi_get_processor_handles() -> list[FakeHandle]:
            self.calls["amdsmi_get_processor_handles"] += 1
            if not self.initialised:
                raise AmdSmiLibraryException(AMDSMI_STATUS_INVAL)
            return [FakeHandle(i) for i in range(len(self.gpus))]

        def memory(kind: str) -> Any:
            def call(handle: FakeHandle, mem_type: int) -> int:
                fn = f"amdsmi_get_gpu_memory_{kind}"
                gpu = self._gpu(fn, handle)
                assert mem_type == AmdSmiMemoryType.VRAM
                return gpu.total if kind == "total" else gpu.used

            return call

        def asic_info(handle: FakeHandle) -> dict[str, Any]:
            gpu = self._gpu("amdsmi_get_gpu_asic_info", handle)
            return {"market_name": gpu.name, "vendor_id": "0x1002", "device_id": "0x744c"}

        def uuid(handle: FakeHandle) -> str:
            return self._gpu("amdsmi_get_gpu_device_uuid", handle).uuid

        def activity(handle: FakeHandle) -> dict[str, Any]:
            gpu = self._gpu("amdsmi_get_gpu_activity", handle)
            return {"gfx_activity": gpu.gfx_activity, "umc_activity": 0, "mm_activity": "N/A"}

        def process_list(handle: FakeHandle) -> list[Any]:
            gpu = self._gpu("amdsmi_get_gpu_process_list", handle)
            if self.process_handles:
                return [FakeProcHandle(handle.index, p.pid) for p in gpu.processes]
            return [
                {
                    "name": p.name,
                    "pid": p.pid,
                    "mem": p.vram,
                    "engine_usage": {"gfx": 0, "enc": 0},
                    "memory_usage": {"gtt_mem": 0, "cpu_mem": 0, "vram_mem": p.vram},
                }
                for p in gpu.processes
            ]

        def process_info(handle: FakeHandle, proc: FakeProcHandle) -> dict[str, Any]:
            gpu = self._gpu("amdsmi_get_gpu_process_info", handle)
            p = next(p for p in gpu.processes if p.pid == proc.pid)
            return {
                "name": p.name,
                "pid": p.pid,
                "mem": p.vram,
                "memory_usage": {"vram_mem": p.vram},
            }

        for fn in (amdsmi_init, amdsmi_shut_down, amdsmi_get_processor_handles):
            setattr(m, fn.__name__, fn)
        m.amdsmi_get_gpu_memory_total = memory("total")  # type: ignore[attr-defined]
        m.amdsmi_get_gpu_memory_usage = memory("usage")  # type: ignore[attr-defined]
        m.amdsmi_get_gpu_asic_info = asic_info  # type: ignore[attr-defined]
        m.amdsmi_get_gpu_device_uuid = uuid  # type: ignore[attr-defined]
        m.amdsmi_get_gpu_activity = activity  # type: ignore[attr-defined]
        m.amdsmi_get_gpu_process_list = process_list  # type: ignore[attr-defined]
        if self.process_handles:
            m.amdsmi_get_gpu_process_info = process_info  # type: ignore[attr-defined]
        return m


def install(monkeypatch: Any, fake: FakeAmdSmi) -> FakeAmdSmi:
    """Put ``fake`` in ``sys.modules['amdsmi']`` and make llmtune start amdsmi afresh."""
    import sys

    from llmtune.hardware import amd

    monkeypatch.setitem(sys.modules, "amdsmi", fake.module())
    amd.reset()
    return fake


def uninstall(monkeypatch: Any) -> None:
    """No amdsmi at all (the import fails), as on most machines."""
    import sys

    from llmtune.hardware import amd

    monkeypatch.setitem(sys.modules, "amdsmi", None)
    amd.reset()
