"""The monitor pane: VRAM, each RPC device's memory, RAM, tokens/s and GPU use
over time, predicted beside measured; the worker's state and llama.cpp's last
log lines; after each load, each buffer llama.cpp allocated beside the plan's
prediction."""

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
from llmtune.telemetry.store import RpcDeviceSeries, TelemetryStore
from llmtune.textsafe import inert
from llmtune.ui.hosts import fmt_ms
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

    gpu_bytes: tuple[int, ...] = ()  # per local GPU, added to what others hold
    host_bytes: int | None = None
    tg_tokens_per_s: float | None = None
    # per RPC device (telemetry.store.rpc_key), with what was in use when it was asked
    rpc_bytes: tuple[tuple[str, int], ...] = ()
    tg_network_s: float = 0.0  # of a token's time, the network's share
    tg_token_s: float = 0.0

    def rpc_level(self, key: str) -> float | None:
        for k, level in self.rpc_bytes:
            if k == key:
                return float(level)
        return None

    @property
    def network_note(self) -> str:
        """The network's share of a token's time, beside the predicted speed."""
        return network_share(self.tg_network_s, self.tg_token_s)


def network_share(network_s: float, token_s: float) -> str:
    """``network 0.4 ms of 2.9 ms per token`` ("" without RPC devices)."""
    if network_s <= 0 or token_s <= 0:
        return ""
    return f"network {fmt_ms(network_s)} of {fmt_ms(token_s)} per token"


def rpc_graph_titles(series: RpcDeviceSeries) -> tuple[str, str]:
    """An RPC device's graph title, and the one for a narrow pane (``RPC0 used``)."""
    name = inert(f"{series.name} {series.endpoint}".strip(), max_chars=60)
    short = inert(series.name or series.endpoint, max_chars=20)
    return f"{name} used", f"{short} used"


class MonitorPane(VerticalScroll):
    # Shown in the footer while this pane has focus (the app binds the same keys).
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("u", "app.unload", "Unload"),
        Binding("R", "app.restart", "Restart"),
    ]

    def compose(self) -> ComposeResult:
        yield Static("", id="monitor-state", markup=False)
        yield Vertical(id="gpu-graphs")
        yield Vertical(id="rpc-graphs")
        yield TimeGraph("tokens/s", fmt_tps, id="graph-tps")
        yield TimeGraph("worker RSS", fmt_bytes, id="graph-worker")
        yield TimeGraph("host RAM used", fmt_bytes, id="graph-ram")
        yield TimeGraph("CPU", fmt_pct, id="graph-cpu")
        yield Static("Predicted vs measured", classes="section")
        table: DataTable[Text] = DataTable(id="compare", cursor_type="row", zebra_stripes=True)
        yield table
        yield Static("", id="monitor-history", markup=False)
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
        self.query_one("#monitor-history", Static).display = False

    def show_history(self, lines: Sequence[str]) -> None:
        """The last runs that corrected the speed model, predicted against measured
        (``engine.history``; ``llmtune bench --history`` has them all)."""
        history = self.query_one("#monitor-history", Static)
        history.display = bool(lines)
        shown = [inert(line, max_chars=200) for line in lines]
        history.update(Text("\n".join(["speed runs (llmtune bench --history):", *shown]), "dim"))

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
            worker.tokens_per_s, predicted=expected.tg_tokens_per_s, note=expected.network_note
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

    def show_rpc(self, store: TelemetryStore, expected: Expected) -> None:
        """Each RPC device's memory in use, as its server reports it, of its total,
        with the plan's predicted use as a level (what was in use when it was asked,
        plus what the plan puts there)."""
        box = self.query_one("#rpc-graphs", Vertical)
        devices = store.rpc_devices
        graphs = list(box.query(TimeGraph))
        titles = [rpc_graph_titles(d) for d in devices]
        if [(g.title, g.short_title) for g in graphs] != titles:
            box.remove_children()
            graphs = [
                TimeGraph(title, fmt_bytes, short_title=short, classes="rpc-memory")
                for title, short in titles
            ]
            box.mount_all(graphs)
            # Drawn again once laid out: a graph not yet sized takes one point of history.
            self.call_after_refresh(self.show_rpc, store, expected)
        for graph, d in zip(graphs, devices, strict=True):
            free = d.free_bytes.last
            note = f"free {format_bytes(int(free))}" if free is not None else ""
            if free is not None and d.total_bytes and int(free) >= d.total_bytes:
                # llama.cpp's CPU device reports its whole RAM free, whatever it holds.
                note = "CPU server: all free"
            graph.show(
                d.used_bytes,
                ceiling=float(d.total_bytes) if d.total_bytes else None,
                predicted=expected.rpc_level(d.key),
                note=note,
            )

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
