"""Sections of the reliability report (tests/bench/reliability_report.py).

Each module has ``run() -> Section``: what it measured, as rows of (what,
measured, target, met), plus notes. A section never raises: a failure to
measure is itself a row that is not met.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Row:
    what: str
    measured: str
    target: str
    met: bool


@dataclass
class Section:
    title: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, what: str, measured: str, target: str, met: bool) -> None:
        self.rows.append(Row(what, measured, target, met))

    @property
    def met(self) -> bool:
        return all(r.met for r in self.rows)
