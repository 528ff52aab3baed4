"""fit.graph: the compute graph's quantities a plan needs, per context and per layer.

What llama.cpp's compute graph keeps alive and moves, as :mod:`llmtune.fit.plan`
evaluates it for every offload count: context sizes after llama.cpp's padding,
per-layer prefix sums (weights, KV cache, what a token reads), the peaks of the
compute buffers (llama-context.cpp ``sched_reserve`` measures them by reserving
a graph; docs/llama-cpp-memory.md has the rules and where each was measured),
the inputs each device's split receives, and what an RPC device costs on the
network.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import accumulate

from llmtune.fit.costs import ModelCosts, row_bytes
from llmtune.fit.overflow import CPU_BUFT, FRACTION_NAMES
from llmtune.fit.settings import QUANTIZED_CACHE_TYPES, Settings
from llmtune.hardware.device import Device

CTX_PAD = 256  # llama_context: n_ctx = GGML_PAD(n_ctx, 256)


def pad(n: int, to: int) -> int:
    return (n + to - 1) // to * to


@dataclass(frozen=True)
class GraphContext:
    """Per-call quantities: context sizes and per-layer prefix sums."""

    n_ctx: int
    n_ctx_seq: int
    n_stream: int
    kv_cells: int
    swa_cells: int
    n_ubatch: int
    flash_attn: bool
    weights_prefix: tuple[int, ...]  # sum of weights of layers [0, i)
    pinned_prefix: tuple[int, ...]  # bytes kept on the CPU (--n-cpu-moe, layer overflow)
    moved_prefix: tuple[int, ...]  # bytes a layer overflow sends to another device
    moved: tuple[tuple[int, int, str], ...]  # those: (layer, bytes, buffer type)
    kv_prefix: tuple[int, ...]
    repack_prefix: tuple[int, ...]
    active_prefix: tuple[int, ...]  # bytes read per generated token
    out_peak: int  # while the output layer runs: logits + residual
    mask_bytes: int  # every mask (one per distinct cache size)
    ffn_peak: int
    ffn_residual: int  # residual-sized tensors beside the FFN on an offload device
    # MoE only (0 otherwise; :func:`moe_peaks` has the rule): what an offload
    # device holds below any op's tensors, its peak while its own experts run
    # (masks aside), and the host's while it runs the experts of offloaded layers
    # (--n-cpu-moe, -ot ...=CPU).
    moe_device_base: int
    moe_device_peak: int
    moe_host_peak: int
    base_peak: int  # the residual stream's tensors alive beside any op
    mask_by_cells: tuple[tuple[int, int, int], ...]  # (cells, mask bytes, attention peak)
    # Per cache size: what CUDA's flash attention adds to the attention peak for
    # F16 copies of a non-F16 cache (fit.backends); 0 when the cache is F16.
    fa_scratch_by_cells: tuple[tuple[int, int], ...]
    full_prefix: tuple[int, ...]  # attention layers on the full cache in [0, i)
    swa_prefix: tuple[int, ...]  # attention layers on the sliding-window cache in [0, i)
    kv_read_fraction: float  # share of the cache read per token at the bench depth
    hidden_bytes: int  # one ubatch of the residual stream (n_embd x T floats)
    index_bytes: int  # the small integer inputs of the whole graph (positions, cache slots)
    slot_bytes: int  # one cache's slot indices (K and V) for a ubatch
    token_bytes: int  # token ids, or output ids: T int32


# Generation speed is predicted at this depth of context (llama-bench reads a
# near-empty cache; at depth d each token reads d cells of every layer).
SPEED_DEPTH_TOKENS = 512


def graph_context(costs: ModelCosts, s: Settings, n_ctx_train: int) -> GraphContext:
    n_layer = len(costs.layers)
    n_seq = max(1, s.n_parallel)
    n_ctx = s.n_ctx or n_ctx_train or 4096
    n_batch = min(n_ctx, s.n_batch)
    n_ubatch = min(n_batch, s.n_ubatch)
    n_ctx = pad(n_ctx, CTX_PAD)
    if s.kv_unified or n_seq == 1:
        n_ctx_seq = n_ctx
        n_stream = 1
    else:
        n_ctx_seq = pad(n_ctx // n_seq, CTX_PAD)
        n_ctx = n_ctx_seq * n_seq
        n_stream = n_seq
    kv_cells = n_ctx_seq * n_stream
    if s.swa_full or not costs.n_swa:
        swa_cells_per_stream = n_ctx_seq
    else:
        window = costs.n_swa * (n_seq if s.kv_unified else 1) + n_ubatch
        swa_cells_per_stream = pad(min(n_ctx_seq, window), CTX_PAD)
    swa_cells = swa_cells_per_stream * n_stream

    flash_attn = s.flash_attn != "off" or s.cache_type_v in QUANTIZED_CACHE_TYPES
    # Without flash attention V is stored transposed and padded to the widest layer.
    v_width_max = max((lc.v_width for lc in costs.layers), default=0)

    weights: list[int] = []
    pinned: list[int] = []
    moved_off: list[int] = []
    moved: list[tuple[int, int, str]] = []
    overflow = {il: (FRACTION_NAMES.index(f), buft) for il, f, buft in reversed(s.layer_overflow)}
    kv: list[int] = []
    repack: list[int] = []
    active: list[int] = []
    cpu_moe_layers = n_layer if s.n_cpu_moe < 0 else min(s.n_cpu_moe, n_layer)
    for il, lc in enumerate(costs.layers):
        weights.append(lc.weights_bytes)
        # llama-model-loader.cpp: a tensor goes where the first override matching it
        # says; the fit's overflow comes before --n-cpu-moe's (engine.config).
        to_cpu = lc.expert_bytes if il < cpu_moe_layers else 0
        off = 0
        if il in overflow:
            fraction, buft = overflow[il]
            if to_cpu:
                to_cpu -= lc.overflow_expert_bytes[fraction]
            if buft == CPU_BUFT:
                to_cpu += lc.overflow_bytes[fraction]
            else:
                off = lc.overflow_bytes[fraction]
                moved.append((il, off, buft))
        pinned.append(to_cpu)
        moved_off.append(off)
        cells = swa_cells if lc.is_swa else kv_cells
        v_width = lc.v_width if flash_attn or lc.v_width == 0 else v_width_max
        layer_kv = (
            row_bytes(s.cache_type_k, lc.k_width) * cells
            + row_bytes(s.cache_type_v, v_width) * cells
        )
        layer_kv += lc.recurrent_floats * 4 * n_seq
        kv.append(layer_kv)
        repack.append(lc.repack_bytes)
        dense = lc.weights_bytes - lc.expert_bytes
        if costs.n_expert:
            active.append(dense + lc.expert_bytes * costs.n_expert_used // costs.n_expert)
        else:
            active.append(lc.weights_bytes)

    t = n_ubatch
    heads = costs.n_head
    attn_layers = [lc for lc in costs.layers if lc.k_width]
    mask_bytes = 0
    by_cells: dict[int, tuple[int, int]] = {}
    scratch_by_cells: dict[int, int] = {}
    if attn_layers:
        # The KQ mask is a graph input, alive through the whole graph: one per
        # distinct cache size (full and sliding window), F16 with flash attention.
        mask_elem = 2 if flash_attn else 4
        kqv = costs.n_head_v_dim * heads * t * 4
        for cells in sorted({swa_cells if lc.is_swa else kv_cells for lc in attn_layers}):
            n_kv = cells // max(1, n_stream)
            if flash_attn:
                # ggml_flash_attn_ext: no KQ matrix (llama-graph.cpp build_attn_mha).
                peak = kqv + 2 * costs.n_embd * t * 4
            else:
                # KQ in F32, soft_max in place, then KQV.
                peak = n_kv * t * heads * 4 * n_stream + kqv
            by_cells[cells] = (n_kv * t * mask_elem, peak)
            scratch_by_cells[cells] = _fa_f16_scratch(costs, s, cells, t) if flash_attn else 0
        mask_bytes = sum(mask for mask, _ in by_cells.values())
    full_count = [0]
    swa_count = [0]
    for lc in costs.layers:
        full_count.append(full_count[-1] + (1 if lc.k_width and not lc.is_swa else 0))
        swa_count.append(swa_count[-1] + (1 if lc.k_width and lc.is_swa else 0))
    if costs.n_expert:
        ffn_peak = (
            3 * costs.n_ff_exp + costs.n_embd
        ) * costs.n_expert_used * t * 4 + 2 * costs.n_expert * t * 4
    else:
        ffn_peak = 3 * costs.n_ff_max * t * 4
    if any(lc.recurrent_floats for lc in costs.layers):
        # SSM scan and conv intermediates: about five d_inner x T tensors at once
        # (measured against sched_reserve on mamba, mamba2 and granitehybrid).
        ffn_peak = max(ffn_peak, 5 * costs.ssm_inner * t * 4)
    out_peak = costs.n_vocab * t * 4
    # Graph inputs such as the mask are freed after their last use, so the
    # peak is either the layers' (mask live) or the output's (logits live).
    # Gated delta-net models (models/delta-net-base.cpp) keep twice as many
    # n_embd x T tensors alive beside the residual stream (measured on qwen3next).
    residual_tensors = 6 if costs.delta_net else 3
    base_peak = residual_tensors * costs.n_embd * t * 4

    def prefix(values: list[int]) -> tuple[int, ...]:
        return (0, *accumulate(values))

    # Graph inputs a device's split receives (llama-graph.cpp build_inp_*):
    # positions (I32), and per cache the K and V slot indices (I64; V's index
    # every element of a transposed V row, llama-kv-cache.cpp build_input_v_idxs).
    caches = {lc.is_swa for lc in attn_layers}
    v_idx_per_token = 1 if flash_attn else max(1, v_width_max)
    slot_bytes = t * 8 * (1 + v_idx_per_token)
    index_bytes = t * 4 + len(caches) * slot_bytes

    moe_device_base, moe_device_peak, moe_host_peak = (
        moe_peaks(costs, t, mask_bytes, index_bytes) if costs.n_expert else (0, 0, 0)
    )

    return GraphContext(
        n_ctx=n_ctx,
        n_ctx_seq=n_ctx_seq,
        n_stream=n_stream,
        kv_cells=kv_cells,
        swa_cells=swa_cells,
        n_ubatch=n_ubatch,
        flash_attn=flash_attn,
        weights_prefix=prefix(weights),
        pinned_prefix=prefix(pinned),
        moved_prefix=prefix(moved_off),
        moved=tuple(moved),
        kv_prefix=prefix(kv),
        repack_prefix=prefix(repack),
        active_prefix=prefix(active),
        out_peak=out_peak + base_peak,
        mask_bytes=mask_bytes,
        ffn_peak=ffn_peak,
        # A dense FFN runs beside the whole residual stream on a GPU too (measured
        # on a 70B shape); a MoE FFN there follows moe_device_peak.
        ffn_residual=base_peak,
        moe_device_base=moe_device_base,
        moe_device_peak=moe_device_peak,
        moe_host_peak=moe_host_peak,
        base_peak=base_peak,
        mask_by_cells=tuple((cells, m, a) for cells, (m, a) in sorted(by_cells.items())),
        fa_scratch_by_cells=tuple(sorted(scratch_by_cells.items())),
        full_prefix=tuple(full_count),
        swa_prefix=tuple(swa_count),
        kv_read_fraction=min(1.0, SPEED_DEPTH_TOKENS / max(1, kv_cells)),
        hidden_bytes=costs.n_embd * t * 4,
        index_bytes=index_bytes,
        slot_bytes=slot_bytes,
        token_bytes=t * 4,
    )


def _expert_stack(pre: int, ffn: int, down: int, swiglu_hole: int) -> int:
    """The top of ggml-alloc.c's best-fit layout of a MoE FFN from where its first
    expert tensor goes: ``pre`` bytes still held there, gate and up (``ffn`` each),
    the SwiGLU (``ffn``; in a freed hole of ``swiglu_hole`` bytes below when it
    fits), then the down product, which takes the freed gate and up when they
    reach the end of the buffer or hold it (``ggml_dyn_tallocr_alloc``)."""
    if ffn <= swiglu_hole:
        return pre + max(2 * ffn, down)
    return pre + 3 * ffn + (down if down > pre + 2 * ffn else 0)


def moe_peaks(
    costs: ModelCosts, n_tokens: int, mask_bytes: int, index_bytes: int
) -> tuple[int, int, int]:
    """The compute peaks of a MoE FFN (llama-graph.cpp ``build_moe_ffn``): gate,
    up and SwiGLU ``[n_ff_exp, n_expert_used, T]`` and the down product
    ``[n_embd, n_expert_used, T]``, all F32, placed by ggml-alloc.c's best fit.

    On an offload device (masks aside) the base: the graph's index inputs, two
    residual-sized tensors (the layer's input slot and ``ffn_inp``) and one
    attention-output-sized one (``ffn_norm`` sits where Q was); the attention
    and the experts' stack run above it, the router's small tensors in holes.

    On the host, when it runs the experts of an offloaded layer (the scheduler
    splits there, ggml-backend.cpp ``ggml_backend_sched_split_graph``): the graph
    inputs it keeps (the unused ``inp_embd``, token and output ids), the hole
    that the masks, positions and cache slots leave once copied to the device,
    where the copies of ``ffn_norm`` and of the top-k view go when they fit, and
    the experts' stack from the end of the inputs. Measured with
    ``llama-fit-params -fitp on`` through a loopback RPC server: docs section 4.2."""
    t = n_tokens
    hidden = costs.n_embd * t * 4
    attn_out = costs.n_head * costs.n_head_v_dim * t * 4
    ffn = costs.n_ff_exp * costs.n_expert_used * t * 4
    down = costs.n_embd * costs.n_expert_used * t * 4
    base = index_bytes + 2 * hidden + attn_out
    device = base + _expert_stack(0, ffn, down, 0)
    # The copy of the top-k view keeps the strides of the [n_expert, T] argsort.
    topk = ((t - 1) * costs.n_expert + costs.n_expert_used) * 4
    kept = hidden + 2 * t * 4  # inp_embd, token ids, output ids
    hole = mask_bytes + index_bytes
    if hidden <= hole:
        left = hole - hidden
        topk_at_end = topk if topk > left else 0
        freed = hidden + (left if topk_at_end else left - topk)
        host = kept + hole + topk_at_end + _expert_stack(0, ffn, down, freed)
    else:
        topk_at_end = topk if topk > hole else 0
        host = kept + hole + topk_at_end + _expert_stack(hidden, ffn, down, hidden)
    return base, device, host


def _fa_f16_scratch(costs: ModelCosts, s: Settings, cells: int, n_tokens: int) -> int:
    """F16 copies of one layer's K and V view over ``cells`` cells, when the
    cache is not F16: fattn-common.cuh ``ggml_cuda_flash_attn_ext_get_f16_extra_data``,
    each padded to 128 bytes, V skipped when it is a view of K (MLA). A batch of
    more than two tokens gets the MMA or tile kernel, which always needs F16
    (fattn.cu ``ggml_cuda_get_best_fattn_kernel``); the reserve's prompt graph is one."""
    if n_tokens <= 2:
        return 0
    widest_k = max((lc.k_width for lc in costs.layers if lc.k_width), default=0)
    widest_v = max((lc.v_width for lc in costs.layers if lc.k_width), default=0)
    out = 0
    if s.cache_type_k != "f16":
        out += pad(cells * widest_k * 2, 128)
    if s.cache_type_v != "f16" and widest_v:
        out += pad(cells * widest_v * 2, 128)
    return out


def layers_peak(
    c: GraphContext, first: int, end: int, offload: bool = False, fa_scratch: bool = False
) -> tuple[int, int, int]:
    """The compute peak while layers [first, end) run on one device, the masks
    in it, and how many caches those layers use. Only the masks (and attention)
    of the caches those layers use count: a device holding only sliding-window
    layers never sees the full mask.

    On an offload device (a GPU or an RPC device) the attention runs beside one
    residual-sized tensor where the CPU keeps the whole residual stream (three);
    the FFN keeps three on both (measured: sched_reserve through RPC devices, and
    on an H200, where CUDA0 and an RPC device on it log the same size).
    ``fa_scratch``: the device's backend keeps F16 copies of a quantized cache
    beside flash attention (CUDA; fit.backends)."""
    cells_used: set[int] = set()
    if c.full_prefix[end] - c.full_prefix[first]:
        cells_used.add(c.kv_cells)
    if c.swa_prefix[end] - c.swa_prefix[first]:
        cells_used.add(c.swa_cells)
    mask = sum(m for cells, m, _ in c.mask_by_cells if cells in cells_used)
    scratch = dict(c.fa_scratch_by_cells) if fa_scratch else {}
    attn = max(
        (a + scratch.get(cells, 0) for cells, _m, a in c.mask_by_cells if cells in cells_used),
        default=0,
    )
    caches = len(cells_used)
    if offload and c.moe_device_peak:
        return mask + max(attn + c.moe_device_base, c.moe_device_peak), mask, caches
    if offload:
        return mask + max(attn + c.hidden_bytes, c.ffn_peak + c.ffn_residual), mask, caches
    return mask + max(attn, c.ffn_peak) + c.base_peak, mask, caches


def output_peak(c: GraphContext, offload: bool = False) -> int:
    """The compute peak while the output layer runs: the logits beside the
    residual stream. Three residual-sized tensors on the CPU and beside a dense
    model's layers on an offload device; one beside a MoE model's, whose freed
    expert tensors leave the logits a hole just above the last layer's output
    (measured through RPC as for :func:`layers_peak`)."""
    return c.out_peak - c.base_peak + c.hidden_bytes if offload else c.out_peak


# An RPC link nobody measured: 1 Gbit/s.
DEFAULT_NETWORK_BYTES_PER_S = 1e9 / 8
# What a graph costs on an RPC device beyond its compute and its bytes: the
# client serialises it (GRAPH_COMPUTE) and the server rebuilds it. Measured on an
# H200 through a loopback ggml-rpc-server against CUDA0 directly (llama-bench
# tg128, Llama-3 1B and 8B shapes at Q4_K): 0.80 ms a token for both sizes.
RPC_GRAPH_S = 0.8e-3


def network_s(
    costs: ModelCosts, c: GraphContext, rpc: Device, has_output: bool
) -> tuple[float, float]:
    """What one RPC device costs on the network per generated token and per
    prompt ubatch: its split's inputs sent (ggml-rpc.cpp SET_TENSOR: the
    residual stream, the masks, positions and slots), its output read back
    (GET_TENSOR waits for the graph: one round trip), the logits where it holds
    the output layer (only the last token's on a prompt), and the graph itself
    (:data:`RPC_GRAPH_S`)."""
    link = rpc.network_bytes_per_s or DEFAULT_NETWORK_BYTES_PER_S
    mask_elem = 2 if c.flash_attn else 4
    caches = len(c.mask_by_cells) or 1
    depth = pad(SPEED_DEPTH_TOKENS + 1, CTX_PAD)
    small = 4 + caches * 16  # a position, K and V slots
    out_token = costs.n_vocab * 4 if has_output else costs.n_embd * 4
    token = costs.n_embd * 4 + caches * depth * mask_elem + small + out_token
    t = c.n_ubatch
    out_batch = costs.n_vocab * 4 if has_output else c.hidden_bytes
    batch = c.hidden_bytes + caches * pad(t, CTX_PAD) * t * mask_elem + t * small + out_batch
    fixed = rpc.rtt_s + RPC_GRAPH_S
    return fixed + token / link, fixed + batch / link
