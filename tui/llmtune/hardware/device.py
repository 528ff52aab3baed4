"""Device: one place memory lives and weights are read from (a GPU, an RPC device or the host)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# "rpc": a device served by llama.cpp's RPC server on another machine (or
# another process); to llama.cpp it is one more GPU, placed before local ones.
DeviceKind = Literal["gpu", "rpc", "cpu"]


@dataclass(frozen=True)
class Device:
    """A GPU or the host, detected or described by a profile.

    ``free_bytes`` is what the plan may use before the safety margin: for a
    detected GPU, what NVML reports free now (other processes hold the rest);
    for a profile, the whole card.
    """

    name: str
    kind: DeviceKind
    capacity_bytes: int
    free_bytes: int
    bandwidth_gbps: float
    fp16_tflops: float = 0.0
    index: int = 0
    bandwidth_known: bool = True
    bandwidth_measured: bool = False  # probed on this machine, not a peak figure
    source: str = "detected"  # detected | profile | spec | rpc
    profile: str = ""
    endpoint: str = ""  # an RPC device's HOST:PORT; its index on that server is ``index``
    rtt_s: float = 0.0  # an RPC device's measured round trip
    network_bytes_per_s: float = 0.0  # an RPC device's measured (or given) network bandwidth
    # The ggml backend that drives a local GPU (ggml's device-name prefix: CUDA,
    # ROCm, MTL, Vulkan); empty: CUDA, the only GPU backend detected today.
    backend: str = ""
    # Memory the GPU runtime holds before llama.cpp's fit reads the free memory
    # (a CUDA context): None for the backend's default (fit.backends).
    runtime_bytes: int | None = None
    # The speed model's device class (hardware.profiles.DEVICE_CLASSES); empty:
    # unknown, planned as a consumer NVIDIA card.
    device_class: str = ""
    # Apple Silicon: the GPU and the host share one pool of RAM (unified memory).
    # hardware.apple splits what is free between them so a plan never counts the
    # same bytes as free GPU memory and free host RAM.
    unified: bool = False
    # A CPU probed here (hardware.cpu_kernels): GB/s of weights llama.cpp's
    # matrix-vector product gets through from RAM per type name, with
    # ``kernel_threads`` threads. Empty: not probed (the speed model estimates).
    kernel_rates: tuple[tuple[str, float], ...] = ()
    kernel_threads: int = 0
    # (type, columns, GB/s): a step of a batched decode of that many streams.
    kernel_batch: tuple[tuple[str, int, float], ...] = ()

    @property
    def is_gpu(self) -> bool:
        """A local GPU (NVML sees it; the monitor graphs it)."""
        return self.kind == "gpu"

    @property
    def is_rpc(self) -> bool:
        return self.kind == "rpc"

    @property
    def offloads(self) -> bool:
        """Layers can be offloaded to it: a local GPU or an RPC device."""
        return self.kind != "cpu"

    @property
    def ggml_backend(self) -> str:
        """The backend llama.cpp reaches this device through: CUDA (or another GPU
        backend), RPC or CPU."""
        if self.kind == "gpu":
            return self.backend or "CUDA"
        return "RPC" if self.kind == "rpc" else "CPU"

    @property
    def compute_backend(self) -> str:
        """The backend that computes on this device's memory: an RPC device's is
        its server's (a CPU unless a GPU is named behind it; ggml-rpc.cpp asks the
        server for the alloc sizes its backend needs)."""
        if self.kind == "rpc":
            return "CPU" if self.profile == "cpu" else (self.backend or "CUDA")
        return self.ggml_backend

    @property
    def buffer_name(self) -> str:
        """The name llama.cpp logs this device's buffers under (CUDA0, RPC0[host:port], CPU).

        An RPC buffer type is named after the device's index on its server and the
        endpoint (ggml-rpc.cpp ``ggml_backend_rpc_buffer_type``), not the client's RPCn.
        """
        if self.kind == "rpc":
            return f"RPC{self.index}[{self.endpoint}]"
        if self.kind == "gpu":
            return f"{self.ggml_backend}{self.index}"
        return "CPU"
