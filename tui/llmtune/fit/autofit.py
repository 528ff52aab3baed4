"""llama.cpp's fit, decision by decision: what ``--fit on`` (llama-server's
default) or ``llama-fit-params`` would choose on these devices.

common/fit.cpp ``common_params_fit_impl`` of the vendored llama.cpp measures
memory by loading the model with ``no_alloc`` for each candidate; here
:func:`llmtune.fit.plan.plan` is that measurement, and the steps are the same:

1. With llama.cpp's defaults (every layer offloaded; an unset context at the
   trained context, times the sequences without a unified cache), does every
   device keep its margin (``--fit-target``, 1024 MiB each)? Then nothing changes.
2. Otherwise an unset context shrinks toward ``--fit-ctx`` (4096) by linear
   interpolation between the two measured extremes, rounded down to 256 (with
   several devices, a safety allowance of half a layer per device, a sixth of one
   for MoE, is kept); one device that fits then stops there.
3. Layers are then filled back to front, device by device, by false position
   between none and all the unassigned layers, each device's count the largest
   that keeps its margin; for a MoE model every layer but the output is
   "dense-only" (its expert tensors on the CPU), and when everything dense fits,
4. dense-only layers are converted to full layers front to back the same way.

Not reproduced here (and said in ``FitResult.notes`` when it would matter):
step 4 over several devices, and its last refinement that overflows part of one
more layer (``-ot`` with ``ffn_(gate|down)``): llmtune's planner places whole
expert sets, not single tensors of a layer. ``fit_args`` is what
``llama-fit-params`` prints for the choice: ``-c N -ngl N [-ts A,B] [-ot "..."]``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from llmtune.fit.plan import FitPlan, plan
from llmtune.fit.settings import NGL_AUTO, Settings
from llmtune.hardware.device import Device
from llmtune.model import ModelSpec

MIB = 1024 * 1024
FIT_CTX_MIN = 4096  # common/arg.cpp --fit-ctx default (params.fit_params_min_ctx)
FIT_TARGET_BYTES = 1024 * MIB  # --fit-target default, per device
# ggml-backend.cpp: the CPU buffer type's name, as llama-fit-params prints it after '='.
CPU_BUFT = "CPU"


def moe_pattern(il: int) -> str:
    """fit.cpp ``get_overflow_pattern`` for LAYER_FRACTION_MOE: layer ``il``'s experts."""
    return f"blk\\.{il}\\.ffn_(up|down|gate_up|gate)_(ch|)exps"


# fit.cpp ``get_overflow_pattern`` for the first dense-only layer of a device:
# what of its FFN goes to the CPU when part of it stays (LAYER_FRACTION_*).
FRACTION_PATTERNS = {
    "ATTN": "ffn_(gate|up|gate_up|down).*",  # only attention stays
    "UP": "ffn_(gate|gate_up|down).*",  # attention and the up projection stay
    "GATE": "ffn_down.*",  # everything but the down projection stays
}


def fraction_pattern(il: int, fraction: str) -> str:
    return f"blk\\.{il}\\." + FRACTION_PATTERNS[fraction]


@dataclass
class _Layers:
    """fit.cpp ``ngl_t``: a device's layers, the first ``n_part`` of them dense-only."""

    n_layer: int = 0
    n_part: int = 0
    overflow: str = "MOE"  # what of the first dense-only layer goes to the CPU

    @property
    def n_full(self) -> int:
        return self.n_layer - self.n_part


@dataclass(frozen=True)
class FitResult:
    """What llama.cpp's fit chose (or why it gave up)."""

    status: Literal["success", "failure"]
    n_ctx: int
    n_gpu_layers: int  # -1: llama.cpp's default, every layer (nothing needed changing)
    tensor_split: tuple[int, ...] = ()  # layers per offload device, with several
    overrides: tuple[tuple[str, str], ...] = ()  # (tensor pattern, buffer type)
    reason: str = ""  # why it failed
    notes: tuple[str, ...] = field(default=())
    experts_on_cpu: int = 0  # layers whose experts stay on the CPU (llmtune's --n-cpu-moe)

    @property
    def fit_args(self) -> str:
        """The arguments ``llama-fit-params`` prints (tools/fit-params/fit-params.cpp)."""
        out = f"-c {self.n_ctx} -ngl {self.n_gpu_layers}"
        if len(self.tensor_split) > 1:
            out += " -ts " + ",".join(str(n) for n in self.tensor_split)
        if self.overrides:
            out += ' -ot "' + ",".join(f"{p}={b}" for p, b in self.overrides) + '"'
        return out

    def settings(self, s: Settings) -> Settings:
        """``s`` with the fit's choice in it (what llama-server then loads)."""
        changes: dict[str, object] = {"n_ctx": self.n_ctx}
        if self.n_gpu_layers >= 0:
            changes["n_gpu_layers"] = self.n_gpu_layers
        if len(self.tensor_split) > 1:
            changes["tensor_split"] = tuple(float(n) for n in self.tensor_split)
        if self.experts_on_cpu:
            # The fit keeps the experts of each device's last dense-only layers
            # on the CPU; --n-cpu-moe keeps the first ones'. Layers of one model
            # are alike, so the memory and the speed are the same.
            changes["n_cpu_moe"] = self.experts_on_cpu
        return s.with_(**changes)


class _Oracle:
    """Memory per offload device for one candidate, from the plan (fit.cpp
    ``common_get_device_memory_data_impl``: model + context + compute)."""

    def __init__(self, spec: ModelSpec, devices: Sequence[Device], s: Settings) -> None:
        self.spec = spec
        self.devices = tuple(devices)
        self.s = s

    def plan(self, s: Settings) -> FitPlan:
        return plan(self.spec, self.devices, s)

    def for_layers(self, layers: Sequence[_Layers], n_ctx: int, hp_ngl: int) -> list[int]:
        ngl = sum(x.n_layer for x in layers)
        split = tuple(float(x.n_layer) for x in layers) if len(layers) > 1 else ()
        n_cpu_moe = _experts_on_cpu(layers, hp_ngl)
        s = self.s.with_(n_gpu_layers=ngl, n_ctx=n_ctx, tensor_split=split, n_cpu_moe=n_cpu_moe)
        p = self.plan(s)
        return [d.total_bytes for d in p.gpus]


def fit_params(
    spec: ModelSpec,
    devices: Sequence[Device],
    settings: Settings,
    *,
    n_ctx_auto: bool,
    margins: Sequence[int] | None = None,
    margin: int = FIT_TARGET_BYTES,
    n_ctx_min: int = FIT_CTX_MIN,
) -> FitResult:
    """What llama.cpp's fit makes of ``settings`` on ``devices`` (offload devices
    in llama.cpp's order, then the host). ``n_ctx_auto``: the user left the
    context unset (llama.cpp's ``-c 0``); ``margins``: ``--fit-target`` per device
    (each ``margin`` when not given)."""
    every = [d for d in devices if d.is_rpc] + [d for d in devices if d.is_gpu]
    offload = every
    if settings.split_mode == "none" and 0 <= settings.main_gpu < len(every):
        offload = [every[settings.main_gpu]]  # src/llama.cpp: the main GPU alone
    host = [d for d in devices if d.kind == "cpu"]
    nd = len(offload)
    hp_ngl = spec.n_layer
    n_streams = 1 if settings.kv_unified else max(1, settings.n_parallel)
    n_ctx_max = (spec.n_ctx_train or settings.n_ctx) * n_streams
    n_ctx_min_total = n_ctx_min * n_streams
    n_ctx = n_ctx_max if n_ctx_auto else settings.n_ctx
    base = settings.with_(n_gpu_layers=-1, tensor_split=(), n_cpu_moe=0)
    oracle = _Oracle(spec, [*every, *host], base)
    per_device = list(margins) if margins else []
    per_device += [per_device[-1] if per_device else margin] * max(0, max(nd, 1) - len(per_device))
    margin_of = per_device
    free = [d.free_bytes for d in offload]
    notes: list[str] = []

    def done(
        ngl: int = -1,
        split: tuple[int, ...] = (),
        ot: tuple[tuple[str, str], ...] = (),
        experts: int = 0,
    ) -> FitResult:
        return FitResult(
            "success", n_ctx, ngl, split, ot, notes=tuple(notes), experts_on_cpu=experts
        )

    def fail(reason: str) -> FitResult:
        return FitResult("failure", n_ctx, -1, reason=reason, notes=tuple(notes))

    # Step 1: llama.cpp's defaults.
    full = oracle.plan(base.with_(n_ctx=n_ctx))
    if nd == 0:
        used = full.host.total_bytes
        if full.host.capacity_bytes - used >= margin_of[0]:
            return done()
    else:
        used_per = [d.total_bytes for d in full.gpus]
        projected_free = [f - u for f, u in zip(free, used_per, strict=True)]
        if all(pf >= m for pf, m in zip(projected_free, margin_of, strict=False)):
            return done()
        sum_projected_used = sum(used_per)
        sum_free = sum(free)
        # Step 2: a smaller context, when it was left unset.
        surplus = sum(projected_free) - sum(margin_of[:nd])
        if surplus < 0 and n_ctx_auto and n_ctx_max > n_ctx_min_total:
            target = sum_free - sum(margin_of[:nd])
            if nd > 1:
                model_bytes = sum(d.weights_bytes for d in full.gpus)
                per_layer = model_bytes // max(1, min(full.n_gpu_layers, hp_ngl))
                target -= (nd + 1) * per_layer // (6 if spec.n_expert else 2)
            n_ctx = n_ctx_min_total
            at_min = oracle.plan(base.with_(n_ctx=n_ctx))
            used_min = sum(d.total_bytes for d in at_min.gpus)
            if target > used_min:
                n_ctx += (
                    (n_ctx_max - n_ctx_min_total)
                    * (target - used_min)
                    // max(1, sum_projected_used - used_min)
                )
                align = 256 * n_streams
                n_ctx = max(n_ctx - n_ctx % align, n_ctx_min_total)
                if nd <= 1:
                    return done()
    if nd == 0:
        return fail("was unable to fit model into system memory by reducing context")
    if settings.n_gpu_layers not in (-1, NGL_AUTO):
        return fail(f"n_gpu_layers already set by user to {settings.n_gpu_layers}")
    if nd > 1 and any(settings.tensor_split):
        return fail("tensor_split already set by user")
    targets = [f - m for f, m in zip(free, margin_of, strict=False)]
    moe = spec.n_expert > 0

    def memory(layers: Sequence[_Layers]) -> list[int]:
        return oracle.for_layers(layers, n_ctx, hp_ngl)

    # Step 3: dense (or dense-only) layers back to front, by false position.
    surplus_cpu_moe = 0
    if moe:
        all_cpu = oracle.plan(base.with_(n_ctx=n_ctx, n_cpu_moe=-1))
        surplus_cpu_moe = sum(
            f - d.total_bytes - m for f, d, m in zip(free, all_cpu.gpus, margin_of, strict=False)
        )
    layers = [_Layers() for _ in range(nd)]
    mem = memory(layers)
    for i in range(nd - 1, -1, -1):
        unassigned = hp_ngl + 1 - sum(x.n_layer for x in layers[i + 1 :])
        high = [_Layers(x.n_layer, x.n_part) for x in layers]
        high[i].n_layer = unassigned
        if moe:
            high[i].n_part = high[i].n_layer if i < nd - 1 else high[i].n_layer - 1
        if high[i].n_layer == 0:
            continue
        mem_high = memory(high)
        if mem_high[i] <= targets[i]:
            layers, mem = high, mem_high
            continue
        delta = high[i].n_layer - layers[i].n_layer
        while delta > 1:
            step = delta * (targets[i] - mem[i]) // max(1, mem_high[i] - mem[i])
            step = min(max(step, 1), delta - 1)
            test = [_Layers(x.n_layer, x.n_part) for x in layers]
            test[i].n_layer += step
            if moe:
                first_is_output = i == nd - 1 and test[i].n_part == 0
                test[i].n_part += step - 1 if first_is_output else step
            mem_test = memory(test)
            if mem_test[i] <= targets[i]:
                layers, mem = test, mem_test
            else:
                high, mem_high = test, mem_test
            delta = high[i].n_layer - layers[i].n_layer
    if moe and surplus_cpu_moe > 0:
        if nd == 1:
            layers, mem = _convert_dense_only(layers, mem, targets, memory)
            layers = _one_more_part(spec, layers, mem, targets, hp_ngl)
        else:
            notes.append(
                "MoE over several devices: llama.cpp's fit would then bring some experts back "
                "to the devices; llmtune keeps them all on the CPU"
            )
    elif moe:
        notes.append("MoE: the dense weights alone do not fit, so every expert stays on the CPU")
    ngl = sum(x.n_layer for x in layers)
    split = tuple(x.n_layer for x in layers) if nd > 1 else ()
    experts = _experts_on_cpu(layers, hp_ngl) if moe else 0
    return done(ngl, split, _overrides(layers, hp_ngl, ngl, moe), experts)


def _convert_dense_only(
    layers: list[_Layers],
    mem: list[int],
    targets: list[int],
    memory: Callable[[Sequence[_Layers]], list[int]],
) -> tuple[list[_Layers], list[int]]:
    """Step 4 on one device: dense-only layers become full layers, as many as fit
    (fit.cpp, "converting dense-only layers to full layers"), by false position."""
    measure = memory
    low = layers[0]
    high = _Layers(low.n_layer, 0)
    mem_high = measure([high])
    if mem_high[0] <= targets[0]:
        return [high], mem_high
    delta = high.n_full - low.n_full
    while delta > 1:
        step = delta * (targets[0] - mem[0]) // max(1, mem_high[0] - mem[0])
        step = min(max(step, 1), delta - 1)
        test = _Layers(low.n_layer, low.n_part - min(step, low.n_part))
        mem_test = measure([test])
        if mem_test[0] <= targets[0]:
            low, mem = test, mem_test
        else:
            high, mem_high = test, mem_test
        delta = high.n_full - low.n_full
    return [low], mem


def _one_more_part(
    spec: ModelSpec, layers: list[_Layers], mem: list[int], targets: list[int], hp_ngl: int
) -> list[_Layers]:
    """fit.cpp's last step on one device, "try to fit at least part of one more
    layer": the first dense-only layer keeps its up projection (UP), then its gate
    too (GATE), else only attention (ATTN), each when the device stays strictly
    under its target. The plan places whole expert sets, so the difference is
    counted from the layer's own tensors."""
    x = layers[0]
    if x.n_part == 0 or x.n_layer <= 1:
        return layers
    ngl = x.n_layer
    il = hp_ngl + 1 - ngl + x.n_full
    sizes: dict[str, int] = {}
    prefix = f"blk.{il}."
    for t in spec.tensors:
        if t.name.startswith(prefix):
            part = t.name[len(prefix) :].split(".")[0]
            sizes[part] = sizes.get(part, 0) + t.nbytes
    up = sizes.get("ffn_up_exps", 0) + sizes.get("ffn_up_chexps", 0)
    gate = sizes.get("ffn_gate_exps", 0) + sizes.get("ffn_gate_chexps", 0)
    # Dense FFN tensors of a MoE layer (the router, shared experts) stay with the
    # MOE fraction; UP and ATTN send those named ffn_gate*/ffn_down* to the CPU too.
    dense_gate_down = sum(
        b
        for name, b in sizes.items()
        if name.startswith(("ffn_gate", "ffn_down")) and "exps" not in name
    )
    dense_up = sum(
        b for name, b in sizes.items() if name.startswith("ffn_up") and "exps" not in name
    )
    with_up = mem[0] + up - dense_gate_down
    if with_up < targets[0]:
        chosen = "UP"
        if mem[0] + up + gate < targets[0]:
            chosen = "GATE"
    else:
        chosen = "ATTN"
        if mem[0] - dense_gate_down - dense_up >= targets[0]:
            return layers
    return [_Layers(x.n_layer, x.n_part, chosen)]


def _dense_only(layers: Sequence[_Layers], hp_ngl: int) -> list[int]:
    """The layers whose experts the fit's overrides keep on the CPU: on each
    device its full layers come first, then its dense-only ones
    (``set_ngl_tensor_split_tbo``); the output's index matches no tensor."""
    ngl = sum(x.n_layer for x in layers)
    out: list[int] = []
    il0 = hp_ngl + 1 - ngl
    for x in layers:
        il0 += x.n_full
        out += [il for il in range(il0, il0 + x.n_part) if il < hp_ngl]
        il0 += x.n_part
    return out


def _experts_on_cpu(layers: Sequence[_Layers], hp_ngl: int) -> int:
    """How many layers keep their experts on the CPU (the CPU's own and the
    dense-only ones), as llmtune's ``n_cpu_moe`` places them: a prefix of the
    layers. Memory per device matches the fit's overrides while the layers whose
    experts stay on a device are the last ones (one device, or the dense-only
    fill of step 3); step 4 over several devices is not modelled."""
    dense_only = _dense_only(layers, hp_ngl)
    if not dense_only:
        return 0
    ngl = sum(x.n_layer for x in layers)
    cpu_layers = max(0, hp_ngl + 1 - ngl)
    return min(hp_ngl, cpu_layers + len(dense_only))


def _overrides(
    layers: Sequence[_Layers], hp_ngl: int, ngl: int, moe: bool
) -> tuple[tuple[str, str], ...]:
    """fit.cpp ``set_ngl_tensor_split_tbo``: each device's dense-only layers (its
    first ``n_part``) keep their experts on the CPU."""
    if not moe:
        return ()
    out: list[tuple[str, str]] = []
    il0 = hp_ngl + 1 - ngl
    for x in layers:
        il0 += x.n_full
        for il in range(il0, il0 + x.n_part):
            first = il == il0 and x.overflow != "MOE"
            out.append((fraction_pattern(il, x.overflow) if first else moe_pattern(il), CPU_BUFT))
        il0 += x.n_part
    return tuple(out)
