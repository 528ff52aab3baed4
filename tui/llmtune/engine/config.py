"""RunConfig: every llama.cpp setting the worker passes, explicitly, to the C API.

One RunConfig describes one model load plus one context. It is built from the
user's :class:`~llmtune.fit.settings.Settings` (``RunConfig.from_settings``) so
the plan, the worker and the hand-off command line describe one configuration;
llama-server's defaults come with the Settings, and the worker never relies on
the C API's own defaults (which differ: n_batch 512, ``swa_full`` on).

Field by field, the llama-cpp-python 0.3.36 structures they set:

- ``llama_model_params``: ``n_gpu_layers``, ``main_gpu``, ``split_mode``,
  ``tensor_split`` (a float array of ``llama_max_devices()``), ``load_mode``
  (this version has no ``use_mmap``/``use_mlock``: ``use_mmap`` and
  ``use_mlock`` map to ``LLAMA_LOAD_MODE_NONE/MMAP/MLOCK/MMAP_MLOCK``),
  ``use_extra_bufts`` (CPU_REPACK) and ``tensor_buft_overrides``.
- ``llama_context_params``: ``n_ctx``, ``n_batch``, ``n_ubatch``,
  ``n_seq_max``, ``n_threads``/``n_threads_batch``, ``flash_attn_type``,
  ``type_k``/``type_v``, ``offload_kqv``, ``op_offload``, ``swa_full``,
  ``kv_unified``.

MoE expert placement (``--n-cpu-moe N`` / ``--cpu-moe``): the binding declares
``tensor_buft_overrides`` as an untyped pointer ("unused"), so the worker
builds the NULL-terminated ``llama_model_tensor_buft_override`` array itself
with the CPU buffer type from ``ggml_backend_dev_buffer_type`` and the
patterns of llama.cpp's ``common/common.h`` (``blk\\.N\\.ffn_(up|down|gate)_(ch|)exps``).
If the ggml symbols cannot be found the worker loads without the override and
says so in the log (``unsupported`` in :func:`moe_override_patterns`'s caller).
Other ``--override-tensor`` rules are not exposed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from llmtune.fit.settings import (
    CACHE_TYPE_IDS,
    CACHE_TYPES,
    SPLIT_MODE_IDS,
    FlashAttn,
    Settings,
    SplitMode,
)

# enum ggml_type of each KV cache type, and enum llama_split_mode (one table, in fit.settings).
GGML_TYPES: dict[str, int] = CACHE_TYPE_IDS
FLASH_ATTN_TYPES: dict[str, int] = {"auto": -1, "off": 0, "on": 1}  # enum llama_flash_attn_type
SPLIT_MODES: dict[str, int] = SPLIT_MODE_IDS
# llama_cpp.LLAMA_LOAD_MODE_*: (use_mmap, use_mlock) -> enum llama_load_mode
LOAD_MODES: dict[tuple[bool, bool], int] = {
    (False, False): 0,
    (True, False): 1,
    (False, True): 2,
    (True, True): 3,
}
# common/common.h: LLM_FFN_EXPS_REGEX
FFN_EXPS_REGEX = r"\.ffn_(up|down|gate|gate_up)_(ch|)exps"

OomStage = Literal["load", "context"]


def default_threads() -> int:
    """llama.cpp's default thread count: the physical cores (common's cpu_get_num_math)."""
    try:
        import psutil

        n = psutil.cpu_count(logical=False)
    except Exception:  # psutil missing or unable to count: fall back to logical CPUs
        n = None
    return max(1, int(n or os.cpu_count() or 1))


def moe_override_patterns(n_cpu_moe: int, n_layer: int | None = None) -> tuple[str, ...]:
    """Tensor-name patterns whose tensors stay in host memory (llama-server's --n-cpu-moe).

    -1 (``--cpu-moe``) keeps every expert on the CPU; N keeps those of layers 0..N-1.
    """
    if n_cpu_moe == 0:
        return ()
    if n_cpu_moe < 0:
        return (FFN_EXPS_REGEX,)
    count = n_cpu_moe if n_layer is None else min(n_cpu_moe, n_layer)
    return tuple(rf"blk\.{i}{FFN_EXPS_REGEX}" for i in range(count))


@dataclass(frozen=True)
class RunConfig:
    """One model load and one context, as the worker asks llama.cpp for them."""

    model_path: str
    n_gpu_layers: int = -1  # -1: all layers, the output layer included
    main_gpu: int = 0
    tensor_split: tuple[float, ...] = ()
    split_mode: SplitMode = "layer"
    n_ctx: int = 4096  # all sequences; 0: the trained context
    n_batch: int = 2048
    n_ubatch: int = 512
    threads: int = 0  # 0: physical cores
    threads_batch: int = 0  # 0: as threads
    flash_attn: FlashAttn = "auto"
    cache_type_k: str = "f16"
    cache_type_v: str = "f16"
    offload_kqv: bool = True
    op_offload: bool = True
    use_mmap: bool = True
    use_mlock: bool = False
    use_extra_bufts: bool = True  # CPU_REPACK
    n_seq_max: int = 1
    kv_unified: bool = False
    swa_full: bool = False
    n_cpu_moe: int = 0  # experts of the first N layers on the CPU; -1: all
    # Test hook: limit the worker's address space (RLIMIT_AS) to what it uses
    # just before ``oom_stage`` plus this many bytes, to simulate running out of memory.
    oom_headroom_bytes: int | None = None
    oom_stage: OomStage = "context"

    @classmethod
    def from_settings(cls, model_path: str | os.PathLike[str], settings: Settings) -> RunConfig:
        """The configuration ``fit.plan(spec, devices, settings)`` describes."""
        s = settings
        return cls(
            model_path=str(Path(model_path)),
            n_gpu_layers=s.n_gpu_layers,
            main_gpu=s.main_gpu,
            tensor_split=tuple(s.tensor_split),
            split_mode=s.split_mode,
            n_ctx=s.n_ctx,
            n_batch=s.n_batch,
            n_ubatch=s.n_ubatch,
            threads=s.threads,
            flash_attn=s.flash_attn,
            cache_type_k=s.cache_type_k,
            cache_type_v=s.cache_type_v,
            offload_kqv=not s.no_kv_offload,
            use_mmap=s.use_mmap,
            n_seq_max=s.n_parallel,
            kv_unified=s.kv_unified,
            swa_full=s.swa_full,
            n_cpu_moe=s.n_cpu_moe,
        )

    def validate(self) -> None:
        """Raise ConfigError for values llama.cpp would refuse or misread."""
        from llmtune.errors import ConfigError

        for name, value in (("K", self.cache_type_k), ("V", self.cache_type_v)):
            if value not in GGML_TYPES or value not in CACHE_TYPES:
                raise ConfigError(f"llama.cpp has no {name} cache type {value!r}", "RunConfig")
        if self.flash_attn not in FLASH_ATTN_TYPES:
            raise ConfigError(f"flash attention is on, off or auto, not {self.flash_attn!r}")
        if self.split_mode not in SPLIT_MODES:
            raise ConfigError(f"split mode is layer, row or none, not {self.split_mode!r}")
        limits: tuple[tuple[str, int, int], ...] = (
            ("n_ctx", self.n_ctx, 0),
            ("n_batch", self.n_batch, 1),
            ("n_ubatch", self.n_ubatch, 1),
            ("n_seq_max", self.n_seq_max, 1),
            ("threads", self.threads, 0),
            ("threads_batch", self.threads_batch, 0),
        )
        for field_name, number, low in limits:
            if number < low:
                raise ConfigError(f"{field_name} must be at least {low}, not {number}", "RunConfig")

    @property
    def load_mode(self) -> int:
        """enum llama_load_mode for ``use_mmap`` and ``use_mlock``."""
        return LOAD_MODES[(self.use_mmap, self.use_mlock)]

    @property
    def n_threads(self) -> int:
        return self.threads or default_threads()

    @property
    def n_threads_batch(self) -> int:
        return self.threads_batch or self.n_threads

    def settings(self) -> Settings:
        """The Settings this configuration runs (the inverse of :meth:`from_settings`)."""
        return Settings(
            n_gpu_layers=self.n_gpu_layers,
            n_ctx=self.n_ctx,
            n_batch=self.n_batch,
            n_ubatch=self.n_ubatch,
            n_parallel=self.n_seq_max,
            kv_unified=self.kv_unified,
            cache_type_k=self.cache_type_k,
            cache_type_v=self.cache_type_v,
            flash_attn=self.flash_attn,
            swa_full=self.swa_full,
            no_kv_offload=not self.offload_kqv,
            split_mode=self.split_mode,
            main_gpu=self.main_gpu,
            tensor_split=self.tensor_split,
            n_cpu_moe=self.n_cpu_moe,
            use_mmap=self.use_mmap,
            threads=self.threads,
        )

    def command_line(self) -> list[str]:
        """The llama-server arguments (after the program name) for the same configuration.

        Built by :func:`llmtune.fit.commandline.llama_args`, llmtune's one builder.
        """
        from llmtune.fit.commandline import llama_args
        from llmtune.fit.settings import Extras

        extras = Extras(
            threads_batch=self.threads_batch,
            use_mlock=self.use_mlock,
            use_extra_bufts=self.use_extra_bufts,
            op_offload=self.op_offload,
        )
        return llama_args(self.model_path, self.settings(), self.n_gpu_layers, self.n_ctx, extras)
