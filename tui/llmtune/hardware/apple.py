"""Apple Silicon: one pool of unified memory that the GPU may wire only part of.

llama.cpp's Metal backend reports Metal's ``recommendedMaxWorkingSetSize`` as
the GPU's memory (ggml-metal-device.m ``ggml_metal_device_get_memory``: total =
the working set, free = the working set less what this process allocated) and
names the device ``MTL0``. macOS sets that working set from the RAM; Apple does
not document the rule. Ollama's first Metal support used "two thirds of RAM up
to 36 GiB, three quarters above" (ollama ``gpu/gpu_darwin.go`` ``CheckVRAM``,
commit 08f1e18965c1): it matches the logs of an M1 Max 32 GB (21,845 MB) and an
M2 Max 96 GB (73,728 MB) in llama.cpp issues #2011 and #3213, but an M3 36 GB
reports 28,991 MB (ollama#2370) and a 128 GiB M5 Max on macOS 26 107.5 GiB
(antirez/ds4#890), so the rule is only the fallback here. In order:

1. the working set llama.cpp's Metal device reports, when this llama-cpp-python
   is built with Metal (exact; it follows ``iogpu.wired_limit_mb``);
2. ``sysctl iogpu.wired_limit_mb`` when it is set (0 means macOS's default);
3. the rule above, said to be an estimate.

The limit is raised, until the next reboot, with ``sudo sysctl
iogpu.wired_limit_mb=N`` (N in MiB).

The GPU and the host share what is free: :func:`unified_devices` gives each
the RAM available now (the GPU at most its limit), and the plan takes what its
GPU buffers hold off the host's free memory (fit.plan, ``Device.unified``), so
a plan never counts the same bytes twice and the host keeps what the GPU does
not use.

Detection runs ``sysctl -n`` through :func:`run_sysctl` (a timeout, any
failure is None) and parses its output in :func:`parse_chip`, so tests script
the outputs of a Mac they cannot run.
"""

from __future__ import annotations

import logging
import platform
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, replace

from llmtune.hardware.device import Device
from llmtune.hardware.profiles import (
    DEFAULT_RULE_THRESHOLD_BYTES,
    GPUProfile,
    default_working_set_bytes,
)
from llmtune.units import MIB, format_bytes

logger = logging.getLogger(__name__)

BACKEND = "MTL"  # ggml-metal.cpp GGML_METAL_NAME: devices are MTL0, MTL1...
SYSCTL_TIMEOUT_S = 2.0
RAISE_COMMAND = "sudo sysctl iogpu.wired_limit_mb="

Sysctl = Callable[[str], "str | None"]
WorkingSet = Callable[[], "int | None"]


def run_sysctl(name: str, timeout_s: float = SYSCTL_TIMEOUT_S) -> str | None:
    """``sysctl -n NAME``'s output, or None when it fails, times out or is missing."""
    try:
        done = subprocess.run(
            ["sysctl", "-n", name],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except (OSError, subprocess.SubprocessError, ValueError) as err:
        logger.info("sysctl %s failed: %r", name, err)
        return None
    if done.returncode != 0:
        return None
    return done.stdout.strip() or None


def metal_working_set_bytes() -> int | None:
    """The working set llama.cpp's Metal device (MTL0) reports, or None without a
    Metal build of llama-cpp-python."""
    try:
        from llmtune.engine.ggml_rpc import local_devices

        for device in local_devices():
            if device.name.startswith(BACKEND) and device.total_bytes > 0:
                return int(device.total_bytes)
    except Exception as err:  # no llama_cpp, a build without Metal, a failing load
        logger.info("Metal's working set is unavailable: %r", err)
    return None


def suggested_wired_limit_mb(ram_bytes: int) -> int:
    """A limit that leaves macOS an eighth of the RAM, at least 4 GiB."""
    ram_mb = ram_bytes // MIB
    return int(ram_mb - max(4096, ram_mb // 8))


@dataclass(frozen=True)
class AppleChip:
    """An Apple Silicon Mac as sysctl (and llama.cpp's Metal device) describe it."""

    name: str  # machdep.cpu.brand_string: "Apple M2 Max"
    ram_bytes: int  # hw.memsize
    wired_limit_mb: int | None = None  # iogpu.wired_limit_mb when set (not 0)
    metal_working_set_bytes: int | None = None  # MTL0's total in llama.cpp

    def gpu_limit(self) -> tuple[int, str]:
        """What the GPU may wire, and where that figure comes from."""
        wired = None
        if self.wired_limit_mb:
            wired = min(self.wired_limit_mb * MIB, self.ram_bytes)
        if self.metal_working_set_bytes:
            where = "Metal's recommendedMaxWorkingSetSize"
            if wired and abs(self.metal_working_set_bytes - wired) <= MIB:
                where += f", set by iogpu.wired_limit_mb={self.wired_limit_mb}"
            return self.metal_working_set_bytes, where
        if wired:
            return wired, f"iogpu.wired_limit_mb={self.wired_limit_mb}"
        share = "2/3" if self.ram_bytes <= DEFAULT_RULE_THRESHOLD_BYTES else "3/4"
        return default_working_set_bytes(self.ram_bytes), f"macOS's default, estimated as {share}"

    def limit_sentence(self) -> str:
        """Which limit the plan used and how to raise it, in one sentence."""
        limit, where = self.gpu_limit()
        text = (
            f"{self.name} shares {format_bytes(self.ram_bytes)} of unified memory: the GPU "
            f"may use {format_bytes(limit)} ({where})"
        )
        suggested = suggested_wired_limit_mb(self.ram_bytes)
        if suggested * MIB > limit:
            text += f"; raise it with {RAISE_COMMAND}{suggested} (until reboot)"
        return text


def _int(text: str | None) -> int | None:
    try:
        return None if text is None else int(text.strip())
    except ValueError:
        return None


def parse_chip(
    brand: str | None,
    memsize: str | None,
    wired_limit_mb: str | None,
    working_set_bytes: int | None = None,
) -> AppleChip | None:
    """An Apple Silicon chip from ``sysctl -n`` outputs (None for an Intel Mac or
    output that cannot be read)."""
    name = (brand or "").strip()
    ram = _int(memsize)
    if not name.startswith("Apple") or ram is None or ram <= 0:
        return None
    wired = _int(wired_limit_mb)
    working_set = working_set_bytes if working_set_bytes and working_set_bytes > 0 else None
    return AppleChip(
        name=name,
        ram_bytes=ram,
        wired_limit_mb=wired if wired and wired > 0 else None,
        metal_working_set_bytes=working_set,
    )


def detect_chip(
    sysctl: Sysctl = run_sysctl,
    system: str | None = None,
    working_set: WorkingSet = metal_working_set_bytes,
) -> AppleChip | None:
    """This Mac's chip, or None anywhere else (or when sysctl does not answer)."""
    if (system if system is not None else platform.system()) != "Darwin":
        return None
    try:
        brand = sysctl("machdep.cpu.brand_string")
        if not (brand or "").startswith("Apple"):
            return None  # an Intel Mac: its GPU, if any, is not unified memory
        return parse_chip(
            brand, sysctl("hw.memsize"), sysctl("iogpu.wired_limit_mb"), working_set()
        )
    except Exception as err:  # never let detection fail a plan
        logger.info("Apple Silicon detection failed: %r", err)
        return None


def unified_devices(chip: AppleChip, host: Device) -> tuple[Device, Device]:
    """The GPU and the host of one pool: each sees what is available now
    (``host.free_bytes``), the GPU at most its limit; the plan subtracts the GPU's
    buffers from the host's share (fit.plan)."""
    from llmtune.hardware.profiles import DEFAULT_GPU_BANDWIDTH_GBPS, DEFAULT_GPU_TFLOPS

    limit, _where = chip.gpu_limit()
    available = min(max(0, host.free_bytes), chip.ram_bytes)
    gpu_free = min(limit, available)
    profile = _profile(chip.name)
    gpu = Device(
        name=chip.name,
        kind="gpu",
        index=0,
        capacity_bytes=limit,
        free_bytes=gpu_free,
        bandwidth_gbps=profile.bandwidth_gbps if profile else DEFAULT_GPU_BANDWIDTH_GBPS,
        fp16_tflops=profile.fp16_tflops if profile else DEFAULT_GPU_TFLOPS,
        bandwidth_known=profile is not None,
        source="detected",
        profile=profile.key if profile else "",
        backend=BACKEND,
        runtime_bytes=0,  # Metal holds no context before llama.cpp's fit reads free memory
        unified=True,
    )
    return gpu, replace(host, free_bytes=available, capacity_bytes=chip.ram_bytes, unified=True)


def _profile(name: str) -> GPUProfile | None:
    """The GPU profile of this chip by name (any memory size: Macs come in several)."""
    try:
        from llmtune.hardware.detect import match_gpu_profile

        return match_gpu_profile(name, None)
    except Exception:
        return None
