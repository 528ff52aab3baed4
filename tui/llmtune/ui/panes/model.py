"""The model pane: identity and shape, quantization mix, per-layer sizes (the
``inspect`` summary), a searchable metadata browser and the chat template.
Everything from the file is shown inert: as plain text, escapes made visible."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.widgets import DataTable, Input, Static

from llmtune.errors import LlmtuneError
from llmtune.model import ModelSpec
from llmtune.model.describe import metadata_rows
from llmtune.model.gguf_file import GGUFString
from llmtune.textsafe import inert
from llmtune.ui.widgets.summary import ModelSummary

TEMPLATE_KEY = "tokenizer.chat_template"
MAX_TEMPLATE_CHARS = 20_000


def _read_head(value: GGUFString) -> str:
    try:
        return value.text(MAX_TEMPLATE_CHARS)
    except LlmtuneError as exc:  # the file changed or went away since it was read
        return exc.one_line()


class ModelPane(VerticalScroll):
    # Shown in the footer while this pane has focus (the app binds the same keys).
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("slash", "app.search_metadata", "Search", key_display="/"),
    ]

    def __init__(
        self,
        spec: ModelSpec | None,
        *,
        path_label: str | None = None,
        id: str | None = None,
        classes: str | None = None,
    ) -> None:
        super().__init__(id=id, classes=classes)
        self.spec = spec
        self.path_label = path_label
        self._rows: list[tuple[str, str, str]] = []
        self.what_if: str | None = None

    def compose(self) -> ComposeResult:
        yield Static("", id="model-what-if", markup=False)
        if self.spec is not None:
            yield ModelSummary(self.spec, path_label=self.path_label, id="model-summary")
        yield Static("Metadata", classes="section")
        yield Input(placeholder="filter keys and values (/)", id="metadata-filter")
        table: DataTable[Text] = DataTable(id="metadata", cursor_type="row", zebra_stripes=True)
        yield table
        yield Static("Chat template", classes="section")
        yield Static("", id="chat-template", markup=False)

    def on_mount(self) -> None:
        self.query_one("#model-what-if", Static).display = False
        table = self.query_one("#metadata", DataTable)
        table.add_column("key", key="key")
        table.add_column("type", key="type")
        table.add_column("value", key="value")
        if self.spec is not None:
            self.show(self.spec, self.path_label)

    def show(self, spec: ModelSpec, path_label: str | None = None) -> None:
        self.spec = spec
        self.path_label = path_label
        self.what_if = None  # a newly opened file shows as it is
        self.query_one("#model-what-if", Static).display = False
        self._show_summary(spec)
        self._rows = metadata_rows(spec)
        self._fill(self.query_one("#metadata-filter", Input).value)
        template = spec.metadata.get(TEMPLATE_KEY)
        if isinstance(template, str):
            shown = inert(template, max_chars=MAX_TEMPLATE_CHARS, keep_newlines=True)
        elif isinstance(template, GGUFString):  # too long to read with the header
            head = _read_head(template)
            shown = f"(a {template.nbytes:,}-byte template, too long to use; its start:)\n" + inert(
                head, max_chars=MAX_TEMPLATE_CHARS, keep_newlines=True
            )
        else:
            shown = "(none: this file has no chat template)"
        self.query_one("#chat-template", Static).update(Text(shown))

    def _show_summary(self, spec: ModelSpec) -> None:
        summaries = list(self.query(ModelSummary))
        if summaries:
            summaries[0].show(spec, self.path_label)
        else:
            summary = ModelSummary(spec, path_label=self.path_label, id="model-summary")
            self.mount(summary, after=self.query_one("#model-what-if"))

    def show_what_if(self, quant: str | None, spec: ModelSpec) -> None:
        """The summary as the model would be at ``quant`` (what llama.cpp's quantizer
        would write), or as the file is (``None``); the metadata stay the file's."""
        if quant == self.what_if:
            return
        self.what_if = quant
        banner = self.query_one("#model-what-if", Static)
        banner.display = quant is not None
        if quant is not None:
            was = self.spec.file_type_name if self.spec else "?"  # the file's own
            banner.update(f"What-if {quant} (the file is {was}): as llama.cpp would write it")
        self._show_summary(spec)

    def _fill(self, needle: str) -> None:
        table: DataTable[Text] = self.query_one("#metadata", DataTable)
        table.clear()
        needle = needle.strip().lower()
        for key, type_name, value in self._rows:
            if needle and needle not in key.lower() and needle not in value.lower():
                continue
            table.add_row(Text(key), Text(type_name), Text(value))

    @on(Input.Changed, "#metadata-filter")
    def _filter(self, event: Input.Changed) -> None:
        self._fill(event.value)

    @property
    def shown_keys(self) -> list[str]:
        """The metadata keys the browser lists now (after the filter)."""
        table: DataTable[Text] = self.query_one("#metadata", DataTable)
        return [table.get_row_at(i)[0].plain for i in range(table.row_count)]
