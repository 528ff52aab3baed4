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
4. dense-only layers are converted to full layers front to back, device by
   device, taking them from the devices after it, and each device then tries
   to hold part of one more layer: its first dense-only layer keeps its up
   projection (and its gate), or only its attention, while the rest of that
   layer's FFN goes to the next device (the CPU after the last one).

Where the tensors of the MoE layers go is a :data:`~llmtune.fit.overflow.LayerOverflow`
per layer (``Settings.layer_overflow``), which the plan places and the worker
loads as llama.cpp's tensor overrides. ``fit_args`` is what ``llama-fit-params``
prints for the choice: ``-c N -ngl N [-ts A,B] [-ot "..."]``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from llmtune.fit.overflow import CPU_BUFT, LayerOverflow, override_arg, override_list
from llmtune.fit.plan import FitPlan, plan
from llmtune.fit.settings import NGL_AUTO, Settings
from llmtune.hardware.device import Device
from llmtune.model import ModelSpec

MIB = 1024 * 1024
FIT_CTX_MIN = 4096  # common/arg.cpp --fit-ctx default (params.fit_params_min_ctx)
FIT_TARGET_BYTES = 1024 * MIB  # --fit-target default, per device
UINT32 = 1 << 32


@dataclass(frozen=True)
class _Layers:
    """fit.cpp ``ngl_t``: a device's layers, the last ``n_part`` of them dense-only."""

    n_layer: int = 0
    n_part: int = 0
    overflow: str = "MOE"  # what of the first dense-only layer stays (the rest overflows)

    @property
    def n_full(self) -> int:
        return self.n_layer - self.n_part

    def plus(self, n_layer: int = 0, n_part: int = 0) -> _Layers:
        return replace(self, n_layer=self.n_layer + n_layer, n_part=self.n_part + n_part)


Measure = Callable[[Sequence[_Layers], Sequence[str]], list[int]]


@dataclass(frozen=True)
class FitResult:
    """What llama.cpp's fit chose (or why it gave up)."""

    status: Literal["success", "failure"]
    n_ctx: int
    n_gpu_layers: int  # -1: llama.cpp's default, every layer (nothing needed changing)
    tensor_split: tuple[int, ...] = ()  # layers per offload device, with several
    overflow: tuple[LayerOverflow, ...] = ()  # the MoE layers' tensor overrides
    reason: str = ""  # why it failed
    notes: tuple[str, ...] = field(default=())

    @property
    def overrides(self) -> tuple[tuple[str, str], ...]:
        """(tensor pattern, buffer type), as ``-ot`` takes them."""
        return override_list(self.overflow)

    @property
    def fit_args(self) -> str:
        """The arguments ``llama-fit-params`` prints (tools/fit-params/fit-params.cpp)."""
        out = f"-c {self.n_ctx} -ngl {self.n_gpu_layers}"
        if len(self.tensor_split) > 1:
            out += " -ts " + ",".join(str(n) for n in self.tensor_split)
        if self.overflow:
            out += f' -ot "{override_arg(self.overflow)}"'
        return out

    def settings(self, s: Settings) -> Settings:
        """``s`` with the fit's choice in it (what llama-server then loads)."""
        changes: dict[str, object] = {"n_ctx": self.n_ctx}
        if self.n_gpu_layers >= 0:
            changes["n_gpu_layers"] = self.n_gpu_layers
        if len(self.tensor_split) > 1:
            changes["tensor_split"] = tuple(float(n) for n in self.tensor_split)
        if self.overflow:
            # The fit measured its overrides alone: they replace --n-cpu-moe's.
            changes["layer_overflow"] = self.overflow
            changes["n_cpu_moe"] = 0
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

    def for_layers(
        self, layers: Sequence[_Layers], bufts: Sequence[str], n_ctx: int, hp_ngl: int
    ) -> list[int]:
        """fit.cpp ``get_memory_for_layers``."""
        ngl = sum(x.n_layer for x in layers)
        split = tuple(float(x.n_layer) for x in layers) if len(layers) > 1 else ()
        s = self.s.with_(
            n_gpu_layers=ngl,
            n_ctx=n_ctx,
            tensor_split=split,
            layer_overflow=_overflow(layers, bufts, hp_ngl),
        )
        return [d.total_bytes for d in self.plan(s).gpus]


def _step(delta: int, target: int, low: int, high: int) -> int:
    """fit.cpp's false-position step: ``int64 * int64 / int64`` truncated toward
    zero, stored in a uint32, then kept within [1, delta - 1]."""
    num, den = delta * (target - low), (high - low) or 1
    quotient = abs(num) // abs(den) * (1 if (num >= 0) == (den > 0) else -1)
    return min(max(quotient % UINT32, 1), delta - 1)


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
        ngl: int = -1, split: tuple[int, ...] = (), overflow: tuple[LayerOverflow, ...] = ()
    ) -> FitResult:
        return FitResult("success", n_ctx, ngl, split, overflow, notes=tuple(notes))

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

    def memory(layers: Sequence[_Layers], bufts: Sequence[str]) -> list[int]:
        return oracle.for_layers(layers, bufts, n_ctx, hp_ngl)

    # Step 3: dense (or dense-only) layers back to front, by false position.
    surplus_cpu_moe = 0
    if moe:
        all_cpu = oracle.plan(base.with_(n_ctx=n_ctx, n_cpu_moe=-1))
        surplus_cpu_moe = sum(
            f - d.total_bytes - m for f, d, m in zip(free, all_cpu.gpus, margin_of, strict=False)
        )
    # Which buffer type each device's first dense-only layer overflows to.
    bufts = [CPU_BUFT] * nd
    layers = [_Layers() for _ in range(nd)]
    mem = memory(layers, bufts)
    for i in range(nd - 1, -1, -1):
        unassigned = hp_ngl + 1 - sum(x.n_layer for x in layers[i + 1 :])
        high = list(layers)
        n_part = (unassigned if i < nd - 1 else unassigned - 1) if moe else 0
        high[i] = replace(high[i], n_layer=unassigned, n_part=n_part)
        if high[i].n_layer == 0:
            continue
        mem_high = memory(high, bufts)
        if mem_high[i] <= targets[i]:
            layers, mem = high, mem_high
            continue
        delta = high[i].n_layer - layers[i].n_layer
        while delta > 1:
            step = _step(delta, targets[i], mem[i], mem_high[i])
            test = list(layers)
            # the last device's first layer is the output layer, which is always full
            first_is_output = i == nd - 1 and test[i].n_part == 0
            test[i] = test[i].plus(step, (step - 1 if first_is_output else step) if moe else 0)
            mem_test = memory(test, bufts)
            if mem_test[i] <= targets[i]:
                layers, mem = test, mem_test
            else:
                high, mem_high = test, mem_test
            delta = high[i].n_layer - layers[i].n_layer
    if moe and surplus_cpu_moe > 0:
        next_bufts = [d.buffer_name for d in offload[1:]]
        layers, bufts = _to_full_layers(layers, bufts, mem, targets, memory, next_bufts)
    elif moe:
        notes.append("MoE: the dense weights alone do not fit, so every expert stays on the CPU")
    ngl = sum(x.n_layer for x in layers)
    split = tuple(x.n_layer for x in layers) if nd > 1 else ()
    return done(ngl, split, _overflow(layers, bufts, hp_ngl))


def _to_full_layers(
    layers: list[_Layers],
    bufts: list[str],
    mem: list[int],
    targets: list[int],
    memory: Measure,
    next_bufts: Sequence[str],
) -> tuple[list[_Layers], list[str]]:
    """fit.cpp step 4, "converting dense-only layers to full layers and filling
    them front-to-back with overflow to next device/system memory": device by
    device from the first, as many of the dense-only layers (taken from the first
    device that has some, ``id_dense_start``, onward) as fit become its full
    layers, by false position; then part of one more layer, its FFN's rest on the
    next device (``next_bufts[id]``) or, for the last device, the CPU."""
    nd = len(layers)
    dense_start = nd
    for i in range(nd - 1, -1, -1):
        if layers[i].n_layer == 0:
            break
        dense_start = i
    i = 0
    while i <= dense_start < nd:
        high = list(layers)
        for j in range(dense_start, nd):
            move = high[j].n_layer if j < nd - 1 else high[j].n_layer - 1
            high[i] = high[i].plus(move)
            high[j] = replace(high[j].plus(-move), n_part=0)
        dense_start_high = nd - 1
        mem_high = memory(high, bufts)
        if mem_high[i] > targets[i]:
            delta = high[i].n_full - layers[i].n_full
            while delta > 1:
                step = _step(delta, targets[i], mem[i], mem_high[i])
                test, start_test = list(layers), dense_start
                converted = 0
                while start_test < nd:
                    n = min(step - converted, test[start_test].n_part)
                    test[start_test] = test[start_test].plus(-n, -n)
                    test[i] = test[i].plus(n)
                    converted += n
                    if test[start_test].n_part > 0:
                        break
                    start_test += 1
                mem_test = memory(test, bufts)
                if mem_test[i] <= targets[i]:
                    layers, mem, dense_start = test, mem_test, start_test
                else:
                    high, mem_high, dense_start_high = test, mem_test, start_test
                delta = high[i].n_full - layers[i].n_full
        else:
            layers, mem, dense_start = high, mem_high, dense_start_high
        layers, bufts, mem, dense_start = _one_more_part(
            i, layers, bufts, mem, targets, memory, dense_start, next_bufts
        )
        i += 1
    return layers, bufts


def _one_more_part(
    i: int,
    layers: list[_Layers],
    bufts: list[str],
    mem: list[int],
    targets: list[int],
    memory: Measure,
    dense_start: int,
    next_bufts: Sequence[str],
) -> tuple[list[_Layers], list[str], list[int], int]:
    """fit.cpp step 4, "try to fit at least part of one more layer": device ``i``
    takes one more dense-only layer whose up projection stays (UP), then its gate
    too (GATE), else only its attention (ATTN), the rest of its FFN going to the
    next device; each while device ``i`` and that next device stay strictly under
    their targets."""
    nd = len(layers)
    if dense_start >= nd or layers[dense_start].n_layer <= (0 if i < nd - 1 else 1):
        return layers, bufts, mem, dense_start
    if layers[dense_start].n_part == 0:
        # fit.cpp moves a layer that is not dense-only (an unsigned count wraps):
        # with one device that changes nothing, and with several it cannot happen.
        return layers, bufts, mem, dense_start
    test, start_test = list(layers), dense_start
    test[start_test] = test[start_test].plus(-1, -1)
    test[i] = test[i].plus(1, 1)
    if test[start_test].n_part == 0:
        start_test += 1
    bufts_test = list(bufts)
    if i < nd - 1:
        bufts_test[i] = next_bufts[i]

    def fits(m: list[int]) -> bool:
        return m[i] < targets[i] and (i + 1 == nd or m[i + 1] < targets[i + 1])

    test[i] = replace(test[i], overflow="UP")
    mem_test = memory(test, bufts_test)
    if fits(mem_test):
        layers, bufts, mem, dense_start = list(test), bufts_test, mem_test, start_test
        test[i] = replace(test[i], overflow="GATE")
        mem_test = memory(test, bufts_test)
        if fits(mem_test):
            layers, mem = list(test), mem_test
    else:
        test[i] = replace(test[i], overflow="ATTN")
        mem_test = memory(test, bufts_test)
        if fits(mem_test):
            layers, bufts, mem, dense_start = list(test), bufts_test, mem_test, start_test
    return layers, bufts, mem, dense_start


def _overflow(
    layers: Sequence[_Layers], bufts: Sequence[str], hp_ngl: int
) -> tuple[LayerOverflow, ...]:
    """fit.cpp ``set_ngl_tensor_split_tbo``: on each device its full layers come
    first, then its dense-only ones, whose experts go to the CPU; of the first
    dense-only layer, what its fraction does not keep goes to the device's
    overflow buffer type. The output's index matches no tensor but is written."""
    out: list[LayerOverflow] = []
    il0 = hp_ngl + 1 - sum(x.n_layer for x in layers)
    for x, buft in zip(layers, bufts, strict=True):
        il0 += x.n_full
        for il in range(il0, il0 + x.n_part):
            out.append((il, x.overflow, buft) if il == il0 else (il, "MOE", CPU_BUFT))
        il0 += x.n_part
    return tuple(out)
