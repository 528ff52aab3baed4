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
- output buffer: ``n_vocab x n_seq x 4`` bytes of logits on the host.

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
    kind: Literal["gpu", "cpu"]
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

    @property
    def fits(self) -> bool:
        return all(d.verdict != "over" for d in self.devices)

    @property
    def verdict(self) -> Verdict:
        verdicts = {d.verdict for d in self.devices}
        return "over" if "over" in verdicts else "tight" if "tight" in verdicts else "fits"

    @property
    def gpus(self) -> tuple[DevicePlan, ...]:
        return tuple(d for d in self.devices if d.kind == "gpu")

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
    layer_peak: int  # while the repeating layers run: mask + the largest layer op + residual
    out_peak: int  # while the output layer runs: logits + residual
    mask_bytes: int
    kv_read_fraction: float  # share of the cache read per token at the bench depth


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
    if attn_layers:
        # The KQ mask is a graph input, alive through the whole graph: one per
        # distinct cache size (full and sliding window), F16 with flash attention.
        mask_elem = 2 if flash_attn else 4
        sizes = {swa_cells if lc.is_swa else kv_cells for lc in attn_layers}
        mask_bytes = sum(cells // max(1, n_stream) * t * mask_elem for cells in sizes)
        n_kv = max(sizes) // max(1, n_stream)
        kqv = costs.n_head_v_dim * heads * t * 4
        if flash_attn:
            # ggml_flash_attn_ext: no KQ matrix (llama-graph.cpp build_attn_mha).
            attn_peak = kqv + 2 * costs.n_embd * t * 4
        else:
            # KQ in F32, soft_max in place, then KQV.
            attn_peak = n_kv * t * heads * 4 * n_stream + kqv
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
        kv_read_fraction=min(1.0, SPEED_DEPTH_TOKENS / max(1, kv_cells)),
    )


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
) -> tuple[list[DevicePlan], float, float, float]:
    """Per-device plans, generation and prompt tokens/s, and the per-layer
    overhead part of a generated token's time."""
    n_layer = len(costs.layers)
    ranges = _gpu_ranges(gpus, s, n_layer, ngl)
    plans: list[DevicePlan] = []
    cpu_end = n_layer + 1 - ngl if gpus and ngl > 0 else n_layer + 1
    cpu_layers_end = min(cpu_end, n_layer)
    output_on_cpu = cpu_end > n_layer
    host_weights = costs.input_bytes + costs.other_bytes + c.weights_prefix[cpu_layers_end]
    host_kv = c.kv_prefix[cpu_layers_end]
    tg_time = 0.0
    pp_time = 0.0
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
        if n_layers or has_output:
            compute = c.layer_peak if n_layers else 0
            if has_output:
                compute = max(compute, c.out_peak)
            if cpu_layers_end > 0 and c.n_ubatch >= 32:
                # op offload: CPU weights are copied into the GPU's compute buffer
                compute += c.matmul_max_cpu[cpu_layers_end]
        plans.append(
            DevicePlan(
                name=gpu.name,
                kind="gpu",
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
            )
        )
        bw = gpu.bandwidth_gbps * 1e9 * speed.gpu_bandwidth_efficiency
        if bw:
            tg_time += (active + kv * c.kv_read_fraction) / bw
        overhead += (n_layers + has_output) * speed.gpu_layer_overhead_s
        flops = gpu.fp16_tflops * 1e12 * speed.gpu_compute_efficiency
        if flops:
            pp_time += 2.0 * active / costs.bytes_per_param / flops
    if output_on_cpu:
        # A tied output on the host is token_embd itself (TENSOR_DUPLICATED reuses it).
        host_weights += costs.output_own_bytes
        active_cpu += costs.output_bytes
    # CPU_REPACK: only without GPUs (a GPU's host buffer type wins the selection).
    # Repacked weights live in anonymous memory; their pages in the mapped file
    # are read once and left to the page cache, so they count once, as repack.
    repack = c.repack_prefix[cpu_layers_end] if not gpus else 0
    if not gpus:
        repack += costs.output_repack_bytes
    host_weights -= repack
    output_buffer = n_vocab_outputs
    host_compute = 0
    if cpu_layers_end > 0 or output_on_cpu:
        host_compute = c.layer_peak if cpu_layers_end > 0 else 0
        if output_on_cpu:
            host_compute = max(host_compute, c.out_peak)
    else:
        # full offload: the host only builds inputs (embeddings, masks)
        host_compute = costs.n_embd * c.n_ubatch * 4 + c.mask_bytes
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
    tg_time += overhead
    host_flops = host.fp16_tflops * 1e12 * speed.cpu_compute_efficiency
    if gpus and ngl > 0 and c.n_ubatch >= 32:
        # op offload: CPU-resident weights cross PCIe once per ubatch
        pp_time += c.weights_prefix[cpu_layers_end] / (speed.pcie_gbps * 1e9) / c.n_ubatch
    elif host_flops:
        pp_time += 2.0 * active_cpu / costs.bytes_per_param / host_flops
    tg = 1.0 / tg_time if tg_time > 0 else 0.0
    pp = 1.0 / pp_time if pp_time > 0 else 0.0
    return plans, tg, pp, overhead


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
    gpus = [d for d in devices if d.kind == "gpu"]
    hosts = [d for d in devices if d.kind == "cpu"]
    if not hosts:
        # The caller decides the host (hardware.machine): a plan never reads this machine.
        raise ValueError("plan() needs the host among its devices")
    if s.split_mode == "none" and gpus:
        if not 0 <= s.main_gpu < len(gpus):
            from llmtune.errors import FitError
            from llmtune.fit.options import cli_flag

            there = "there is 1 GPU" if len(gpus) == 1 else f"there are {len(gpus)} GPUs"
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
    plans, tg, pp, overhead = _evaluate(costs, gpus, host, s, c, ngl, outputs, speed)
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
        predicted=Speed(tg, pp, overhead),
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
        plans, tg, _pp, _overhead = _evaluate(costs, gpus, host, s, c, ngl, outputs, speed)
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
