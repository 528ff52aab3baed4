"""Every GGUF of a Hub repo planned from its header, the best one that fits on top
(``llmtune fit --hf OWNER/REPO``, ``llmtune search`` and the app's repo table).

"Best" is the largest file (the most bits per weight) among those that fit
with every layer on the GPUs, then among those that fit at all; the rest follow
by size. A row whose header cannot be read says why instead of a plan.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from llmtune.errors import LlmtuneError
from llmtune.fit.plan import FitPlan, plan, with_max_context
from llmtune.fit.settings import Settings
from llmtune.fit.speed import SpeedModel
from llmtune.hardware.device import Device
from llmtune.model.hub import Entry, Repo, is_model
from llmtune.model.source import Opened, open_many
from llmtune.model.spec import ModelSpec


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


def plan_entry(
    spec: ModelSpec, devices: Sequence[Device], speed: SpeedModel, settings: Settings
) -> FitPlan:
    """The plan of one file on ``devices`` (a machine's, ``Machine.devices``)."""
    if settings.n_ctx == -1:
        settings = with_max_context(spec, devices, settings)
    return plan(spec, devices, settings, speed)


def repo_rows(
    repo: Repo, devices: Sequence[Device], speed: SpeedModel, settings: Settings
) -> list[RepoRow]:
    """Every model entry of ``repo`` (mmproj files aside), planned and ranked."""
    rows: list[RepoRow] = []

    def add(entry: Entry, got: Opened | Exception) -> None:
        if isinstance(got, Exception):
            what = got.one_line() if isinstance(got, LlmtuneError) else str(got)
            rows.append(RepoRow(entry, None, None, what))
            return
        try:
            rows.append(RepoRow(entry, got.spec, plan_entry(got.spec, devices, speed, settings)))
        except LlmtuneError as exc:
            rows.append(RepoRow(entry, got.spec, None, exc.one_line()))

    open_many(repo, [e for e in repo.entries if is_model(e)], add)
    rows.sort(key=lambda r: r.rank)
    return rows


def verdict(row: RepoRow) -> str:
    p = row.plan
    if p is None:
        return "unreadable"
    if row.all_on_gpu:
        return "fits, GPU"
    if p.fits:
        return "fits" if not p.gpus else "fits, split"
    return "too big"
