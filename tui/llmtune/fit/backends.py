"""What each ggml backend adds to a device's memory beyond the model and its context.

Two facts differ by backend, and both move llama.cpp's fit:

* **The runtime.** A CUDA (or ROCm) device holds a context, its kernels' local
  memory and the driver's own structures before llama.cpp allocates anything;
  llama.cpp's fit reads free memory after that (common/fit.cpp asks
  ``ggml_backend_dev_memory``, i.e. ``cudaMemGetInfo`` in a process whose context
  exists), so a plan made from NVML's free memory (or a card's size) must take
  it off first. An RPC device's server reports its free memory after its own
  context exists, and the CPU has none.
* **Flash attention's scratch on CUDA.** The CUDA backend sizes a
  ``FLASH_ATTN_EXT`` node with F16 copies of K and V when its kernel needs F16
  and the cache is not (ggml-cuda.cu ``ggml_backend_cuda_buffer_type_get_alloc_size``
  -> fattn.cu ``ggml_cuda_flash_attn_ext_get_alloc_size``): the MMA and tile
  kernels chosen for prompt batches always do, so a quantized (or F32) cache
  grows the compute buffer by one layer's cache in F16. An RPC device asks its
  server (ggml-rpc.cpp ``GET_ALLOC_SIZE``), so it follows the server's backend.
  The CPU backend allocates ``ggml_nbytes`` only.

docs/llama-cpp-memory.md ("Compute buffers and runtime per backend") lists
which rule each device type uses and where each figure comes from.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmtune.fit.settings import RUNTIME_AUTO
from llmtune.hardware.device import Device
from llmtune.units import MIB


@dataclass(frozen=True)
class BackendRules:
    name: str
    runtime_bytes: int  # held before llama.cpp's fit reads the free memory
    runtime_source: str
    fa_f16_scratch: bool  # FLASH_ATTN_EXT converts a non-F16 cache into the compute buffer


# Ollama reserves 457 MiB on every CUDA and ROCm GPU for the runtime
# (discover/gpu.go ``cudaMinimumMemory``, ``rocmMinimumMemory``); llama.cpp's
# memory breakdown on three RTX 4090s shows 451-456 MiB "unaccounted" (PR 15860).
_CONSUMER_RUNTIME = (457 * MIB, "Ollama's per-GPU minimum; llama.cpp's RTX 4090 breakdown")

BACKENDS: dict[str, BackendRules] = {
    "CUDA": BackendRules("CUDA", *_CONSUMER_RUNTIME, fa_f16_scratch=True),
    # HIP builds the CUDA backend's code (ggml-cuda/vendors/hip.h), scratch included.
    "ROCm": BackendRules("ROCm", *_CONSUMER_RUNTIME, fa_f16_scratch=True),
    "RPC": BackendRules("RPC", 0, "the server reports free memory after its context", False),
    "CPU": BackendRules("CPU", 0, "no runtime on the host", False),
}
_UNKNOWN = BackendRules("", 0, "not measured for this backend", False)


def rules(backend: str) -> BackendRules:
    return BACKENDS.get(backend, _UNKNOWN)


def runtime_bytes(device: Device, override: int = RUNTIME_AUTO) -> int:
    """What the device's runtime holds before llama.cpp plans on it: the user's
    ``--overhead`` for a local GPU, else the device's own measured figure (a
    profile's), else its backend's default."""
    if device.kind != "gpu":
        return 0
    if override != RUNTIME_AUTO:
        return override
    if device.runtime_bytes is not None:
        return device.runtime_bytes
    return rules(device.ggml_backend).runtime_bytes


def fa_f16_scratch(device: Device) -> bool:
    """Whether flash attention on this device keeps F16 copies of a non-F16 cache
    in its compute buffer (the backend that computes there decides)."""
    return rules(device.compute_backend).fa_f16_scratch
