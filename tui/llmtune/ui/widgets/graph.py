"""TimeGraph: a series over time as columns of block characters, newest at the right.

The first row says what it is, its latest value and, where there is one, the
predicted level and the ceiling (a GPU's capacity); the rows below draw one
column per sample, scaled from 0 to the ceiling, with the predicted level as a
dashed line. Missing samples (a probe that failed) are gaps, not zeros.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import ClassVar

from rich.text import Text
from textual.geometry import Size
from textual.widget import Widget

BLOCKS = " ▁▂▃▄▅▆▇█"
LEVEL = "╌"


def column_levels(values: Sequence[float | None], rows: int, top: float) -> list[int | None]:
    """Each value as eighths of a cell (0 .. rows * 8), ``None`` for a gap."""
    out: list[int | None] = []
    steps = rows * 8
    for v in values:
        if v is None or not math.isfinite(v):
            out.append(None)
        else:
            out.append(min(steps, max(0, round(v / top * steps))) if top > 0 else 0)
    return out


class TimeGraph(Widget):
    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "time-graph--title",
        "time-graph--value",
        "time-graph--bar",
        "time-graph--level",
        "time-graph--over",
    }

    DEFAULT_CSS = """
    TimeGraph { height: 5; width: 1fr; }
    TimeGraph > .time-graph--title { text-style: bold; }
    TimeGraph > .time-graph--value { color: $accent; text-style: bold; }
    TimeGraph > .time-graph--bar { color: $primary; }
    TimeGraph > .time-graph--level { color: $warning; }
    TimeGraph > .time-graph--over { color: $error; }
    """

    def __init__(
        self,
        title: str,
        fmt: Callable[[float], str],
        *,
        id: str | None = None,
        classes: str | None = None,
    ) -> None:
        super().__init__(id=id, classes=classes)
        self.title = title
        self.fmt = fmt
        self.values: tuple[float | None, ...] = ()
        self.ceiling: float | None = None
        self.predicted: float | None = None
        self.note = ""

    def show(
        self,
        values: Sequence[float | None],
        *,
        ceiling: float | None = None,
        predicted: float | None = None,
        note: str = "",
    ) -> None:
        self.values = tuple(values)
        self.ceiling = ceiling
        self.predicted = predicted
        self.note = note
        self.refresh()

    @property
    def latest(self) -> float | None:
        for v in reversed(self.values):
            if v is not None:
                return v
        return None

    def scale_top(self) -> float:
        if self.ceiling:
            return self.ceiling
        present = [v for v in self.values if v is not None and math.isfinite(v)]
        top = max([*present, self.predicted or 0.0, 0.0])
        return top * 1.15 if top > 0 else 1.0

    def title_text(self, width: int) -> Text:
        style = self.get_component_rich_style
        text = Text(no_wrap=True, overflow="ellipsis")
        text.append(self.title, style("time-graph--title"))
        latest = self.latest
        text.append("  ")
        text.append(self.fmt(latest) if latest is not None else "–", style("time-graph--value"))
        if self.predicted is not None:
            text.append("  ")
            text.append(LEVEL * 2, style("time-graph--level"))
            text.append(f" predicted {self.fmt(self.predicted)}")
        if self.ceiling:
            text.append(f"  of {self.fmt(self.ceiling)}")
        if self.note:
            text.append(f"  {self.note}")
        return text

    def render(self) -> Text:
        width = max(1, self.size.width)
        rows = max(0, self.size.height - 1)
        lines = [self.title_text(width)]
        if rows:
            lines += self.graph_rows(width, rows)
        return Text("\n").join(lines)

    def graph_rows(self, width: int, rows: int) -> list[Text]:
        style = self.get_component_rich_style
        top = self.scale_top()
        values = self.values[-width:]
        levels = [None] * (width - len(values)) + column_levels(values, rows, top)
        predicted_row: int | None = None
        if self.predicted is not None and top > 0:
            eighths = min(rows * 8 - 1, max(0, round(self.predicted / top * rows * 8)))
            predicted_row = eighths // 8  # counted from the bottom
        bar = style("time-graph--bar")
        over = style("time-graph--over")
        level_style = style("time-graph--level")
        out: list[Text] = []
        for r in range(rows - 1, -1, -1):  # top row first
            line = Text(no_wrap=True)
            for level in levels:
                if level is None:
                    glyph = " "
                else:
                    fill = level - r * 8
                    glyph = BLOCKS[min(8, max(0, fill))]
                if glyph == " " and r == predicted_row:
                    line.append(LEVEL, level_style)
                else:
                    is_over = self.ceiling is not None and r == rows - 1 and glyph == "█"
                    line.append(glyph, over if is_over else bar)
            out.append(line)
        return out

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        return 5
