"""The side-pane view (under 60 columns, or ``--compact``): the verdict, the
slider, a gauge per device, each RPC host's memory in use while a model is
loaded, and small graphs; the rest is a key away."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.widgets import Static

from llmtune.fit.settings import NGL_AUTO
from llmtune.telemetry.store import TelemetryStore
from llmtune.textsafe import inert
from llmtune.ui.panes.monitor import Expected, fmt_bytes, fmt_tps, network_share
from llmtune.ui.panes.offload import PlanView
from llmtune.ui.widgets.devicebar import VERDICT_WORDS, DeviceBar
from llmtune.ui.widgets.graph import TimeGraph
from llmtune.ui.widgets.memgauge import MemoryGauge, Reading
from llmtune.ui.widgets.slider import LayerSlider
from llmtune.units import format_bytes

VERDICT_STYLE = {"fits": "bold green", "tight": "bold yellow", "over": "bold red"}


class GaugesPane(VerticalScroll):
    def compose(self) -> ComposeResult:
        yield Static("", id="gauges-model", markup=False)
        yield Static("", id="gauges-verdict", markup=False)
        yield LayerSlider(id="ngl-compact")
        yield Vertical(id="gauges-devices")
        yield Static("RPC hosts, measured", id="gauges-hosts-title", classes="section")
        yield Vertical(id="gauges-hosts")
        yield Static("", id="gauges-worker", markup=False)
        yield TimeGraph("tokens/s", fmt_tps, id="gauges-tps", classes="small")
        yield TimeGraph("VRAM", fmt_bytes, id="gauges-vram", classes="small")
        yield TimeGraph("worker RSS", fmt_bytes, id="gauges-rss", classes="small")

    def show(self, view: PlanView) -> None:
        p = view.plan
        quant = view.quant or view.file_type
        what_if = " what-if" if view.quant else ""
        self.query_one("#gauges-model", Static).update(
            f"{inert(view.spec.name, max_chars=40)} · {quant}{what_if} · "
            f"{format_bytes(view.spec.file_bytes)}"
        )
        verdict = Text()
        verdict.append(VERDICT_WORDS[p.verdict], VERDICT_STYLE[p.verdict])
        verdict.append(f" · ctx {p.n_ctx:,}")
        if p.fits:
            verdict.append(f" · {p.predicted.tg_tokens_per_s:,.1f} t/s predicted")
        share = network_share(p.predicted.tg_network_s, p.predicted.tg_token_s)
        if share and p.fits:
            verdict.append(f"\n{share}")
        self.query_one("#gauges-verdict", Static).update(verdict)
        slider = self.query_one("#ngl-compact", LayerSlider)
        slider.maximum = p.n_layer + 1
        slider.value = p.n_gpu_layers
        slider.fit_max = p.max_gpu_layers if view.has_gpu else None
        slider.auto = view.has_gpu and view.settings.n_gpu_layers == NGL_AUTO
        slider.set_class(not view.has_gpu, "-no-gpu")
        slider.note = "" if view.has_gpu else "no GPU: g plans for one"
        box = self.query_one("#gauges-devices", Vertical)
        bars = list(box.query(DeviceBar))
        if len(bars) != len(p.devices):
            box.remove_children()
            box.mount_all(DeviceBar(d) for d in p.devices)
        else:
            for bar, d in zip(bars, p.devices, strict=True):
                bar.plan = d

    def show_rpc(self, store: TelemetryStore, expected: Expected) -> None:
        """Each RPC device's memory in use now, as a gauge with the predicted level."""
        box = self.query_one("#gauges-hosts", Vertical)
        readings: list[Reading] = []
        for d in store.rpc_devices:
            used, level = d.used_bytes.last, expected.rpc_level(d.key)
            readings.append(
                Reading(
                    name=f"{d.name} {d.endpoint}".strip(),
                    short=d.name or d.endpoint,
                    used_bytes=None if used is None else int(used),
                    total_bytes=d.total_bytes,
                    predicted_bytes=None if level is None else int(level),
                )
            )
        self.query_one("#gauges-hosts-title", Static).display = bool(readings)
        gauges = list(box.query(MemoryGauge))
        if len(gauges) != len(readings):
            box.remove_children()
            box.mount_all(MemoryGauge(r) for r in readings)
            return
        for gauge, r in zip(gauges, readings, strict=True):
            gauge.reading = r

    def show_state(self, line: str) -> None:
        self.query_one("#gauges-worker", Static).update(line)

    def show_samples(self, store: TelemetryStore, expected: Expected) -> None:
        self.query_one("#gauges-tps", TimeGraph).show(
            store.worker.tokens_per_s, predicted=expected.tg_tokens_per_s
        )  # the network's share is under the verdict: no room on a narrow graph
        vram = self.query_one("#gauges-vram", TimeGraph)
        gpus = store.gpus
        vram.display = bool(gpus)
        if gpus:
            g = gpus[0]
            predicted = None
            if expected.gpu_bytes:
                predicted = float(expected.gpu_bytes[0] + (g.other_processes_bytes or 0))
            vram.show(
                g.memory_used_bytes,
                ceiling=float(g.memory_total_bytes) if g.memory_total_bytes else None,
                predicted=predicted,
            )
        self.query_one("#gauges-rss", TimeGraph).show(
            store.worker.rss_bytes,
            predicted=float(expected.host_bytes) if expected.host_bytes is not None else None,
        )
