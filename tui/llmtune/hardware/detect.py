"""What this machine is: GPUs (NVML) and the host (psutil), as Devices for the planner.

Also what the installed llama.cpp can do with it: the CPU features it was built
for (``llama_print_system_info``) and whether it can offload to a GPU at all
(``llama_supports_gpu_offload``). A CPU-only llama-cpp-python on a machine with
an NVIDIA GPU is the most common reason for "no speed-up", so
:func:`gpu_build_warning` says so with the command that fixes it.

Nothing here raises: a probe that fails gives ``None``.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from llmtune.hardware.device import Device
from llmtune.hardware.gpus import snapshot
from llmtune.hardware.host import host_device_measured
from llmtune.hardware.nvml import GPUState
from llmtune.hardware.profiles import (
    DEFAULT_GPU_BANDWIDTH_GBPS,
    DEFAULT_GPU_TFLOPS,
    GPU_PROFILES,
    GPUProfile,
)

logger = logging.getLogger(__name__)

LLAMA_CPP_PYTHON_VERSION = "0.3.36"  # the exact pin in pyproject.toml


def reinstall_command(flag: str) -> str:
    """The pip line that rebuilds the pinned llama-cpp-python with a GPU backend
    (and RPC, as the Makefile builds it)."""
    return (
        f'CMAKE_ARGS="{flag} -DGGML_RPC=on" pip install --force-reinstall --no-cache-dir '
        f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}"
    )


CUDA_REINSTALL_COMMAND = reinstall_command("-DGGML_CUDA=on")
HIP_REINSTALL_COMMAND = reinstall_command("-DGGML_HIP=on")
VULKAN_REINSTALL_COMMAND = reinstall_command("-DGGML_VULKAN=on")
METAL_REINSTALL_COMMAND = reinstall_command("-DGGML_METAL=on")

# -- the host -----------------------------------------------------------------


@dataclass(frozen=True)
class HostState:
    """The host at one instant (psutil). CPU load needs two states: see ``load_percent_since``."""

    ram_total_bytes: int | None = None
    ram_available_bytes: int | None = None
    swap_total_bytes: int | None = None
    swap_used_bytes: int | None = None
    cores_physical: int | None = None
    cores_logical: int | None = None
    load_average_1m: float | None = None
    # Cumulative CPU seconds (busy, total) over all cores since boot.
    cpu_busy_s: float | None = None
    cpu_total_s: float | None = None
    rss_bytes: int | None = None  # of the pid asked for (the worker), if any

    def load_percent_since(self, previous: HostState) -> float | None:
        """Average CPU load over all cores between ``previous`` and this state, 0-100."""
        if None in (self.cpu_busy_s, self.cpu_total_s, previous.cpu_busy_s, previous.cpu_total_s):
            return None
        total = (self.cpu_total_s or 0.0) - (previous.cpu_total_s or 0.0)
        busy = (self.cpu_busy_s or 0.0) - (previous.cpu_busy_s or 0.0)
        if total <= 0:
            return None
        return max(0.0, min(100.0, 100.0 * busy / total))


def process_rss_bytes(pid: int) -> int | None:
    """Resident memory of ``pid``; None when it is gone or not ours to see."""
    try:
        import psutil

        return int(psutil.Process(pid).memory_info().rss)
    except Exception:
        return None


def host_state(pid: int | None = None) -> HostState:
    """RAM, swap, cores, load and (given ``pid``) that process's RSS, each None on failure.

    CPU load is derived from cumulative CPU times rather than ``psutil.cpu_percent``
    so that two callers (the sampler and a screen) cannot reset each other's baseline.
    """
    try:
        import psutil
    except Exception:
        return HostState(cores_logical=os.cpu_count())
    values: dict[str, int | float | None] = {}
    try:
        vm = psutil.virtual_memory()
        values["ram_total_bytes"] = int(vm.total)
        values["ram_available_bytes"] = int(vm.available)
    except Exception:
        pass
    try:
        swap = psutil.swap_memory()
        values["swap_total_bytes"] = int(swap.total)
        values["swap_used_bytes"] = int(swap.used)
    except Exception:
        pass
    try:
        values["cores_physical"] = psutil.cpu_count(logical=False)
        values["cores_logical"] = psutil.cpu_count(logical=True)
    except Exception:
        pass
    try:
        values["load_average_1m"] = float(os.getloadavg()[0])
    except (OSError, AttributeError):
        pass
    try:
        times = psutil.cpu_times()
        idle = float(times.idle) + float(getattr(times, "iowait", 0.0))
        total = float(sum(times))
        # guest time is already counted in user time on Linux
        total -= float(getattr(times, "guest", 0.0)) + float(getattr(times, "guest_nice", 0.0))
        values["cpu_busy_s"] = total - idle
        values["cpu_total_s"] = total
    except Exception:
        pass
    if pid is not None:
        values["rss_bytes"] = process_rss_bytes(pid)
    return HostState(**values)  # type: ignore[arg-type]


# -- llama.cpp's view ---------------------------------------------------------

_SECTION_RE = re.compile(r"^\s*([A-Za-z0-9_.\- ]+?)\s*:\s*(.*)$")


def parse_system_info(text: str | bytes) -> dict[str, dict[str, str]]:
    """``llama_print_system_info()`` as ``{backend: {feature: value}}``.

    ``"CUDA : ARCHS = 860 | CPU : SSE3 = 1 | AVX2 = 1 | REPACK = 1 |"`` gives
    ``{"CUDA": {"ARCHS": "860"}, "CPU": {"SSE3": "1", "AVX2": "1", "REPACK": "1"}}``.
    Items before any backend name (older builds) go under "CPU".
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    sections: dict[str, dict[str, str]] = {}
    current = "CPU"
    for part in text.split("|"):
        item = part.strip()
        if not item:
            continue
        m = _SECTION_RE.match(item)
        if m and "=" not in m.group(1):
            current = m.group(1).strip()
            item = m.group(2).strip()
            sections.setdefault(current, {})
        if "=" not in item:
            continue
        key, _, value = item.partition("=")
        if key.strip():
            sections.setdefault(current, {})[key.strip()] = value.strip()
    return sections


def cpu_features(info: Mapping[str, Mapping[str, str]]) -> dict[str, bool]:
    """The CPU backend's features as booleans (``{"AVX2": True, "AVX512": False, ...}``)."""
    return {k: v not in ("", "0") for k, v in info.get("CPU", {}).items()}


def llama_system_info() -> str | None:
    """What the installed llama.cpp was built with, or None when it cannot be loaded."""
    try:
        import llama_cpp

        raw = llama_cpp.llama_print_system_info()
    except Exception as err:
        logger.info("llama.cpp system info unavailable: %r", err)
        return None
    return raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else str(raw)


def supports_gpu_offload() -> bool | None:
    """Whether this llama-cpp-python build can put layers on a local GPU; None if it
    will not load.

    ``llama_supports_gpu_offload`` is true for any build with the RPC backend
    (src/llama.cpp: a GPU device, or RPC), which llmtune always builds in, so a
    CPU build would pass for a GPU one; the question is whether a GPU backend
    registered a device here (CUDA, Vulkan, Metal, HIP)."""
    try:
        import llama_cpp

        if not llama_cpp.llama_supports_gpu_offload():
            return False
        if not llama_cpp.llama_supports_rpc():
            return True
        from llmtune.engine.ggml_rpc import local_devices

        return any(
            d.kind in ("GPU", "IGPU") and not d.name.startswith("RPC") for d in local_devices()
        )
    except Exception as err:
        logger.info("llama_supports_gpu_offload unavailable: %r", err)
        return None


def gpu_build_warning(devices: Sequence[Device], supports_offload: bool | None) -> str | None:
    """The warning for GPUs on this machine and a CPU-only llama.cpp build, else None,
    with the command that rebuilds it for their backend.

    Only detected GPUs count: planning for a profile (``--gpu rtx3090``) says
    nothing about this machine's build. Unknown support (None) stays silent.
    """
    detected = [d for d in devices if d.is_gpu and d.source == "detected"]
    if not detected or supports_offload is not False:
        return None
    backend = detected[0].ggml_backend
    vendor = {"ROCm": "AMD ", "MTL": "Apple ", "CUDA": "NVIDIA "}.get(backend, "")
    what = detected[0].name if len(detected) == 1 else f"{len(detected)} {vendor}GPUs"
    found = f"{what} found, but this llama-cpp-python build is CPU-only and cannot use it"
    if backend == "ROCm":
        return (
            f"{found}; reinstall with ROCm (HIP): {HIP_REINSTALL_COMMAND}, "
            f"or with Vulkan: {VULKAN_REINSTALL_COMMAND}"
        )
    if backend == "MTL":
        return f"{found}; reinstall with Metal: {METAL_REINSTALL_COMMAND}"
    return f"{found}; reinstall with CUDA: {CUDA_REINSTALL_COMMAND}"


# -- GPUs -----------------------------------------------------------------------

_GENERIC_TOKENS = frozenset({"nvidia", "geforce", "tesla", "quadro"})
_MEMORY_TOKEN_RE = re.compile(r"^\d+(gb|g)$")


def _model_tokens(name: str) -> set[str]:
    tokens = re.split(r"[^a-z0-9]+", name.lower())
    return {t for t in tokens if t and t not in _GENERIC_TOKENS and not _MEMORY_TOKEN_RE.match(t)}


def match_gpu_profile(name: str, memory_total_bytes: int | None) -> GPUProfile | None:
    """The known profile for an NVML name: every model word of the profile in the name
    (``a10`` does not match ``A100``), the most words first, then the closest memory
    size, within 15% so a 6 GiB laptop RTX 3060 is not taken for the 12 GiB desktop."""
    tokens = _model_tokens(name)
    best: tuple[int, float, GPUProfile] | None = None
    for profile in GPU_PROFILES:
        words = _model_tokens(profile.name)
        if not words or not words <= tokens:
            continue
        if memory_total_bytes:
            ratio = abs(memory_total_bytes - profile.memory_bytes) / profile.memory_bytes
            if ratio > 0.15:
                continue
        else:
            ratio = 0.0
        rank = (len(words), -ratio, profile)
        if best is None or rank[:2] > best[:2]:
            best = rank
    return None if best is None else best[2]


def gpu_device(state: GPUState) -> Device | None:
    """A detected GPU as a Device: free memory now from NVML, bandwidth from NVML's bus
    width and memory clock, else from the matching profile. None without memory figures."""
    if state.lost or not state.memory_total_bytes:
        return None
    backend = state.backend
    vendor = "AMD" if backend == "ROCm" else "NVIDIA"
    name = state.name or f"{vendor} GPU {state.index}"
    profile = match_gpu_profile(name, state.memory_total_bytes)
    bandwidth = state.bandwidth_gbps
    known = True
    if bandwidth is None:
        if profile is not None:
            bandwidth = profile.bandwidth_gbps
        else:
            bandwidth, known = DEFAULT_GPU_BANDWIDTH_GBPS, False
    free = state.memory_free_bytes
    if free is None:
        used = state.memory_used_bytes or 0
        free = max(0, state.memory_total_bytes - used)
    return Device(
        name=name,
        kind="gpu",
        index=state.index,
        capacity_bytes=state.memory_total_bytes,
        free_bytes=free,
        bandwidth_gbps=bandwidth,
        fp16_tflops=profile.fp16_tflops if profile is not None else DEFAULT_GPU_TFLOPS,
        bandwidth_known=known,
        source="detected",
        profile=profile.key if profile is not None else "",
        runtime_bytes=profile.runtime_bytes if profile is not None else None,
        backend="" if backend == "CUDA" else backend,  # "": CUDA (Device.ggml_backend)
    )


def detect(exclude_pids: Iterable[int] = (), probe_bandwidth: bool = True) -> list[Device]:
    """The GPUs NVML and amdsmi see (or a Mac's GPU), then the host with its measured
    memory bandwidth (see :func:`detect_with_notes`)."""
    return detect_with_notes(exclude_pids, probe_bandwidth)[0]


def detect_with_notes(
    exclude_pids: Iterable[int] = (), probe_bandwidth: bool = True
) -> tuple[list[Device], list[str]]:
    """This machine's devices and what to say about them (a Mac's GPU limit).

    The host's bandwidth feeds the speed prediction, so the first detection on a
    machine runs the bandwidth probe (a few seconds) and caches the result; later
    ones read the cache. ``probe_bandwidth=False`` never probes (the cached value,
    else the DDR4-3200 default) for a caller that must not wait. On Apple
    Silicon the GPU and the host split one pool (:mod:`llmtune.hardware.apple`).
    """
    devices = [d for d in (gpu_device(s) for s in snapshot(exclude_pids)) if d is not None]
    notes: list[str] = []
    try:
        host = host_device_measured(probe=probe_bandwidth)
    except Exception as err:  # host_device reads /proc and psutil; never fail detection
        logger.warning("host detection failed: %r", err)
        return devices, notes
    from llmtune.hardware.apple import detect_chip, unified_devices

    chip = detect_chip()
    if chip is not None:
        gpu, host = unified_devices(chip, host)
        devices.append(gpu)
        notes.append(chip.limit_sentence())
    devices.append(host)
    return devices, notes
