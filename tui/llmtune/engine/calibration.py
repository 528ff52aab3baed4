"""Per-machine calibration of the speed model from measured runs.

``llmtune bench`` compares the generation and prompt speeds it measured with
what the plan predicted and keeps the ratio as this machine's efficiency
(``fit.speed.SpeedModel``): the next ``llmtune fit`` on this machine predicts
with it. Only runs that exercise one kind of device calibrate it (all on the
CPU, or all on one GPU); a partial offload mixes both and is not used.

The file lives in the user's config directory; it is written atomically (a
failed write leaves the old file and no temporary one), and a missing,
unreadable or corrupt file means no calibration, never an error: :func:`load`
says so in one sentence.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import replace
from typing import Any

from llmtune.fit.speed import DEFAULT_SPEED_MODEL, SpeedModel
from llmtune.paths import config_dir

FILE_NAME = "calibration.json"
MAX_FILE_BYTES = 1 << 20  # an entry per machine takes about 200 bytes
_BOUNDS = (0.02, 1.0)


def machine_key() -> str:
    """This machine's CPU model and core count (calibration does not travel)."""
    from llmtune.hardware.bandwidth import cpu_model_name

    return f"{cpu_model_name()} x{os.cpu_count() or 1}"


def _read() -> tuple[dict[str, Any], str | None]:
    """The file's machines, and a sentence for the user when it could not be used."""
    path = config_dir() / FILE_NAME
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        return {}, None
    except OSError as exc:
        return {}, f"Could not read the calibration ({exc.strerror or exc}); {_DEFAULTS}."
    if len(raw) > MAX_FILE_BYTES:
        return {}, f"The calibration file {path} is too large to be ours; {_DEFAULTS}."
    try:
        data = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):
        data = None
    if not isinstance(data, dict):
        return {}, f"The calibration file {path} is corrupt; {_DEFAULTS}."
    return data, None


_DEFAULTS = "speeds are predicted with the defaults"


def _clamp(value: float) -> float:
    return min(_BOUNDS[1], max(_BOUNDS[0], value))


def load() -> tuple[SpeedModel, str | None]:
    """This machine's speed model, and a sentence when the file was unusable."""
    data, notice = _read()
    entry = data.get(machine_key())
    if not isinstance(entry, dict):
        return DEFAULT_SPEED_MODEL, notice
    model = DEFAULT_SPEED_MODEL
    for name in (
        "cpu_bandwidth_efficiency",
        "gpu_bandwidth_efficiency",
        "cpu_compute_efficiency",
        "gpu_compute_efficiency",
    ):
        value = entry.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            model = replace(model, **{name: _clamp(float(value))})
    return model, notice


def record(
    *,
    on_gpu: bool,
    predicted_tg: float,
    measured_tg: float,
    predicted_pp: float,
    measured_pp: float,
    speed: SpeedModel,
) -> SpeedModel | None:
    """Fold one measurement into this machine's calibration; returns the new
    model, or None when nothing could be written (the run still counts)."""
    if predicted_tg <= 0 or measured_tg <= 0:
        return None
    kind = "gpu" if on_gpu else "cpu"
    bandwidth_name = f"{kind}_bandwidth_efficiency"
    compute_name = f"{kind}_compute_efficiency"
    new_bandwidth = _clamp(getattr(speed, bandwidth_name) * measured_tg / predicted_tg)
    changes: dict[str, float] = {bandwidth_name: new_bandwidth}
    if predicted_pp > 0 and measured_pp > 0:
        changes[compute_name] = _clamp(getattr(speed, compute_name) * measured_pp / predicted_pp)
    calibrated = replace(speed, **changes)
    data = _read()[0]  # an unusable file is replaced
    entry = data.get(machine_key())
    entry = dict(entry) if isinstance(entry, dict) else {}
    entry.update(changes)
    data[machine_key()] = entry
    folder = config_dir()
    tmp: str | None = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".calibration-", suffix=".json")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, folder / FILE_NAME)
        tmp = None
    except OSError:  # a full or read-only disk
        return None
    finally:
        if tmp is not None:  # a full disk left a temporary file half written
            try:
                os.unlink(tmp)
            except OSError:
                pass
    return calibrated
