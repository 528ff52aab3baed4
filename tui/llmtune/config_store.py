"""The app's saved settings: one :class:`Settings` per model, and the last model.

They live in ``settings.json`` in the user's config directory (``LLMTUNE_CONFIG_DIR``
overrides it, as for ``engine.calibration``). Reading never fails: a missing file
means defaults, a corrupt one means defaults and a notice, and a model whose
saved values llama.cpp would refuse gets its defaults back. Writing is atomic
(a temporary file, fsync, ``os.replace``) and reports a failure as a notice.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any

from llmtune.errors import FitError
from llmtune.fit.settings import Settings
from llmtune.model.spec import is_url, location
from llmtune.paths import TooLarge, config_dir, read_json, write_atomic

FILE_NAME = "settings.json"
# 2: the layers default to llama.cpp's fit (--ngl auto); version 1 saved every
# layer (-1), the old default, for every model opened, so -1 there means "unset".
FORMAT_VERSION = 2
MAX_FILE_BYTES = 4 << 20
MAX_MODELS = 500  # the least recently saved models are forgotten beyond this
# llama.cpp reads every integer option with std::stoi (common/arg.cpp) into an int;
# byte counts are llmtune's own and only need to fit an int64.
INT_RANGE = (-(2**31), 2**31 - 1)
BYTES_RANGE = (-(2**63), 2**63 - 1)
# Settings llama.cpp's fit chooses, not the user: made again from the saved ones.
FIT_CHOSEN = frozenset({"layer_overflow"})


def settings_path() -> Path:
    return config_dir() / FILE_NAME


def model_key(model_path: str | os.PathLike[str]) -> str:
    """Models are keyed by absolute path (symlinks kept: a Hugging Face snapshot
    path names the model, the blob it points to does not), or by URL (a model
    planned from its header on the Hub)."""
    return location(os.fspath(model_path))


@dataclass(frozen=True)
class Store:
    """Saved settings; change it with the ``with_*`` methods, which return a new store."""

    models: Mapping[str, Settings] = field(default_factory=lambda: MappingProxyType({}))
    last_model: str | None = None

    def settings_for(self, model_path: str | os.PathLike[str]) -> Settings | None:
        return self.models.get(model_key(model_path))

    def with_settings(self, model_path: str | os.PathLike[str], settings: Settings) -> Store:
        key = model_key(model_path)
        models = {k: v for k, v in self.models.items() if k != key}
        models[key] = settings  # the most recent last, so trimming forgets the oldest
        while len(models) > MAX_MODELS:
            del models[next(iter(models))]
        return Store(MappingProxyType(models), self.last_model)

    def with_last_model(self, model_path: str | os.PathLike[str] | None) -> Store:
        last = None if model_path is None else model_key(model_path)
        return Store(self.models, last)


def load() -> tuple[Store, str | None]:
    """The saved store, and a sentence for the user when something had to be dropped."""
    path = settings_path()
    try:
        data = read_json(path, MAX_FILE_BYTES)
    except FileNotFoundError:
        return Store(), None
    except OSError as exc:
        return Store(), f"Could not read saved settings ({exc.strerror or exc}); using defaults."
    except TooLarge:
        return Store(), f"The settings file {path} is too large to be ours; using defaults."
    except ValueError:
        return Store(), f"The settings file {path} is corrupt; using defaults."
    if not isinstance(data, dict):
        return Store(), f"The settings file {path} is corrupt; using defaults."
    return _from_json(data, path)


def _from_json(data: dict[str, Any], path: Path) -> tuple[Store, str | None]:
    dropped = 0
    models: dict[str, Settings] = {}
    saved = data.get("models", {})
    if not isinstance(saved, dict):
        saved, dropped = {}, 1
    before_auto = data.get("version") == 1
    for key, values in saved.items():
        if before_auto and isinstance(values, dict) and values.get("n_gpu_layers") == -1:
            values = {k: v for k, v in values.items() if k != "n_gpu_layers"}
        settings = _settings_from_json(values) if os.path.isabs(key) or is_url(key) else None
        if settings is None:
            dropped += 1
        else:
            models[key] = settings
    last = data.get("last_model")
    if last is not None and not (isinstance(last, str) and (os.path.isabs(last) or is_url(last))):
        last = None
        dropped += 1
    notice = None
    if dropped:
        notice = (
            f"{dropped} saved setting{'s' if dropped > 1 else ''} in {path} "
            f"{'were' if dropped > 1 else 'was'} invalid; those models start from the defaults."
        )
    while len(models) > MAX_MODELS:
        del models[next(iter(models))]
    return Store(MappingProxyType(models), last), notice


def _settings_from_json(values: object) -> Settings | None:
    """A model's Settings, or None when any saved value is of the wrong kind or
    llama.cpp would refuse the combination. Unknown keys are ignored."""
    if not isinstance(values, dict):
        return None
    changes: dict[str, object] = {}
    for f in fields(Settings):
        if f.name not in values or f.name in FIT_CHOSEN:
            continue
        default = f.default if f.default is not MISSING else None
        whole_bytes = f.name.endswith("_bytes") or f.name == "device_margins"
        value = _coerce(values[f.name], default, whole_bytes)
        if value is _INVALID:
            return None
        changes[f.name] = value
    try:
        settings = Settings().with_(**changes)
        settings.validate()
    except (FitError, TypeError, ValueError):
        return None
    return settings


_INVALID = object()


def _coerce(value: object, default: object, is_bytes: bool = False) -> object:
    """``value`` as the type of the field's default, or _INVALID."""
    if isinstance(default, bool):
        return value if isinstance(value, bool) else _INVALID
    if isinstance(default, int):
        if not isinstance(value, int) or isinstance(value, bool):
            return _INVALID
        low, high = BYTES_RANGE if is_bytes else INT_RANGE
        return value if low <= value <= high else _INVALID
    if isinstance(default, str):
        return value if isinstance(value, str) else _INVALID
    if isinstance(default, tuple):
        if not isinstance(value, list) or len(value) > 64:
            return _INVALID
        items: list[float] = []
        for item in value:
            if isinstance(item, bool) or not isinstance(item, (int, float)):
                return _INVALID
            if not math.isfinite(item):
                return _INVALID
            if is_bytes:  # a list of byte counts (device_margins): whole, in range
                if not isinstance(item, int) or not BYTES_RANGE[0] <= item <= BYTES_RANGE[1]:
                    return _INVALID
                items.append(item)
            else:
                items.append(float(item))
        return tuple(items)
    return _INVALID


def _settings_to_json(settings: Settings) -> dict[str, object]:
    out: dict[str, object] = {}
    for f in fields(Settings):
        if f.name in FIT_CHOSEN:
            continue
        value = getattr(settings, f.name)
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def save(store: Store) -> str | None:
    """Write the store atomically; a sentence for the user when it could not be."""
    data = {
        "version": FORMAT_VERSION,
        "last_model": store.last_model,
        "models": {k: _settings_to_json(v) for k, v in store.models.items()},
    }
    try:
        text = json.dumps(data, indent=2, allow_nan=False)
    except ValueError:
        return "Settings were not saved: a value cannot be written as JSON."
    folder = config_dir()
    try:
        write_atomic(folder / FILE_NAME, text, durable_dir=True)
    except OSError as exc:
        return f"Settings were not saved to {folder}: {exc.strerror or exc}."
    return None
