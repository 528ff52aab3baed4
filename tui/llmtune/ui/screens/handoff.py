"""The hand-off: the plan in force as llama-server and llama-cli command lines,
``Llama(...)`` for llama-cpp-python and an Ollama Modelfile. Up and down choose
one, Enter (or c) copies it to the clipboard through OSC 52."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Footer, OptionList, Static
from textual.widgets.option_list import Option

from llmtune.fit.handoff import Handoff
from llmtune.textsafe import inert


class HandoffScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q", "dismiss(None)", "Close"),
        Binding("c", "copy", "Copy"),
    ]

    def __init__(self, handoff: Handoff, copy: Callable[[str], None]) -> None:
        super().__init__()
        self.handoff = handoff
        self.texts = handoff.texts()
        self._copy = copy

    def compose(self) -> ComposeResult:
        with Vertical(id="handoff"):
            yield Static("Run these settings elsewhere", id="handoff-title", markup=False)
            yield OptionList(*(Option(label, id=label) for label in self.texts), id="handoff-list")
            with VerticalScroll(id="handoff-text-box"):
                yield Static("", id="handoff-text", markup=False)
            notes = "\n".join(f"• {inert(n, max_chars=300)}" for n in self.handoff.notes)
            yield Static(Text(notes, "dim"), id="handoff-notes", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        options = self.query_one(OptionList)
        options.highlighted = 0
        options.focus()
        self._show(next(iter(self.texts)))
        self.query_one("#handoff-notes").display = bool(self.handoff.notes)

    @property
    def selected(self) -> str:
        options = self.query_one(OptionList)
        index = options.highlighted or 0
        return str(options.get_option_at_index(index).id)

    def _show(self, label: str) -> None:
        text = inert(self.texts[label], max_chars=20_000, keep_newlines=True)
        self.query_one("#handoff-text", Static).update(Text(text))

    @on(OptionList.OptionHighlighted, "#handoff-list")
    def _highlighted(self, event: OptionList.OptionHighlighted) -> None:
        if event.option.id is not None:
            self._show(event.option.id)

    @on(OptionList.OptionSelected, "#handoff-list")
    def _selected(self, event: OptionList.OptionSelected) -> None:
        self.action_copy()

    def action_copy(self) -> None:
        label = self.selected
        self._copy(self.texts[label])
        self.app.notify(f"Copied the {label} text (OSC 52).", markup=False, timeout=3)
