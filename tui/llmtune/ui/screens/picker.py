"""The model picker: GGUF files found on this machine, the demo model always among them.

The search runs in a thread (a slow network mount never freezes the screen) and
posts what it found as ``ModelsFound``; a search that fails is the app's error
boundary's to report, and the list then offers what it has (the demo model).
Typing filters the list, and a path typed in full opens that file. Enter opens
the highlighted model; Escape goes back (or, with no model open yet, stays).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import DataTable, Footer, Input, Static
from textual.worker import Worker, WorkerState

from llmtune.model.discover import FoundModel, find_models
from llmtune.model.spec import is_url
from llmtune.textsafe import inert
from llmtune.ui.boundary import forward_failure
from llmtune.units import format_bytes

SOURCE_LABEL = {
    "cwd": "here",
    "models": "~/models",
    "huggingface": "HF cache",
    "lmstudio": "LM Studio",
    "llama.cpp": "llama.cpp",
    "ollama": "Ollama",
    "demo": "demo",
}
COLUMNS = (("size", "size"), ("quant", "quant"), ("where", "src"), ("model", "name"))
DEMO_DOWNLOAD = "\0demo"  # the row that fetches the demo model when it is not here yet
HUB_PREFIX = "\0hf:"  # a Hub repo typed in the filter: the app shows its files
# llama.cpp's -hf OWNER/REPO[:QUANT] (common/arg.cpp); a path that exists wins.
HUB_REF_RE = re.compile(r"^[\w.-]+/[\w.-]+(:[\w.-]+)?$")
ATTACH = "\0attach"  # watch a running llama-server instead (ui.screens.attach)


class ModelPicker(ModalScreen[str | None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "back", "Back"),
        Binding("down", "focus_list", "List", show=False),
        Binding("ctrl+l", "attach", "Attach to llama-server", key_display="^l"),
    ]

    @dataclass
    class ModelsFound(Message):
        """The search's result, from its thread."""

        models: list[FoundModel]

    def __init__(self, *, can_go_back: bool, last_model: str | None = None) -> None:
        super().__init__()
        self.can_go_back = can_go_back
        self.last_model = last_model
        self.models: list[FoundModel] = []
        self.searching = True

    def compose(self) -> ComposeResult:
        with Vertical(id="picker"):
            yield Static("Open a model", id="picker-title", markup=False)
            yield Input(
                placeholder="filter, a .gguf path, an https URL or OWNER/REPO on the Hub",
                id="picker-filter",
            )
            yield Static("searching…", id="picker-status", markup=False)
            table: DataTable[Text] = DataTable(id="picker-list", cursor_type="row")
            yield table
        yield Footer()

    def on_mount(self) -> None:
        self._set_columns([])
        self.query_one("#picker-filter", Input).focus()
        self.search()

    def _set_columns(self, rows: list[tuple[Text, ...]]) -> None:
        """Columns as wide as their widest cell. DataTable would measure new rows
        when it next idles, but under load it sometimes painted them at the
        headers' widths ("mine." for "mine.Q8_0.gguf"); widths given here leave
        nothing to measure later. The name last: it takes what room is left, so
        a narrow pane still shows the rest."""
        table: DataTable[Text] = self.query_one("#picker-list", DataTable)
        table.clear(columns=True)
        for i, (label, key) in enumerate(COLUMNS):
            width = max([len(label), *(row[i].cell_len for row in rows)])
            table.add_column(label, key=key, width=width)

    @work(thread=True, exclusive=True, group="picker", exit_on_error=False)
    def search(self) -> None:
        self.post_message(self.ModelsFound(find_models()))

    @on(ModelsFound)
    def _found(self, message: ModelsFound) -> None:
        self.models = message.models
        self._search_ended()

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        forward_failure(self.app, event)
        if event.state == WorkerState.ERROR:
            self._search_ended()  # the app says why; the list keeps what it can offer

    def _search_ended(self) -> None:
        self.searching = False
        self._fill(self.query_one("#picker-filter", Input).value)

    def _fill(self, needle: str) -> None:
        table: DataTable[Text] = self.query_one("#picker-list", DataTable)
        needle = needle.strip().lower()
        rows: list[tuple[str, tuple[Text, ...]]] = []
        has_demo = any(m.is_demo for m in self.models)
        for m in self.models:
            if needle and needle not in m.name.lower() and needle not in m.path.lower():
                continue
            cells: tuple[Text, ...] = (
                Text(format_bytes(m.size_bytes), justify="right"),
                Text(m.quant or ""),
                Text(SOURCE_LABEL.get(m.source, m.source), "dim"),
                Text(inert(m.name, max_chars=120)),
            )
            rows.append((m.path, cells))
        if not has_demo and not self.searching and (not needle or needle in "demo smollm2"):
            cells = (
                Text("98 MB", justify="right"),
                Text("Q4_1"),
                Text("demo", "dim"),
                Text("SmolLM2-135M-Instruct (Enter downloads it)"),
            )
            rows.append((DEMO_DOWNLOAD, cells))
        self._set_columns([cells for _, cells in rows])
        for key, cells in rows:
            table.add_row(*cells, key=key)
        shown = len(rows)
        if self.last_model is not None:
            for i, m in enumerate(self.models):
                if m.path == self.last_model and i < table.row_count:
                    table.move_cursor(row=i, animate=False)
                    break
        status = "searching…" if self.searching else f"{shown} of {len(self.models)} models"
        self.query_one("#picker-status", Static).update(status)

    @on(Input.Changed, "#picker-filter")
    def _filter(self, event: Input.Changed) -> None:
        self._fill(event.value)

    @on(Input.Submitted, "#picker-filter")
    def _submit(self, event: Input.Submitted) -> None:
        typed = os.path.expanduser(event.value.strip())
        if typed and os.path.isfile(typed):
            self.dismiss(os.path.abspath(typed))
            return
        if is_url(typed):
            self.dismiss(typed)
            return
        if HUB_REF_RE.match(typed) and not os.path.exists(typed):
            self.dismiss(HUB_PREFIX + typed)
            return
        table: DataTable[Text] = self.query_one("#picker-list", DataTable)
        if table.row_count:
            self._choose(table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value)
        elif typed:
            self.app.notify(
                f"No such file: {inert(typed, max_chars=200)}", severity="error", markup=False
            )

    @on(DataTable.RowSelected, "#picker-list")
    def _selected(self, event: DataTable.RowSelected) -> None:
        self._choose(event.row_key.value)

    def _choose(self, key: str | None) -> None:
        if key is None:
            return
        self.dismiss(key)

    def action_focus_list(self) -> None:
        self.query_one("#picker-list", DataTable).focus()

    def action_back(self) -> None:
        if self.can_go_back:
            self.dismiss(None)
        else:
            self.app.notify("Choose a model, or press q to quit.", markup=False)

    def action_attach(self) -> None:
        self.dismiss(ATTACH)
