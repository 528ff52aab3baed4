"""The monitor pane: VRAM, RAM, tokens/s and GPU use over time, predicted beside
measured; the worker's state and llama.cpp's last log lines; after each load,
each buffer llama.cpp allocated beside the plan's prediction."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.widgets import DataTable, Static

from llmtune.engine.compare import Comparison
from llmtune.telemetry.store import TelemetryStore
from llmtune.textsafe import inert
from llmtune.ui.widgets.graph import TimeGraph
from llmtune.units import format_bytes

LOG_LINES = 12


def fmt_bytes(v: float) -> str:
    return format_bytes(int(v))


def fmt_tps(v: float) -> str:
    return f"{v:,.1f} t/s"


def fmt_pct(v: float) -> str:
    return f"{v:.0f}%"


@dataclass(frozen=True)
class Expected:
    """What the plan predicts while the worker holds a model (None: nothing loaded)."""

    gpu_bytes: tuple[int, ...] = ()  # per GPU, added to what others hold
    host_bytes: int | None = None
    tg_tokens_per_s: float | None = None


class MonitorPane(VerticalScroll):
    # Shown in the footer while this pane has focus (the app binds the same keys).
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("u", "app.unload", "Unload"),
        Binding("R", "app.restart", "Restart"),
    ]

    def compose(self) -> ComposeResult:
        yield Static("", id="monitor-state", markup=False)
        yield Vertical(id="gpu-graphs")
        yield TimeGraph("tokens/s", fmt_tps, id="graph-tps")
        yield TimeGraph("worker RSS", fmt_bytes, id="graph-worker")
        yield TimeGraph("host RAM used", fmt_bytes, id="graph-ram")
        yield TimeGraph("CPU", fmt_pct, id="graph-cpu")
        yield Static("Predicted vs measured", classes="section")
        table: DataTable[Text] = DataTable(id="compare", cursor_type="row", zebra_stripes=True)
        yield table
        yield Static("llama.cpp log", classes="section")
        yield Static("", id="monitor-log", markup=False)

    def on_mount(self) -> None:
        table = self.query_one("#compare", DataTable)
        for label, key in (
            ("device", "device"),
            ("buffer", "buffer"),
            ("predicted", "predicted"),
            ("measured", "measured"),
            ("error", "error"),
        ):
            table.add_column(label, key=key)
        table.display = False

    def show_state(self, line: str) -> None:
        self.query_one("#monitor-state", Static).update(line)

    def show_samples(self, store: TelemetryStore, expected: Expected) -> None:
        box = self.query_one("#gpu-graphs", Vertical)
        gpus = store.gpus
        graphs = list(box.query(TimeGraph))
        if len(graphs) != 2 * len(gpus):
            box.remove_children()
            graphs = []
            for g in gpus:
                name = inert(g.name or f"GPU {g.index}", max_chars=40)
                graphs += [
                    TimeGraph(f"VRAM {name}", fmt_bytes, classes="vram"),
                    TimeGraph(f"GPU {g.index} use", fmt_pct, classes="gpu-util"),
                ]
            box.mount_all(graphs)
        for i, g in enumerate(gpus):
            vram, util = graphs[2 * i], graphs[2 * i + 1]
            predicted = None
            if i < len(expected.gpu_bytes):
                predicted = float(expected.gpu_bytes[i] + (g.other_processes_bytes or 0))
            note = ""
            if g.other_processes_bytes:
                note = f"others hold {format_bytes(g.other_processes_bytes)}"
            vram.show(
                g.memory_used_bytes,
                ceiling=float(g.memory_total_bytes) if g.memory_total_bytes else None,
                predicted=predicted,
                note=note,
            )
            util.show(g.utilization_percent, ceiling=100.0)
        worker = store.worker
        self.query_one("#graph-tps", TimeGraph).show(
            worker.tokens_per_s, predicted=expected.tg_tokens_per_s
        )
        self.query_one("#graph-worker", TimeGraph).show(
            worker.rss_bytes,
            predicted=float(expected.host_bytes) if expected.host_bytes is not None else None,
        )
        total = store.host.ram_total_bytes
        self.query_one("#graph-ram", TimeGraph).show(
            store.host.ram_used_bytes, ceiling=float(total) if total else None
        )
        self.query_one("#graph-cpu", TimeGraph).show(store.host.cpu_percent, ceiling=100.0)

    def show_comparison(self, comparison: Comparison | None) -> None:
        table: DataTable[Text] = self.query_one("#compare", DataTable)
        table.clear()
        table.display = comparison is not None
        if comparison is None:
            return
        for row in comparison.rows:
            if row.predicted_bytes == 0 and row.measured_bytes == 0:
                continue
            pct = row.error_pct
            if pct is None:
                error = Text("–")
            else:
                style = "green" if abs(pct) < 5 else "yellow" if abs(pct) < 15 else "red"
                error = Text(f"{pct:+.1f}%", style, justify="right")
            table.add_row(
                Text(inert(row.device, max_chars=20)),
                Text(row.kind),
                Text(format_bytes(row.predicted_bytes), justify="right"),
                Text(format_bytes(row.measured_bytes), justify="right"),
                error,
            )

    def show_log(self, lines: Sequence[str]) -> None:
        shown = [inert(line, max_chars=300) for line in list(lines)[-LOG_LINES:]]
        self.query_one("#monitor-log", Static).update(Text("\n".join(shown), "dim"))
