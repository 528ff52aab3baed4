"""Choose the GPU to plan for: this machine's own, or a profile as a what-if target.

Lets a user on a laptop plan for the server they will SSH into. Returns the
profile key, ``""`` for this machine, or ``None`` when cancelled.
"""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, OptionList, Static
from textual.widgets.option_list import Option

from llmtune.hardware.profiles import GPU_PROFILES, GPUProfile

THIS_MACHINE = ""


def _option_text(p: GPUProfile) -> Text:
    text = Text(p.name)
    text.append(f"  {p.memory_mib / 1024:.0f} GiB · {p.bandwidth_gbps:,.0f} GB/s", "dim")
    return text


class ChooseGPU(ModalScreen[str | None]):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, machine_label: str, current: str | None) -> None:
        super().__init__()
        self.machine_label = machine_label
        self.current = current

    def compose(self) -> ComposeResult:
        with Vertical(id="choose-gpu"):
            yield Static("Plan for which GPU?", id="choose-gpu-title", markup=False)
            yield Input(placeholder="filter: 3090, 24g, h100…", id="choose-gpu-filter")
            yield OptionList(id="choose-gpu-list")

    def on_mount(self) -> None:
        self._fill("")
        self.query_one("#choose-gpu-list", OptionList).focus()

    def _fill(self, needle: str) -> None:
        options = self.query_one("#choose-gpu-list", OptionList)
        options.clear_options()
        needle = needle.strip().lower()
        if not needle or needle in "this machine":
            options.add_option(Option(Text(f"This machine: {self.machine_label}"), id="="))
        for p in GPU_PROFILES:
            if needle and needle not in p.key and needle not in p.name.lower():
                continue
            options.add_option(Option(_option_text(p), id=p.key))
        for i in range(options.option_count):
            option = options.get_option_at_index(i)
            if option.id == (self.current or "="):
                options.highlighted = i
                break
        else:
            options.highlighted = 0 if options.option_count else None

    @on(Input.Changed, "#choose-gpu-filter")
    def _filter(self, event: Input.Changed) -> None:
        self._fill(event.value)

    @on(Input.Submitted, "#choose-gpu-filter")
    def _submit(self) -> None:
        options = self.query_one("#choose-gpu-list", OptionList)
        if options.highlighted is not None:
            self._choose(options.get_option_at_index(options.highlighted).id)

    @on(OptionList.OptionSelected, "#choose-gpu-list")
    def _selected(self, event: OptionList.OptionSelected) -> None:
        self._choose(event.option.id)

    def _choose(self, option_id: str | None) -> None:
        if option_id is None:
            return
        self.dismiss(THIS_MACHINE if option_id == "=" else option_id)

    def on_key(self, event: object) -> None:
        # Typing while the list has focus filters it, as in a fuzzy finder.
        from textual import events

        if not isinstance(event, events.Key) or event.character is None:
            return
        filt = self.query_one("#choose-gpu-filter", Input)
        if filt.has_focus or not event.is_printable:
            return
        filt.focus()
        filt.insert_text_at_cursor(event.character)
        event.stop()

    def action_cancel(self) -> None:
        self.dismiss(None)
