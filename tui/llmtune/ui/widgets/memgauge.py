"""MemoryGauge: one device's memory in use now, of its total, as a bar.

The first row names the device and says how much is in use; the bar fills
from the left with what is in use, and a mark shows where the plan's
prediction lies; the last row says the prediction and what is free. Each part
has its own glyph as well as its colour, so the gauge reads without colour.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from rich.cells import cell_len
from rich.text import Text
from textual.geometry import Size
from textual.reactive import reactive
from textual.widget import Widget

from llmtune.textsafe import inert
from llmtune.units import format_bytes

USED_GLYPH = "█"
FREE_GLYPH = "·"
LEVEL_GLYPH = "╎"


@dataclass(frozen=True)
class Reading:
    """What a gauge shows: ``short`` is the name when ``name`` does not fit."""

    name: str
    short: str
    used_bytes: int | None
    total_bytes: int | None
    predicted_bytes: int | None = None


class MemoryGauge(Widget):
    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "memory-gauge--name",
        "memory-gauge--used",
        "memory-gauge--free",
        "memory-gauge--level",
    }

    DEFAULT_CSS = """
    MemoryGauge { height: auto; width: 1fr; }
    MemoryGauge > .memory-gauge--name { text-style: bold; }
    MemoryGauge > .memory-gauge--used { color: $primary; }
    MemoryGauge > .memory-gauge--free { color: $foreground 30%; }
    MemoryGauge > .memory-gauge--level { color: $warning; text-style: bold; }
    """

    reading: reactive[Reading | None] = reactive(None, layout=True)

    def __init__(
        self, reading: Reading | None = None, *, id: str | None = None, classes: str | None = None
    ) -> None:
        super().__init__(id=id, classes=classes)
        self.set_reactive(MemoryGauge.reading, reading)

    def lines(self, width: int) -> list[Text]:
        r = self.reading
        if r is None:
            return [Text("")]
        style = self.get_component_rich_style
        width = max(10, width)
        used, total = r.used_bytes, r.total_bytes
        amount = "–" if used is None else format_bytes(used)
        if total:
            amount += f" of {format_bytes(total)}"
        name = inert(r.name, max_chars=80)
        if cell_len(name) + 2 + cell_len(amount) > width:
            name = inert(r.short, max_chars=20)
        head = Text(no_wrap=True, overflow="ellipsis")
        head.append(name, style("memory-gauge--name"))
        head.pad_right(max(2, width - head.cell_len - cell_len(amount)))
        head.append(amount)
        bar = Text(no_wrap=True)
        used_cells = 0
        if used is not None and total:
            used_cells = min(width, round(used * width / total))
        level: int | None = None
        if r.predicted_bytes is not None and total:
            level = min(width - 1, max(0, round(r.predicted_bytes * width / total)))
        for i in range(width):
            if i == level:
                bar.append(LEVEL_GLYPH, style("memory-gauge--level"))
            elif i < used_cells:
                bar.append(USED_GLYPH, style("memory-gauge--used"))
            else:
                bar.append(FREE_GLYPH, style("memory-gauge--free"))
        legend = Text(no_wrap=True, overflow="ellipsis")
        if r.predicted_bytes is not None:
            legend.append(LEVEL_GLYPH, style("memory-gauge--level"))
            legend.append(f" predicted {format_bytes(r.predicted_bytes)}  ")
        if used is not None and total:
            legend.append(FREE_GLYPH, style("memory-gauge--free"))
            legend.append(f" free {format_bytes(max(0, total - used))}")
        return [head, bar, legend] if legend.cell_len else [head, bar]

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        return len(self.lines(width))

    def render(self) -> Text:
        return Text("\n").join(self.lines(self.size.width))
