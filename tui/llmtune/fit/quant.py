"""Quantization what-if: which ggml type llama.cpp would give each tensor, and the file size.

``llama-quantize`` does not quantize every tensor to the file type's own type: it
keeps norms and routers as they are, raises some tensors (attention V, FFN down
in some layers, the output) to more bits, and falls back to other types when a
row length is not a multiple of the block size. This module follows the rules
of ``src/llama-quant.cpp`` in the llama.cpp vendored by llama-cpp-python
0.3.36, function by function, so a ModelSpec can be turned into the ModelSpec
of its quantized file without running the quantizer (``tests/engine/
test_quant_whatif.py`` checks it tensor by tensor against llama.cpp).
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Sequence
from dataclasses import dataclass

from llmtune.errors import FitError
from llmtune.model.ggml_types import GGML_TYPE_BY_NAME
from llmtune.model.gguf_file import (
    T_BOOL,
    T_FLOAT32,
    T_FLOAT64,
    T_INT8,
    T_INT16,
    T_INT32,
    T_INT64,
    T_UINT8,
    T_UINT16,
    T_UINT32,
    T_UINT64,
    TensorInfo,
    Value,
)
from llmtune.model.spec import ModelSpec

# llama-quant.cpp pads every tensor's data to GGUF_DEFAULT_ALIGNMENT, whatever the source used.
QUANT_ALIGNMENT = 32
# GGML_QNT_VERSION (ggml.h), written as general.quantization_version.
GGML_QNT_VERSION = 2


@dataclass(frozen=True)
class FileType:
    """One llama.cpp file type (``enum llama_ftype``) as llama-quantize offers it."""

    name: str
    ftype: int
    default_type: str  # llama_ftype_get_default_type
    needs_imatrix: bool = False  # llama.cpp refuses it without an importance matrix
    description: str = ""

    @property
    def quantized(self) -> bool:
        """False for F32/F16/BF16, which llama.cpp converts without per-tensor rules."""
        return _is_quantized(self.default_type)


def _ft(
    name: str, ftype: int, default: str, description: str, *, imatrix: bool = False
) -> FileType:
    return FileType(name, ftype, default, imatrix, description)


# From F32 down; the needs_imatrix marks follow tensor_requires_imatrix: these file types
# give ordinary tensors IQ1/IQ2/IQ3_XXS types, or Q2_K in a Q2_K_S file.
FILE_TYPES: dict[str, FileType] = {
    ft.name: ft
    for ft in (
        _ft("F32", 0, "F32", "32-bit floats"),
        _ft("BF16", 32, "BF16", "16-bit brain floats"),
        _ft("F16", 1, "F16", "16-bit floats"),
        _ft("Q8_0", 7, "Q8_0", "8.5 bpw"),
        _ft("Q6_K", 18, "Q6_K", "6.56 bpw k-quant"),
        _ft("Q5_K_M", 17, "Q5_K", "5-bit k-quant mix"),
        _ft("Q5_K_S", 16, "Q5_K", "5-bit k-quant, small"),
        _ft("Q5_1", 9, "Q5_1", "6 bpw"),
        _ft("Q5_0", 8, "Q5_0", "5.5 bpw"),
        _ft("Q4_K_M", 15, "Q4_K", "4-bit k-quant mix"),
        _ft("Q4_K_S", 14, "Q4_K", "4-bit k-quant, small"),
        _ft("Q4_1", 3, "Q4_1", "5 bpw"),
        _ft("Q4_0", 2, "Q4_0", "4.5 bpw"),
        _ft("IQ4_XS", 30, "IQ4_XS", "4.25 bpw non-linear"),
        _ft("IQ4_NL", 25, "IQ4_NL", "4.5 bpw non-linear"),
        _ft("Q3_K_L", 13, "Q3_K", "3-bit k-quant, large"),
        _ft("Q3_K_M", 12, "Q3_K", "3-bit k-quant mix"),
        _ft("Q3_K_S", 11, "Q3_K", "3-bit k-quant, small"),
        _ft("IQ3_M", 27, "IQ3_S", "3.66 bpw mix"),
        _ft("IQ3_S", 26, "IQ3_S", "3.44 bpw"),
        _ft("IQ3_XS", 22, "IQ3_S", "3.3 bpw", imatrix=True),
        _ft("IQ3_XXS", 23, "IQ3_XXS", "3.06 bpw", imatrix=True),
        _ft("Q2_K", 10, "Q2_K", "2-bit k-quant mix"),
        _ft("Q2_K_S", 21, "Q2_K", "2-bit k-quant, small", imatrix=True),
        _ft("IQ2_M", 29, "IQ2_S", "2.7 bpw", imatrix=True),
        _ft("IQ2_S", 28, "IQ2_XS", "2.5 bpw", imatrix=True),
        _ft("IQ2_XS", 20, "IQ2_XS", "2.31 bpw", imatrix=True),
        _ft("IQ2_XXS", 19, "IQ2_XXS", "2.06 bpw", imatrix=True),
        _ft("IQ1_M", 31, "IQ1_M", "1.75 bpw", imatrix=True),
        _ft("IQ1_S", 24, "IQ1_S", "1.56 bpw", imatrix=True),
        # Also offered by llama-quantize, less common.
        _ft("MXFP4_MOE", 38, "MXFP4", "MXFP4 experts, Q8_0 elsewhere"),
        _ft("TQ2_0", 37, "TQ2_0", "2.06 bpw ternary"),
        _ft("TQ1_0", 36, "TQ1_0", "1.69 bpw ternary"),
        _ft("Q1_0", 40, "Q1_0", "1.125 bpw"),
    )
}
# llama-quantize's aliases (QUANT_OPTIONS in tools/quantize/quantize.cpp).
FILE_TYPE_ALIASES = {"Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M"}
_BY_FTYPE = {ft.ftype: ft for ft in FILE_TYPES.values()}


def file_type(name: str) -> FileType:
    """A file type by llama-quantize's name (any case, aliases allowed) or number."""
    key = name.strip().upper().replace("-", "_")
    key = FILE_TYPE_ALIASES.get(key, key)
    if key in FILE_TYPES:
        return FILE_TYPES[key]
    if key.isdigit() and int(key) in _BY_FTYPE:
        return _BY_FTYPE[int(key)]
    choices = [*FILE_TYPES, *FILE_TYPE_ALIASES]
    close = difflib.get_close_matches(key, choices, n=4, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise FitError(
        f"unknown quantization type '{name}'{hint} (known: {', '.join(FILE_TYPES)})",
        "--quant",
    )


@dataclass(frozen=True)
class QuantOptions:
    """llama-quantize's options that change tensor types (llama_model_quantize_params)."""

    imatrix: bool | None = None  # None: an imatrix exactly when the file type needs one
    pure: bool = False  # --pure
    output_tensor_type: str | None = None  # --output-tensor-type
    token_embedding_type: str | None = None  # --token-embedding-type
    quantize_output_tensor: bool = True  # False is --leave-output-tensor
    tensor_types: tuple[tuple[str, str], ...] = ()  # --tensor-type REGEX=TYPE, first match wins


# ---- tensor names -----------------------------------------------------------------------

_OUTPUT = "output"
_TOKEN_EMBD = "token_embd"
_ATTN_Q = "attn_q"
_ATTN_K = "attn_k"
_ATTN_V = "attn_v"
_ATTN_QKV = "attn_qkv"
_ATTN_KV_B = "attn_kv_b"
_ATTN_OUTPUT = "attn_output"
_FFN_UP = "ffn_up"
_FFN_GATE = "ffn_gate"
_FFN_DOWN = "ffn_down"
_OTHER = "other"
_ATTN_V_LIKE = (_ATTN_V, _ATTN_QKV, _ATTN_KV_B)  # category_is_attn_v


def tensor_category(name: str) -> str:
    """The broad role llama.cpp gives a tensor by its name (tensor_get_category).

    The checks run in llama.cpp's order on substrings, so ``ffn_up_exps`` is an
    FFN up tensor and ``attn_qkv`` counts with the attention V tensors.
    """
    if name == "output.weight":
        return _OUTPUT
    if name in ("token_embd.weight", "per_layer_token_embd.weight"):
        return _TOKEN_EMBD
    for needle, category in (
        ("attn_qkv.weight", _ATTN_QKV),
        ("attn_kv_b.weight", _ATTN_KV_B),
        ("attn_v.weight", _ATTN_V),
        ("attn_k.weight", _ATTN_K),
        ("attn_q.weight", _ATTN_Q),
        ("attn_output.weight", _ATTN_OUTPUT),
        ("ffn_up", _FFN_UP),
        ("ffn_gate", _FFN_GATE),
        ("ffn_down", _FFN_DOWN),
    ):
        if needle in name:
            return category
    return _OTHER


# Substrings and whole names tensor_allows_quantization keeps at their source type.
_NEVER_SUBSTRINGS = (
    "_norm.weight",
    "ffn_gate_inp.weight",  # MoE routers
    "ffn_gate_tid2eid.weight",
    "altup",
    "laurel",
    "per_layer_model_proj",
    "ssm_conv1d",
    "shortconv.conv.weight",
    "indexer.k_proj.weight",
    "indexer.q_proj.weight",
    "time_mix_first.weight",
    "time_mix_w0.weight",
    "time_mix_w1.weight",
    "time_mix_w2.weight",
    "time_mix_v0.weight",
    "time_mix_v1.weight",
    "time_mix_v2.weight",
    "time_mix_a0.weight",
    "time_mix_a1.weight",
    "time_mix_a2.weight",
    "time_mix_g1.weight",
    "time_mix_g2.weight",
    "time_mix_decay_w1.weight",
    "time_mix_decay_w2.weight",
    "time_mix_lerp_fused.weight",
    "attn_rel_b.weight",
    ".position_embd",
    "sam.pos_embd",
    "sam.neck.",
    "sam.net_",
    ".rel_pos",
    ".patch_embd",
    ".patch_merger",
    "a.rvq.codebook",
    "mm.a.code_embd",
)
_NEVER_NAMES = ("position_embd.weight", "token_types.weight")
_GLM5_NEXT_NEVER = (
    "hc_",
    "indexer.attn_q_b",
    "indexer.attn_k",
    "indexer.proj",
    "indexer_compressor_gate",
    "indexer_compressor_ape",
    "ssm_f_a.weight",
    "ssm_f_b.weight",
    "ssm_g_a.weight",
    "ssm_g_b.weight",
    "ssm_beta.weight",
    "attn_kv_a_mqa.weight",
    "attn_k_b.weight",
    "attn_v_b.weight",
)


def _n_dims(shape: Sequence[int]) -> int:
    """ggml_n_dims: trailing dimensions of 1 do not count."""
    n = len(shape)
    while n > 1 and shape[n - 1] == 1:
        n -= 1
    return max(n, 1)


def allows_quantization(name: str, shape: Sequence[int], arch: str, options: QuantOptions) -> bool:
    """Whether llama.cpp may change this tensor's type (tensor_allows_quantization)."""
    if _n_dims(shape) < 2 or not name.endswith("weight"):
        return False
    if not options.quantize_output_tensor and name == "output.weight":
        return False
    if name in _NEVER_NAMES or any(s in name for s in _NEVER_SUBSTRINGS):
        return False
    return not (arch == "glm5-next" and any(s in name for s in _GLM5_NEXT_NEVER))


# ---- the rules ----------------------------------------------------------------------------

# tensor_type_fallback: the type a row that does not fill the target's blocks gets instead.
_FALLBACK = {
    **dict.fromkeys(
        ("IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ4_XS"), "IQ4_NL"
    ),
    **dict.fromkeys(("Q2_0", "Q2_K", "Q3_K", "TQ1_0", "TQ2_0"), "Q4_0"),
    "Q4_K": "Q5_0",
    "Q5_K": "Q5_1",
    "Q6_K": "Q8_0",
}
_IQ2_FTYPES = ("IQ2_XXS", "IQ2_XS", "IQ1_S", "IQ2_S", "IQ2_M", "IQ1_M")
_IQ2_OUTPUT_Q5K = ("IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ2_S", "IQ2_M", "IQ1_M")
_MOE8_ATTN_OUTPUT_Q5K = (
    "Q2_K", "IQ3_XS", "IQ3_XXS", "Q3_K_S", "Q3_K_M", "IQ4_NL",
    "Q4_K_S", "Q4_K_M", "IQ3_S", "IQ3_M", "IQ4_XS",
)  # fmt: skip
_NOT_QUANTIZED = ("F32", "F16", "BF16", "F64", "I8", "I16", "I32", "I64")
# sscanf("blk.%d.") as llama.cpp uses it: the trailing dot is not checked.
_LAYER_NAME = re.compile(r"blk\.\s*([+-]?\d+)")


def _is_quantized(type_name: str) -> bool:
    return type_name not in _NOT_QUANTIZED


def _block(type_name: str) -> int:
    t = GGML_TYPE_BY_NAME.get(type_name)
    if t is None:
        raise FitError(f"llmtune does not know the size of ggml type {type_name}")
    return t.block_size


def _use_more_bits(i_layer: int, n_layer: int) -> bool:
    """llama-quant.cpp's use_more_bits: the first and last eighth, and every third layer between."""
    return (
        i_layer < n_layer // 8 or i_layer >= 7 * n_layer // 8 or (i_layer - n_layer // 8) % 3 == 2
    )


def _weights_map_key(name: str) -> tuple[int, str]:
    """llama_model_loader's weight_name_comparer: layer number (-1 outside blocks), then name."""
    m = _LAYER_NAME.match(name)
    return (int(m.group(1)) if m else -1, name)


@dataclass
class _State:
    """quantize_state_impl: model facts and the running counters."""

    arch: str
    ftype: str
    has_imatrix: bool
    options: QuantOptions
    n_expert: int
    n_gqa: int
    is_70b: bool
    n_layer_all: int
    n_attention_wv: int
    has_tied_embeddings: bool
    i_attention_wv: int = 0
    i_ffn_down: int = 0
    i_ffn_gate: int = 0
    i_ffn_up: int = 0

    def layer_of(self, counter: int, name: str) -> int:
        """The layer an FFN tensor belongs to (layer_info): the counter, or the name for MoE."""
        if max(1, self.n_expert) == 1:
            return counter
        m = _LAYER_NAME.match(name)
        if m is None:
            raise FitError(f"llama.cpp cannot tell the layer of tensor {name}", "quantize")
        layer = int(m.group(1))
        if not 0 <= layer < self.n_layer_all:
            raise FitError(
                f"llama.cpp refuses tensor {name}: layer {layer} is not in [0, {self.n_layer_all})",
                "quantize",
            )
        return layer


def _is_70b(spec: ModelSpec, n_expert: int) -> bool:
    """Whether llama.cpp's load_arch_hparams calls the model LLM_TYPE_70B (src/models/*.cpp)."""
    n_layer = spec.n_layer - spec.arch_int("nextn_predict_layers")
    arch = spec.architecture
    if arch == "llama":
        heads = spec.n_head_per_layer
        kv_heads = spec.n_head_kv_per_layer
        differ = bool(heads) and heads[0] != kv_heads[0]
        return n_expert != 8 and n_layer == 80 and differ
    if arch in ("qwen2", "deci", "olmo"):
        return n_layer == 80
    return arch == "jais2" and n_layer == 68


def _new_state(
    spec: ModelSpec, ft: FileType, options: QuantOptions, names: Sequence[str]
) -> _State:
    n_expert = spec.n_expert
    heads = spec.n_head_per_layer
    kv_heads = spec.n_head_kv_per_layer
    # hparams.n_gqa(0): layer 0's query heads per KV head, 0 without KV heads.
    n_gqa = heads[0] // kv_heads[0] if heads and kv_heads and kv_heads[0] else 0
    categories = [tensor_category(n) for n in names]
    has_imatrix = ft.needs_imatrix if options.imatrix is None else options.imatrix
    return _State(
        arch=spec.architecture,
        ftype=ft.name,
        has_imatrix=has_imatrix,
        options=options,
        n_expert=n_expert,
        n_gqa=n_gqa,
        is_70b=_is_70b(spec, n_expert),
        n_layer_all=spec.n_layer,
        n_attention_wv=sum(c in _ATTN_V_LIKE for c in categories),
        has_tied_embeddings=_OUTPUT not in categories,
    )


def _impl(qs: _State, new_type: str, name: str, ne0: int, ne2: int, category: str) -> str:
    """llama_tensor_get_type_impl: the mixture rules of each file type."""
    ftype = qs.ftype
    arch = qs.arch
    if arch == "glm5-next" and any(s in name for s in ("attn_q_a", "attn_q_b", "nextn.eh_proj")):
        if new_type not in ("F32", "BF16", "F16"):
            return "Q8_0"

    if category == _OUTPUT or (qs.has_tied_embeddings and category == _TOKEN_EMBD):
        if qs.options.output_tensor_type is not None:
            return qs.options.output_tensor_type
        if ftype == "MXFP4_MOE":
            return "Q8_0"
        if arch == "falcon" or ne0 % _block(new_type) != 0:
            return "Q8_0"
        if ftype in _IQ2_OUTPUT_Q5K:
            return "Q5_K"
        return new_type if new_type == "Q8_0" else "Q6_K"

    if ftype == "MXFP4_MOE":
        # Experts (3-D tensors) get MXFP4; BailingMoE3's other 3-D tensors (MLA) do not.
        expert_roles = (_FFN_UP, _FFN_GATE, _FFN_DOWN)
        if ne2 > 1 and (arch != "bailingmoe3" or category in expert_roles):
            return "MXFP4"
        return "Q8_0"

    if category == _TOKEN_EMBD:
        if qs.options.token_embedding_type is not None:
            return qs.options.token_embedding_type
        if ftype in ("IQ2_XXS", "IQ2_XS", "IQ1_S", "IQ1_M"):
            return "Q2_K"
        if ftype in ("IQ2_S", "IQ2_M", "IQ3_XXS"):
            return "IQ3_S"
        if ftype in ("TQ1_0", "TQ2_0", "Q2_0"):
            return "Q4_K"
        return new_type

    if ftype in _IQ2_FTYPES:
        wide = "IQ3_S" if ftype in ("IQ2_S", "IQ2_M") else "Q2_K"
        if category in _ATTN_V_LIKE:
            new_type = "Q4_K" if qs.n_gqa >= 4 or qs.n_expert >= 4 else wide
            qs.i_attention_wv += 1
        elif qs.n_expert == 8 and category == _ATTN_K:
            new_type = "Q4_K"
        elif category == _FFN_DOWN:
            # By the counter, not the layer, even for MoE models.
            if qs.i_ffn_down < qs.n_layer_all // 8:
                new_type = wide
            qs.i_ffn_down += 1
        elif category == _ATTN_OUTPUT:
            if qs.n_expert == 8:
                new_type = "Q5_K"
            elif ftype in ("IQ1_S", "IQ1_M"):
                new_type = "IQ2_XXS"
            elif ftype in ("IQ2_S", "IQ2_M"):
                new_type = "IQ3_S"
        return new_type

    if category in _ATTN_V_LIKE:
        new_type = _attn_v_type(qs, new_type)
        qs.i_attention_wv += 1
        return new_type

    if category == _ATTN_K:
        if qs.n_expert == 8:
            return "Q8_0"
        if ftype == "IQ3_XS":
            return "IQ3_XXS"
        if ftype == "IQ3_XXS":
            return "IQ2_S"
        return new_type

    if category == _ATTN_Q:
        if ftype == "IQ3_XS":
            return "IQ3_XXS"
        if ftype == "IQ3_XXS":
            return "IQ2_S"
        return new_type

    if category == _FFN_DOWN:
        i_layer = qs.layer_of(qs.i_ffn_down, name)
        new_type = _ffn_down_type(qs, new_type, i_layer, qs.n_layer_all)
        qs.i_ffn_down += 1
        return new_type

    if category == _ATTN_OUTPUT:
        if arch != "falcon":
            if qs.n_expert == 8:
                if ftype in _MOE8_ATTN_OUTPUT_Q5K:
                    return "Q5_K"
                return new_type
            return {
                "Q2_K": "Q3_K",
                "IQ3_XXS": "IQ3_S",
                "Q3_K_M": "Q4_K",
                "Q3_K_L": "Q5_K",
                "IQ3_M": "Q4_K",
            }.get(ftype, new_type)
        return "Q4_K" if ftype == "Q3_K_L" else new_type

    # llama.cpp's own ATTENTION_QKV branch is never reached: attn_qkv is attn_v-like above.

    if category in (_FFN_GATE, _FFN_UP):
        counter = qs.i_ffn_gate if category == _FFN_GATE else qs.i_ffn_up
        i_layer = qs.layer_of(counter, name)
        n_layer = qs.n_layer_all
        if ftype == "IQ3_XS" and n_layer // 8 <= i_layer < 7 * n_layer // 8:
            new_type = "IQ3_XXS"
        if category == _FFN_GATE:
            qs.i_ffn_gate += 1
        else:
            qs.i_ffn_up += 1
    return new_type


def _attn_v_type(qs: _State, new_type: str) -> str:
    """The attention V (and fused QKV, MLA kv_b) branch of llama_tensor_get_type_impl."""
    ftype = qs.ftype
    gqa4 = qs.n_gqa >= 4
    if ftype == "Q2_K":
        new_type = "Q4_K" if gqa4 else "Q3_K"
    elif ftype == "Q2_K_S" and gqa4:
        new_type = "Q4_K"
    elif ftype == "IQ3_XXS":
        new_type = "Q4_K" if gqa4 else ("IQ3_XXS" if qs.has_imatrix else "IQ3_S")
    elif ftype in ("IQ3_XS", "IQ3_S") and gqa4:
        new_type = "Q4_K"
    elif ftype == "IQ3_M":
        new_type = "Q4_K"
    elif ftype == "Q3_K_M":
        new_type = "Q5_K" if qs.i_attention_wv < 2 else "Q4_K"
    elif ftype == "Q3_K_L":
        new_type = "Q5_K"
    elif ftype in ("IQ4_NL", "IQ4_XS") and gqa4:
        new_type = "Q5_K"
    elif ftype in ("Q4_K_M", "Q5_K_M") and _use_more_bits(qs.i_attention_wv, qs.n_attention_wv):
        new_type = "Q6_K"
    elif ftype == "Q4_K_S" and qs.i_attention_wv < 4:
        new_type = "Q5_K"
    # 70B models share attn_v across 8 heads, so more bits cost little.
    if qs.is_70b and new_type in ("Q3_K", "Q4_K"):
        new_type = "Q5_K"
    if qs.n_expert == 8:
        new_type = "Q8_0"
    return new_type


def _ffn_down_type(qs: _State, new_type: str, i: int, n: int) -> str:
    """The FFN down branch of llama_tensor_get_type_impl (layer i of n)."""
    ftype = qs.ftype
    falcon = qs.arch == "falcon"
    if ftype == "Q2_K":
        return "Q3_K"
    if ftype == "Q2_K_S":
        return "Q4_K" if i < n // 8 else new_type
    if ftype == "IQ3_XXS" and not qs.has_imatrix:
        return "Q4_K" if i < n // 8 else "Q3_K"
    if ftype == "Q3_K_M":
        if i < n // 16:
            return "Q5_K"
        return "Q4_K" if not falcon or _use_more_bits(i, n) else "Q3_K"
    if ftype == "IQ3_M" and (i < n // 8 or (qs.n_expert == 8 and _use_more_bits(i, n))):
        return "Q4_K"
    if ftype == "Q3_K_L":
        return "Q4_K" if falcon else "Q5_K"
    if ftype == "Q4_K_M":
        if falcon:
            if i < n // 16:
                return "Q6_K"
            return "Q5_K" if _use_more_bits(i, n) else "Q4_K"
        return "Q6_K" if _use_more_bits(i, n) else new_type
    if i < n // 8 and ftype in ("IQ4_NL", "IQ4_XS") and not qs.has_imatrix:
        return "Q5_K"
    if ftype == "Q5_K_M" and _use_more_bits(i, n):
        return "Q6_K"
    if ftype == "Q4_K_S" and not falcon and i < n // 8:
        return "Q5_K"
    if ftype in ("Q4_0", "Q5_0") and qs.has_imatrix and i < n // 8:
        # Only with an imatrix, so a run without one keeps giving the old result.
        return "Q4_1" if ftype == "Q4_0" else "Q5_1"
    return new_type


def _fallback(name: str, ne0: int, target: str) -> str:
    """tensor_type_fallback: a type whose blocks fit the row, else F16."""
    block = _block(target)
    if ne0 % block == 0:
        return target
    if target in _FALLBACK:
        chosen = _FALLBACK[target]
    elif block <= 32:
        chosen = target
    else:
        raise FitError(
            f"llama.cpp has no fallback for {target} when a row of {ne0} does not fill its "
            f"blocks of {block} (tensor {name})",
            "quantize",
        )
    return chosen if ne0 % _block(chosen) == 0 else "F16"


def _tensor_type(qs: _State, t: TensorInfo, default_type: str) -> str:
    """llama_tensor_get_type: the outer wrapper, for a tensor that allows quantization."""
    options = qs.options
    category = tensor_category(t.name)
    if options.token_embedding_type is not None and category == _TOKEN_EMBD:
        # per_layer_token_embd follows it unless a --tensor-type pattern names it.
        named = t.name == "per_layer_token_embd.weight" and any(
            re.search(pattern, t.name) for pattern, _ in options.tensor_types
        )
        if not named:
            return options.token_embedding_type
    if options.output_tensor_type is not None and category == _OUTPUT:
        return options.output_tensor_type
    new_type = default_type
    if not _is_quantized(default_type):
        return new_type
    manual = False
    for pattern, override in options.tensor_types:
        if re.search(pattern, t.name):
            new_type = override
            manual = True
            break
    ne0 = t.shape[0] if t.shape else 1
    ne2 = t.shape[2] if len(t.shape) > 2 else 1
    if not manual and not options.pure:
        new_type = _impl(qs, new_type, t.name, ne0, ne2, category)
    return _fallback(t.name, ne0, new_type)


def _type_name(type_name: str, what: str) -> str:
    """A ggml type name as the gguf package spells it, or a FitError naming close ones."""
    key = type_name.strip().upper()
    if key not in GGML_TYPE_BY_NAME:
        close = difflib.get_close_matches(key, list(GGML_TYPE_BY_NAME), n=4, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise FitError(f"unknown ggml type '{type_name}'{hint}", what)
    return key


def _pattern(pattern: str) -> str:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise FitError(f"invalid tensor name pattern '{pattern}': {exc}", "--tensor-type") from None
    return pattern


def _normalised(options: QuantOptions) -> QuantOptions:
    output_type = options.output_tensor_type
    embd_type = options.token_embedding_type
    return dataclasses.replace(
        options,
        output_tensor_type=None
        if output_type is None
        else _type_name(output_type, "--output-tensor-type"),
        token_embedding_type=None
        if embd_type is None
        else _type_name(embd_type, "--token-embedding-type"),
        tensor_types=tuple(
            (_pattern(pattern), _type_name(t, "--tensor-type"))
            for pattern, t in options.tensor_types
        ),
    )


def _llama_order(tensors: Sequence[TensorInfo]) -> list[TensorInfo]:
    """Tensors in the order llama-quantize visits and writes them (its weights_map)."""
    return sorted(tensors, key=lambda t: _weights_map_key(t.name))


def predict_tensor_types(
    spec: ModelSpec, ftype_name: str, options: QuantOptions | None = None
) -> dict[str, str]:
    """The ggml type llama-quantize would give each tensor: {tensor name: type name}.

    Follows ``llama_model_quantize_impl``: tensors in its order, counters of attention
    V and FFN tensors, the mixture rules, then the shape fallback. Tensors llama.cpp
    never quantizes (norms, biases, routers, ...) keep the source's type; others are
    requantized from whatever type they have.
    """
    ft = file_type(ftype_name)
    opts = _normalised(options or QuantOptions())
    ordered = _llama_order(spec.tensors)
    qs = _new_state(spec, ft, opts, [t.name for t in ordered])
    result: dict[str, str] = {}
    for t in ordered:
        if allows_quantization(t.name, t.shape, qs.arch, opts):
            result[t.name] = _tensor_type(qs, t, ft.default_type)
        else:
            result[t.name] = t.type_name
    return result


# tensor_requires_imatrix: llama.cpp will not write these types without an importance matrix.
_IMATRIX_TYPES = ("IQ3_XXS", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ1_M", "IQ1_S")


def tensors_needing_imatrix(
    spec: ModelSpec, ftype_name: str, options: QuantOptions | None = None
) -> list[str]:
    """The tensors for which llama.cpp refuses to quantize without an imatrix
    (tensor_requires_imatrix); empty when the file type can be made without one."""
    ft = file_type(ftype_name)
    opts = options or QuantOptions()
    types = predict_tensor_types(spec, ft.name, opts)
    needing = []
    for t in _llama_order(spec.tensors):
        if t.name in ("token_embd.weight", "per_layer_token_embd.weight", "output.weight"):
            continue
        if not allows_quantization(t.name, t.shape, spec.architecture, opts):
            continue
        target = types[t.name]
        if target in _IMATRIX_TYPES or (target == "Q2_K" and ft.name == "Q2_K_S"):
            needing.append(t.name)
    return needing


def requantized_tensors(
    spec: ModelSpec, ftype_name: str, options: QuantOptions | None = None
) -> list[str]:
    """Tensors already quantized that would get another type: llama.cpp refuses these
    without ``allow_requantize`` ("requantizing from type %s is disabled")."""
    types = predict_tensor_types(spec, ftype_name, options)
    return [
        t.name
        for t in _llama_order(spec.tensors)
        if _is_quantized(t.type_name) and types[t.name] != t.type_name
    ]


def _pad(n: int, alignment: int = QUANT_ALIGNMENT) -> int:
    return (n + alignment - 1) // alignment * alignment


_SCALAR_WIDTHS = {
    T_UINT8: 1, T_INT8: 1, T_BOOL: 1, T_UINT16: 2, T_INT16: 2, T_UINT32: 4, T_INT32: 4,
    T_FLOAT32: 4, T_UINT64: 8, T_INT64: 8, T_FLOAT64: 8,
}  # fmt: skip


def _scalar_kv_bytes(key: str, type_id: int) -> int:
    """Bytes a scalar key/value pair takes in a GGUF header."""
    return 8 + len(key.encode()) + 4 + _SCALAR_WIDTHS.get(type_id, 4)


_SPLIT_KEYS = ("split.no", "split.count", "split.tensors.count")


def _quantized_header_bytes(spec: ModelSpec) -> int:
    """The header llama-quantize writes: every key of the first shard, its own two keys
    added or replaced, the split keys gone, and all tensor entries in one file."""
    header = spec.header_bytes
    shards = len(spec.shard_paths)
    split_kv = sum(
        _scalar_kv_bytes(k, spec.metadata_types[k]) for k in _SPLIT_KEYS if k in spec.metadata
    )
    # Shards after the first (gguf-split) hold the fixed 24-byte preamble and the split keys.
    header -= (shards - 1) * (24 + split_kv) + split_kv
    for key in ("general.quantization_version", "general.file_type"):
        new = _scalar_kv_bytes(key, T_UINT32)
        old = _scalar_kv_bytes(key, spec.metadata_types[key]) if key in spec.metadata else 0
        header += new - old
    return header


def requantize(spec: ModelSpec, ftype_name: str, options: QuantOptions | None = None) -> ModelSpec:
    """The ModelSpec of the file llama-quantize would write from ``spec``.

    Tensors get their predicted types and sizes and are laid out in llama.cpp's
    order with 32-byte alignment; the metadata says the new file type.
    """
    ft = file_type(ftype_name)
    types = predict_tensor_types(spec, ft.name, options)
    header_bytes = _quantized_header_bytes(spec)
    offset = _pad(header_bytes)
    tensors: list[TensorInfo] = []
    for t in _llama_order(spec.tensors):
        target = types[t.name]
        if target == t.type_name:
            # Copied as it is (possibly in a type llmtune does not know).
            ggml_type, nbytes = t.ggml_type, t.nbytes
        else:
            ggml = GGML_TYPE_BY_NAME[target]
            # llama.cpp sizes it as rows x ggml_row_size(type, ne0).
            ne0 = t.shape[0] if t.shape else 1
            ggml_type, nbytes = ggml.id, t.n_elements // max(ne0, 1) * ggml.row_bytes(ne0)
        tensors.append(
            dataclasses.replace(t, ggml_type=ggml_type, offset=offset, nbytes=nbytes, shard=0)
        )
        offset += _pad(nbytes)
    metadata: dict[str, Value] = {k: v for k, v in spec.metadata.items() if k not in _SPLIT_KEYS}
    metadata_types = {k: v for k, v in spec.metadata_types.items() if k not in _SPLIT_KEYS}
    metadata["general.quantization_version"] = GGML_QNT_VERSION
    metadata["general.file_type"] = ft.ftype
    metadata_types["general.quantization_version"] = T_UINT32
    metadata_types["general.file_type"] = T_UINT32
    return dataclasses.replace(
        spec,
        shard_paths=(spec.path,),
        file_bytes=offset,
        metadata=metadata,
        metadata_types=metadata_types,
        tensors=tuple(tensors),
        header_bytes=header_bytes,
        warnings=(),
    )
