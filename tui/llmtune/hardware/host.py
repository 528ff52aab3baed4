"""The host as a Device: its RAM and memory bandwidth."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from llmtune.hardware.device import Device

if TYPE_CHECKING:
    from llmtune.hardware.cpu_kernels import KernelRates

# Without a measurement or a profile, assume dual-channel DDR4-3200 (51.2 GB/s):
# the most common desktop memory. The bandwidth probe refines it per machine.
DEFAULT_HOST_BANDWIDTH_GBPS = 51.2
# Peak FP32 FLOP/s per core with AVX-512 FMA at ~3 GHz; the speed model applies
# its efficiency (measured: 70 GFLOP/s per core on an EPYC with the demo model).
HOST_TFLOPS_PER_CORE = 0.2
# Another machine's CPU (--ram, --host): a desktop's eight physical cores, for the
# arithmetic of its prompts and of its kernels (this machine's count says nothing
# about that one, and this project's 2-core VM would make every what-if slow).
WHAT_IF_HOST_CORES = 8


def physical_cores() -> int:
    """Physical CPU cores: llama.cpp's default thread count (common's cpu_get_num_math)."""
    try:
        import psutil

        return int(psutil.cpu_count(logical=False) or os.cpu_count() or 1)
    except Exception:  # psutil is a dependency, but never let a probe crash a plan
        return os.cpu_count() or 1


def host_device(
    ram_bytes: int | None = None,
    bandwidth_gbps: float | None = None,
    name: str | None = None,
    measured: bool = False,
    kernels: KernelRates | None = None,
    cores: int | None = None,
) -> Device:
    """The host. ``ram_bytes`` plans for another machine's RAM; otherwise the
    RAM of this one, with what is available now as free. ``measured``: the
    bandwidth was probed here (what programs get), not a peak figure;
    ``kernels``: llama.cpp's CPU kernels as probed here; ``cores``: physical
    cores (default: this machine's)."""
    if ram_bytes is None:
        try:
            import psutil

            vm = psutil.virtual_memory()
            total, free = int(vm.total), int(vm.available)
        except Exception:
            total = free = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        label = name or "CPU (host RAM)"
    else:
        total = free = ram_bytes
        label = name or "CPU (host RAM)"
    return Device(
        name=label,
        kind="cpu",
        capacity_bytes=total,
        free_bytes=free,
        bandwidth_gbps=bandwidth_gbps or DEFAULT_HOST_BANDWIDTH_GBPS,
        fp16_tflops=(cores or physical_cores()) * HOST_TFLOPS_PER_CORE,
        bandwidth_known=bandwidth_gbps is not None,
        bandwidth_measured=measured and bandwidth_gbps is not None,
        source="detected" if ram_bytes is None else "spec",
        kernel_rates=tuple(sorted(kernels.ram.items())) if kernels is not None else (),
        kernel_threads=kernels.threads if kernels is not None else 0,
        kernel_batch=kernels.batch_table() if kernels is not None else (),
    )


def host_device_measured(
    ram_bytes: int | None = None,
    name: str | None = None,
    probe: bool = False,
) -> Device:
    """The host with this machine's measured bandwidth and CPU kernel speeds when
    the probes have run (``llmtune.hardware.bandwidth``, ``.cpu_kernels``);
    ``probe=True`` runs them (a few seconds, once per machine) if nothing is cached. Planning for another machine's RAM ignores the
    measurement: it describes this one."""
    bandwidth: float | None = None
    kernels: KernelRates | None = None
    if ram_bytes is None:
        from llmtune.hardware.bandwidth import host_bandwidth_gbps
        from llmtune.hardware.cpu_kernels import host_kernel_rates

        bandwidth = host_bandwidth_gbps(probe=probe)
        kernels = host_kernel_rates(probe=probe)
    return host_device(
        ram_bytes=ram_bytes, bandwidth_gbps=bandwidth, name=name, measured=True, kernels=kernels
    )
