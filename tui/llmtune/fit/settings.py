"""Settings: the llama.cpp options the estimator models, with llama-server's defaults.

llmtune's defaults follow ``common_params`` (common/common.h), not the C API
or llama-cpp-python's ``Llama`` (which differ: n_batch 512, flash attention
off, ``swa_full`` on), so the plan, the worker and the hand-off command line
describe one configuration.

The defaults are written here once, as typed dataclass fields mypy checks;
:mod:`llmtune.fit.options` says how each field reaches llama.cpp (its flags,
``Llama`` keyword, C parameter, JSON key, stepper) and reads the defaults from
``Settings()``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

from llmtune.errors import FitError
from llmtune.fit.overflow import FRACTIONS, LayerOverflow
from llmtune.model.ggml_types import GGML_TYPE_BY_NAME
from llmtune.units import MIB

# --cache-type-k/-v values llama.cpp accepts (common/arg.cpp kv_cache_types), in its order.
CACHE_TYPE_NAMES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1")
# name: (block size, bytes per block), as ggml_row_size computes rows; from the gguf
# package's table of ggml types rather than typed again here.
CACHE_TYPES: dict[str, tuple[int, int]] = {
    name: (GGML_TYPE_BY_NAME[name.upper()].block_size, GGML_TYPE_BY_NAME[name.upper()].type_size)
    for name in CACHE_TYPE_NAMES
}
# enum ggml_type of each (ggml.h), for llama_context_params.type_k/type_v.
CACHE_TYPE_IDS: dict[str, int] = {
    name: GGML_TYPE_BY_NAME[name.upper()].id for name in CACHE_TYPE_NAMES
}
SPLIT_MODE_IDS: dict[str, int] = {"none": 0, "layer": 1, "row": 2}  # enum llama_split_mode
FLASH_ATTN_IDS: dict[str, int] = {"auto": -1, "off": 0, "on": 1}  # enum llama_flash_attn_type
# (use_mmap, use_mlock) -> enum llama_load_mode (llama.h LLAMA_LOAD_MODE_NONE/MMAP/MLOCK/MMAP_MLOCK)
LOAD_MODE_IDS: dict[tuple[bool, bool], int] = {
    (False, False): 0,
    (True, False): 1,
    (False, True): 2,
    (True, True): 3,
}
QUANTIZED_CACHE_TYPES = frozenset(t for t, (block, _) in CACHE_TYPES.items() if block > 1)

FlashAttn = Literal["on", "off", "auto"]
SplitMode = Literal["layer", "row", "none"]

NGL_AUTO = -2  # --ngl auto: the layers llama.cpp's fit chooses (fit.autofit)
DEFAULT_CTX = 4096  # common/fit.cpp's fit_params_min_ctx; n_ctx 0 means the trained context
RUNTIME_AUTO = -1  # --overhead auto: each GPU's runtime from its backend (fit.backends)
DEFAULT_MARGIN_BYTES = 1024 * MIB  # common_params::fit_params_target
# llama-server reads -c, -b and -ub with std::stoi (common/arg.cpp): at most INT32_MAX.
MAX_TOKENS = 2**31 - 1


@dataclass(frozen=True)
class Settings:
    """What the user chose. ``n_gpu_layers`` -1 means all (llama.cpp's -ngl all),
    :data:`NGL_AUTO` what llama.cpp's fit would choose."""

    n_gpu_layers: int = NGL_AUTO
    n_ctx: int = DEFAULT_CTX
    n_batch: int = 2048
    n_ubatch: int = 512
    n_parallel: int = 1
    kv_unified: bool = False
    cache_type_k: str = "f16"
    cache_type_v: str = "f16"
    flash_attn: FlashAttn = "auto"
    swa_full: bool = False
    no_kv_offload: bool = False
    split_mode: SplitMode = "layer"
    main_gpu: int = 0
    tensor_split: tuple[float, ...] = ()
    # What of some layers' FFN leaves their device, for which buffer type: the
    # tensor overrides (-ot) llama.cpp's fit chooses (fit.overflow); ahead of n_cpu_moe's.
    layer_overflow: tuple[LayerOverflow, ...] = ()
    n_cpu_moe: int = 0  # experts of the first N layers on the CPU; -1: all (--cpu-moe)
    use_mmap: bool = True
    threads: int = 0  # 0: llama.cpp's default (physical cores)
    margin_bytes: int = DEFAULT_MARGIN_BYTES
    # Per offload device in llama.cpp's order (--fit-target, MiB in llama.cpp); the
    # last one stands for the devices after it; empty: margin_bytes for each.
    device_margins: tuple[int, ...] = ()
    fit_ctx: int = DEFAULT_CTX  # --fit-ctx: the least an unset context shrinks to (fit.autofit)
    # What a local GPU's runtime holds before the model loads (a CUDA context),
    # the same for every GPU; RUNTIME_AUTO: each device's own (fit.backends).
    gpu_runtime_bytes: int = RUNTIME_AUTO

    def margin_of(self, device: int) -> int:
        """The margin kept free on offload device ``device`` (llama.cpp's order)."""
        if not self.device_margins:
            return self.margin_bytes
        return self.device_margins[min(device, len(self.device_margins) - 1)]

    def with_(self, **changes: object) -> Settings:
        return replace(self, **changes)  # type: ignore[arg-type]

    def validate(self) -> None:
        """Raise FitError for settings llama.cpp would refuse, naming llmtune's flag."""
        # The flags live in the options table, which reads Settings: import it here.
        from llmtune.fit.options import cli_flag as flag

        if self.n_gpu_layers < -1 and self.n_gpu_layers != NGL_AUTO:
            ngl = flag("n_gpu_layers")
            raise FitError(
                f"{ngl} must be 0 or more (or 'max', or 'auto'), not {self.n_gpu_layers}", ngl
            )
        if self.n_ctx < 0:
            raise FitError(f"context must be positive, not {self.n_ctx}", flag("n_ctx"))
        if self.n_batch < 1:
            raise FitError(f"batch must be at least 1, not {self.n_batch}", flag("n_batch"))
        if self.n_ubatch < 1:
            raise FitError(f"ubatch must be at least 1, not {self.n_ubatch}", flag("n_ubatch"))
        for name, what, tokens in (
            ("n_ctx", "context", self.n_ctx),
            ("n_batch", "batch", self.n_batch),
            ("n_ubatch", "ubatch", self.n_ubatch),
        ):
            if tokens > MAX_TOKENS:
                raise FitError(
                    f"{what} of {tokens:,} tokens is more than llama.cpp takes ({MAX_TOKENS:,})",
                    flag(name),
                )
        if not 1 <= self.n_parallel <= 256:
            raise FitError(
                f"parallel sequences must be 1 to 256, not {self.n_parallel}", flag("n_parallel")
            )
        for name, value in (
            ("cache_type_k", self.cache_type_k),
            ("cache_type_v", self.cache_type_v),
        ):
            if value not in CACHE_TYPES:
                raise FitError(
                    f"llama.cpp has no KV cache type {value!r}; use one of {', '.join(CACHE_TYPES)}",
                    flag(name),
                )
        if self.flash_attn not in FLASH_ATTN_IDS:
            raise FitError(
                f"flash attention is on, off or auto, not {self.flash_attn!r}", flag("flash_attn")
            )
        if self.split_mode not in SPLIT_MODE_IDS:
            raise FitError(
                f"split mode is layer, row or none, not {self.split_mode!r}", flag("split_mode")
            )
        if self.cache_type_v in QUANTIZED_CACHE_TYPES and self.flash_attn == "off":
            # llama_init_from_model: "quantized V cache requires flash_attn to be enabled"
            raise FitError(
                f"a quantized V cache ({self.cache_type_v}) needs flash attention; "
                f"llama.cpp refuses it with {flag('flash_attn')} off",
                flag("cache_type_v"),
            )
        if not all(math.isfinite(f) for f in self.tensor_split):
            raise FitError("tensor split proportions must be finite numbers", flag("tensor_split"))
        if any(f < 0 for f in self.tensor_split):
            raise FitError("tensor split proportions must not be negative", flag("tensor_split"))
        for il, fraction, buft in self.layer_overflow:
            if il < 0 or fraction not in FRACTIONS or not buft:
                raise FitError(
                    f"a layer overflow is (layer, one of {', '.join(FRACTIONS)}, buffer type), "
                    f"not {(il, fraction, buft)!r}",
                    "layer_overflow",
                )
        if self.fit_ctx < 1:
            raise FitError(f"--fit-ctx must be at least 1, not {self.fit_ctx}", "--fit-ctx")
        if self.margin_bytes < 0 or any(m < 0 for m in self.device_margins):
            raise FitError("the memory margin must not be negative", flag("margin_bytes"))
        if self.gpu_runtime_bytes < RUNTIME_AUTO:
            raise FitError("the GPU overhead must not be negative", flag("gpu_runtime_bytes"))


@dataclass(frozen=True)
class Extras:
    """Settings the worker passes that the estimator does not model (a RunConfig holds them).

    llama-server's defaults, like Settings'; :mod:`llmtune.fit.options` writes their flags.
    """

    threads_batch: int = 0  # 0: as threads
    use_mlock: bool = False
    use_extra_bufts: bool = True  # CPU_REPACK; False is --no-repack
    op_offload: bool = True  # False is --no-op-offload
    # llama.cpp RPC hosts (HOST:PORT) the worker registers before loading; the
    # plan sees them as devices (hardware.machine), llama-server as --rpc.
    rpc_servers: tuple[str, ...] = ()
