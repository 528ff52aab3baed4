"""The quantization pane: every llama.cpp file type, planned on the same hardware.

One row per file type: its predicted file size, bits per weight, the verdict
with as many layers on the GPU as fit, predicted generation speed, a word
on quality and the quality measured on this model by ``llmtune quality`` (or
``m`` here: KL divergence from the source, same top token; "not measured"
where none is kept for this source, llama.cpp and text). The file's own type and sibling files of the same model in its
folder are marked. Enter (or a click) applies a row as a what-if to every
pane; ``o`` opens a sibling that is on disk.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import DataTable, Static

from llmtune.engine.quality_store import StoredRow
from llmtune.fit.whatif import QuantRow
from llmtune.ui.widgets.devicebar import VERDICT_WORDS
from llmtune.units import format_bytes

VERDICT_STYLE = {"fits": "green", "tight": "yellow", "over": "red"}


class QuantTable(DataTable[Text]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("o", "open_sibling", "Open file", show=True),
    ]

    def action_open_sibling(self) -> None:
        pane = self.screen.query_one(QuantPane)
        pane.open_highlighted()


class QuantPane(Vertical):
    # Shown in the footer while this pane has focus (the app binds the same keys).
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("w", "app.quantize", "Quantize"),
        Binding("m", "measure_quality", "Measure"),
    ]

    @dataclass
    class QualityFound(Message):
        """Measured rows kept for ``path``'s weights: {type label: row} of the newest setting."""

        path: str
        newest: StoredRow | None
        by_type: Mapping[str, StoredRow]

    @dataclass
    class Chosen(Message):
        """Plan as this file type (``None``: the file as it is)."""

        file_type: str | None

    @dataclass
    class OpenFile(Message):
        path: str

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.rows: list[QuantRow] = []
        self.sibling_files: Mapping[str, str] = {}
        self.selected: str | None = None  # the what-if in force
        self.measured: Mapping[str, StoredRow] = {}
        self.measured_caption = ""
        self._caption = ""

    def compose(self) -> ComposeResult:
        yield Static("", id="quant-caption", markup=False)
        table = QuantTable(id="quant-table", cursor_type="row", zebra_stripes=True)
        yield table

    def on_mount(self) -> None:
        table = self.query_one(QuantTable)
        for label, key in (
            ("type", "type"),
            ("size", "size"),
            ("bpw", "bpw"),
            ("verdict", "verdict"),
            ("layers", "layers"),
            ("tok/s", "tps"),
            # Measured quality and where the file is before the fixed phrase,
            # which is what a narrow pane cuts.
            ("KLD  top", "measured"),
            ("file", "mark"),
            ("quality", "quality"),
        ):
            table.add_column(label, key=key)

    def show(
        self,
        rows: list[QuantRow],
        selected: str | None,
        siblings: Mapping[str, str],
        caption: str,
    ) -> None:
        self.rows = rows
        self.sibling_files = siblings
        self.selected = selected
        table = self.query_one(QuantTable)
        cursor = table.cursor_row
        table.clear()
        for row in rows:
            p = row.plan
            chosen = row.file_type == selected or (selected is None and row.is_current)
            name = Text(("▸ " if chosen else "  ") + row.file_type, "bold" if chosen else "")
            verdict = Text(VERDICT_WORDS[p.verdict], VERDICT_STYLE[p.verdict])
            layers = f"{p.n_gpu_layers}/{p.n_layer + 1}" if p.gpus else "cpu"
            if row.is_current:
                mark = Text("this file", "bold")
            elif row.file_type in siblings:
                mark = Text("on disk", "cyan")
            else:
                mark = Text("")
            table.add_row(
                name,
                Text(format_bytes(row.file_bytes), justify="right"),
                Text(f"{row.bits_per_weight:.2f}", justify="right"),
                verdict,
                Text(layers, justify="right"),
                # A plan that does not fit runs at no speed.
                Text(f"{p.predicted.tg_tokens_per_s:,.1f}" if p.fits else "-", justify="right"),
                self._measured_cell(row),
                mark,
                Text(row.quality, "dim"),
                key=row.file_type,
            )
        if rows:
            table.move_cursor(row=min(max(0, cursor), len(rows) - 1), animate=False)
        self._caption = caption
        self.query_one("#quant-caption", Static).update(
            caption + (f"\n{self.measured_caption}" if self.measured_caption else "")
        )

    def _measured_cell(self, row: QuantRow) -> Text:
        kept = self.measured.get(row.file_type) or self.measured.get(f"{row.file_type}+imatrix")
        if kept is None:
            return Text("unmeasured", "dim italic")
        m = kept.row
        if m.is_source:
            return Text("baseline")
        imatrix = "+im" if m.imatrix else ""
        return Text(f"{m.kld_mean:.4f} {m.same_top_pct:3.0f}%{imatrix}")

    @on(QualityFound)
    def _quality_found(self, message: QualityFound) -> None:
        message.stop()
        if message.path != getattr(self.app, "model_path", None):
            return
        self.measured = message.by_type
        newest = message.newest
        if newest is None:
            self.measured_caption = "KLD, top: none measured yet; m measures the highlighted type"
        else:
            k = newest.key
            text = "the bundled text" if newest.text_name == "bundled" else newest.text_name
            self.measured_caption = (
                f"KLD, top (same top token): llama-perplexity on {k.n_chunk}×{k.n_ctx} tokens "
                f"of {text}; m measures"
            )
        if self.rows:
            self.show(self.rows, self.selected, self.sibling_files, self._caption)

    def action_measure_quality(self) -> None:
        from llmtune.ui import dialogs

        row = self.highlighted()
        dialogs.quality(self.app, row.file_type if row is not None else None)  # type: ignore[arg-type]

    def highlighted(self) -> QuantRow | None:
        table = self.query_one(QuantTable)
        if not self.rows or not 0 <= table.cursor_row < len(self.rows):
            return None
        return self.rows[table.cursor_row]

    def open_highlighted(self) -> None:
        row = self.highlighted()
        if row is None:
            return
        path = self.sibling_files.get(row.file_type)
        if path is None:
            self.app.notify(
                f"No {row.file_type} file of this model is in its folder.",
                severity="warning",
                markup=False,
            )
            return
        self.post_message(self.OpenFile(path))

    @on(DataTable.RowSelected, "#quant-table")
    def _chosen(self, event: DataTable.RowSelected) -> None:
        event.stop()
        row = self.rows[event.cursor_row] if 0 <= event.cursor_row < len(self.rows) else None
        if row is None:
            return
        self.post_message(self.Chosen(None if row.is_current else row.file_type))
