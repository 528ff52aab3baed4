"""Known GPUs and host memory, for planning on hardware that is not here.

Memory is what ``nvidia-smi`` reports as total for the card (MiB), bandwidth is
the vendor's peak memory bandwidth, compute is dense FP16 tensor throughput
(approximate: it only feeds the prompt-speed estimate). A user plans on a
laptop for the server they will SSH into with ``--gpu rtx3090`` or
``--gpu 24GB:936GB/s``.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from llmtune.errors import ConfigError
from llmtune.hardware.device import Device
from llmtune.units import MIB, parse_size


@dataclass(frozen=True)
class GPUProfile:
    key: str
    name: str
    memory_mib: int
    bandwidth_gbps: float
    fp16_tflops: float
    # The CUDA runtime's hold before the model loads where measured on this card;
    # 0: the backend's default (fit.backends).
    runtime_mib: int = 0

    @property
    def memory_bytes(self) -> int:
        return self.memory_mib * MIB

    @property
    def runtime_bytes(self) -> int | None:
        return self.runtime_mib * MIB if self.runtime_mib else None


@dataclass(frozen=True)
class HostProfile:
    key: str
    name: str
    bandwidth_gbps: float


GPU_PROFILES: tuple[GPUProfile, ...] = (
    GPUProfile("rtx3060-12g", "NVIDIA GeForce RTX 3060 12GB", 12288, 360.0, 51.0),
    GPUProfile("rtx3070", "NVIDIA GeForce RTX 3070", 8192, 448.0, 81.0),
    GPUProfile("rtx3080-10g", "NVIDIA GeForce RTX 3080 10GB", 10240, 760.0, 119.0),
    GPUProfile("rtx3080-12g", "NVIDIA GeForce RTX 3080 12GB", 12288, 912.0, 122.0),
    GPUProfile("rtx3090", "NVIDIA GeForce RTX 3090", 24576, 936.0, 142.0),
    GPUProfile("rtx4060ti-8g", "NVIDIA GeForce RTX 4060 Ti 8GB", 8188, 288.0, 88.0),
    GPUProfile("rtx4060ti-16g", "NVIDIA GeForce RTX 4060 Ti 16GB", 16380, 288.0, 88.0),
    GPUProfile("rtx4070", "NVIDIA GeForce RTX 4070", 12282, 504.0, 117.0),
    GPUProfile("rtx4070ti", "NVIDIA GeForce RTX 4070 Ti", 12282, 504.0, 160.0),
    GPUProfile("rtx4080", "NVIDIA GeForce RTX 4080", 16376, 717.0, 195.0),
    GPUProfile("rtx4090", "NVIDIA GeForce RTX 4090", 24564, 1008.0, 330.0),
    GPUProfile("rtx5080", "NVIDIA GeForce RTX 5080", 16303, 960.0, 225.0),
    GPUProfile("rtx5090", "NVIDIA GeForce RTX 5090", 32607, 1792.0, 419.0),
    GPUProfile("t4", "NVIDIA Tesla T4", 15360, 320.0, 65.0),
    GPUProfile("v100-16g", "NVIDIA Tesla V100 16GB", 16384, 900.0, 125.0),
    GPUProfile("v100", "NVIDIA Tesla V100 32GB", 32768, 900.0, 125.0),
    GPUProfile("a10", "NVIDIA A10", 23028, 600.0, 125.0),
    GPUProfile("l4", "NVIDIA L4", 23034, 300.0, 121.0),
    GPUProfile("l40s", "NVIDIA L40S", 46068, 864.0, 362.0),
    GPUProfile("a100-40g", "NVIDIA A100 40GB", 40960, 1555.0, 312.0),
    GPUProfile("a100-80g", "NVIDIA A100 80GB", 81920, 2039.0, 312.0),
    GPUProfile("h100-pcie", "NVIDIA H100 PCIe 80GB", 81559, 2000.0, 756.0),
    GPUProfile("h100-sxm", "NVIDIA H100 SXM 80GB", 81559, 3350.0, 989.0),
    # Runtime measured on an H200 with CUDA 13 (issue 14's GPU check): 526-606 MiB
    # per process before llama.cpp allocates (132 SMs reserve more local memory).
    GPUProfile("h200", "NVIDIA H200 141GB", 143771, 4800.0, 989.0, runtime_mib=566),
)
GPU_PROFILE_BY_KEY: dict[str, GPUProfile] = {p.key: p for p in GPU_PROFILES}

# Dual-channel peak: channels x 8 bytes x transfer rate.
HOST_PROFILES: tuple[HostProfile, ...] = (
    HostProfile("ddr4-2666", "DDR4-2666 dual channel", 42.7),
    HostProfile("ddr4-3200", "DDR4-3200 dual channel", 51.2),
    HostProfile("ddr5-4800", "DDR5-4800 dual channel", 76.8),
    HostProfile("ddr5-5600", "DDR5-5600 dual channel", 89.6),
    HostProfile("ddr5-6400", "DDR5-6400 dual channel", 102.4),
)
HOST_PROFILE_BY_KEY: dict[str, HostProfile] = {p.key: p for p in HOST_PROFILES}

# Used for a GPU given only by size, and by the speed model's defaults.
DEFAULT_GPU_BANDWIDTH_GBPS = 500.0
DEFAULT_GPU_TFLOPS = 80.0

_GPU_SIZE_RE = re.compile(
    r"^(?P<size>[0-9.]+\s*[a-zA-Z]*)(?::(?P<bw>[0-9.]+)\s*(?:GB/s|gb/s|GBps)?)?$"
)


def _normalise(key: str) -> str:
    return re.sub(r"[\s_]+", "", key.strip().lower()).replace("geforce", "").replace("nvidia", "")


def close_names(text: str, names: list[str], n: int = 4) -> list[str]:
    """Names that look like ``text`` (for 'did you mean' in error messages)."""
    norm = _normalise(text)
    found = difflib.get_close_matches(norm, names, n=n, cutoff=0.5)
    found += [k for k in names if norm and norm in k and k not in found]
    return found[:n]


def gpu_profile(text: str) -> GPUProfile:
    key = _normalise(text)
    aliases = {k.replace("-", ""): k for k in GPU_PROFILE_BY_KEY}
    profile = GPU_PROFILE_BY_KEY.get(key) or GPU_PROFILE_BY_KEY.get(
        aliases.get(key.replace("-", ""), "")
    )
    if profile is not None:
        return profile
    suggestions = close_names(text, list(GPU_PROFILE_BY_KEY))
    hint = (
        f"; did you mean {', '.join(suggestions)}?"
        if suggestions
        else "; see 'llmtune fit --list-gpus'"
    )
    raise ConfigError(f"unknown GPU profile {text!r}{hint}", "--gpu")


def host_profile(text: str) -> HostProfile:
    key = _normalise(text)
    profile = HOST_PROFILE_BY_KEY.get(key)
    if profile is not None:
        return profile
    suggestions = close_names(text, list(HOST_PROFILE_BY_KEY))
    hint = f"; did you mean {', '.join(suggestions)}?" if suggestions else ""
    raise ConfigError(f"unknown host memory profile {text!r}{hint}", "--host")


def parse_gpu_spec(text: str, index: int = 0) -> Device:
    """A ``--gpu`` value: a profile name (``rtx3060-12g``) or a size with an
    optional bandwidth (``12GiB``, ``24GB:1008GB/s``)."""
    stripped = text.strip()
    if stripped and stripped[0].isdigit():
        m = _GPU_SIZE_RE.match(stripped)
        if not m:
            raise ConfigError(f"not a GPU size: {text!r} (try 12GiB or 24GB:1008GB/s)", "--gpu")
        try:
            capacity = parse_size(m.group("size"))
        except ConfigError as exc:
            raise ConfigError(exc.what, "--gpu") from None
        if capacity <= 0:
            raise ConfigError(f"a GPU needs some memory: {text!r}", "--gpu")
        bandwidth = float(m.group("bw")) if m.group("bw") else DEFAULT_GPU_BANDWIDTH_GBPS
        if bandwidth <= 0:
            raise ConfigError(f"bandwidth must be positive: {text!r}", "--gpu")
        return Device(
            name=f"GPU {index} ({stripped})",
            kind="gpu",
            index=index,
            capacity_bytes=capacity,
            free_bytes=capacity,
            bandwidth_gbps=bandwidth,
            fp16_tflops=DEFAULT_GPU_TFLOPS,
            bandwidth_known=bool(m.group("bw")),
            source="spec",
        )
    profile = gpu_profile(stripped)
    return Device(
        name=profile.name,
        kind="gpu",
        index=index,
        capacity_bytes=profile.memory_bytes,
        free_bytes=profile.memory_bytes,
        bandwidth_gbps=profile.bandwidth_gbps,
        fp16_tflops=profile.fp16_tflops,
        bandwidth_known=True,
        source="profile",
        profile=profile.key,
        runtime_bytes=profile.runtime_bytes,
    )
