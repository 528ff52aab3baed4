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

from rich.cells import cell_len, set_cell_size
from rich.segment import Segment
from rich.style import Style
from textual.geometry import Size
from textual.strip import Strip
from textual.widget import Widget

from llmtune.telemetry.series import Series

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
        short_title: str = "",
        id: str | None = None,
        classes: str | None = None,
    ) -> None:
        super().__init__(id=id, classes=classes)
        self.title = title
        self.short_title = short_title  # the title when the first row would not fit
        self.fmt = fmt
        self.values: tuple[float | None, ...] = ()
        self.ceiling: float | None = None
        self.predicted: float | None = None
        self.note = ""
        self._styles: dict[str, Style] = {}
        self._strips: list[Strip] | None = None
        self._strips_size = (0, 0)

    def notify_style_update(self) -> None:
        self._styles = {}  # the theme or the CSS changed
        self._strips = None
        super().notify_style_update()

    def _style(self, name: str) -> Style:
        """A component's style ("" for the widget's own, combined with each of
        them), looked up once: the graph redraws every tick."""
        style = self._styles.get(name)
        if style is None:
            base = self._styles.get("")
            if base is None:
                base = self._styles[""] = self.rich_style
            if name:
                style = base + self.get_component_rich_style(f"time-graph--{name}")
            else:
                style = base
            self._styles[name] = style
        return style

    def show(
        self,
        values: Sequence[float | None] | Series,
        *,
        ceiling: float | None = None,
        predicted: float | None = None,
        note: str = "",
    ) -> None:
        """Draw ``values`` (or a series' newest points, as many as the graph is wide)."""
        on_screen = self.on_screen
        if isinstance(values, Series):
            if not on_screen and self.values:
                return  # nothing to draw now; the next tick in view draws the latest
            values = values.latest(max(1, self.size.width))
        self.values = tuple(values)
        self.ceiling = ceiling
        self.predicted = predicted
        self.note = note
        if not on_screen:
            self._strips = None
            return
        # Repaint only when what is drawn changed: an idle tokens/s graph or a
        # steady RSS looks the same tick after tick, and a repaint costs far more
        # than building the rows to compare.
        size = (self.size.width, self.size.height)
        strips = self._build(*size)
        if strips != self._strips or size != self._strips_size:
            self._strips, self._strips_size = strips, size
            self.refresh()

    @property
    def on_screen(self) -> bool:
        """Whether any of the graph is on the screen now. A graph scrolled out of
        view is not refreshed: refreshing a hidden widget makes Textual rebuild
        its whole map of the screen, every tick. It paints the latest values
        when it comes into view."""
        try:
            # Textual is pinned to an exact version, so its compositor is safe to read here.
            return self in self.screen._compositor.visible_widgets
        except Exception:  # not mounted yet, or no screen: nothing to refresh either way
            return True

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

    def title_parts(self, width: int | None = None) -> list[tuple[str, str]]:
        """The first row as (text, component) pieces; "" is the widget's own style.
        With a ``width`` it would not fit in, the short title, if there is one."""
        parts = self._title_parts(self.title)
        if width is not None and self.short_title:
            if sum(cell_len(text) for text, _ in parts) > width:
                parts = self._title_parts(self.short_title)
        return parts

    def _title_parts(self, title: str) -> list[tuple[str, str]]:
        latest = self.latest
        parts = [
            (title, "title"),
            ("  ", ""),
            (self.fmt(latest) if latest is not None else "–", "value"),
        ]
        if self.predicted is not None:
            parts += [
                ("  ", ""),
                (LEVEL * 2, "level"),
                (f" predicted {self.fmt(self.predicted)}", ""),
            ]
        if self.ceiling:
            parts.append((f"  of {self.fmt(self.ceiling)}", ""))
        if self.note:
            parts.append((f"  {self.note}", ""))
        return parts

    def graph_rows(self, width: int, rows: int) -> list[list[tuple[str, str]]]:
        """The graph's rows, top first, each as runs of (glyphs, component)."""
        top = self.scale_top()
        values = self.values[-width:]
        levels = [None] * (width - len(values)) + column_levels(values, rows, top)
        predicted_row: int | None = None
        if self.predicted is not None and top > 0:
            eighths = min(rows * 8 - 1, max(0, round(self.predicted / top * rows * 8)))
            predicted_row = eighths // 8  # counted from the bottom
        out: list[list[tuple[str, str]]] = []
        for r in range(rows - 1, -1, -1):
            runs: list[tuple[str, str]] = []
            run: list[str] = []
            run_kind = ""
            for level in levels:
                glyph = " " if level is None else BLOCKS[min(8, max(0, level - r * 8))]
                if glyph == " " and r == predicted_row:
                    glyph, kind = LEVEL, "level"
                elif self.ceiling is not None and r == rows - 1 and glyph == "█":
                    kind = "over"
                else:
                    kind = "bar"
                if kind != run_kind and run:
                    runs.append(("".join(run), run_kind))
                    run = []
                run_kind = kind
                run.append(glyph)
            if run:
                runs.append(("".join(run), run_kind))
            out.append(runs)
        return out

    def _strip(self, parts: list[tuple[str, str]], width: int) -> Strip:
        """One row of exactly ``width`` cells: cut at the edge, padded after."""
        segments: list[Segment] = []
        used = 0
        for text, kind in parts:
            if not text or used >= width:
                continue
            cells = cell_len(text)
            if used + cells > width:
                text = set_cell_size(text, width - used)
                cells = width - used
            segments.append(Segment(text, self._style(kind)))
            used += cells
        if used < width:
            segments.append(Segment(" " * (width - used), self._style("")))
        return Strip(segments, width)

    def _build(self, width: int, height: int) -> list[Strip]:
        rows = [self.title_parts(width), *self.graph_rows(width, max(0, height - 1))]
        return [self._strip(parts, width) for parts in rows[:height]]

    def render_line(self, y: int) -> Strip:
        # The Line API: rows built straight from segments, cached until the data,
        # the size or the style change. A graph redraws every tick, so this skips
        # Textual's conversion of rich Text, which cost most of the app's idle CPU.
        size = (self.size.width, self.size.height)
        if self._strips is None or self._strips_size != size:
            self._strips = self._build(*size)
            self._strips_size = size
        if 0 <= y < len(self._strips):
            return self._strips[y]
        return Strip.blank(size[0], self._style(""))

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        return 5
