"""Measure quality: one file type quantized from the open model and compared with it by
llama.cpp's KL-divergence test (``engine.quality``), as ``llmtune quality`` does.

The checks come first (``prepare_quality``: llama-perplexity built, the disk,
an importance matrix where the type needs one); Enter starts; a progress bar
and the time left follow the source's pass, the quantization and the
measurement. Escape cancels (the temporary files are deleted; the source is
only read) or closes. The result is kept, so the quantization pane shows it.
The run is a thread that posts each update (``QualityUpdate``) and how it ended
(``QualityEnded``).
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

from llmtune.engine.quality import (
    QualityCancelled,
    QualityProgress,
    QualityReport,
    QualityRequest,
    prepare_quality,
    run_quality,
)
from llmtune.engine.quality_store import QualityRow
from llmtune.errors import LlmtuneError
from llmtune.textsafe import inert
from llmtune.ui.boundary import error_words, forward_failure
from llmtune.units import format_bytes

PHASES = {"source": "the source's pass", "quantize": "quantizing", "measure": "measuring"}


class QualityScreen(ModalScreen[bool]):
    """Returns whether a row was measured (the pane reloads them)."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "go", "Start", priority=True),
        Binding("escape", "cancel", "Cancel / close"),
    ]

    @dataclass
    class QualityUpdate(Message):
        update: QualityProgress | QualityRow | QualityReport

    @dataclass
    class QualityEnded(Message):
        message: str

    def __init__(self, model_path: str, file_type: str) -> None:
        super().__init__()
        self.model_path = model_path
        self.file_type = file_type
        self.request: QualityRequest | None = None
        self.state = "ready"  # ready, running, done, failed
        self.measured = False
        self._cancel = threading.Event()

    def compose(self) -> ComposeResult:
        with Vertical(id="quality"):
            yield Static(
                f"Measure {self.file_type} against this model", id="quality-title", markup=False
            )
            yield Static("", id="quality-job", markup=False)
            yield Static("", id="quality-status", markup=False)
            yield ProgressBar(total=1.0, show_eta=False, id="quality-progress")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#quality-progress", ProgressBar).display = False
        try:
            self.request = prepare_quality(self.model_path, (self.file_type,))
        except LlmtuneError as exc:
            self.state = "failed"
            self._status(Text(inert(exc.one_line(), max_chars=600), "yellow"))
            return
        r = self.request
        lines = Text()
        lines.append(f"{inert(r.source, max_chars=300)} ({r.source_type}, ")
        lines.append(f"{format_bytes(r.source_bytes)})\n", "")
        lines.append(
            f"the bundled text, chunks of {r.n_ctx} tokens; temporary files in "
            f"{inert(r.work_dir, max_chars=200)}",
            "dim",
        )
        for warning in r.warnings:
            lines.append(f"\n{inert(warning, max_chars=300)}", "yellow")
        self.query_one("#quality-job", Static).update(lines)
        self._status("Enter starts (the source's pass, then the quantization); escape closes.")

    def on_unmount(self) -> None:
        self._cancel.set()  # closing the screen never leaves a measurement running

    def _status(self, text: str | Text) -> None:
        shown = text if isinstance(text, Text) else Text(inert(text, max_chars=1000))
        self.query_one("#quality-status", Static).update(shown)

    def action_go(self) -> None:
        if self.state == "ready" and self.request is not None:
            self.state = "running"
            self.query_one("#quality-progress", ProgressBar).display = True
            self._status("Starting llama-perplexity on the source…")
            self._run(self.request)
        elif self.state in ("done", "failed"):
            self.dismiss(self.measured)

    @work(thread=True, exclusive=True, group="quality", exit_on_error=False)
    def _run(self, request: QualityRequest) -> None:
        worker = get_current_worker()
        try:
            for update in run_quality(request, cancel=self._cancel):
                if worker.is_cancelled:  # the screen is gone: stop the tools too
                    self._cancel.set()
                self.post_message(self.QualityUpdate(update))
        except QualityCancelled:
            self.post_message(self.QualityEnded("Cancelled: no temporary file was left."))
        except LlmtuneError as exc:
            self.post_message(self.QualityEnded(exc.one_line()))

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        forward_failure(self.app, event)
        if event.state == WorkerState.ERROR:
            self._ended(f"Measuring failed: {error_words(event.worker.error)}")

    @on(QualityEnded)
    def _quality_ended(self, message: QualityEnded) -> None:
        self._ended(message.message)

    @on(QualityUpdate)
    def _update(self, message: QualityUpdate) -> None:
        update = message.update
        if isinstance(update, QualityProgress):
            self.query_one("#quality-progress", ProgressBar).update(progress=update.fraction)
            left = (
                f"{int(update.eta_s) // 60}:{int(update.eta_s) % 60:02d} left"
                if update.eta_s is not None
                else "estimating the time left"
            )
            self._status(f"{PHASES[update.phase]} {update.phase_fraction:.0%} · {left}")
        elif isinstance(update, QualityRow):
            self.measured = True
        else:
            self.query_one("#quality-progress", ProgressBar).update(progress=1.0)
            self.state = "done"
            self._status(
                Text("\n".join(_result_lines(update)) + "\nEnter or escape closes.", "green")
            )

    def _ended(self, message: str) -> None:
        self.state = "failed"
        self._status(Text(message, "yellow"))

    def action_cancel(self) -> None:
        if self.state == "running":
            self._cancel.set()
            self._status("Cancelling…")
        else:
            self.dismiss(self.measured)


def _result_lines(report: QualityReport) -> list[str]:
    source = report.rows[0]
    lines = [f"{source.label} (the source): PPL {source.ppl:.3f} ± {source.ppl_err:.3f}"]
    for r in report.rows[1:]:
        lines.append(
            f"{r.label} ({format_bytes(r.file_bytes)}): mean KLD {r.kld_mean:.5f} ± "
            f"{r.kld_mean_err:.5f}, 99% KLD {r.kld_p99:.4f}, same top token "
            f"{r.same_top_pct:.2f} ± {r.same_top_err_pct:.2f}%, PPL {r.ppl:.3f} ± {r.ppl_err:.3f}"
        )
    b = report.base
    lines.append(f"{b.tokens_used:,} tokens of the text used ({b.tokens_scored:,} scored).")
    return lines
