"""AMD GPUs through AMD's ``amdsmi`` Python library (ROCm), never raising.

The same shape as :mod:`llmtune.hardware.nvml`: the library is imported and
initialised lazily, once; one :func:`snapshot` per tick reads every GPU into a
:class:`~llmtune.hardware.nvml.GPUState` (backend ``ROCm``, as llama.cpp's HIP
build names its devices ROCm0, ROCm1...); a field whose call fails is ``None``;
a function the driver does not support is logged once and not called again.
No library (the common case), no driver or no GPU means no AMD GPUs.

Read: the marketing name (``amdsmi_get_gpu_asic_info``), VRAM total and used in
bytes (``amdsmi_get_gpu_memory_total``/``amdsmi_get_gpu_memory_usage`` with
``AmdSmiMemoryType.VRAM``), graphics activity (``amdsmi_get_gpu_activity``) and
the processes holding VRAM (``amdsmi_get_gpu_process_list``: dictionaries in
ROCm 6.1 and later, process handles read with ``amdsmi_get_gpu_process_info``
before). Bandwidth comes from the card's profile, not the library.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable
from types import ModuleType
from typing import Any

from llmtune.hardware.nvml import GPUProcess, GPUState

logger = logging.getLogger(__name__)

BACKEND = "ROCm"
# amdsmi_status_t (amd_smi/amdsmi.h): answers that will not change on a retry.
_NOT_SUPPORTED = 2
_NOT_YET_IMPLEMENTED = 3
_NO_PERMISSION = 10
_PERMANENT = frozenset({_NOT_SUPPORTED, _NOT_YET_IMPLEMENTED, _NO_PERMISSION})
# The kernel driver's compute node: an AMD GPU is here even when amdsmi is not.
KFD_PATH = "/dev/kfd"


def _error_code(err: BaseException) -> int | None:
    for name in ("err_code", "error_code"):
        value = getattr(err, name, None)
        if isinstance(value, int):
            return value
    getter = getattr(err, "get_error_code", None)
    if callable(getter):
        try:
            value = getter()
            return value if isinstance(value, int) else None
        except Exception:
            return None
    return None


def _number(value: Any) -> int | None:
    """An integer from amdsmi's answer; "N/A" and the like are None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return int(value)
    return None


class AmdSmiSession:
    """Lazy amdsmi state: the module, each GPU's name, what is unsupported. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._clear()

    def _clear(self) -> None:
        self._started = False
        self._amdsmi: ModuleType | None = None
        self._reason = ""
        self._static: dict[int, dict[str, Any]] = {}
        self._unsupported: set[tuple[int, str]] = set()
        self._logged: set[str] = set()
        self._count = 0

    def status(self) -> tuple[bool, str]:
        """(AMD GPUs available, one sentence on what amdsmi found or why not)."""
        with self._lock:
            self._start()
            return self._amdsmi is not None, self._reason

    def _start(self) -> None:
        if self._started:
            return
        self._started = True
        try:
            import amdsmi
        except Exception:
            self._reason = "amdsmi is not installed, so llmtune cannot see AMD GPUs"
            if os.path.exists(KFD_PATH):
                self._reason += (
                    f" ({KFD_PATH} says the ROCm driver is here: pip install amdsmi, "
                    "the version of your ROCm)"
                )
            return
        try:
            flags = getattr(getattr(amdsmi, "AmdSmiInitFlags", None), "INIT_AMD_GPUS", None)
            amdsmi.amdsmi_init() if flags is None else amdsmi.amdsmi_init(flags)
            handles = list(amdsmi.amdsmi_get_processor_handles())
        except Exception as err:
            self._reason = f"amdsmi could not start ({err or type(err).__name__})"
            self._shutdown(amdsmi)
            return
        if not handles:
            self._reason = "amdsmi reports no AMD GPU"
            self._shutdown(amdsmi)
            return
        self._amdsmi = amdsmi
        self._count = len(handles)
        plural = "GPU" if len(handles) == 1 else "GPUs"
        self._reason = f"amdsmi sees {len(handles)} AMD {plural}."

    @staticmethod
    def _shutdown(amdsmi: ModuleType) -> None:
        try:
            amdsmi.amdsmi_shut_down()
        except Exception:
            pass

    def close(self) -> None:
        with self._lock:
            if self._amdsmi is not None:
                self._shutdown(self._amdsmi)
            self._clear()

    def snapshot(self, exclude_pids: Iterable[int] = ()) -> tuple[GPUState, ...]:
        """Every AMD GPU now, in amdsmi's order; empty without amdsmi."""
        excluded = frozenset(exclude_pids) | {os.getpid()}
        with self._lock:
            self._start()
            amdsmi = self._amdsmi
            if amdsmi is None:
                return ()
            try:
                handles = list(amdsmi.amdsmi_get_processor_handles())
            except Exception as err:
                self._log_once("handles", f"amdsmi could not list GPUs this tick: {err!r}")
                return tuple(
                    GPUState(index=i, lost=True, backend=BACKEND) for i in range(self._count)
                )
            if len(handles) != self._count:
                self._static.clear()
                self._unsupported.clear()
                self._count = len(handles)
            states = []
            for index, handle in enumerate(handles):
                try:
                    states.append(self._read(amdsmi, index, handle, excluded))
                except Exception as err:  # never let one GPU break the tick
                    self._log_once(f"read:{index}", f"reading AMD GPU {index} failed: {err!r}")
                    states.append(GPUState(index=index, lost=True, backend=BACKEND))
            return tuple(states)

    def _read(
        self, amdsmi: ModuleType, index: int, handle: Any, excluded: frozenset[int]
    ) -> GPUState:
        static = self._static.setdefault(index, {})
        if "name" not in static:
            asic = self._call(amdsmi, index, "name", "amdsmi_get_gpu_asic_info", handle)
            name = asic.get("market_name") if isinstance(asic, dict) else None
            if isinstance(name, str) and name.strip() and name != "N/A":
                static["name"] = name.strip()
        if "uuid" not in static:
            uuid = self._call(amdsmi, index, "uuid", "amdsmi_get_gpu_device_uuid", handle)
            if isinstance(uuid, str) and uuid:
                static["uuid"] = uuid
        vram = getattr(getattr(amdsmi, "AmdSmiMemoryType", None), "VRAM", 0)
        total = _number(
            self._call(amdsmi, index, "memory_total", "amdsmi_get_gpu_memory_total", handle, vram)
        )
        used = _number(
            self._call(amdsmi, index, "memory_used", "amdsmi_get_gpu_memory_usage", handle, vram)
        )
        activity = self._call(amdsmi, index, "activity", "amdsmi_get_gpu_activity", handle)
        busy = _number(activity.get("gfx_activity")) if isinstance(activity, dict) else None
        processes = self._processes(amdsmi, index, handle)
        others = None
        if processes is not None:
            others = sum(p.used_bytes or 0 for p in processes if p.pid not in excluded)
        free = None if total is None or used is None else max(0, total - used)
        return GPUState(
            index=index,
            name=static.get("name"),
            uuid=static.get("uuid"),
            memory_total_bytes=total,
            memory_used_bytes=used,
            memory_free_bytes=free,
            utilization_gpu_percent=busy,
            processes=processes,
            other_processes_bytes=others,
            backend=BACKEND,
        )

    def _processes(
        self, amdsmi: ModuleType, index: int, handle: Any
    ) -> tuple[GPUProcess, ...] | None:
        listed = self._call(amdsmi, index, "processes", "amdsmi_get_gpu_process_list", handle)
        if not isinstance(listed, (list, tuple)):
            return None
        found: dict[int, GPUProcess] = {}
        for item in listed:
            info = item
            if not isinstance(info, dict):  # a process handle (ROCm before 6.1)
                info = self._call(
                    amdsmi, index, "process_info", "amdsmi_get_gpu_process_info", handle, item
                )
            if not isinstance(info, dict):
                continue
            pid = _number(info.get("pid"))
            if pid is None:
                continue
            usage = info.get("memory_usage")
            used = _number(usage.get("vram_mem")) if isinstance(usage, dict) else None
            if used is None:
                used = _number(info.get("mem"))
            found[pid] = GPUProcess(pid=pid, used_bytes=used, kind="compute")
        return tuple(sorted(found.values(), key=lambda p: p.pid))

    def _call(self, amdsmi: ModuleType, index: int, field: str, fn_name: str, *args: Any) -> Any:
        """``amdsmi.fn_name(*args)``, or None when it fails; remembers what is unsupported."""
        key = (index, field)
        if key in self._unsupported:
            return None
        fn = getattr(amdsmi, fn_name, None)
        if fn is None:
            self._unsupported.add(key)
            self._log_once(fn_name, f"{fn_name} is missing from this amdsmi; {field} stays empty")
            return None
        try:
            return fn(*args)
        except Exception as err:
            code = _error_code(err)
            if code is None or code in _PERMANENT:
                self._unsupported.add(key)
                self._log_once(
                    fn_name, f"{fn_name} is not available ({err!r}); {field} stays empty"
                )
            else:
                self._log_once(f"{fn_name}:{code}", f"{fn_name} failed ({err!r}); will retry")
            return None

    def _log_once(self, key: str, message: str) -> None:
        if key not in self._logged:
            self._logged.add(key)
            logger.info(message)


_session = AmdSmiSession()


def snapshot(exclude_pids: Iterable[int] = ()) -> tuple[GPUState, ...]:
    """Every AMD GPU now (empty without amdsmi). Never raises."""
    try:
        return _session.snapshot(exclude_pids)
    except Exception as err:
        logger.warning("amdsmi snapshot failed: %r", err)
        return ()


def amd_status() -> tuple[bool, str]:
    """(AMD GPUs available, one sentence on what amdsmi sees or why not)."""
    try:
        return _session.status()
    except Exception as err:
        return False, f"amdsmi failed unexpectedly ({err!r})"


def reset() -> None:
    """Forget amdsmi's state so the next call starts it again (tests)."""
    global _session
    try:
        _session.close()
    except Exception:
        pass
    _session = AmdSmiSession()
