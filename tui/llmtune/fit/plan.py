"""fit.plan: what llama.cpp will allocate on each device, before anything loads.

Pure functions of (ModelSpec, devices, Settings). The rules follow the llama.cpp
vendored in llama-cpp-python 0.3.36; docs/llama-cpp-memory.md has the details
and the source citations. In short:

- placement (llama-model.cpp ``load_tensors``): with ``ngl`` layers offloaded,
  layer ``il`` (0..n_layer, n_layer being the output layer) is on a GPU when
  ``il >= n_layer + 1 - ngl``; GPUs take consecutive ranges in proportion to
  ``tensor_split`` or, by default, their free memory; ``token_embd`` stays on
  the host;
- KV cache (llama-kv-cache.cpp, llama-kv-cache-iswa.cpp): per layer on its
  layer's device, ``n_ctx`` padded to 256 cells, sliding-window layers hold
  ``pad(min(n_ctx, n_swa + n_ubatch), 256)`` cells, MLA stores K only;
- compute buffers (llama-context.cpp ``sched_reserve``): llama.cpp measures them
  by reserving a graph; we approximate the peak of that graph (see
  :func:`_compute_bytes`);
- output buffer: ``n_vocab x n_seq x 4`` bytes of logits on the host;
- RPC devices (llama.cpp's RPC backend: another machine's GPU or CPU) are
  offload targets placed before local GPUs (llama.cpp.cpp
  ``llama_model_load_from_file_impl``: "add RPC servers at the front of the
  list"), with no op offload (ggml-rpc.cpp's device has no ``offload_op``) and
  no host buffer type, so the host's layers may be repacked;
- pipeline parallelism (llama-context.cpp, the context constructor): with more
  than one offload device, every layer and the output offloaded, layer split,
  the KV cache offloaded and no tensor overrides, the scheduler keeps
  ``GGML_SCHED_MAX_COPIES`` = 4 copies of every split's inputs.

Everything per layer is turned into prefix sums once per call, so evaluating
one offload count costs O(devices) and the whole offload curve of an 80-layer
model a few milliseconds.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Literal

from llmtune.fit.costs import ModelCosts, model_costs, row_bytes
from llmtune.fit.settings import QUANTIZED_CACHE_TYPES, Settings
from llmtune.fit.speed import DEFAULT_SPEED_MODEL, SpeedModel
from llmtune.hardware.device import Device
from llmtune.model import ModelSpec

Verdict = Literal["fits", "tight", "over"]
CTX_PAD = 256  # llama_context: n_ctx = GGML_PAD(n_ctx, 256)


def pad(n: int, to: int) -> int:
    return (n + to - 1) // to * to


@dataclass(frozen=True)
class DevicePlan:
    """What one device holds under a plan. ``other_bytes``: output buffer,
    repacked weights, per-device overhead."""

    name: str
    kind: Literal["gpu", "rpc", "cpu"]
    index: int
    capacity_bytes: int
    free_bytes: int
    weights_bytes: int
    kv_bytes: int
    compute_bytes: int
    other_bytes: int
    n_layers: int
    has_output: bool
    margin_bytes: int
    repack_bytes: int = 0  # in other_bytes: CPU_REPACK copies of weights
    mapped_bytes: int = 0  # what llama.cpp will log as CPU_Mapped (a file span)
    endpoint: str = ""  # an RPC device's HOST:PORT
    buffer_name: str = ""  # the name llama.cpp logs its buffers under

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_bytes + self.compute_bytes + self.other_bytes

    @property
    def headroom_bytes(self) -> int:
        return self.free_bytes - self.total_bytes

    @property
    def verdict(self) -> Verdict:
        if self.total_bytes == 0:
            return "fits"
        if self.total_bytes > self.free_bytes:
            return "over"
        if self.total_bytes > self.free_bytes - self.margin_bytes:
            return "tight"
        return "fits"


@dataclass(frozen=True)
class Speed:
    tg_tokens_per_s: float
    pp_tokens_per_s: float
    tg_overhead_s: float = 0.0  # of a token's time, the fixed per-layer part (not reading)
    tg_network_s: float = 0.0  # of a token's time, what crosses the network to RPC devices

    @property
    def tg_token_s(self) -> float:
        return 1.0 / self.tg_tokens_per_s if self.tg_tokens_per_s > 0 else 0.0


@dataclass(frozen=True)
class FitPlan:
    settings: Settings
    n_gpu_layers: int  # resolved: 0..n_layer+1
    n_layer: int
    n_ctx: int  # after llama.cpp's padding, all sequences
    n_ctx_seq: int
    kv_cells: int  # per layer, all streams
    swa_cells: int
    flash_attn: bool
    devices: tuple[DevicePlan, ...]
    max_gpu_layers: int
    predicted: Speed
    notes: tuple[str, ...] = field(default=())
    pipeline_copies: int = 1  # 4 when llama.cpp's pipeline parallelism is on

    @property
    def fits(self) -> bool:
        return all(d.verdict != "over" for d in self.devices)

    @property
    def verdict(self) -> Verdict:
        verdicts = {d.verdict for d in self.devices}
        return "over" if "over" in verdicts else "tight" if "tight" in verdicts else "fits"

    @property
    def gpus(self) -> tuple[DevicePlan, ...]:
        """Every device layers are offloaded to: RPC devices, then local GPUs."""
        return tuple(d for d in self.devices if d.kind != "cpu")

    @property
    def local_gpus(self) -> tuple[DevicePlan, ...]:
        return tuple(d for d in self.devices if d.kind == "gpu")

    @property
    def rpc_devices(self) -> tuple[DevicePlan, ...]:
        return tuple(d for d in self.devices if d.kind == "rpc")

    @property
    def pipeline_parallel(self) -> bool:
        return self.pipeline_copies > 1

    @property
    def host(self) -> DevicePlan:
        return self.devices[-1]


@dataclass(frozen=True)
class _Context:
    """Per-call quantities: context sizes and per-layer prefix sums."""

    n_ctx: int
    n_ctx_seq: int
    n_stream: int
    kv_cells: int
    swa_cells: int
    n_ubatch: int
    flash_attn: bool
    weights_prefix: tuple[int, ...]  # sum of weights of layers [0, i)
    pinned_prefix: tuple[int, ...]  # expert bytes kept on the CPU by --n-cpu-moe
    kv_prefix: tuple[int, ...]
    repack_prefix: tuple[int, ...]
    matmul_max_cpu: tuple[int, ...]  # largest matmul weights of layers [0, i)
    active_prefix: tuple[int, ...]  # bytes read per generated token
    layer_peak: int  # while every kind of layer runs: masks + the largest layer op + residual
    out_peak: int  # while the output layer runs: logits + residual
    mask_bytes: int  # every mask (one per distinct cache size)
    ffn_peak: int
    base_peak: int  # the residual stream's tensors alive beside any op
    mask_by_cells: tuple[tuple[int, int, int], ...]  # (cells, mask bytes, attention peak)
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


def _context(costs: ModelCosts, s: Settings, n_ctx_train: int) -> _Context:
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
    kv: list[int] = []
    repack: list[int] = []
    active: list[int] = []
    matmul_max: list[int] = [0]
    cpu_moe_layers = n_layer if s.n_cpu_moe < 0 else min(s.n_cpu_moe, n_layer)
    for il, lc in enumerate(costs.layers):
        weights.append(lc.weights_bytes)
        pinned.append(lc.expert_bytes if il < cpu_moe_layers else 0)
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
        matmul_max.append(max(matmul_max[-1], lc.matmul_bytes))

    t = n_ubatch
    heads = costs.n_head
    attn_layers = [lc for lc in costs.layers if lc.k_width]
    attn_peak = 0
    mask_bytes = 0
    by_cells: dict[int, tuple[int, int]] = {}
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
        mask_bytes = sum(mask for mask, _ in by_cells.values())
        attn_peak = max(peak for _, peak in by_cells.values())
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
    layer_peak = mask_bytes + max(attn_peak, ffn_peak) + base_peak

    def prefix(values: list[int]) -> tuple[int, ...]:
        return (0, *accumulate(values))

    # Graph inputs a device's split receives (llama-graph.cpp build_inp_*):
    # positions (I32), and per cache the K and V slot indices (I64; V's index
    # every element of a transposed V row, llama-kv-cache.cpp build_input_v_idxs).
    caches = {lc.is_swa for lc in attn_layers}
    v_idx_per_token = 1 if flash_attn else max(1, v_width_max)
    slot_bytes = t * 8 * (1 + v_idx_per_token)
    index_bytes = t * 4 + len(caches) * slot_bytes

    return _Context(
        n_ctx=n_ctx,
        n_ctx_seq=n_ctx_seq,
        n_stream=n_stream,
        kv_cells=kv_cells,
        swa_cells=swa_cells,
        n_ubatch=n_ubatch,
        flash_attn=flash_attn,
        weights_prefix=prefix(weights),
        pinned_prefix=prefix(pinned),
        kv_prefix=prefix(kv),
        repack_prefix=prefix(repack),
        matmul_max_cpu=tuple(matmul_max),
        active_prefix=prefix(active),
        layer_peak=layer_peak,
        out_peak=out_peak + base_peak,
        mask_bytes=mask_bytes,
        ffn_peak=ffn_peak,
        base_peak=base_peak,
        mask_by_cells=tuple((cells, m, a) for cells, (m, a) in sorted(by_cells.items())),
        full_prefix=tuple(full_count),
        swa_prefix=tuple(swa_count),
        kv_read_fraction=min(1.0, SPEED_DEPTH_TOKENS / max(1, kv_cells)),
        hidden_bytes=costs.n_embd * t * 4,
        index_bytes=index_bytes,
        slot_bytes=slot_bytes,
        token_bytes=t * 4,
    )


def _layers_peak(c: _Context, first: int, end: int) -> tuple[int, int, int]:
    """The compute peak while layers [first, end) run on one device, the
    masks in it, and how many caches those layers use: only the masks (and attention) of the caches those layers use
    (a device holding only sliding-window layers never sees the full mask)."""
    cells_used: set[int] = set()
    if c.full_prefix[end] - c.full_prefix[first]:
        cells_used.add(c.kv_cells)
    if c.swa_prefix[end] - c.swa_prefix[first]:
        cells_used.add(c.swa_cells)
    mask = sum(m for cells, m, _ in c.mask_by_cells if cells in cells_used)
    attn = max((a for cells, _m, a in c.mask_by_cells if cells in cells_used), default=0)
    caches = len(cells_used)
    return mask + max(attn, c.ffn_peak) + c.base_peak, mask, caches


def _gpu_ranges(
    gpus: Sequence[Device], s: Settings, n_layer: int, ngl: int
) -> list[tuple[int, int, bool]]:
    """Per GPU: (first layer, end layer, holds output), as load_tensors splits."""
    if not gpus or ngl <= 0:
        return [(0, 0, False) for _ in gpus]
    weights = list(s.tensor_split[: len(gpus)]) if any(s.tensor_split) else []
    if not weights:
        weights = [float(max(g.free_bytes, 0)) for g in gpus]
    weights += [0.0] * (len(gpus) - len(weights))
    total = sum(weights) or 1.0
    splits = list(accumulate(w / total for w in weights))
    start = n_layer + 1 - ngl
    ranges: list[list[int]] = [[-1, -1] for _ in gpus]
    for il in range(start, n_layer + 1):
        j = min(bisect_right(splits, (il - start) / ngl), len(gpus) - 1)
        if ranges[j][0] < 0:
            ranges[j][0] = il
        ranges[j][1] = il + 1
    out: list[tuple[int, int, bool]] = []
    for first, end in ranges:
        if first < 0:
            out.append((0, 0, False))
        else:
            out.append((first, min(end, n_layer), end > n_layer))
    return out


def _evaluate(
    costs: ModelCosts,
    gpus: Sequence[Device],
    host: Device,
    s: Settings,
    c: _Context,
    ngl: int,
    n_vocab_outputs: int,
    speed: SpeedModel = DEFAULT_SPEED_MODEL,
) -> tuple[list[DevicePlan], float, float, float, float]:
    """Per-device plans, generation and prompt tokens/s, and the per-layer
    overhead and network parts of a generated token's time."""
    n_layer = len(costs.layers)
    ranges = _gpu_ranges(gpus, s, n_layer, ngl)
    copies = pipeline_copies(gpus, s, n_layer, ngl)
    plans: list[DevicePlan] = []
    cpu_layers = n_layer + 1 - ngl if gpus and ngl > 0 else n_layer + 1
    local_gpus = [g for g in gpus if g.is_gpu]
    # Only the first local GPU takes the offloaded ops (the scheduler's
    # backend order); a partial offload with ubatches of 32 tokens or more.
    offload_to = (
        local_gpus[0] if local_gpus and min(cpu_layers, n_layer) > 0 and c.n_ubatch >= 32 else None
    )
    cpu_end = n_layer + 1 - ngl if gpus and ngl > 0 else n_layer + 1
    cpu_layers_end = min(cpu_end, n_layer)
    output_on_cpu = cpu_end > n_layer
    host_weights = costs.input_bytes + costs.other_bytes + c.weights_prefix[cpu_layers_end]
    host_kv = c.kv_prefix[cpu_layers_end]
    tg_time = 0.0
    pp_time = 0.0
    network = 0.0
    overhead = 0.0
    active_cpu = float(c.active_prefix[cpu_layers_end])
    for gpu, (first, end, has_output) in zip(gpus, ranges, strict=True):
        w = c.weights_prefix[end] - c.weights_prefix[first]
        pinned = c.pinned_prefix[end] - c.pinned_prefix[first]
        kv = c.kv_prefix[end] - c.kv_prefix[first]
        if s.no_kv_offload:
            host_kv += kv
            kv = 0
        w -= pinned
        host_weights += pinned
        active = c.active_prefix[end] - c.active_prefix[first] - pinned
        active_cpu += pinned * (costs.n_expert_used / costs.n_expert if costs.n_expert else 1.0)
        if has_output:
            w += costs.output_bytes
            active += costs.output_bytes
        n_layers = end - first
        compute = 0
        # An offload device's split starts from a copy of the residual stream
        # and ends at the next device: two fewer residual-sized tensors than a
        # CPU-only graph while layers run, one fewer beside the logits
        # (measured: sched_reserve's compute buffers through RPC devices, and
        # on an H200, where CUDA0 and an RPC device on it log the same size).
        fewer = c.hidden_bytes
        layers_peak, masks, caches = _layers_peak(c, first, end) if n_layers else (0, 0, 0)
        layers_peak = max(layers_peak - 2 * fewer, 0)
        output_peak = c.out_peak - fewer if has_output else 0
        if copies > 1:
            # Each split's inputs (the residual stream, its masks, positions and
            # cache slots, the output ids where the logits are) are kept
            # ``copies`` times and never reused: the layers' peak holds no mask
            # then, and one more residual (measured as above).
            inputs = c.hidden_bytes + masks + c.token_bytes + caches * c.slot_bytes
            inputs += c.token_bytes if has_output else 0
            layers = layers_peak - masks + fewer if n_layers else 0
            compute = max(layers, output_peak) + copies * inputs
        elif n_layers or has_output:
            compute = max(layers_peak, output_peak)
            if gpu is offload_to:
                # Op offload (ggml-backend.cpp, the scheduler's offload_op): the
                # CPU layers' matmuls run on the first GPU, which holds their
                # activations: one more residual-sized tensor (measured on an
                # H200; the weights cross PCIe without growing the buffer).
                # An RPC device has no offload_op (ggml-rpc.cpp).
                compute += c.hidden_bytes
        plans.append(
            DevicePlan(
                name=gpu.name,
                kind="rpc" if gpu.is_rpc else "gpu",
                index=gpu.index,
                capacity_bytes=gpu.capacity_bytes,
                free_bytes=gpu.free_bytes,
                weights_bytes=w,
                kv_bytes=kv,
                compute_bytes=compute,
                other_bytes=s.gpu_overhead_bytes if (n_layers or has_output) else 0,
                n_layers=n_layers,
                has_output=has_output,
                margin_bytes=s.margin_bytes,
                endpoint=gpu.endpoint,
                buffer_name=gpu.buffer_name,
            )
        )
        # An RPC host with no GPU named behind it runs like a CPU (llmtune rpc-server).
        cpu_like = gpu.is_rpc and gpu.profile == "cpu"
        if cpu_like:
            bw = gpu.bandwidth_gbps * 1e9 * host_bandwidth_efficiency(gpu, speed)
            layer_s, efficiency = speed.cpu_layer_overhead_s, speed.cpu_compute_efficiency
        else:
            bw = gpu.bandwidth_gbps * 1e9 * speed.gpu_bandwidth_efficiency
            layer_s, efficiency = speed.gpu_layer_overhead_s, speed.gpu_compute_efficiency
        if bw:
            tg_time += (active + kv * c.kv_read_fraction) / bw
        overhead += (n_layers + has_output) * layer_s
        flops = gpu.fp16_tflops * 1e12 * efficiency
        if flops:
            pp_time += 2.0 * active / costs.bytes_per_param / flops
        if gpu.is_rpc and (n_layers or has_output):
            token_s, ubatch_s = _network_s(costs, c, gpu, has_output)
            network += token_s
            pp_time += ubatch_s / c.n_ubatch
    if output_on_cpu:
        # A tied output on the host is token_embd itself (TENSOR_DUPLICATED reuses it).
        host_weights += costs.output_own_bytes
        active_cpu += costs.output_bytes
    # CPU_REPACK: only without local GPUs (a GPU's host buffer type wins the
    # selection; an RPC device has none). Repacked weights live in anonymous
    # memory; their pages in the mapped file are read once and left to the
    # page cache, so they count once, as repack.
    local_gpu = any(g.is_gpu for g in gpus)
    repack = c.repack_prefix[cpu_layers_end] if not local_gpu else 0
    if not local_gpu and output_on_cpu:
        repack += costs.output_repack_bytes
    host_weights -= repack
    output_buffer = n_vocab_outputs
    host_compute = 0
    inputs_only = 2 * c.hidden_bytes + c.mask_bytes + c.index_bytes + 2 * c.token_bytes
    if offload_to is not None and not output_on_cpu:
        # Op offload runs the CPU layers' heavy ops on the GPU: the host keeps
        # what it keeps under a full offload (measured on an H200).
        host_compute = inputs_only
    elif cpu_layers_end > 0 or output_on_cpu:
        if cpu_layers_end > 0:
            # The graph's inputs are built on the host: every mask is there,
            # whichever caches its own layers use.
            peak, masks, _caches = _layers_peak(c, 0, cpu_layers_end)
            host_compute = peak - masks + c.mask_bytes
        if output_on_cpu:
            host_compute = max(host_compute, c.out_peak)
    elif copies > 1:
        # The host builds the graph's inputs (token ids, positions, slots,
        # masks, output ids) and the embeddings: each kept ``copies`` times.
        inputs = 2 * c.token_bytes + c.index_bytes + c.mask_bytes + c.hidden_bytes
        host_compute = copies * inputs + c.hidden_bytes
    else:
        # Full offload: the host only builds the inputs and the embeddings,
        # which it holds twice (measured through RPC devices and on an H200:
        # token_embd's rows, then the copy the first device's split reads).
        host_compute = inputs_only
    plans.append(
        DevicePlan(
            name=host.name,
            kind="cpu",
            index=0,
            capacity_bytes=host.capacity_bytes,
            free_bytes=host.free_bytes,
            weights_bytes=host_weights,
            kv_bytes=host_kv,
            compute_bytes=host_compute,
            other_bytes=output_buffer + repack,
            n_layers=cpu_layers_end,
            has_output=output_on_cpu,
            margin_bytes=s.margin_bytes,
            repack_bytes=repack,
            mapped_bytes=(costs.cpu_mapped_span if not gpus else host_weights) if s.use_mmap else 0,
        )
    )
    host_bw = host.bandwidth_gbps * 1e9 * host_bandwidth_efficiency(host, speed)
    if host_bw:
        tg_time += (active_cpu + host_kv * c.kv_read_fraction) / host_bw
    overhead += (cpu_layers_end + output_on_cpu) * speed.cpu_layer_overhead_s
    tg_time += overhead + network
    host_flops = host.fp16_tflops * 1e12 * speed.cpu_compute_efficiency
    if offload_to is not None:
        # op offload: CPU-resident weights cross PCIe once per ubatch
        pp_time += c.weights_prefix[cpu_layers_end] / (speed.pcie_gbps * 1e9) / c.n_ubatch
    elif host_flops:
        pp_time += 2.0 * active_cpu / costs.bytes_per_param / host_flops
    tg = 1.0 / tg_time if tg_time > 0 else 0.0
    pp = 1.0 / pp_time if pp_time > 0 else 0.0
    return plans, tg, pp, overhead, network


# An RPC link nobody measured: 1 Gbit/s.
DEFAULT_NETWORK_BYTES_PER_S = 1e9 / 8
# What a graph costs on an RPC device beyond its compute and its bytes: the
# client serialises it (GRAPH_COMPUTE) and the server rebuilds it. Measured on an
# H200 through a loopback ggml-rpc-server against CUDA0 directly (llama-bench
# tg128, Llama-3 1B and 8B shapes at Q4_K): 0.80 ms a token for both sizes.
RPC_GRAPH_S = 0.8e-3


def _network_s(
    costs: ModelCosts, c: _Context, rpc: Device, has_output: bool
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


def pipeline_copies(gpus: Sequence[Device], s: Settings, n_layer: int, ngl: int) -> int:
    """How many copies of each split's inputs llama.cpp's scheduler keeps: 4
    (``GGML_SCHED_MAX_COPIES``) with pipeline parallelism, else 1.

    llama-context.cpp, the context constructor: more than one device, every
    layer and the output offloaded, layer split, the KV cache offloaded and no
    tensor overrides; CUDA and RPC devices support async compute and events.
    """
    on = (
        len(gpus) > 1
        and ngl > n_layer
        and s.split_mode == "layer"
        and not s.no_kv_offload
        and s.n_cpu_moe == 0
    )
    return 4 if on else 1


def host_bandwidth_efficiency(host: Device, speed: SpeedModel) -> float:
    """The fraction of ``host``'s bandwidth llama.cpp reads at: a measured
    bandwidth is already what programs get; a peak figure is not."""
    if host.bandwidth_measured:
        return speed.cpu_measured_bandwidth_efficiency
    return speed.cpu_bandwidth_efficiency


def _resolve_ngl(s: Settings, n_layer: int, has_gpu: bool) -> int:
    if not has_gpu:
        return 0
    if s.n_gpu_layers < 0:
        return n_layer + 1
    return min(s.n_gpu_layers, n_layer + 1)


def _split_devices(devices: Sequence[Device], s: Settings) -> tuple[list[Device], Device]:
    """The offload devices in llama.cpp's order (RPC devices first, then local
    GPUs) and the host."""
    gpus = [d for d in devices if d.is_rpc] + [d for d in devices if d.is_gpu]
    hosts = [d for d in devices if d.kind == "cpu"]
    if not hosts:
        # The caller decides the host (hardware.machine): a plan never reads this machine.
        raise ValueError("plan() needs the host among its devices")
    if s.split_mode == "none" and gpus:
        if not 0 <= s.main_gpu < len(gpus):
            from llmtune.errors import FitError
            from llmtune.fit.options import cli_flag

            what = "GPU" if all(g.is_gpu for g in gpus) else "offload device"
            there = f"there is 1 {what}" if len(gpus) == 1 else f"there are {len(gpus)} {what}s"
            flag = cli_flag("main_gpu")
            raise FitError(f"{flag} {s.main_gpu} but {there}", flag)
        gpus = [gpus[s.main_gpu]]
    return gpus, hosts[0]


def _fits_gpus(plans: Sequence[DevicePlan]) -> bool:
    return all(p.total_bytes <= p.free_bytes - p.margin_bytes for p in plans if p.kind == "gpu")


def plan(
    spec: ModelSpec,
    devices: Sequence[Device],
    settings: Settings | None = None,
    speed: SpeedModel = DEFAULT_SPEED_MODEL,
) -> FitPlan:
    """Plan ``spec`` on ``devices`` (GPUs and the host) with ``settings``."""
    s = settings or Settings()
    s.validate()
    costs = model_costs(spec)
    gpus, host = _split_devices(devices, s)
    n_layer = len(costs.layers)
    c = _context(costs, s, spec.n_ctx_train)
    outputs = costs.n_vocab * max(1, s.n_parallel) * 4
    ngl = _resolve_ngl(s, n_layer, bool(gpus))
    plans, tg, pp, overhead, network = _evaluate(costs, gpus, host, s, c, ngl, outputs, speed)
    max_ngl = _max_gpu_layers(costs, gpus, host, s, c, outputs)
    notes: list[str] = []
    if s.cache_type_v in QUANTIZED_CACHE_TYPES and s.flash_attn == "auto":
        notes.append(f"a {s.cache_type_v} V cache turns flash attention on (llama.cpp requires it)")
    if s.split_mode == "row" and len(gpus) > 1:
        notes.append(
            "split mode row: this llama.cpp's CUDA backend has no split buffers and refuses it; "
            "planned as layer split"
        )
    if not gpus:
        notes.append("no GPU: everything runs on the CPU (give --gpu to plan for one)")
    if s.n_ctx and spec.n_ctx_train and s.n_ctx > spec.n_ctx_train:
        notes.append(
            f"context {s.n_ctx:,} is beyond the {spec.n_ctx_train:,} the model was trained on"
        )
    resolved = s.with_(n_gpu_layers=ngl, n_ctx=c.n_ctx)
    return FitPlan(
        pipeline_copies=pipeline_copies(gpus, s, n_layer, ngl),
        settings=resolved,
        n_gpu_layers=ngl,
        n_layer=n_layer,
        n_ctx=c.n_ctx,
        n_ctx_seq=c.n_ctx_seq,
        kv_cells=c.kv_cells,
        swa_cells=c.swa_cells,
        flash_attn=c.flash_attn,
        devices=tuple(plans),
        max_gpu_layers=max_ngl,
        predicted=Speed(tg, pp, overhead, network),
        notes=tuple(notes),
    )


def _max_gpu_layers(
    costs: ModelCosts, gpus: Sequence[Device], host: Device, s: Settings, c: _Context, outputs: int
) -> int:
    """The largest n_gpu_layers whose GPUs stay within free memory less the margin."""
    if not gpus:
        return 0
    lo, hi = 0, len(costs.layers) + 1
    if _fits_gpus(_evaluate(costs, gpus, host, s, c, hi, outputs)[0]):
        return hi
    # GPU use grows with ngl: binary search for the last count that fits.
    while lo < hi - 1:
        mid = (lo + hi) // 2
        if _fits_gpus(_evaluate(costs, gpus, host, s, c, mid, outputs)[0]):
            lo = mid
        else:
            hi = mid
    return lo


@dataclass(frozen=True)
class CurvePoint:
    n_gpu_layers: int
    gpu_bytes: tuple[int, ...]
    host_bytes: int
    fits: bool
    tg_tokens_per_s: float


def offload_curve(
    spec: ModelSpec,
    devices: Sequence[Device],
    settings: Settings | None = None,
    speed: SpeedModel = DEFAULT_SPEED_MODEL,
) -> list[CurvePoint]:
    """Memory and predicted speed at every n_gpu_layers from 0 to n_layer + 1."""
    s = settings or Settings()
    s.validate()
    costs = model_costs(spec)
    gpus, host = _split_devices(devices, s)
    c = _context(costs, s, spec.n_ctx_train)
    outputs = costs.n_vocab * max(1, s.n_parallel) * 4
    points: list[CurvePoint] = []
    top = len(costs.layers) + 1 if gpus else 0
    for ngl in range(top + 1):
        plans, tg, _pp, _overhead, _network = _evaluate(
            costs, gpus, host, s, c, ngl, outputs, speed
        )
        points.append(
            CurvePoint(
                n_gpu_layers=ngl,
                gpu_bytes=tuple(p.total_bytes for p in plans if p.kind == "gpu"),
                host_bytes=plans[-1].total_bytes,
                fits=all(p.verdict != "over" for p in plans),
                tg_tokens_per_s=tg,
            )
        )
    return points


def max_context(
    spec: ModelSpec, devices: Sequence[Device], settings: Settings | None = None
) -> int:
    """The largest context (a multiple of 256, at most the trained context) that
    fits every device at the settings' offload; 0 when even 256 does not."""
    s = settings or Settings()
    limit = max(CTX_PAD, spec.n_ctx_train or 131072)

    def ok(n_ctx: int) -> bool:
        p = plan(spec, devices, s.with_(n_ctx=n_ctx))
        return all(d.total_bytes <= d.free_bytes - d.margin_bytes for d in p.devices)

    if not ok(CTX_PAD):
        return 0
    lo, hi = 1, limit // CTX_PAD
    if ok(hi * CTX_PAD):
        return hi * CTX_PAD
    while lo < hi - 1:
        mid = (lo + hi) // 2
        if ok(mid * CTX_PAD):
            lo = mid
        else:
            hi = mid
    return lo * CTX_PAD


def with_max_context(spec: ModelSpec, devices: Sequence[Device], settings: Settings) -> Settings:
    """``settings`` with the largest context that fits at their offload (``--ctx max``)."""
    from llmtune.errors import FitError

    largest = max_context(spec, devices, settings.with_(n_ctx=CTX_PAD))
    if largest == 0:
        raise FitError(
            f"not even {CTX_PAD} tokens of context fit at this offload; lower --ngl", "--ctx max"
        )
    return settings.with_(n_ctx=largest)
