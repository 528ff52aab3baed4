"""The quantization pane's table: the model planned at every file type, in threads.

Planning every file type takes longer than a keystroke should wait, so the
table follows the plan a moment later: at model open a thread sizes the model
at every type (``Planner.spec_for``, one type at a time so that opening another
file cuts it short) and another looks for the model's other quantizations
beside it; each change of settings or hardware plans the rows again in a
thread once the changes pause. Results come back as messages (``ui.messages``)
and those of a replaced model are dropped. A failure is the app's error
boundary's to show (``ui.boundary``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from textual.css.query import NoMatches
from textual.timer import Timer
from textual.worker import get_current_worker

from llmtune.errors import LlmtuneError
from llmtune.fit.settings import Settings
from llmtune.fit.whatif import QuantRow
from llmtune.hardware.machine import Machine
from llmtune.ui.messages import QuantRowsReady, QuantWarmed, SiblingsFound
from llmtune.ui.planner import Planner

if TYPE_CHECKING:
    from llmtune.ui.app import LlmtuneApp

__all__ = ["QuantTable"]


class QuantTable:
    """The rows and sibling files the quantization pane shows, and the threads that find them."""

    def __init__(self, app: LlmtuneApp) -> None:
        self.app = app
        self.rows: list[QuantRow] = []
        self.siblings: dict[str, str] = {}  # {file type: path} of files beside the model
        self._timer: Timer | None = None

    def model_opened(self, path: str, planner: Planner) -> None:
        self.rows = []
        self.siblings = {}
        self._thread(lambda: self._find_siblings(path), "siblings")
        self._thread(lambda: self._warm(planner), "warm")
        self.load_quality()

    def load_quality(self) -> None:
        """Read the measured quality kept for the open model's weights, in a thread."""
        path, spec = self.app.model_path, self.app.spec
        if path is None or spec is None or not all(os.path.isfile(p) for p in spec.shard_paths):
            return  # a remote model: nothing of it was measured here
        shards = tuple(spec.shard_paths)
        self._thread(lambda: self._find_quality(path, shards), "quality")

    def schedule(self, delay_s: float) -> None:
        """Plan the rows again after ``delay_s`` (a later call restarts the wait)."""
        if self._timer is not None:
            self._timer.stop()
        # A zero-length Textual timer divides by its interval: never ask for one.
        self._timer = self.app.set_timer(max(0.01, delay_s), self._plan_rows)

    # -- results, on the UI thread ------------------------------------------------------
    def siblings_found(self, message: SiblingsFound) -> None:
        if message.path == self.app.model_path:
            self.siblings = message.found
            self.show()

    def warmed(self, message: QuantWarmed) -> None:
        if message.planner is self.app.planner:
            self.schedule(0.0)

    def rows_ready(self, message: QuantRowsReady) -> None:
        if message.planner is self.app.planner:
            self.rows = message.rows
            self.show()

    def show(self) -> None:
        if not self.rows:
            return
        app = self.app
        p = app.plan
        ctx = f"context {p.n_ctx:,}, " if p is not None else ""
        caption = f"{ctx}as many layers on the GPU as fit; {app.hardware.describe()}"
        try:
            app.quant_pane.show(self.rows, app.quant, self.siblings, caption)
        except NoMatches:
            pass  # rows that land while the app closes and its widgets are gone

    # -- the threads ----------------------------------------------------------------------
    def _plan_rows(self) -> None:
        self._timer = None
        app = self.app
        planner, hardware, settings = app.planner, app.hardware, app.settings
        if planner is not None:
            self._thread(lambda: self._rows(planner, hardware, settings), "quant")

    def _rows(self, planner: Planner, hardware: Machine, settings: Settings) -> None:
        try:
            rows = planner.quant_rows(hardware, settings)
        except LlmtuneError:
            return  # the plan itself is refused, and the offload pane already says why
        self.app.post_message(QuantRowsReady(planner, rows))

    def _find_siblings(self, path: str) -> None:
        from llmtune.model.discover import sibling_quantizations

        found = {m.quant: m.path for m in sibling_quantizations(path) if m.quant}
        self.app.post_message(SiblingsFound(path, found))

    def _find_quality(self, path: str, shards: tuple[str, ...]) -> None:
        from llmtune.engine.quality_store import fingerprint, latest, llama_build, load_rows

        try:
            newest, by_type = latest(load_rows(fingerprint(shards)), llama_build())
        except LlmtuneError:
            return  # an unreadable model says so in its own pane
        pane = self.app.quant_pane
        pane.post_message(pane.QualityFound(path, newest, by_type))

    def _warm(self, planner: Planner) -> None:
        worker = get_current_worker()
        for name in planner.quant_choices():
            if worker.is_cancelled:
                return
            planner.spec_for(name)
        self.app.post_message(QuantWarmed(planner))

    def _thread(self, work: Callable[[], None], group: str) -> None:
        """One thread at a time per group (a newer one cancels the older), inside
        the app's error boundary."""
        self.app.run_worker(
            work, name=group, group=group, exclusive=True, thread=True, exit_on_error=False
        )
