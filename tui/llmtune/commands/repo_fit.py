"""``llmtune fit --hf OWNER/REPO`` and ``llmtune search``: every GGUF of a repo
planned from its header, the best one that fits on top.

"Best" is the largest file (the most bits per weight) among those that fit
with every layer on the GPUs, then among those that fit at all; the rest follow
by size. A row whose header cannot be read says why instead of a plan.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from llmtune.commands.common import text_width
from llmtune.errors import LlmtuneError
from llmtune.fit.plan import FitPlan, plan, with_max_context
from llmtune.fit.settings import Settings
from llmtune.hardware.machine import Machine
from llmtune.model.hub import Entry, Repo
from llmtune.model.source import Opened, open_many
from llmtune.model.spec import ModelSpec
from llmtune.textsafe import inert
from llmtune.units import format_bytes


@dataclass(frozen=True)
class RepoRow:
    entry: Entry
    spec: ModelSpec | None
    plan: FitPlan | None
    error: str | None = None

    @property
    def all_on_gpu(self) -> bool:
        p = self.plan
        return p is not None and p.fits and bool(p.gpus) and p.n_gpu_layers >= p.n_layer + 1

    @property
    def rank(self) -> tuple[int, int]:
        p = self.plan
        tier = 0 if self.all_on_gpu else 1 if p is not None and p.fits else 2
        return tier, -self.entry.size


def plan_entry(spec: ModelSpec, m: Machine, settings: Settings) -> FitPlan:
    if settings.n_ctx == -1:
        settings = with_max_context(spec, m.devices, settings)
    return plan(spec, m.devices, settings, m.plan_speed)


def repo_rows(repo: Repo, m: Machine, settings: Settings) -> list[RepoRow]:
    """Every model entry of ``repo`` (mmproj files aside), planned and ranked."""
    rows: list[RepoRow] = []

    def add(entry: Entry, got: Opened | Exception) -> None:
        if isinstance(got, Exception):
            what = got.one_line() if isinstance(got, LlmtuneError) else str(got)
            rows.append(RepoRow(entry, None, None, what))
            return
        try:
            rows.append(RepoRow(entry, got.spec, plan_entry(got.spec, m, settings)))
        except LlmtuneError as exc:
            rows.append(RepoRow(entry, got.spec, None, exc.one_line()))

    open_many(repo, [e for e in repo.entries if not e.mmproj], add)
    rows.sort(key=lambda r: r.rank)
    return rows


def row_dict(row: RepoRow) -> dict[str, Any]:
    p = row.plan
    return {
        "label": row.entry.label,
        "files": [f.name for f in row.entry.files],
        "file_bytes": row.entry.size,
        "fits": p.fits if p is not None else None,
        "all_on_gpu": row.all_on_gpu,
        "n_gpu_layers": p.n_gpu_layers if p is not None else None,
        "n_layer": p.n_layer if p is not None else None,
        "n_ctx": p.n_ctx if p is not None else None,
        "predicted": (
            {
                "tg_tokens_per_s": p.predicted.tg_tokens_per_s,
                "pp_tokens_per_s": p.predicted.pp_tokens_per_s,
            }
            if p is not None
            else None
        ),
        "error": row.error,
    }


def repo_dict(repo: Repo, rows: list[RepoRow]) -> dict[str, Any]:
    return {
        "repo": repo.repo_id,
        "revision": repo.revision,
        "rows": [row_dict(r) for r in rows],
        "mmproj": [e.name for e in repo.entries if e.mmproj],
    }


def verdict(row: RepoRow) -> str:
    p = row.plan
    if p is None:
        return "unreadable"
    if row.all_on_gpu:
        return "fits, GPU"
    if p.fits:
        return "fits" if not p.gpus else "fits, split"
    return "too big"


def repo_text(repo: Repo, rows: list[RepoRow]) -> str:
    width = text_width()
    lines = [
        f"{inert(repo.repo_id, max_chars=width)}: {len(rows)} GGUF "
        f"{'model' if len(rows) == 1 else 'models'}, the best that fits first"
    ]
    lines.append(
        f"  {'quant':<16}{'size':>10}  {'verdict':<11}{'layers':>8}{'ctx':>8}{'tg t/s':>9}"
    )
    for row in rows:
        p = row.plan
        label = inert(row.entry.label, max_chars=15)
        shards = f" ({len(row.entry.files)} files)" if len(row.entry.files) > 1 else ""
        if p is None:
            lines.append(
                f"  {label:<16}{format_bytes(row.entry.size):>10}  "
                + inert(row.error or "", max_chars=max(20, width - 30))
            )
            continue
        layers = f"{p.n_gpu_layers}/{p.n_layer + 1}" if p.gpus else "CPU"
        lines.append(
            f"  {label:<16}{format_bytes(row.entry.size):>10}  {verdict(row):<11}{layers:>8}"
            f"{p.n_ctx:>8}{p.predicted.tg_tokens_per_s:>9.1f}{shards}"
        )
    mmproj = [e.name for e in repo.entries if e.mmproj]
    if mmproj:
        lines.append(f"  mmproj (vision projector, not a model): {', '.join(mmproj)}")
    return "\n".join(line[:width] for line in lines) + "\n"


def print_repo(repo: Repo, rows: list[RepoRow]) -> None:
    sys.stdout.write(repo_text(repo, rows))
