"""Per-model quantities the plan needs, derived once from a ModelSpec.

``fit.plan`` runs on every keypress; everything here that depends only on the
model (bytes per layer, which layers slide, KV row widths, recurrent state
sizes) is computed once and cached on the spec.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from llmtune.fit.overflow import moved_bytes
from llmtune.fit.settings import CACHE_TYPES
from llmtune.model import ModelSpec, TensorInfo

# Expert tensors, as --cpu-moe matches them (common.h LLM_FFN_EXPS_REGEX).
_EXPS_RE = re.compile(r"\.ffn_(up|down|gate|gate_up)_(ch|)exps")

# Architectures llama.cpp runs as pure recurrent models (llm_arch_is_recurrent).
_RECURRENT = frozenset({"mamba", "mamba2", "rwkv6", "rwkv6qwen2", "rwkv7", "arwkv7"})
# Hybrids whose recurrent layers are those with no KV heads (create_memory).
_HYBRID_BY_KV_HEADS = frozenset(
    {"jamba", "granitehybrid", "lfm2", "lfm2moe", "plamo2", "kimi-linear"}
)
_HYBRID_BY_INTERVAL = frozenset({"qwen3next", "qwen35", "qwen35moe"})

# CPU_REPACK on x86 with AVX2 (ggml-cpu/repack.cpp ggml_repack_get_optimal_repack_type).
REPACK_TYPES_AVX2 = frozenset({"Q4_0", "Q4_K", "IQ4_NL", "MXFP4"})


def _padded(n: int, align: int = 32) -> int:
    return (n + align - 1) // align * align


@dataclass(frozen=True)
class LayerCost:
    """One repeating layer's weights and cache shape."""

    weights_bytes: int
    expert_bytes: int  # the part --cpu-moe moves to the CPU
    # Per fraction (fit.overflow.FRACTION_NAMES), what an overflow moves off the
    # layer's device, and the experts among it.
    overflow_bytes: tuple[int, ...]
    overflow_expert_bytes: tuple[int, ...]
    repack_bytes: int  # the part the CPU backend would repack (AVX2)
    k_width: int  # K elements per cell (n_embd_k_gqa), 0: no KV
    v_width: int  # V elements per cell, 0: no V (MLA) or no KV
    is_swa: bool
    recurrent_floats: int  # r + s state floats per sequence, 0: not recurrent


@dataclass(frozen=True)
class ModelCosts:
    layers: tuple[LayerCost, ...]
    input_bytes: int
    output_bytes: int  # output + output_norm, or the tied copy of token_embd
    output_is_tied_copy: bool
    output_own_bytes: int  # the output layer's own tensors, without a tied copy of token_embd
    other_bytes: int
    n_vocab: int
    n_embd: int
    n_head: int
    n_head_v_dim: int
    n_ff_max: int
    n_ff_exp: int
    n_expert: int
    n_expert_used: int
    n_swa: int
    is_mla: bool
    total_params: int
    active_params: int  # read per token (MoE: the experts used)
    bytes_per_param: float
    ssm_inner: int
    delta_net: bool
    output_repack_bytes: int  # output.weight repacked when it stays on the CPU
    cpu_mapped_span: int  # CPU_Mapped as llama.cpp logs it on a CPU-only run
    # Bytes per weight type (name) of the matrices a token multiplies (the
    # layers' and the output's): the CPU's speed depends on the mix.
    matmul_type_bytes: tuple[tuple[str, int], ...] = ()


def model_costs(spec: ModelSpec) -> ModelCosts:
    cached: ModelCosts | None = spec.__dict__.get("_fit_costs")
    if cached is None:
        cached = _compute_costs(spec)
        object.__setattr__(spec, "_fit_costs", cached)
    return cached


def _recurrent_layers(spec: ModelSpec) -> tuple[bool, ...]:
    n = spec.n_layer
    arch = spec.architecture
    if arch in _RECURRENT:
        return (True,) * n
    if arch in _HYBRID_BY_KV_HEADS or arch.startswith("nemotron_h"):
        return tuple(h == 0 for h in spec.n_head_kv_per_layer)
    if arch in _HYBRID_BY_INTERVAL:
        explicit = spec.arch_value("attention.recurrent_layers")
        if isinstance(explicit, list) and explicit:
            flags = [bool(v) for v in explicit][:n]
            return tuple(flags + [False] * (n - len(flags)))
        interval = spec.arch_int("full_attention_interval", 4) or 4
        return tuple((il + 1) % interval != 0 for il in range(n))
    if arch == "falcon-h1":
        return (True,) * n
    return (False,) * n


def _recurrent_floats(spec: ModelSpec) -> int:
    """n_embd_r + n_embd_s (llama_hparams), F32 elements per sequence per layer."""
    d_conv = spec.ssm_conv_kernel
    d_inner = spec.ssm_inner_size
    d_state = spec.ssm_state_size
    n_group = spec.arch_int("ssm.group_count")
    wkv = spec.arch_int("wkv.head_size")
    if wkv:
        shift = spec.arch_int("token_shift_count", 2) or 2
        return shift * spec.n_embd + spec.n_embd * wkv
    r = max(0, d_conv - 1) * (d_inner + 2 * n_group * d_state)
    s = d_state * d_inner
    return r + s


def _is_matmul_weight(t: TensorInfo) -> bool:
    return len(t.shape) >= 2 and t.name.endswith(".weight") and "norm" not in t.name


def _compute_costs(spec: ModelSpec) -> ModelCosts:
    n_layer = spec.n_layer
    swa = spec.swa_layers
    recurrent = _recurrent_layers(spec)
    rec_floats = _recurrent_floats(spec) if any(recurrent) else 0
    is_mla = (
        spec.arch_value("attention.key_length_mla") is not None
        and spec.arch_value("attention.value_length_mla") is not None
    )
    head_k = spec.n_embd_head_k
    head_v = spec.n_embd_head_v
    head_k_swa = spec.arch_int("attention.key_length_swa") or head_k
    head_v_swa = spec.arch_int("attention.value_length_swa") or head_v
    heads_kv = spec.n_head_kv_per_layer
    shared_kv = spec.arch_int("attention.shared_kv_layers")
    kv_from_start = (
        n_layer - shared_kv if shared_kv else (20 if spec.architecture == "gemma3n" else n_layer)
    )

    layers: list[LayerCost] = []
    groups = spec.layers
    for il in range(n_layer):
        tensors = groups[il].tensors if il < len(groups) else ()
        weights = sum(_padded(t.nbytes) for t in tensors)
        experts = sum(_padded(t.nbytes) for t in tensors if _EXPS_RE.search(t.name))
        sized = [(t.name, _padded(t.nbytes)) for t in tensors]
        overflow = moved_bytes(il, sized)
        overflow_experts = moved_bytes(il, [(n, b) for n, b in sized if _EXPS_RE.search(n)])
        repack = sum(
            _padded(t.nbytes)
            for t in tensors
            if t.type_name in REPACK_TYPES_AVX2 and _is_matmul_weight(t) and t.shape[1] % 8 == 0
        )
        has_kv = not recurrent[il] and il < kv_from_start and heads_kv[il] > 0
        if spec.architecture.startswith("nemotron_h") and spec.n_ff_per_layer[il] > 0:
            has_kv = False
        if has_kv:
            hk = head_k_swa if swa[il] else head_k
            hv = head_v_swa if swa[il] else head_v
            k_width = hk * heads_kv[il]
            v_width = 0 if is_mla else hv * heads_kv[il]
        else:
            k_width = v_width = 0
        layers.append(
            LayerCost(
                weights_bytes=weights,
                expert_bytes=experts,
                overflow_bytes=overflow,
                overflow_expert_bytes=overflow_experts,
                repack_bytes=repack,
                k_width=k_width,
                v_width=v_width,
                is_swa=swa[il] and has_kv,
                recurrent_floats=rec_floats if recurrent[il] else 0,
            )
        )

    inputs = sum(_padded(t.nbytes) for t in spec.input_tensors)
    outputs = list(spec.output_tensors)
    has_output_matrix = any(t.name == "output.weight" for t in outputs)
    tied = not has_output_matrix
    output_bytes = sum(_padded(t.nbytes) for t in outputs)
    if tied:
        # llama.cpp creates `output` as a TENSOR_DUPLICATED view of token_embd;
        # on another device than the input it is a second copy.
        output_bytes += sum(
            _padded(t.nbytes) for t in spec.input_tensors if t.name == "token_embd.weight"
        )
    other = sum(_padded(t.nbytes) for t in spec.other_tensors)

    def repackable(t: TensorInfo) -> bool:
        return t.type_name in REPACK_TYPES_AVX2 and _is_matmul_weight(t) and t.shape[1] % 8 == 0

    # CPU_Mapped is a span, not a sum (llama-model.cpp load_tensors): from the
    # first to the last byte of the tensors left in the plain CPU buffer, per
    # file; repacked tensors inside the span still count. token_embd is read
    # with GET_ROWS and never repacked.
    output_repack = sum(_padded(t.nbytes) for t in spec.output_tensors if repackable(t))
    spans: dict[int, tuple[int, int]] = {}
    for t in spec.tensors:
        if t.name.startswith("blk.") or t.name.startswith("output"):
            if repackable(t):
                continue
        first, last = spans.get(t.shard, (t.offset, t.offset + t.nbytes))
        spans[t.shard] = (min(first, t.offset), max(last, t.offset + t.nbytes))
    cpu_mapped_span = sum(last - first for first, last in spans.values())

    n_expert = spec.n_expert
    n_used = spec.n_expert_used
    expert_params = sum(t.n_elements for g in groups for t in g.tensors if _EXPS_RE.search(t.name))
    total_params = spec.parameters
    active = total_params - expert_params
    if n_expert:
        active += expert_params * n_used // n_expert
    embd_params = sum(t.n_elements for t in spec.input_tensors)
    by_type: dict[str, int] = {}
    matmuls = [t for g in groups for t in g.tensors] + list(spec.output_tensors)
    if tied:
        matmuls += [t for t in spec.input_tensors if t.name == "token_embd.weight"]
    for t in matmuls:
        if _is_matmul_weight(t):
            by_type[t.type_name] = by_type.get(t.type_name, 0) + t.nbytes
    return ModelCosts(
        layers=tuple(layers),
        input_bytes=inputs,
        output_bytes=output_bytes,
        output_is_tied_copy=tied,
        output_own_bytes=sum(_padded(t.nbytes) for t in outputs),
        other_bytes=other,
        n_vocab=spec.n_vocab,
        n_embd=spec.n_embd,
        n_head=spec.n_head,
        n_head_v_dim=head_v,
        n_ff_max=max(spec.n_ff_per_layer, default=0),
        n_ff_exp=spec.n_ff_exp,
        n_expert=n_expert,
        n_expert_used=n_used,
        n_swa=spec.swa_window,
        is_mla=is_mla,
        total_params=total_params,
        # token_embd is a row lookup, not read whole per token
        active_params=max(0, active - embd_params),
        bytes_per_param=(spec.tensor_bytes / total_params) if total_params else 2.0,
        ssm_inner=spec.ssm_inner_size,
        delta_net=spec.architecture in _HYBRID_BY_INTERVAL,
        output_repack_bytes=output_repack,
        cpu_mapped_span=cpu_mapped_span,
        matmul_type_bytes=tuple(sorted(by_type.items())),
    )


def row_bytes(cache_type: str, width: int) -> int:
    """ggml_row_size for a KV cache type."""
    block, size = CACHE_TYPES[cache_type]
    return width // block * size
