"""Known GPUs and host memory, for planning on hardware that is not here.

Each GPU profile carries what the plan and the speed model need: memory (what
``nvidia-smi`` reports as total where measured, else the data sheet's size),
the vendor's peak memory bandwidth, dense FP16 tensor throughput (matrix
units, no sparsity, FP16 accumulate where the vendor lists both), the device
class whose measured efficiencies the speed model applies (``fit.speed``), the
ggml backend llama.cpp reaches it through, and where the figures come from
(:data:`SOURCES`). An Apple profile is one unified pool: its memory is the
Mac's RAM, shared with the host. A user plans on a laptop for the server they
will SSH into with ``--gpu rtx3090`` or ``--gpu 24GB:936GB/s:71TF``.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from llmtune.errors import ConfigError
from llmtune.hardware.device import Device
from llmtune.units import GIB, MIB, parse_size

# The classes the speed model fits its efficiencies per (fit.speed.CLASS_SPEEDS):
# a class follows the silicon and its memory, not the market, so the GDDR
# server cards built on GeForce dies (L4, L40S, A40, A10, T4) are "nvidia-consumer".
NVIDIA_CONSUMER = "nvidia-consumer"  # GDDR: GeForce, RTX workstation, L4/L40S/A40/A10/T4
NVIDIA_DATACENTER = "nvidia-datacenter"  # HBM: V100, A100, H100, H200, B200
AMD_CONSUMER = "amd-consumer"  # Radeon RX (RDNA)
AMD_DATACENTER = "amd-datacenter"  # Instinct (CDNA, HBM)
APPLE = "apple"  # Apple Silicon GPUs on unified memory
DEVICE_CLASSES = (NVIDIA_CONSUMER, NVIDIA_DATACENTER, AMD_CONSUMER, AMD_DATACENTER, APPLE)

# Where each family's figures come from; a profile names its entry.
SOURCES: dict[str, str] = {
    "ampere-geforce": "NVIDIA Ampere GA102 whitepaper, appendix A (FP16 tensor with FP16 "
    "accumulate = 4x FP32 shader TFLOPS); nvidia.com GeForce RTX 30 series specs (memory)",
    "ada-geforce": "NVIDIA Ada Lovelace architecture whitepaper, appendix A; nvidia.com "
    "GeForce RTX 40 series specs (memory bandwidth)",
    "blackwell-geforce": "NVIDIA RTX Blackwell GPU architecture whitepaper, appendix A; "
    "nvidia.com GeForce RTX 50 series specs",
    "rtx-workstation": "NVIDIA RTX A4000/A5000/A6000 and RTX 4000/4500/5000/6000 Ada data "
    "sheets (memory, bandwidth, FP32); FP16 tensor = 4x FP32 as on the same dies",
    "nvidia-server-gddr": "NVIDIA L4, L40, L40S, A40, A10, T4 data sheets (dense FP16 tensor)",
    "nvidia-hbm": "NVIDIA V100, A100 (PCIe/SXM4, 40/80 GB), H100 (PCIe/SXM/NVL), H200 and "
    "HGX B200 data sheets (dense FP16/BF16 tensor: half the sparse figure)",
    "amd-radeon": "amd.com product specifications, Radeon RX 7900 XTX/XT, 7800 XT, 7600 "
    "and Radeon Pro W7900 (peak FP16, memory bandwidth)",
    "amd-instinct": "amd.com Instinct MI210/MI250/MI300X data sheets (FP16 matrix, HBM "
    "bandwidth); an MI250 is two GCDs that ROCm lists as two 64 GB devices",
    "apple": "apple.com tech specs (unified memory options, bandwidth); Apple newsroom for "
    "M1/M2 GPU TFLOPS; M3/M4: GPU cores x 128 FP32 lanes x 2 x GPU clock (Apple's GPU "
    "runs FP16 at the FP32 rate)",
    "measured": "measured on this project's device checks (runtime memory)",
}


@dataclass(frozen=True)
class GPUProfile:
    key: str
    name: str
    memory_mib: int
    bandwidth_gbps: float
    fp16_tflops: float
    device_class: str = NVIDIA_CONSUMER
    backend: str = "CUDA"  # ggml's device prefix: CUDA, ROCm, MTL
    source: str = ""  # a key of SOURCES
    unified: bool = False  # Apple: the memory is the Mac's RAM, one pool with the host
    # The CUDA runtime's hold before the model loads where measured on this card;
    # 0: the backend's default (fit.backends).
    runtime_mib: int = 0

    @property
    def memory_bytes(self) -> int:
        return self.memory_mib * MIB

    @property
    def runtime_bytes(self) -> int | None:
        return self.runtime_mib * MIB if self.runtime_mib else None

    @property
    def source_text(self) -> str:
        return SOURCES.get(self.source, "")


@dataclass(frozen=True)
class HostProfile:
    key: str
    name: str
    bandwidth_gbps: float


def _nv(key: str, name: str, mib: int, gbps: float, tflops: float, source: str,
        cls: str = NVIDIA_CONSUMER, runtime_mib: int = 0) -> GPUProfile:  # fmt: skip
    return GPUProfile(key, name, mib, gbps, tflops, cls, "CUDA", source, runtime_mib=runtime_mib)


def _amd(key: str, name: str, gib: int, gbps: float, tflops: float, cls: str) -> GPUProfile:
    source = "amd-radeon" if cls == AMD_CONSUMER else "amd-instinct"
    return GPUProfile(key, name, gib * 1024, gbps, tflops, cls, "ROCm", source)


_A30, _ADA, _B50 = "ampere-geforce", "ada-geforce", "blackwell-geforce"
_WS, _SRV, _HBM, _DC = "rtx-workstation", "nvidia-server-gddr", "nvidia-hbm", NVIDIA_DATACENTER

_NVIDIA: tuple[GPUProfile, ...] = (
    _nv("rtx3050", "NVIDIA GeForce RTX 3050", 8192, 224.0, 36.4, _A30),
    _nv("rtx3060-8g", "NVIDIA GeForce RTX 3060 8GB", 8192, 240.0, 51.2, _A30),
    _nv("rtx3060-12g", "NVIDIA GeForce RTX 3060 12GB", 12288, 360.0, 51.0, _A30),
    _nv("rtx3060ti", "NVIDIA GeForce RTX 3060 Ti", 8192, 448.0, 64.8, _A30),
    _nv("rtx3070", "NVIDIA GeForce RTX 3070", 8192, 448.0, 81.0, _A30),
    _nv("rtx3070ti", "NVIDIA GeForce RTX 3070 Ti", 8192, 608.0, 87.0, _A30),
    _nv("rtx3080-10g", "NVIDIA GeForce RTX 3080 10GB", 10240, 760.0, 119.0, _A30),
    _nv("rtx3080-12g", "NVIDIA GeForce RTX 3080 12GB", 12288, 912.0, 122.0, _A30),
    _nv("rtx3080ti", "NVIDIA GeForce RTX 3080 Ti", 12288, 912.0, 136.0, _A30),
    _nv("rtx3090", "NVIDIA GeForce RTX 3090", 24576, 936.0, 142.0, _A30),
    _nv("rtx3090ti", "NVIDIA GeForce RTX 3090 Ti", 24576, 1008.0, 160.0, _A30),
    _nv("rtx4060", "NVIDIA GeForce RTX 4060", 8188, 272.0, 60.5, _ADA),
    _nv("rtx4060ti-8g", "NVIDIA GeForce RTX 4060 Ti 8GB", 8188, 288.0, 88.0, _ADA),
    _nv("rtx4060ti-16g", "NVIDIA GeForce RTX 4060 Ti 16GB", 16380, 288.0, 88.0, _ADA),
    _nv("rtx4070", "NVIDIA GeForce RTX 4070", 12282, 504.0, 117.0, _ADA),
    _nv("rtx4070super", "NVIDIA GeForce RTX 4070 SUPER", 12282, 504.0, 142.0, _ADA),
    _nv("rtx4070ti", "NVIDIA GeForce RTX 4070 Ti", 12282, 504.0, 160.0, _ADA),
    _nv("rtx4070tisuper", "NVIDIA GeForce RTX 4070 Ti SUPER", 16376, 672.0, 176.0, _ADA),
    _nv("rtx4080", "NVIDIA GeForce RTX 4080", 16376, 717.0, 195.0, _ADA),
    _nv("rtx4080super", "NVIDIA GeForce RTX 4080 SUPER", 16376, 736.0, 209.0, _ADA),
    _nv("rtx4090", "NVIDIA GeForce RTX 4090", 24564, 1008.0, 330.0, _ADA),
    _nv("rtx5060", "NVIDIA GeForce RTX 5060", 8151, 448.0, 76.7, _B50),
    _nv("rtx5060ti-8g", "NVIDIA GeForce RTX 5060 Ti 8GB", 8151, 448.0, 94.8, _B50),
    _nv("rtx5060ti-16g", "NVIDIA GeForce RTX 5060 Ti 16GB", 16303, 448.0, 94.8, _B50),
    _nv("rtx5070", "NVIDIA GeForce RTX 5070", 12227, 672.0, 123.5, _B50),
    _nv("rtx5070ti", "NVIDIA GeForce RTX 5070 Ti", 16303, 896.0, 175.8, _B50),
    _nv("rtx5080", "NVIDIA GeForce RTX 5080", 16303, 960.0, 225.0, _B50),
    _nv("rtx5090", "NVIDIA GeForce RTX 5090", 32607, 1792.0, 419.0, _B50),
    _nv("rtxa4000", "NVIDIA RTX A4000", 16376, 448.0, 76.7, _WS),
    _nv("rtxa5000", "NVIDIA RTX A5000", 24564, 768.0, 111.1, _WS),
    _nv("rtxa6000", "NVIDIA RTX A6000", 49140, 768.0, 154.8, _WS),
    _nv("rtx4000ada", "NVIDIA RTX 4000 Ada", 20475, 360.0, 106.9, _WS),
    _nv("rtx4500ada", "NVIDIA RTX 4500 Ada", 24570, 432.0, 158.4, _WS),
    _nv("rtx5000ada", "NVIDIA RTX 5000 Ada", 32760, 576.0, 261.0, _WS),
    _nv("rtx6000ada", "NVIDIA RTX 6000 Ada", 49140, 960.0, 364.2, _WS),
    _nv("t4", "NVIDIA Tesla T4", 15360, 320.0, 65.0, _SRV),
    _nv("a10", "NVIDIA A10", 23028, 600.0, 125.0, _SRV),
    _nv("a40", "NVIDIA A40", 46068, 696.0, 149.7, _SRV),
    _nv("l4", "NVIDIA L4", 23034, 300.0, 121.0, _SRV),
    _nv("l40", "NVIDIA L40", 46068, 864.0, 181.0, _SRV),
    _nv("l40s", "NVIDIA L40S", 46068, 864.0, 362.0, _SRV),
    _nv("v100-16g", "NVIDIA Tesla V100 16GB", 16384, 900.0, 125.0, _HBM, _DC),
    _nv("v100", "NVIDIA Tesla V100 32GB", 32768, 900.0, 125.0, _HBM, _DC),
    # NVML names these "A100-PCIE-40GB", "A100 80GB PCIe", "A100-SXM4-80GB".
    _nv("a100-40g", "NVIDIA A100 PCIe 40GB", 40960, 1555.0, 312.0, _HBM, _DC),
    _nv("a100-sxm-40g", "NVIDIA A100 SXM4 40GB", 40960, 1555.0, 312.0, _HBM, _DC),
    _nv("a100-pcie-80g", "NVIDIA A100 PCIe 80GB", 81920, 1935.0, 312.0, _HBM, _DC),
    _nv("a100-80g", "NVIDIA A100 SXM4 80GB", 81920, 2039.0, 312.0, _HBM, _DC),
    _nv("h100-pcie", "NVIDIA H100 PCIe 80GB", 81559, 2000.0, 756.0, _HBM, _DC),
    # NVML names the SXM card "H100 80GB HBM3".
    _nv("h100-sxm", "NVIDIA H100 80GB HBM3", 81559, 3350.0, 989.0, _HBM, _DC),
    _nv("h100-nvl", "NVIDIA H100 NVL", 95830, 3900.0, 835.0, _HBM, _DC),
    # Runtime measured on an H200 with CUDA 13 (issue 14's GPU check): 526-606 MiB
    # per process before llama.cpp allocates (132 SMs reserve more local memory).
    _nv("h200", "NVIDIA H200 141GB", 143771, 4800.0, 989.0, _HBM, _DC, runtime_mib=566),
    _nv("b200", "NVIDIA B200", 184320, 8000.0, 2250.0, _HBM, _DC),
)

_AMD: tuple[GPUProfile, ...] = (
    _amd("rx7600", "AMD Radeon RX 7600", 8, 288.0, 43.5, AMD_CONSUMER),
    _amd("rx7800xt", "AMD Radeon RX 7800 XT", 16, 624.0, 74.6, AMD_CONSUMER),
    _amd("rx7900xt", "AMD Radeon RX 7900 XT", 20, 800.0, 103.0, AMD_CONSUMER),
    _amd("rx7900xtx", "AMD Radeon RX 7900 XTX", 24, 960.0, 122.8, AMD_CONSUMER),
    # The workstation Navi 31: the 7900 XTX's die with 48 GB at a lower memory clock.
    _amd("w7900", "AMD Radeon Pro W7900", 48, 864.0, 122.6, AMD_CONSUMER),
    _amd("mi210", "AMD Instinct MI210", 64, 1638.4, 181.0, AMD_DATACENTER),
    # One of an MI250's two GCDs: ROCm, and so llama.cpp, see each as a device.
    _amd("mi250", "AMD Instinct MI250 (one GCD)", 64, 1638.4, 181.0, AMD_DATACENTER),
    _amd("mi300x", "AMD Instinct MI300X", 192, 5300.0, 1307.4, AMD_DATACENTER),
)

# Apple chips: (key, name, bandwidth GB/s, FP32=FP16 TFLOPS, RAM options in GB).
_APPLE_CHIPS: tuple[tuple[str, str, float, float, tuple[int, ...]], ...] = (
    ("m1", "Apple M1 (8-core GPU)", 68.25, 2.6, (8, 16)),
    ("m1-pro", "Apple M1 Pro (16-core GPU)", 200.0, 5.2, (16, 32)),
    ("m1-max", "Apple M1 Max (32-core GPU)", 400.0, 10.4, (32, 64)),
    ("m1-ultra", "Apple M1 Ultra (64-core GPU)", 800.0, 21.2, (64, 128)),
    ("m2", "Apple M2 (10-core GPU)", 100.0, 3.6, (8, 16, 24)),
    ("m2-pro", "Apple M2 Pro (19-core GPU)", 200.0, 6.8, (16, 32)),
    ("m2-max", "Apple M2 Max (38-core GPU)", 400.0, 13.6, (32, 64, 96)),
    ("m2-ultra-60c", "Apple M2 Ultra (60-core GPU)", 800.0, 21.5, (64, 128, 192)),
    ("m2-ultra", "Apple M2 Ultra (76-core GPU)", 800.0, 27.2, (64, 128, 192)),
    ("m3", "Apple M3 (10-core GPU)", 100.0, 4.1, (8, 16, 24)),
    ("m3-pro", "Apple M3 Pro (18-core GPU)", 150.0, 7.4, (18, 36)),
    ("m3-max-30c", "Apple M3 Max (30-core GPU)", 300.0, 12.3, (36, 96)),
    ("m3-max", "Apple M3 Max (40-core GPU)", 400.0, 16.4, (48, 64, 128)),
    ("m3-ultra", "Apple M3 Ultra (80-core GPU)", 819.0, 32.8, (96, 256, 512)),
    ("m4", "Apple M4 (10-core GPU)", 120.0, 4.3, (16, 24, 32)),
    ("m4-pro", "Apple M4 Pro (20-core GPU)", 273.0, 9.2, (24, 48, 64)),
    ("m4-max-32c", "Apple M4 Max (32-core GPU)", 410.0, 14.7, (36,)),
    ("m4-max", "Apple M4 Max (40-core GPU)", 546.0, 18.4, (48, 64, 128)),
)
# Apple made no M4 Ultra; the M3 Ultra is the Ultra of that generation.
_APPLE: tuple[GPUProfile, ...] = tuple(
    GPUProfile(f"{key}-{gb}g", f"{name} {gb}GB", gb * 1024, bw, tf, APPLE, "MTL", "apple", True)
    for key, name, bw, tf, sizes in _APPLE_CHIPS
    for gb in sizes
)

GPU_PROFILES: tuple[GPUProfile, ...] = _NVIDIA + _AMD + _APPLE
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
    r"^(?P<size>[0-9.]+\s*[a-zA-Z]*)"
    r"(?::(?P<bw>[0-9.]+)\s*(?:GB/s|gb/s|GBps)?)?"
    r"(?::(?P<tf>[0-9.]+)\s*(?:TF|tf|TFLOPS|tflops|Tflops))?$"
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
    optional bandwidth and dense FP16 throughput (``12GiB``, ``24GB:1008GB/s``,
    ``24GB:936GB/s:71TF``)."""
    stripped = text.strip()
    if stripped and stripped[0].isdigit():
        m = _GPU_SIZE_RE.match(stripped)
        if not m:
            raise ConfigError(
                f"not a GPU size: {text!r} (try 12GiB, 24GB:1008GB/s or 24GB:936GB/s:71TF)",
                "--gpu",
            )
        try:
            capacity = parse_size(m.group("size"))
        except ConfigError as exc:
            raise ConfigError(exc.what, "--gpu") from None
        if capacity <= 0:
            raise ConfigError(f"a GPU needs some memory: {text!r}", "--gpu")
        bandwidth = float(m.group("bw")) if m.group("bw") else DEFAULT_GPU_BANDWIDTH_GBPS
        if bandwidth <= 0:
            raise ConfigError(f"bandwidth must be positive: {text!r}", "--gpu")
        tflops = float(m.group("tf")) if m.group("tf") else DEFAULT_GPU_TFLOPS
        if tflops <= 0:
            raise ConfigError(f"throughput must be positive: {text!r}", "--gpu")
        return Device(
            name=f"GPU {index} ({stripped})",
            kind="gpu",
            index=index,
            capacity_bytes=capacity,
            free_bytes=capacity,
            bandwidth_gbps=bandwidth,
            fp16_tflops=tflops,
            bandwidth_known=bool(m.group("bw")),
            source="spec",
        )
    return profile_device(gpu_profile(stripped), index)


# macOS's default GPU limit on Apple Silicon, Ollama's rule (ollama gpu/gpu_darwin.go
# CheckVRAM; hardware.apple has the evidence): up to 36 GiB two thirds, above three quarters.
DEFAULT_RULE_THRESHOLD_BYTES = 36 * GIB


def default_working_set_bytes(ram_bytes: int) -> int:
    """macOS's default GPU limit for a Mac with ``ram_bytes`` (an estimate)."""
    if ram_bytes <= DEFAULT_RULE_THRESHOLD_BYTES:
        return ram_bytes * 2 // 3
    return ram_bytes * 3 // 4


def profile_device(profile: GPUProfile, index: int = 0) -> Device:
    """The device a profile describes, whole and free. A Mac's GPU may wire only
    part of its RAM: macOS's default limit, as llama.cpp's Metal device reports it
    (hardware.apple; the host keeps the whole pool, less what the GPU holds)."""
    memory = profile.memory_bytes
    if profile.unified:
        memory = default_working_set_bytes(memory)
    return Device(
        name=profile.name,
        kind="gpu",
        index=index,
        capacity_bytes=memory,
        free_bytes=memory,
        bandwidth_gbps=profile.bandwidth_gbps,
        fp16_tflops=profile.fp16_tflops,
        bandwidth_known=True,
        source="profile",
        profile=profile.key,
        runtime_bytes=profile.runtime_bytes,
        backend=profile.backend,
        device_class=profile.device_class,
        unified=profile.unified,
    )
