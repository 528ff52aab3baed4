"""Quantize: write the model at another file type with llama.cpp's own quantizer.

The checks come first (``engine.quantize.prepare_quantize``): an existing
output needs `f` (replace it), an already quantized model needs `r` (requantize
anyway, at a cost in quality), and a disk too small is refused. Enter starts:
llama.cpp's dry run gives the size it will write beside llmtune's prediction,
then a progress bar follows each tensor. Escape cancels (the partial file is
deleted; the source is only ever read); when it is done, Enter opens the file.
The quantizer runs in a thread that posts each step (``QuantizeUpdate``) and
how it ended (``QuantizeEnded``).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import Footer, ProgressBar, Static
from textual.worker import Worker, WorkerState, get_current_worker

from llmtune.engine.quantize import (
    QuantizeCancelled,
    QuantizeJob,
    QuantizePlan,
    QuantizeResult,
    QuantizeStep,
    prepare_quantize,
    run_quantize,
)
from llmtune.errors import LlmtuneError
from llmtune.textsafe import inert
from llmtune.ui.boundary import error_words, forward_failure
from llmtune.units import format_bytes


class QuantizeScreen(ModalScreen[str | None]):
    """Returns the written file's path (to open it), or None."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "go", "Start / open", priority=True),
        Binding("r", "toggle_requantize", "Requantize anyway", show=False),
        Binding("f", "toggle_force", "Replace existing", show=False),
        Binding("escape", "cancel", "Cancel / close"),
    ]

    @dataclass
    class QuantizeUpdate(Message):
        update: QuantizePlan | QuantizeStep | QuantizeResult

    @dataclass
    class QuantizeEnded(Message):
        """It stopped before the end: cancelled, or refused (the sentence says which)."""

        message: str

    def __init__(self, model_path: str, file_type: str) -> None:
        super().__init__()
        self.model_path = model_path
        self.file_type = file_type
        self.allow_requantize = False
        self.force = False
        self.job: QuantizeJob | None = None
        self.state = "ready"  # ready, running, done, failed
        self.output: str | None = None
        self._cancel = threading.Event()

    def compose(self) -> ComposeResult:
        with Vertical(id="quantize"):
            yield Static(f"Quantize to {self.file_type}", id="quantize-title", markup=False)
            yield Static("", id="quantize-job", markup=False)
            yield Static("", id="quantize-status", markup=False)
            yield ProgressBar(total=1.0, show_eta=True, id="quantize-progress")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#quantize-progress", ProgressBar).display = False
        self._prepare()

    def on_unmount(self) -> None:
        self._cancel.set()  # closing the screen never leaves a quantization running

    def _status(self, text: str | Text) -> None:
        shown = text if isinstance(text, Text) else Text(inert(text, max_chars=1000))
        self.query_one("#quantize-status", Static).update(shown)

    def _prepare(self) -> None:
        try:
            self.job = prepare_quantize(
                self.model_path,
                self.file_type,
                allow_requantize=self.allow_requantize,
                force=self.force,
            )
        except LlmtuneError as exc:
            self.job = None
            # The command line's flags become this screen's keys.
            message, hint = exc.one_line(), ""
            for flag_text, key_hint in (
                ("; --allow-requantize does it anyway", ". r: requantize anyway"),
                ("; --force replaces it", ". f: replace it"),
            ):
                if flag_text in exc.what:
                    message, hint = exc.what.replace(flag_text, ""), key_hint
            self._status(Text(inert(message, max_chars=600) + hint, "yellow"))
            self.query_one("#quantize-job", Static).update("")
            return
        job = self.job
        lines = Text()
        lines.append(f"{inert(job.source, max_chars=300)}\n", "dim")
        lines.append(f"→ {inert(job.output, max_chars=300)}\n")
        lines.append(f"predicted {format_bytes(job.predicted.file_bytes)}")
        lines.append(f" (from {format_bytes(job.source_bytes)} {job.source_file_type})")
        if job.replaces_existing:
            lines.append("\nreplaces the existing file", "yellow")
        for warning in job.warnings:
            lines.append(f"\n{inert(warning, max_chars=300)}", "yellow")
        self.query_one("#quantize-job", Static).update(lines)
        self._status("Enter starts (llama.cpp's dry run first); escape closes.")

    def action_toggle_requantize(self) -> None:
        if self.state == "ready":
            self.allow_requantize = not self.allow_requantize
            self._prepare()

    def action_toggle_force(self) -> None:
        if self.state == "ready":
            self.force = not self.force
            self._prepare()

    def action_go(self) -> None:
        if self.state == "ready" and self.job is not None:
            self.state = "running"
            self.query_one("#quantize-progress", ProgressBar).display = True
            self._status("Dry run…")
            self._run(self.job)
        elif self.state == "done":
            self.dismiss(self.output)

    @work(thread=True, exclusive=True, group="quantize", exit_on_error=False)
    def _run(self, job: QuantizeJob) -> None:
        worker = get_current_worker()
        try:
            for update in run_quantize(job, cancel=self._cancel):
                if worker.is_cancelled:  # the screen is gone: stop the quantizer too
                    self._cancel.set()
                self.post_message(self.QuantizeUpdate(update))
        except QuantizeCancelled:
            self.post_message(self.QuantizeEnded("Cancelled: no file was left behind."))
        except LlmtuneError as exc:
            self.post_message(self.QuantizeEnded(exc.one_line()))

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        forward_failure(self.app, event)
        if event.state == WorkerState.ERROR:
            self._ended(f"Quantizing failed: {error_words(event.worker.error)}")

    @on(QuantizeEnded)
    def _quantize_ended(self, message: QuantizeEnded) -> None:
        self._ended(message.message)

    @on(QuantizeUpdate)
    def _update(self, message: QuantizeUpdate) -> None:
        update = message.update
        bar = self.query_one("#quantize-progress", ProgressBar)
        if isinstance(update, QuantizePlan):
            predicted = update.job.predicted.file_bytes
            error = (
                100.0 * (predicted - update.dry_run_file_bytes) / max(1, update.dry_run_file_bytes)
            )
            self._status(
                f"llama.cpp will write {format_bytes(update.dry_run_file_bytes)} "
                f"(predicted {format_bytes(predicted)}, {error:+.2f}%); "
                f"{format_bytes(update.free_bytes)} free"
            )
        elif isinstance(update, QuantizeStep):
            bar.update(progress=update.fraction)
            self.query_one("#quantize-title", Static).update(
                f"Quantize to {self.file_type}: tensor {update.index} of {update.count}"
            )
        else:
            bar.update(progress=1.0)
            self.output = update.output
            self.state = "done"
            self._status(
                Text(
                    f"Wrote {format_bytes(update.file_bytes)} in {update.seconds:.1f} s. "
                    "Enter opens it; escape closes.",
                    "green",
                )
            )

    def _ended(self, message: str) -> None:
        self.state = "failed"
        self._status(Text(message, "yellow"))

    def action_cancel(self) -> None:
        if self.state == "running":
            self._cancel.set()
            self._status("Cancelling…")
        else:
            self.dismiss(None)
