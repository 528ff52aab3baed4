"""Tune: the fastest settings that fit this machine, found by real loads.

Choose the objective (generation, prompt or both) and press Enter; each trial
is a real load and a short benchmark in its own worker (``engine.tune``), and
appears in the table as it finishes. Escape cancels at any time (the running
worker is killed) and keeps what was found; at the end Enter applies the best
settings to the app. The search runs in a thread that posts each trial
(``TrialFinished``), each step (``TuneProgress``) and the end (``TuneFinished``);
an exception other than llmtune's own ends the search with the app's error
boundary's sentence.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import DataTable, Footer, ProgressBar, Static
from textual.worker import Worker, WorkerState

from llmtune.engine.tune import Objective, Trial, Tuner, TuneResult
from llmtune.errors import LlmtuneError
from llmtune.fit.settings import Settings
from llmtune.fit.speed import SpeedModel
from llmtune.hardware.device import Device
from llmtune.model import ModelSpec
from llmtune.textsafe import inert
from llmtune.ui.boundary import error_words, forward_failure
from llmtune.ui.widgets.stepper import Choice, Stepper

OBJECTIVE_CHOICES: list[Choice[object]] = [
    Choice("tg", "generation speed"),
    Choice("pp", "prompt speed"),
    Choice("mix", "both (requests/s)"),
]
STATUS_STYLE = {"ok": "green", "failed": "yellow", "crashed": "red", "cancelled": "dim"}


def trial_settings(s: Settings) -> str:
    parts = [f"ngl {s.n_gpu_layers}", f"t {s.threads}", f"fa {s.flash_attn}"]
    if s.cache_type_k != "f16" or s.cache_type_v != "f16":
        parts.append(f"kv {s.cache_type_k}/{s.cache_type_v}")
    parts.append(f"ub {s.n_ubatch}")
    if s.n_cpu_moe:
        parts.append("cpu-moe" if s.n_cpu_moe < 0 else f"n-cpu-moe {s.n_cpu_moe}")
    return " ".join(parts)


class TuneScreen(ModalScreen[Settings | None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "go", "Start / apply best", priority=True),
        Binding("escape", "cancel", "Cancel / close"),
    ]

    @dataclass
    class TrialFinished(Message):
        trial: Trial

    @dataclass
    class TuneProgress(Message):
        line: str

    @dataclass
    class TuneFinished(Message):
        result: TuneResult | None
        error: str | None  # llmtune's one line, when the search was refused

    def __init__(
        self,
        spec: ModelSpec,
        devices: Sequence[Device],
        settings: Settings,
        speed: SpeedModel,
        *,
        max_trials: int = 40,
    ) -> None:
        super().__init__()
        self.spec = spec
        self.devices = tuple(devices)
        self.settings = settings
        self.speed = speed
        self.max_trials = max_trials
        self.tuner: Tuner | None = None
        self.result: TuneResult | None = None
        self.trials: list[Trial] = []
        self.state = "ready"  # ready, running, done

    def compose(self) -> ComposeResult:
        with Vertical(id="tune"):
            yield Static("Tune: the fastest settings that fit here", id="tune-title", markup=False)
            yield Stepper("objective", OBJECTIVE_CHOICES, id="tune-objective", label_width=11)
            yield Stepper("context", self._context_choices(), id="tune-context", label_width=11)
            yield Static("", id="tune-status", markup=False)
            # How many trials a search takes is known only at its end (5 to 15
            # usually, --max-trials at most): the bar pulses until then.
            yield ProgressBar(total=None, show_eta=False, id="tune-progress")
            table: DataTable[Text] = DataTable(id="tune-trials", cursor_type="row")
            yield table
            yield Static("", id="tune-best", markup=False)
        yield Footer()

    def _context_choices(self) -> list[Choice[object]]:
        n_ctx = self.settings.n_ctx
        shown = f"{n_ctx:,} (as set)" if n_ctx else "trained context"
        return [Choice(n_ctx, shown), Choice(-1, "largest that fits")]

    def on_mount(self) -> None:
        self.query_one("#tune-progress", ProgressBar).display = False  # until it starts
        table = self.query_one("#tune-trials", DataTable)
        for label, key in (
            ("#", "n"),
            ("stage", "stage"),
            ("settings", "settings"),
            ("gen t/s", "tg"),
            ("prompt t/s", "pp"),
            ("", "status"),
        ):
            table.add_column(label, key=key)
        self.query_one("#tune-objective", Stepper).focus()
        self._status(
            "Each trial loads the model and runs a short benchmark. "
            "Enter starts; escape cancels at any time."
        )

    def on_unmount(self) -> None:
        if self.state == "running" and self.tuner is not None:
            self.tuner.cancel()  # closing the screen never leaves trials running

    @on(Stepper.Changed, "#tune-objective, #tune-context")
    def _choice(self, event: Stepper.Changed) -> None:
        if self.state == "ready":
            event.stepper.select(event.value)

    def _status(self, line: str) -> None:
        self.query_one("#tune-status", Static).update(Text(inert(line, max_chars=500)))

    def action_go(self) -> None:
        if self.state == "ready":
            self.start()
        elif self.state == "done":
            best = self.result.best if self.result else None
            self.dismiss(best.settings if best is not None else None)

    def start(self) -> None:
        objective: Objective = self.query_one("#tune-objective", Stepper).value  # type: ignore[assignment]
        n_ctx = self.query_one("#tune-context", Stepper).value
        settings = self.settings.with_(n_ctx=n_ctx)
        try:
            self.tuner = Tuner(
                self.spec,
                self.devices,
                settings,
                objective=objective,
                speed=self.speed,
                max_trials=self.max_trials,
                on_trial=self._post_trial,
                on_progress=self._post_progress,
            )
        except LlmtuneError as exc:
            self._status(exc.one_line())
            return
        self.state = "running"
        self.query_one("#tune-progress", ProgressBar).display = True
        self.query_one("#tune-objective", Stepper).disabled = True
        self.query_one("#tune-context", Stepper).disabled = True
        self._status("Tuning…")
        self._run(self.tuner)

    @work(thread=True, exclusive=True, group="tune", exit_on_error=False)
    def _run(self, tuner: Tuner) -> None:
        try:
            result: TuneResult | None = tuner.run()
            error = None
        except LlmtuneError as exc:
            result, error = None, exc.one_line()
        self.post_message(self.TuneFinished(result, error))

    def _post_trial(self, trial: Trial) -> None:
        """The tuner's thread: one more trial done."""
        self.post_message(self.TrialFinished(trial))

    def _post_progress(self, line: str) -> None:
        self.post_message(self.TuneProgress(line))

    @on(TrialFinished)
    def _trial_finished(self, message: TrialFinished) -> None:
        self.add_trial(message.trial)

    @on(TuneProgress)
    def _progress(self, message: TuneProgress) -> None:
        self._status(message.line)

    @on(TuneFinished)
    def _tune_finished(self, message: TuneFinished) -> None:
        self._finished(message.result, message.error)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        forward_failure(self.app, event)
        if event.state == WorkerState.ERROR:
            self._finished(None, f"Tuning failed: {error_words(event.worker.error)}")

    def add_trial(self, trial: Trial) -> None:
        self.trials.append(trial)
        table: DataTable[Text] = self.query_one("#tune-trials", DataTable)
        ok = trial.ok
        table.add_row(
            Text(str(trial.index), justify="right"),
            Text(trial.stage),
            Text(trial_settings(trial.settings)),
            Text(f"{trial.tg_tokens_per_s:,.1f}" if ok else "–", justify="right"),
            Text(f"{trial.pp_tokens_per_s:,.0f}" if ok else "–", justify="right"),
            Text(
                trial.status if ok else inert(trial.reason or trial.status, max_chars=60),
                STATUS_STYLE.get(trial.status, ""),
            ),  # fmt: skip
        )
        table.move_cursor(row=table.row_count - 1, animate=False)

    def _finished(self, result: TuneResult | None, error: str | None) -> None:
        self.result = result
        self.state = "done"
        bar = self.query_one("#tune-progress", ProgressBar)
        bar.update(total=max(1, len(self.trials)), progress=len(self.trials))
        best = result.best if result else None
        if error:
            self._status(error)
        elif result is not None and result.cancelled:
            self._status(f"Cancelled after {len(self.trials)} trials; the best so far is below.")
        else:
            self._status(f"Done: {len(self.trials)} trials, {result.pruned if result else 0} "
                         "ruled out by the estimate without loading.")  # fmt: skip
        line = Text()
        if best is None:
            line.append("No configuration loaded and ran here.", "bold red")
        else:
            line.append("Best: ", "bold")
            line.append(trial_settings(best.settings))
            line.append(f" · {best.tg_tokens_per_s:,.1f} t/s generating", "bold")
            line.append(f", {best.pp_tokens_per_s:,.0f} t/s prompt")
            line.append("\nEnter applies it to the app; escape closes.", "dim")
        self.query_one("#tune-best", Static).update(line)

    def action_cancel(self) -> None:
        if self.state == "running" and self.tuner is not None:
            self._status("Cancelling (the running trial's worker is stopped)…")
            self.tuner.cancel()
        else:
            self.dismiss(None)
