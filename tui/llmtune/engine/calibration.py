"""Per-machine calibration of the speed model from measured runs.

``llmtune bench`` compares the generation and prompt speeds it measured with
what the plan predicted and keeps the difference in this machine's speed model
(``fit.speed.SpeedModel``): the next ``llmtune fit`` on this machine predicts
with it. Only runs that exercise one kind of device calibrate it (all on the
CPU, or all on one GPU); a partial offload mixes both and is not used.

A token's predicted time is reading (weights over bandwidth x efficiency) plus
a fixed overhead per layer. One measurement cannot tell the two apart, so it
corrects the one that dominates it: a model whose reading takes over four
times its overhead calibrates the bandwidth efficiency; a small one calibrates
the overhead, and only what the overhead's bounds cannot take goes to the
efficiency. Calibrating on the 135M demo model once made every larger model's
prediction 2.7x too slow, because its time is mostly overhead; for the same
reason such a model does not calibrate the compute efficiency (prompt speed).

Every run corrects the prediction: ``llmtune bench``, the best trial of
``llmtune tune`` and the app's generations all go through :func:`record_run`,
which folds the run in (a generation typed in the app, shorter and noisier,
moves the model half way), keeps it in the history of predicted against
measured (:mod:`llmtune.engine.history`), and re-probes the host's bandwidth
when a CPU run measured much faster than predicted (the probe, not llama.cpp,
is then what was wrong: a probe taken on a busy machine).

The file lives in the user's config directory; it is written atomically (a
failed write leaves the old file and no temporary one), and a missing,
unreadable or corrupt file means no calibration, never an error: :func:`load`
says so in one sentence.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from llmtune.engine.history import HistoryEntry, Source
from llmtune.fit.plan import FitPlan
from llmtune.fit.speed import CLASS_SPEEDS, DEFAULT_CLASS, DEFAULT_SPEED_MODEL, SpeedModel
from llmtune.paths import TooLarge, config_dir, read_json, write_atomic

FILE_NAME = "calibration.json"
MAX_FILE_BYTES = 1 << 20  # an entry per machine takes about 200 bytes
_BOUNDS = (0.02, 1.0)
_MEASURED_BOUNDS = (0.02, 1.5)  # a STREAM-style copy understates pure reading a little
_OVERHEAD_BOUNDS = (5e-6, 5e-3)  # seconds per layer per token
_FIELDS = {
    "cpu_bandwidth_efficiency": _BOUNDS,
    "cpu_measured_bandwidth_efficiency": _MEASURED_BOUNDS,
    "gpu_bandwidth_efficiency": _BOUNDS,
    "cpu_compute_efficiency": _BOUNDS,
    "gpu_compute_efficiency": _BOUNDS,
    "cpu_layer_overhead_s": _OVERHEAD_BOUNDS,
    "gpu_layer_overhead_s": _OVERHEAD_BOUNDS,
}


def machine_key() -> str:
    """This machine's CPU model and core count (calibration does not travel)."""
    from llmtune.hardware.bandwidth import cpu_model_name

    return f"{cpu_model_name()} x{os.cpu_count() or 1}"


def _read() -> tuple[dict[str, Any], str | None]:
    """The file's machines, and a sentence for the user when it could not be used."""
    path = config_dir() / FILE_NAME
    try:
        data = read_json(path, MAX_FILE_BYTES)
    except FileNotFoundError:
        return {}, None
    except OSError as exc:
        return {}, f"Could not read the calibration ({exc.strerror or exc}); {_DEFAULTS}."
    except TooLarge:
        return {}, f"The calibration file {path} is too large to be ours; {_DEFAULTS}."
    except ValueError:
        data = None
    if not isinstance(data, dict):
        return {}, f"The calibration file {path} is corrupt; {_DEFAULTS}."
    return data, None


_DEFAULTS = "speeds are predicted with the defaults"


def _clamp(value: float, bounds: tuple[float, float] = _BOUNDS) -> float:
    return min(bounds[1], max(bounds[0], value))


def load() -> tuple[SpeedModel, str | None]:
    """This machine's speed model, and a sentence when the file was unusable."""
    data, notice = _read()
    entry = data.get(machine_key())
    if not isinstance(entry, dict):
        return DEFAULT_SPEED_MODEL, notice
    model = DEFAULT_SPEED_MODEL
    for name, bounds in _FIELDS.items():
        value = entry.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            model = replace(model, **{name: _clamp(float(value), bounds)})
    return model, notice


@dataclass(frozen=True)
class Measurement:
    """One benchmark run beside its plan's prediction.

    ``overhead_s`` is the per-layer part of the predicted token time, over
    ``layers`` layers (``FitPlan.predicted.tg_overhead_s``); ``measured_bandwidth``:
    the host's bandwidth was probed here, so its own efficiency applies.
    """

    on_gpu: bool
    predicted_tg: float
    measured_tg: float
    predicted_pp: float = 0.0
    measured_pp: float = 0.0
    overhead_s: float = 0.0
    layers: int = 0
    measured_bandwidth: bool = False
    device_class: str = ""  # the GPU's speed class, whose per-layer time is its own
    host_read_s: float = 0.0  # of the predicted token time, what the host bandwidth bounds


def measurement_of(
    p: FitPlan, measured_tg: float, measured_pp: float, host_measured: bool
) -> Measurement:
    """A run of plan ``p`` that measured these speeds;
    ``host_measured``: the plan's host bandwidth was probed on this machine."""
    return Measurement(
        on_gpu=bool(p.gpus) and p.n_gpu_layers > 0,
        predicted_tg=p.predicted.tg_tokens_per_s,
        measured_tg=measured_tg,
        predicted_pp=p.predicted.pp_tokens_per_s,
        measured_pp=measured_pp,
        overhead_s=p.predicted.tg_overhead_s,
        layers=sum(d.n_layers + d.has_output for d in p.devices),
        measured_bandwidth=host_measured,
        device_class=next((d.device_class for d in p.gpus), ""),
        host_read_s=p.predicted.tg_host_read_s,
    )


def fold(speed: SpeedModel, m: Measurement) -> dict[str, float]:
    """The fields of ``speed`` that measurement ``m`` changes (pure)."""
    changes: dict[str, float] = {}
    if m.predicted_tg <= 0 or m.measured_tg <= 0:
        return changes
    kind = "gpu" if m.on_gpu else "cpu"
    bandwidth_name = f"{kind}_bandwidth_efficiency"
    if kind == "cpu" and m.measured_bandwidth:
        bandwidth_name = "cpu_measured_bandwidth_efficiency"
    overhead_name = f"{kind}_layer_overhead_s"
    predicted_t, measured_t = 1.0 / m.predicted_tg, 1.0 / m.measured_tg
    reading = max(predicted_t - m.overhead_s, 1e-12)
    overhead = m.overhead_s
    small = m.layers > 0 and m.overhead_s * 4 > reading
    if small:
        # Mostly overhead: correct it, within bounds; the rest goes to reading.
        # The GPU field holds the consumer class's figure, which every class's
        # scales with (fit.speed.gpu_rates): store the measured time in its terms.
        scale = _class_layer_scale(m.device_class) if kind == "gpu" else 1.0
        per_layer = _clamp((measured_t - reading) / m.layers * scale, _OVERHEAD_BOUNDS)
        changes[overhead_name] = per_layer
        overhead = per_layer / scale * m.layers
    new_reading = max(measured_t - overhead, reading / 20)
    if abs(new_reading - reading) > 1e-3 * reading:
        bounds = _FIELDS[bandwidth_name]
        changes[bandwidth_name] = _clamp(
            getattr(speed, bandwidth_name) * reading / new_reading, bounds
        )
    # A small model's prompt speed is mostly fixed costs too (the 135M demo model
    # ran its prompt at a fifth of its FLOPs' speed, which then predicted a 13B's
    # at a third of what llama-bench measured): only a large one calibrates compute.
    if m.predicted_pp > 0 and m.measured_pp > 0 and not small:
        compute_name = f"{kind}_compute_efficiency"
        changes[compute_name] = _clamp(
            getattr(speed, compute_name) * m.measured_pp / m.predicted_pp
        )
    return changes


def _class_layer_scale(device_class: str) -> float:
    """The consumer class's per-layer time over ``device_class``'s (1 when unknown)."""
    own = CLASS_SPEEDS.get(device_class)
    if own is None or own.layer_overhead_s <= 0:
        return 1.0
    return CLASS_SPEEDS[DEFAULT_CLASS].layer_overhead_s / own.layer_overhead_s


def blend(speed: SpeedModel, changes: dict[str, float], weight: float) -> dict[str, float]:
    """``changes`` moved only ``weight`` of the way from ``speed`` (geometrically:
    the fields are rates and times)."""
    if weight >= 1.0:
        return changes
    return {
        name: getattr(speed, name) ** (1.0 - weight) * value**weight
        for name, value in changes.items()
    }


def record(m: Measurement, speed: SpeedModel, weight: float = 1.0) -> SpeedModel | None:
    """Fold measurement ``m`` into this machine's calibration (see :func:`fold`),
    ``weight`` of the way; returns the new model, or None when nothing could be
    written (the run still counts)."""
    if m.predicted_tg <= 0 or m.measured_tg <= 0:
        return None
    changes = blend(speed, fold(speed, m), weight)
    calibrated = replace(speed, **changes)
    data = _read()[0]  # an unusable file is replaced
    entry = data.get(machine_key())
    entry = dict(entry) if isinstance(entry, dict) else {}
    entry.update(changes)
    data[machine_key()] = entry
    try:
        write_atomic(config_dir() / FILE_NAME, json.dumps(data, indent=2, sort_keys=True))
    except OSError:  # a full or read-only disk: the old file stays
        return None
    return calibrated


def one_kind(p: FitPlan) -> bool:
    """The run describes one kind of device: all layers on the CPU, or all on one
    GPU (a split run mixes both speeds and would teach neither)."""
    return p.n_gpu_layers in (0, p.n_layer + 1) and len(p.gpus) <= 1 and not p.rpc_devices


# A CPU run this much faster than predicted from a measured host bandwidth means
# the probe was taken on a busy machine: probe again before believing the run.
REPROBE_RATIO = 1.5
RUN_WEIGHT = 0.5  # a generation typed in the app moves the model half way
Reprobe = Callable[[], "tuple[float | None, float | None]"]


def _reprobe() -> tuple[float | None, float | None]:
    from llmtune.hardware.bandwidth import reprobe_host_bandwidth

    return reprobe_host_bandwidth()


@dataclass(frozen=True)
class Recorded:
    """What :func:`record_run` did: the new speed model (None: unchanged), the
    history entry it kept, and the host bandwidth now when it re-probed."""

    speed: SpeedModel | None
    entry: HistoryEntry
    host_bandwidth_gbps: float | None = None


def record_run(
    p: FitPlan,
    measured_tg: float,
    measured_pp: float,
    *,
    host_measured: bool,
    speed: SpeedModel,
    source: Source,
    model: str,
    weight: float = 1.0,
    reprobe: Reprobe = _reprobe,
) -> Recorded:
    """Fold one run of plan ``p`` into this machine's calibration (when it describes
    one kind of device) and keep it in the history. Never raises for the disk."""
    from llmtune.engine import history

    note = ""
    bandwidth_now: float | None = None
    m = measurement_of(p, measured_tg, measured_pp, host_measured)
    if (
        not m.on_gpu
        and host_measured
        and m.predicted_tg > 0
        and measured_tg > REPROBE_RATIO * m.predicted_tg
    ):
        before, after = reprobe()
        if before and after and after > before * 1.05:
            # The prediction read at the old figure: what it would have said at the new one.
            bandwidth_now = after
            m = _at_bandwidth(m, before / after)
            note = f"host bandwidth re-probed: {before:.1f} -> {after:.1f} GB/s"
        else:
            note = f"host bandwidth re-probed: {after or before or 0:.1f} GB/s, unchanged"
    calibrated = record(m, speed, weight) if one_kind(p) else None
    entry = history.HistoryEntry(
        at=history.now(),
        machine=machine_key(),
        backend=next((d.backend for d in p.gpus), "CPU") if m.on_gpu else "CPU",
        source=source,
        model=model,
        predicted_tg=round(p.predicted.tg_tokens_per_s, 3),
        measured_tg=round(measured_tg, 3),
        predicted_pp=round(p.predicted.pp_tokens_per_s, 3),
        measured_pp=round(measured_pp, 3),
        folded=calibrated is not None,
        note=note,
    )
    history.append(entry)
    return Recorded(calibrated, entry, bandwidth_now)


def _at_bandwidth(m: Measurement, reading_scale: float) -> Measurement:
    """``m`` as predicted with the host's bandwidth-bound reading ``reading_scale``
    times as long per token (the rest of the token's time stays)."""
    token = 1.0 / m.predicted_tg
    bound = min(m.host_read_s, token)
    return replace(
        m,
        predicted_tg=1.0 / (token - bound + bound * reading_scale),
        host_read_s=bound * reading_scale,
    )
