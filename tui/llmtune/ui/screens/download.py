"""Downloading a Hub model from the app: a progress bar with speed and time left.

The bytes go through :func:`llmtune.model.download.download` in a thread: into
the Hugging Face cache layout, written to ``.partial`` and renamed only when
the size and the Hub's SHA-256 check out, the free disk space checked first.
Escape cancels: the thread stops at its next block and the ``.partial`` stays,
so the next download of the same file resumes from it. The screen closes with
the model's first file, which the app then opens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import Footer, ProgressBar, Static
from textual.worker import Worker, WorkerState, get_current_worker

from llmtune.errors import LlmtuneError
from llmtune.textsafe import inert
from llmtune.ui.boundary import forward_failure
from llmtune.units import format_bytes

if TYPE_CHECKING:
    from llmtune.model.download import Progress
    from llmtune.model.hub import Entry, Repo


class Cancelled(Exception):
    """The user pressed Escape: the download stops at its next block."""


def progress_line(p: Progress) -> str:
    speed = f"{format_bytes(int(p.bytes_per_s))}/s" if p.bytes_per_s > 0 else "starting"
    eta = p.eta_s
    left = f", {_duration(eta)} left" if eta is not None else ""
    done = f"{format_bytes(p.done_bytes)} of {format_bytes(p.total_bytes)}"
    return f"{inert(p.name, max_chars=60)}: {done} at {speed}{left}"


def _duration(seconds: float) -> str:
    s = int(seconds)
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    if s >= 60:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s} s"


class DownloadScreen(ModalScreen[str | None]):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]

    @dataclass
    class Moved(Message):
        progress: Progress
        done_bytes: int  # over every file of the entry, for one bar over a split set

    @dataclass
    class Ended(Message):
        path: str | None  # the first file on disk; None: it failed or was cancelled
        sentence: str = ""

    def __init__(self, repo: Repo, entry: Entry) -> None:
        super().__init__()
        self.repo = repo
        self.entry = entry

    def compose(self) -> ComposeResult:
        with Vertical(id="download"):
            title = f"Downloading {self.repo.repo_id} {self.entry.label}"
            yield Static(inert(title, max_chars=120), id="download-title", markup=False)
            yield ProgressBar(total=max(1, self.entry.size), show_eta=False, id="download-bar")
            yield Static("checking the free disk space…", id="download-status", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        self.fetch()

    @work(thread=True, exclusive=True, group="download", exit_on_error=False)
    def fetch(self) -> None:
        from llmtune.model.download import download

        worker = get_current_worker()
        done_before = 0  # bytes of the files already finished, for one bar over a split set
        last_file = ""
        file_done = 0

        def moved(p: Progress) -> None:
            nonlocal done_before, last_file, file_done
            if worker.is_cancelled:
                raise Cancelled
            if p.name != last_file:
                done_before += file_done
                last_file = p.name
            file_done = p.done_bytes
            self.post_message(self.Moved(p, done_before + p.done_bytes))

        try:
            paths = download(self.repo, self.entry, moved)
        except Cancelled:
            return  # the screen is closed already
        except LlmtuneError as exc:
            self.post_message(self.Ended(None, exc.one_line()))
            return
        self.post_message(self.Ended(str(paths[0])))

    @on(Moved)
    def _moved(self, message: Moved) -> None:
        self.query_one("#download-bar", ProgressBar).update(progress=message.done_bytes)
        self.query_one("#download-status", Static).update(progress_line(message.progress))

    @on(Ended)
    def _ended(self, message: Ended) -> None:
        if message.path is None:
            self.app.notify(f"Download failed: {message.sentence}", severity="error",
                            markup=False, timeout=10)  # fmt: skip
        self.dismiss(message.path)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        forward_failure(self.app, event)
        if event.state == WorkerState.ERROR:
            self.dismiss(None)

    def action_cancel(self) -> None:
        """Close now: the thread stops at its next block (a stalled connection at
        its timeout), keeping the ``.partial`` for the next download to resume."""
        self.workers.cancel_node(self)
        self.app.notify("Download cancelled: the next one resumes where it stopped.",
                        markup=False, timeout=6)  # fmt: skip
        self.dismiss(None)
