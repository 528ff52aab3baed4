"""Stepper: one setting chosen from a short list with the arrow keys (or a click).

``label   ◂ value ▸`` on one line. Left/right step through the choices,
Home/End jump to the ends; a click on the left or right half steps that way.
Like the slider, it reports a request (``Changed``) and the owner sets
``index`` back, so the state lives in one place.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Generic, TypeVar

from rich.cells import cell_len
from rich.text import Text
from textual import events
from textual.binding import Binding, BindingType
from textual.message import Message
from textual.reactive import reactive
from textual.widget import Widget

T = TypeVar("T")

LEFT = "◂"
RIGHT = "▸"


@dataclass(frozen=True)
class Choice(Generic[T]):
    value: T
    text: str


class Stepper(Widget, can_focus=True):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("left", "step(-1)", "Previous", show=False),
        Binding("right", "step(1)", "Next", show=False),
        Binding("home", "to(0)", "First", show=False),
        Binding("end", "to(-1)", "Last", show=False),
    ]

    COMPONENT_CLASSES: ClassVar[set[str]] = {"stepper--label", "stepper--value", "stepper--arrow"}

    DEFAULT_CSS = """
    Stepper {
        height: 1;
        width: 1fr;
    }
    Stepper > .stepper--label { color: $foreground 80%; }
    Stepper > .stepper--value { text-style: bold; }
    Stepper > .stepper--arrow { color: $foreground 40%; }
    Stepper:focus > .stepper--arrow { color: $accent; text-style: bold; }
    Stepper:focus > .stepper--label { color: $accent; }
    """

    index: reactive[int] = reactive(0)

    @dataclass
    class Changed(Message):
        stepper: Stepper
        value: object

        @property
        def control(self) -> Stepper:
            return self.stepper

    def __init__(
        self,
        label: str,
        choices: Sequence[Choice[object]],
        index: int = 0,
        *,
        label_width: int = 12,
        id: str | None = None,
        classes: str | None = None,
    ) -> None:
        super().__init__(id=id, classes=classes)
        self.label = label
        self.label_width = label_width
        self.choices: tuple[Choice[object], ...] = tuple(choices)
        self.set_reactive(Stepper.index, min(max(0, index), max(0, len(self.choices) - 1)))

    @property
    def value(self) -> object:
        return self.choices[self.index].value if self.choices else None

    def set_choices(self, choices: Sequence[Choice[object]], value: object) -> None:
        """Replace the choices and select ``value`` (the first if it is not among them)."""
        self.choices = tuple(choices)
        self.index = self.index_of(value)
        self.refresh()

    def index_of(self, value: object) -> int:
        for i, choice in enumerate(self.choices):
            if choice.value == value:
                return i
        return 0

    def select(self, value: object) -> None:
        self.index = self.index_of(value)

    def _request(self, index: int) -> None:
        if not self.choices:
            return
        index = min(max(0, index), len(self.choices) - 1)
        if index != self.index:
            self.post_message(self.Changed(self, self.choices[index].value))

    def action_step(self, delta: int) -> None:
        self._request(self.index + delta)

    def action_to(self, index: int) -> None:
        self._request(index if index >= 0 else len(self.choices) - 1)

    def on_click(self, event: events.Click) -> None:
        value_start = self.label_width + 1
        self._request(self.index + (-1 if event.x < value_start + 2 else 1))

    def render(self) -> Text:
        style = self.get_component_rich_style
        label = self.label
        pad = max(1, self.label_width - cell_len(label))
        text = Text(no_wrap=True, overflow="ellipsis")
        text.append(label, style("stepper--label"))
        text.append(" " * pad)
        arrow = style("stepper--arrow")
        at_start = self.index <= 0
        at_end = self.index >= len(self.choices) - 1
        text.append(" " if at_start else LEFT, arrow)
        text.append(" ")
        shown = self.choices[self.index].text if self.choices else "—"
        text.append(shown, style("stepper--value"))
        text.append(" ")
        text.append(" " if at_end else RIGHT, arrow)
        return text
