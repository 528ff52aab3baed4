"""Predicted against measured: every run that corrected this machine's speed model.

``llmtune bench``, ``llmtune tune`` (its best trial) and the app's generations
each add one entry: the plan's predicted speeds beside what llama.cpp
measured, where it came from, and whether it was folded into the calibration
(:mod:`llmtune.engine.calibration`). ``llmtune bench --history`` prints them and
the app's monitor shows the last few.

The file (``calibration_history.json`` beside the calibration) keeps the last
:data:`MAX_ENTRIES` of every machine together, is replaced atomically (a
temporary file renamed over it), and a missing, corrupt or oversized one reads
as empty: the history is a record, never a reason to fail.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from typing import Any, Literal

from llmtune.paths import config_dir, read_json, write_atomic
from llmtune.textsafe import inert

FILE_NAME = "calibration_history.json"
MAX_ENTRIES = 100
MAX_FILE_BYTES = 1 << 20  # an entry takes about 300 bytes
VERSION = 1

Source = Literal["bench", "tune", "run"]


@dataclass(frozen=True)
class HistoryEntry:
    """One run: what the plan predicted and what llama.cpp measured (tokens/s; 0: not measured)."""

    at: str  # ISO 8601, UTC
    machine: str  # engine.calibration.machine_key()
    backend: str  # the ggml backend the layers ran on: CPU, CUDA, ROCm, MTL
    source: Source
    model: str
    predicted_tg: float
    measured_tg: float
    predicted_pp: float = 0.0
    measured_pp: float = 0.0
    folded: bool = False  # it changed the calibration
    note: str = ""  # what else happened (a host bandwidth re-probe)

    @property
    def tg_ratio(self) -> float | None:
        """Measured over predicted generation speed."""
        return self.measured_tg / self.predicted_tg if self.predicted_tg > 0 else None

    @property
    def pp_ratio(self) -> float | None:
        if self.predicted_pp <= 0 or self.measured_pp <= 0:
            return None
        return self.measured_pp / self.predicted_pp

    def line(self) -> str:
        """``bench CPU: tg 12.1 predicted, 14.3 measured (x1.18)``: one line for a narrow pane."""
        ratio = self.tg_ratio
        times = f" (x{ratio:.2f})" if ratio is not None else ""
        return (
            f"{self.source} {self.backend}: tg {self.predicted_tg:,.1f} predicted, "
            f"{self.measured_tg:,.1f} measured{times}"
        )


_FIELD_NAMES = {f.name for f in fields(HistoryEntry)}


def _entry(raw: object) -> HistoryEntry | None:
    if not isinstance(raw, dict) or not _FIELD_NAMES >= set(raw):
        return None
    try:
        entry = HistoryEntry(**raw)
    except TypeError:
        return None
    numbers = (entry.predicted_tg, entry.measured_tg, entry.predicted_pp, entry.measured_pp)
    if not all(isinstance(n, (int, float)) and not isinstance(n, bool) for n in numbers):
        return None
    if not all(isinstance(t, str) for t in (entry.at, entry.machine, entry.backend, entry.model)):
        return None
    return entry


def read(machine: str | None = None) -> list[HistoryEntry]:
    """The entries, oldest first (only ``machine``'s when given); [] when unreadable."""
    path = config_dir() / FILE_NAME
    try:
        data = read_json(path, MAX_FILE_BYTES)
    except (OSError, ValueError):
        return []
    items = data.get("entries") if isinstance(data, dict) else None
    if not isinstance(items, list):
        return []
    entries = [e for e in (_entry(item) for item in items) if e is not None]
    return [e for e in entries if machine is None or e.machine == machine]


def append(entry: HistoryEntry) -> bool:
    """Add ``entry``, keeping the last :data:`MAX_ENTRIES`; False when the disk refused."""
    entries = [*read(), entry][-MAX_ENTRIES:]
    text = json.dumps(
        {"version": VERSION, "entries": [asdict(e) for e in entries]}, indent=1, sort_keys=True
    )
    try:
        write_atomic(config_dir() / FILE_NAME, text)
    except OSError:
        return False
    return True


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def as_json(entries: list[HistoryEntry]) -> list[dict[str, Any]]:
    """The entries as ``bench --history --json`` prints them, with their ratios."""
    out = []
    for e in entries:
        item: dict[str, Any] = asdict(e)
        item["tg_ratio"] = None if e.tg_ratio is None else round(e.tg_ratio, 4)
        item["pp_ratio"] = None if e.pp_ratio is None else round(e.pp_ratio, 4)
        out.append(item)
    return out


def table(entries: list[HistoryEntry], width: int = 80) -> str:
    """The entries as a table, newest last, cut to ``width`` columns."""
    if not entries:
        return "No runs recorded on this machine yet: llmtune bench MODEL records one.\n"
    head = (
        f"{'when':<16} {'from':<5} {'on':<5} {'tg pred':>7} {'tg meas':>7} {'x':>5} "
        f"{'pp pred':>7} {'pp meas':>7} kept model"
    )
    lines = [head[:width]]
    for e in entries:
        ratio = f"{e.tg_ratio:.2f}" if e.tg_ratio is not None else "-"
        pp_pred = f"{e.predicted_pp:,.0f}" if e.predicted_pp > 0 else "-"
        pp_meas = f"{e.measured_pp:,.0f}" if e.measured_pp > 0 else "-"
        kept = "yes" if e.folded else "no"
        row = (
            f"{e.at[:16].replace('T', ' '):<16} {e.source:<5} {e.backend[:5]:<5} "
            f"{e.predicted_tg:>7,.1f} {e.measured_tg:>7,.1f} {ratio:>5} {pp_pred:>7} {pp_meas:>7} "
            f"{kept:<4} {inert(e.model, max_chars=60)}"
        )
        lines.append(row[:width])
        if e.note:
            lines.append(f"{'':<16} {e.note}"[:width])
    return "\n".join(lines) + "\n"
