"""DeviceBar: one device's memory under a plan, as a stacked bar with a legend.

Weights, KV cache, compute buffers, other buffers and the GPU runtime (a CUDA
context, held before the model loads) stack from the left, scaled to the
device's capacity; memory other processes hold (a detected GPU's capacity less
what is free) comes first, and what is left is free. Each part
has its own glyph as well as its colour, so the bar reads without colour
(NO_COLOR) too. The verdict is said in words: fits, tight (inside the safety
margin) or does not fit.
"""

from __future__ import annotations

from typing import ClassVar

from rich.cells import cell_len
from rich.text import Text
from textual.geometry import Size
from textual.reactive import reactive
from textual.widget import Widget

from llmtune.fit.plan import DevicePlan
from llmtune.textsafe import inert
from llmtune.units import format_bytes

VERDICT_WORDS = {"fits": "fits", "tight": "tight", "over": "does not fit"}

# (component, glyph, legend label)
PARTS: tuple[tuple[str, str, str], ...] = (
    ("others", "╳", "in use"),
    ("weights", "█", "weights"),
    ("kv", "▓", "KV"),
    ("compute", "▒", "compute"),
    ("other", "░", "other"),
    ("runtime", "▚", "runtime"),
)
FREE_GLYPH = "·"


def part_bytes(d: DevicePlan) -> dict[str, int]:
    return {
        "others": max(0, d.capacity_bytes - d.free_bytes),
        "weights": d.weights_bytes,
        "kv": d.kv_bytes,
        "compute": d.compute_bytes,
        "other": d.other_bytes,
        "runtime": d.runtime_bytes,
    }


def bar_cells(d: DevicePlan, width: int) -> list[tuple[str, int]]:
    """(part, cells) from the left: each part's share of the capacity, rounded so
    that the cells add up to ``width`` (a part that is not empty gets at least one)."""
    capacity = max(1, d.capacity_bytes)
    parts = part_bytes(d)
    cells: list[tuple[str, int]] = []
    used_bytes = 0
    used_cells = 0
    for name, _glyph, _label in PARTS:
        size = parts[name]
        if size <= 0:
            continue
        used_bytes += size
        end = min(width, round(used_bytes * width / capacity))
        n = max(1, end - used_cells)
        n = min(n, width - used_cells)
        if n > 0:
            cells.append((name, n))
            used_cells += n
    if used_cells < width:
        cells.append(("free", width - used_cells))
    return cells


class DeviceBar(Widget):
    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "device-bar--name",
        "device-bar--fits",
        "device-bar--tight",
        "device-bar--over",
        "device-bar--others",
        "device-bar--weights",
        "device-bar--kv",
        "device-bar--compute",
        "device-bar--other",
        "device-bar--runtime",
        "device-bar--free",
    }

    DEFAULT_CSS = """
    DeviceBar { height: auto; width: 1fr; }
    DeviceBar > .device-bar--name { text-style: bold; }
    DeviceBar > .device-bar--fits { color: $success; text-style: bold; }
    DeviceBar > .device-bar--tight { color: $warning; text-style: bold; }
    DeviceBar > .device-bar--over { color: $error; text-style: bold; }
    DeviceBar > .device-bar--others { color: $foreground 50%; }
    DeviceBar > .device-bar--weights { color: $primary; }
    DeviceBar > .device-bar--kv { color: $secondary; }
    DeviceBar > .device-bar--compute { color: $accent; }
    DeviceBar > .device-bar--other { color: $warning 70%; }
    DeviceBar > .device-bar--runtime { color: $foreground 60%; }
    DeviceBar > .device-bar--free { color: $foreground 30%; }
    """

    plan: reactive[DevicePlan | None] = reactive(None, layout=True)

    def __init__(
        self, plan: DevicePlan | None = None, *, id: str | None = None, classes: str | None = None
    ) -> None:
        super().__init__(id=id, classes=classes)
        self.set_reactive(DeviceBar.plan, plan)

    def lines(self, width: int) -> list[Text]:
        d = self.plan
        if d is None:
            return [Text("")]
        style = self.get_component_rich_style
        width = max(10, width)
        head = Text(no_wrap=True, overflow="ellipsis")
        verdict = Text(VERDICT_WORDS[d.verdict], style(f"device-bar--{d.verdict}"))
        amount = f"{format_bytes(d.total_bytes)} of {format_bytes(d.capacity_bytes)}"
        name = inert(d.label, max_chars=80)
        room = width - cell_len(amount) - verdict.cell_len - 4
        if cell_len(name) > room and d.endpoint:
            name = inert(d.label.removesuffix(f" {d.endpoint}"), max_chars=80)  # RPC0
        if cell_len(name) > room:
            name = name[: max(1, room - 1)] + "…"
        head.append(name, style("device-bar--name"))
        head.append("  ")
        head.append_text(verdict)
        head.pad_right(max(1, width - head.cell_len - cell_len(amount)))
        head.append(amount)
        bar = Text(no_wrap=True)
        glyphs = {name: glyph for name, glyph, _ in PARTS} | {"free": FREE_GLYPH}
        for part, n in bar_cells(d, width):
            bar.append(glyphs[part] * n, style(f"device-bar--{part}"))
        legend_items: list[Text] = []
        sizes = part_bytes(d)
        for part, glyph, label in PARTS:
            if sizes[part] <= 0:
                continue
            item = Text()
            item.append(glyph, style(f"device-bar--{part}"))
            item.append(f" {label} {format_bytes(sizes[part])}")
            legend_items.append(item)
        free = d.free_bytes - d.total_bytes
        item = Text()
        if free >= 0:
            item.append(FREE_GLYPH, style("device-bar--free"))
            item.append(f" free {format_bytes(free)}")
        else:
            item.append(f"short by {format_bytes(-free)}", style("device-bar--over"))
        legend_items.append(item)
        return [head, bar, *_flow(legend_items, width)]

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        return len(self.lines(width))

    def render(self) -> Text:
        return Text("\n").join(self.lines(self.size.width))


def _flow(items: list[Text], width: int, sep: str = "  ") -> list[Text]:
    lines: list[Text] = []
    line = Text(no_wrap=True, overflow="ellipsis")
    for item in items:
        if line.cell_len and line.cell_len + len(sep) + item.cell_len > width:
            lines.append(line)
            line = Text(no_wrap=True, overflow="ellipsis")
        if line.cell_len:
            line.append(sep)
        line.append_text(item)
    if line.cell_len:
        lines.append(line)
    return lines
