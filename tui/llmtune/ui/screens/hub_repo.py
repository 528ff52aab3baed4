"""A Hub repo at a glance: every GGUF in it planned for this machine from its header.

Opened from the picker with ``OWNER/REPO`` typed. The listing and the headers
are read in a thread (``fit.repo.repo_rows``: one or two range requests per
file, cached by ETag), and the rows come sorted with the best file that fits on
top, as ``llmtune fit --hf OWNER/REPO`` prints them. Enter plans the highlighted
file in every pane; d downloads it (into the Hugging Face cache); Escape goes
back. A repo that cannot be read says why in one line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import DataTable, Footer, Static
from textual.worker import Worker, WorkerState

from llmtune.errors import LlmtuneError
from llmtune.fit.settings import Settings
from llmtune.hardware.machine import Machine
from llmtune.textsafe import inert
from llmtune.ui.boundary import forward_failure
from llmtune.units import format_bytes

if TYPE_CHECKING:
    from llmtune.fit.repo import RepoRow
    from llmtune.model.hub import Repo

COLUMNS = ("quant", "size", "verdict", "GPU layers", "tokens/s")


@dataclass(frozen=True)
class HubChoice:
    """What the user chose in the table: plan the file, or download it."""

    action: Literal["plan", "download"]
    repo: Repo
    row: RepoRow


def row_cells(row: RepoRow) -> tuple[Text, ...]:
    from llmtune.fit.repo import verdict

    p = row.plan
    label = inert(row.entry.label, max_chars=40)
    if len(row.entry.files) > 1:
        label += f" ({len(row.entry.files)} files)"
    size = Text(format_bytes(row.entry.size), justify="right")
    if p is None:
        return (Text(label), size, Text(inert(row.error or "unreadable", max_chars=60), "red"),
                Text(""), Text(""))  # fmt: skip
    style = "green" if p.fits else "red"
    layers = f"{p.n_gpu_layers}/{p.n_layer + 1}" if p.gpus else "CPU"
    # A plan that does not fit runs at no speed.
    speed = f"{p.predicted.tg_tokens_per_s:,.1f}" if p.fits else "-"
    return (Text(label), size, Text(verdict(row), style), Text(layers, justify="right"),
            Text(speed, justify="right"))  # fmt: skip


class HubRepoScreen(ModalScreen["HubChoice | None"]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "back", "Back"),
        Binding("d", "choose('download')", "Download"),
    ]

    @dataclass
    class Loaded(Message):
        repo: Repo
        rows: list[RepoRow]

    @dataclass
    class Failed(Message):
        sentence: str

    def __init__(self, ref: str, hardware: Machine, settings: Settings) -> None:
        super().__init__()
        self.ref = ref
        self.hardware = hardware
        self.settings = settings
        self.repo: Repo | None = None
        self.rows: list[RepoRow] = []

    def compose(self) -> ComposeResult:
        with Vertical(id="hub-repo"):
            yield Static(inert(self.ref, max_chars=120), id="hub-repo-title", markup=False)
            yield Static("reading the repo's listing and headers…", id="hub-repo-status")
            table: DataTable[Text] = DataTable(id="hub-repo-list", cursor_type="row")
            yield table
        yield Footer()

    def on_mount(self) -> None:
        table: DataTable[Text] = self.query_one("#hub-repo-list", DataTable)
        for label in COLUMNS:
            table.add_column(label, key=label)
        table.focus()
        self.load()

    @work(thread=True, exclusive=True, group="hub-repo", exit_on_error=False)
    def load(self) -> None:
        from llmtune.fit.repo import repo_rows
        from llmtune.model.hub import list_repo, parse_ref

        try:
            repo = list_repo(parse_ref(self.ref).repo_id)
            rows = repo_rows(repo, self.hardware.devices, self.hardware.plan_speed, self.settings)
        except LlmtuneError as exc:
            self.post_message(self.Failed(exc.one_line()))
            return
        self.post_message(self.Loaded(repo, rows))

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        forward_failure(self.app, event)
        if event.state == WorkerState.ERROR:
            self._status("the repo could not be read", error=True)

    @on(Loaded)
    def _loaded(self, message: Loaded) -> None:
        self.repo, self.rows = message.repo, message.rows
        table: DataTable[Text] = self.query_one("#hub-repo-list", DataTable)
        for i, row in enumerate(self.rows):
            table.add_row(*row_cells(row), key=str(i))
        mmproj = [e.name for e in message.repo.entries if e.mmproj]
        n = len(self.rows)
        status = (
            f"{n} GGUF {'model' if n == 1 else 'models'}, the best that fits first"
            " · Enter plans one, d downloads it"
        )
        if mmproj:
            status += f" · vision projector: {inert(', '.join(mmproj), max_chars=80)}"
        if not self.rows:
            status = "no GGUF models in this repo"
        self._status(status)

    @on(Failed)
    def _failed(self, message: Failed) -> None:
        self._status(message.sentence, error=True)

    def _status(self, text: str, error: bool = False) -> None:
        status = self.query_one("#hub-repo-status", Static)
        status.update(Text(text, "red" if error else ""))

    @on(DataTable.RowSelected, "#hub-repo-list")
    def _selected(self, event: DataTable.RowSelected) -> None:
        self.action_choose("plan")

    def action_choose(self, action: str) -> None:
        table: DataTable[Text] = self.query_one("#hub-repo-list", DataTable)
        if self.repo is None or not table.row_count:
            return
        row = self.rows[table.cursor_row]
        if action == "plan" and row.spec is None:
            self.app.notify(row.error or "this file cannot be read", severity="error",
                            markup=False)  # fmt: skip
            return
        self.dismiss(HubChoice("download" if action == "download" else "plan", self.repo, row))

    def action_back(self) -> None:
        self.dismiss(None)
