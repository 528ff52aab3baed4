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
  by reserving a graph; :mod:`llmtune.fit.graph` approximates its peaks;
- output buffer: ``n_vocab x n_seq x 4`` bytes of logits on the host;
- RPC devices (llama.cpp's RPC backend: another machine's GPU or CPU) are
  offload targets placed before local GPUs (src/llama.cpp
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
from typing import TYPE_CHECKING, Literal

from llmtune.fit.backends import fa_f16_scratch, runtime_bytes
from llmtune.fit.costs import ModelCosts, model_costs
from llmtune.fit.graph import (
    CTX_PAD,
    GraphContext,
    graph_context,
    layers_peak,
    network_s,
    output_peak,
)
from llmtune.fit.settings import NGL_AUTO, QUANTIZED_CACHE_TYPES, Settings
from llmtune.fit.speed import (
    DEFAULT_SPEED_MODEL,
    PromptShape,
    Speed,
    SpeedModel,
    SpeedSum,
    cpu_rates,
    device_class,
    gpu_rates,
    predicted_speed,
)
from llmtune.hardware.device import Device
from llmtune.model import ModelSpec

if TYPE_CHECKING:
    from llmtune.fit.autofit import FitResult

Verdict = Literal["fits", "tight", "over"]


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
    # A local GPU's runtime (CUDA context) before anything loads (fit.backends).
    runtime_bytes: int = 0
    backend: str = ""  # ggml's backend prefix: CUDA, RPC, CPU (Device.ggml_backend)
    device_class: str = ""  # a GPU's speed class (fit.speed.CLASS_SPEEDS)

    @property
    def total_bytes(self) -> int:
        return (
            self.weights_bytes
            + self.kv_bytes
            + self.compute_bytes
            + self.other_bytes
            + self.runtime_bytes
        )

    @property
    def label(self) -> str:
        """The device as a plan names it: a local GPU with its backend and index
        first, as llama.cpp names it (``CUDA0 RTX 3060 12GB``); an RPC device is
        ``RPC0 host:port``, the host ``CPU (host RAM)``."""
        if self.kind == "gpu":
            short = self.name.replace("NVIDIA GeForce ", "").replace("NVIDIA ", "")
            return f"{self.backend or 'CUDA'}{self.index} {short}"
        return self.name

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
    fit: FitResult | None = None  # what llama.cpp's fit chose, for --ngl auto

    @property
    def fits(self) -> bool:
        return all(d.verdict != "over" for d in self.devices)

    @property
    def verdict(self) -> Verdict:
        verdicts = {d.verdict for d in self.devices}
        return "over" if "over" in verdicts else "tight" if "tight" in verdicts else "fits"

    @property
    def short_bytes(self) -> int:
        """What the devices that are over lack, in all (0 when the plan fits)."""
        return sum(max(0, d.total_bytes - d.free_bytes) for d in self.devices)

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
    def host(self) -> DevicePlan:
        return self.devices[-1]


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
    c: GraphContext,
    ngl: int,
    n_vocab_outputs: int,
    speed: SpeedModel = DEFAULT_SPEED_MODEL,
) -> tuple[list[DevicePlan], SpeedSum]:
    """Per-device plans and the parts of a token's time on them."""
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
    times = SpeedSum()
    shape = PromptShape(
        c.n_ubatch, c.flash_attn, costs.n_embd, costs.n_head, costs.bytes_per_param, s.n_parallel
    )
    active_cpu = float(c.active_prefix[cpu_layers_end])
    # What a token reads of the FFN tensors that leave their layer's device.
    sparse = costs.n_expert_used / costs.n_expert if costs.n_expert else 1.0
    host_weights -= c.moved_prefix[cpu_layers_end]
    for device_number, (gpu, (first, end, has_output)) in enumerate(zip(gpus, ranges, strict=True)):
        w = c.weights_prefix[end] - c.weights_prefix[first]
        pinned = c.pinned_prefix[end] - c.pinned_prefix[first]
        moved_out = c.moved_prefix[end] - c.moved_prefix[first]
        moved_in = sum(b for _il, b, buft in c.moved if buft == gpu.buffer_name)
        kv = c.kv_prefix[end] - c.kv_prefix[first]
        if s.no_kv_offload:
            host_kv += kv
            kv = 0
        w += moved_in - moved_out - pinned
        host_weights += pinned
        active = c.active_prefix[end] - c.active_prefix[first] - pinned
        active += int((moved_in - moved_out) * sparse)
        active_cpu += pinned * sparse
        if has_output:
            w += costs.output_bytes
            active += costs.output_bytes
        n_layers = end - first
        compute = 0
        peak_of_layers, masks, caches = (
            layers_peak(c, first, end, offload=True, fa_scratch=fa_f16_scratch(gpu))
            if n_layers
            else (0, 0, 0)
        )
        out = output_peak(c, offload=bool(c.moe_device_peak)) if has_output else 0
        if copies > 1:
            # Each split's inputs (the residual stream, its masks, positions and
            # cache slots, the output ids where the logits are) are kept
            # ``copies`` times and never reused: the layers' peak holds no mask
            # then (measured through RPC devices and on an H200).
            inputs = c.hidden_bytes + masks + c.token_bytes + caches * c.slot_bytes
            inputs += c.token_bytes if has_output else 0
            layers = peak_of_layers - masks if n_layers else 0
            compute = max(layers, out) + copies * inputs
        elif n_layers or has_output:
            compute = max(peak_of_layers, out)
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
                other_bytes=0,
                # llama.cpp initialises every device it plans on, layers or not.
                runtime_bytes=runtime_bytes(gpu, s.gpu_runtime_bytes),
                backend=gpu.ggml_backend,
                n_layers=n_layers,
                has_output=has_output,
                margin_bytes=s.margin_of(device_number),
                endpoint=gpu.endpoint,
                buffer_name=gpu.buffer_name,
                device_class=device_class(gpu),
            )
        )
        # An RPC host with no GPU named behind it runs like a CPU (llmtune rpc-server).
        cpu_like = gpu.is_rpc and gpu.profile == "cpu"
        rates = (
            cpu_rates(gpu, speed, costs.matmul_type_bytes) if cpu_like else gpu_rates(gpu, speed)
        )
        attending = _attention_layers(c, first, end)
        times.add(rates, shape, active, kv * c.kv_read_fraction, n_layers + has_output, attending)
        if gpu.is_rpc and (n_layers or has_output):
            token_s, ubatch_s = network_s(costs, c, gpu, has_output)
            times.network_s += token_s
            times.prompt_s += ubatch_s / c.n_ubatch
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
            peak, masks, _caches = layers_peak(c, 0, cpu_layers_end)
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
    if c.pinned_prefix[n_layer] > c.pinned_prefix[cpu_layers_end] and not local_gpus:
        # Experts of offloaded layers kept on the CPU run there (no op offload
        # without a local GPU: ggml-backend.cpp ggml_backend_sched_backend_id_from_cur).
        host_compute = max(host_compute, c.moe_host_peak)
    plans.append(
        DevicePlan(
            name=host.name,
            kind="cpu",
            index=0,
            capacity_bytes=host.capacity_bytes,
            # Apple Silicon: the GPU's buffers are the host's RAM, so one pool holds both.
            free_bytes=host.free_bytes
            - sum(p.total_bytes for p, g in zip(plans, gpus, strict=True) if g.unified),
            weights_bytes=host_weights,
            kv_bytes=host_kv,
            compute_bytes=host_compute,
            other_bytes=output_buffer + repack,
            backend="CPU",
            n_layers=cpu_layers_end,
            has_output=output_on_cpu,
            margin_bytes=s.margin_bytes,
            repack_bytes=repack,
            mapped_bytes=(costs.cpu_mapped_span if not gpus else host_weights) if s.use_mmap else 0,
        )
    )
    host_layers = cpu_layers_end + output_on_cpu
    host_kv_read = host_kv * c.kv_read_fraction
    attending = _attention_layers(c, 0, cpu_layers_end)
    rates = cpu_rates(host, speed, costs.matmul_type_bytes, s.threads)
    times.add(rates, shape, active_cpu, host_kv_read, host_layers, attending, offload_to is None)
    if rates.read_bytes_per_s:
        # What a new bandwidth probe would move: the cache read, and the weights'
        # reading unless llama.cpp's kernels were probed (they hold both parts).
        weights_read = 0.0 if host.kernel_rates else active_cpu / rates.read_bytes_per_s
        times.host_read_s = weights_read + host_kv_read / rates.read_bytes_per_s
    if offload_to is not None:
        # op offload: CPU-resident weights cross PCIe once per ubatch
        times.prompt_s += c.weights_prefix[cpu_layers_end] / (speed.pcie_gbps * 1e9) / c.n_ubatch
    return plans, times


def _attention_layers(c: GraphContext, first: int, end: int) -> int:
    return c.full_prefix[end] - c.full_prefix[first] + c.swa_prefix[end] - c.swa_prefix[first]


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
        and not s.layer_overflow
    )
    return 4 if on else 1


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
    return all(p.total_bytes <= p.free_bytes - p.margin_bytes for p in plans if p.kind != "cpu")


def plan(
    spec: ModelSpec,
    devices: Sequence[Device],
    settings: Settings | None = None,
    speed: SpeedModel = DEFAULT_SPEED_MODEL,
) -> FitPlan:
    """Plan ``spec`` on ``devices`` (GPUs and the host) with ``settings``.

    ``n_gpu_layers`` :data:`~llmtune.fit.settings.NGL_AUTO` plans what llama.cpp's
    fit would choose (:mod:`llmtune.fit.autofit`; a context of 0, left to it)."""
    s = settings or Settings()
    s.validate()
    fit = None
    if s.n_gpu_layers == NGL_AUTO:
        from llmtune.fit.autofit import fit_params

        unset = s.with_(n_gpu_layers=-1)
        fit = fit_params(
            spec,
            devices,
            unset,
            n_ctx_auto=s.n_ctx == 0,
            margins=s.device_margins or None,
            margin=s.margin_bytes,
            n_ctx_min=s.fit_ctx,
        )
        s = fit.settings(unset) if fit.status == "success" else unset
    costs = model_costs(spec)
    gpus, host = _split_devices(devices, s)
    n_layer = len(costs.layers)
    c = graph_context(costs, s, spec.n_ctx_train)
    outputs = costs.n_vocab * max(1, s.n_parallel) * 4
    ngl = _resolve_ngl(s, n_layer, bool(gpus))
    plans, times = _evaluate(costs, gpus, host, s, c, ngl, outputs, speed)
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
    if fit is not None and fit.status == "failure":
        notes.insert(0, f"llama.cpp's fit gives up ({fit.reason}): it loads every layer")
    if fit is not None:
        notes += list(fit.notes)
    return FitPlan(
        fit=fit,
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
        predicted=predicted_speed(times, s.n_parallel),
        notes=tuple(notes),
    )


def _max_gpu_layers(
    costs: ModelCosts,
    gpus: Sequence[Device],
    host: Device,
    s: Settings,
    c: GraphContext,
    outputs: int,
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
    c = graph_context(costs, s, spec.n_ctx_train)
    outputs = costs.n_vocab * max(1, s.n_parallel) * 4
    points: list[CurvePoint] = []
    top = len(costs.layers) + 1 if gpus else 0
    for ngl in range(top + 1):
        plans, times = _evaluate(costs, gpus, host, s, c, ngl, outputs, speed)
        tg = 1.0 / times.step_s() if times.step_s() > 0 else 0.0
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
    """``settings`` with the largest context that fits at their offload (``--ctx max``;
    with ``--ngl auto``, every layer offloaded: the fit would trade context for layers)."""
    from llmtune.errors import FitError

    if settings.n_gpu_layers == NGL_AUTO:
        settings = settings.with_(n_gpu_layers=-1)

    largest = max_context(spec, devices, settings.with_(n_ctx=CTX_PAD))
    if largest == 0:
        raise FitError(
            f"not even {CTX_PAD} tokens of context fit at this offload; lower --ngl", "--ctx max"
        )
    return settings.with_(n_ctx=largest)
