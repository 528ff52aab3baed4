"""The attach screen: a running llama-server's numbers beside llmtune's plan for it.

Without an address it first lists the llama-server processes found here (a
thread asks psutil) and takes a URL typed in. Then one thread worker ticks the
core's :class:`~llmtune.engine.attach.Attacher` at the interval and posts each
sample; it plans the server again (:func:`~llmtune.engine.attach_plan.plan_server`)
when the server's model changes. The screen appends samples to its own bounded
series and draws them: memory gauges with the predicted mark, tokens/s with the
predicted level, each slot's KV fill. At 50 columns it all fits on one screen;
from 60 columns the resident memory and prompt speed have graphs too.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, ClassVar

from rich.text import Text
from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Input, OptionList, Static
from textual.widgets.option_list import Option
from textual.worker import get_current_worker

from llmtune.engine.attach import Attacher, ServerSample
from llmtune.engine.attach_local import LocalProcess, LocalServer, find_servers, server_for_url
from llmtune.engine.attach_plan import ServerPlan, plan_server
from llmtune.errors import LlmtuneError
from llmtune.hardware.machine import MachineOptions
from llmtune.telemetry.series import Series
from llmtune.textsafe import inert
from llmtune.ui.panes.gauges import VERDICT_STYLE
from llmtune.ui.panes.monitor import fmt_bytes, fmt_tps
from llmtune.ui.widgets.graph import TimeGraph
from llmtune.ui.widgets.memgauge import MemoryGauge, Reading

HISTORY = 600  # samples kept per series: ten minutes at 1 s
NARROW = 60  # under this many columns, the gauges only
KV_BAR = 10


@dataclass(frozen=True)
class AttachTarget:
    """What to attach to and how (``url`` None: choose among the local servers)."""

    url: str | None = None
    local: LocalServer | None = None
    api_key: str | None = None
    interval_s: float = 1.0
    given: dict[str, Any] = field(default_factory=dict)
    model: str | None = None
    options: MachineOptions = field(default_factory=MachineOptions)


def kv_line(sample: ServerSample) -> Text:
    """Each slot's KV fill as a short bar, busy slots marked."""
    text = Text()
    for slot in sample.slots[:16]:
        fill = slot.kv_fill or 0.0
        cells = round(fill * KV_BAR)
        text.append(f"slot {slot.id:<2} ")
        text.append("█" * cells, "bold")
        text.append("·" * (KV_BAR - cells), "dim")
        text.append(f" {fill:4.0%} of {slot.n_ctx:,}")
        text.append("  busy\n" if slot.processing else "\n", "bold green")
    if len(sample.slots) > 16:
        text.append(f"… {len(sample.slots) - 16} more slots\n", "dim")
    return text


class AttachScreen(Screen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q", "close", "Close"),
        Binding("p", "replan", "Plan again"),
    ]

    class Ticked(Message):
        """One sample from the watch thread; a newer one replaces one still queued."""

        def __init__(self, sample: ServerSample) -> None:
            super().__init__()
            self.sample = sample

        def can_replace(self, message: Message) -> bool:
            return isinstance(message, AttachScreen.Ticked)

    @dataclass
    class Planned(Message):
        plan: ServerPlan

    @dataclass
    class Found(Message):
        servers: list[LocalServer]

    def __init__(self, target: AttachTarget, *, watch: bool = True) -> None:
        super().__init__()
        self.target = target
        self.watch_enabled = watch  # tests feed samples themselves
        self.samples: list[ServerSample] = []  # the latest few, for tests and the header
        self.plan: ServerPlan | None = None
        self.tg = Series(HISTORY)
        self.rss = Series(HISTORY)
        self.vram = Series(HISTORY)
        self.servers: list[LocalServer] = []
        self._replan = threading.Event()

    def compose(self) -> ComposeResult:
        with Vertical(id="attach-choose"):
            yield Static("Attach to a llama-server", classes="section")
            yield Static("looking for llama-server processes…", id="attach-found", markup=False)
            yield OptionList(id="attach-list")
            yield Input(placeholder="or its URL: http://host:8080", id="attach-url")
        with VerticalScroll(id="attach-watch"):
            yield Static("", id="attach-model", markup=False)
            yield Static("", id="attach-state", markup=False)
            yield Vertical(id="attach-gpus")
            yield MemoryGauge(id="attach-ram")
            yield TimeGraph("tokens/s", fmt_tps, id="attach-tps", classes="small")
            yield Static("", id="attach-slots", markup=False)
            yield TimeGraph("RSS", fmt_bytes, id="attach-rss", classes="wide-only")
            yield TimeGraph("VRAM", fmt_bytes, id="attach-vram", classes="wide-only")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#attach-list", OptionList).display = False
        self.query_one("#attach-ram", MemoryGauge).display = False
        self._layout(self.size.width)
        if self.target.url is None:
            self.query_one("#attach-watch").display = False
            if self.watch_enabled:
                self._find()
        else:
            self.query_one("#attach-choose").display = False
            self.start(self.target.url, self.target.local)

    def on_resize(self) -> None:
        self._layout(self.size.width)

    def _layout(self, width: int) -> None:
        for graph in self.query(".wide-only"):
            graph.display = width >= NARROW and bool(self.samples)

    # -- choosing ------------------------------------------------------------------------
    @work(thread=True, exit_on_error=False, group="attach-find")
    def _find(self) -> None:
        self.post_message(self.Found(find_servers()))

    @on(Found)
    def _found(self, message: Found) -> None:
        self.show_servers(message.servers)

    def show_servers(self, servers: list[LocalServer]) -> None:
        self.servers = servers
        listing = self.query_one("#attach-list", OptionList)
        listing.clear_options()
        listing.add_options(Option(inert(s.label, max_chars=120)) for s in servers)
        listing.display = bool(servers)
        if servers:
            listing.highlighted = 0
        found = f"{len(servers)} llama-server process{'es' if len(servers) != 1 else ''} here"
        self.query_one("#attach-found", Static).update(
            found if servers else "no llama-server runs on this machine: type its URL"
        )
        (listing if servers else self.query_one("#attach-url", Input)).focus()

    @on(OptionList.OptionSelected, "#attach-list")
    def _chosen(self, event: OptionList.OptionSelected) -> None:
        server = self.servers[event.option_index]
        self.start(server.url, server)

    @on(Input.Submitted, "#attach-url")
    def _typed(self, event: Input.Submitted) -> None:
        from llmtune.engine.attach import normalise_url

        try:
            url = normalise_url(event.value)
        except LlmtuneError as exc:
            self.notify(exc.one_line(), severity="error", markup=False)
            return
        self.start(url, server_for_url(url, self.servers))

    # -- watching ------------------------------------------------------------------------
    def start(self, url: str, local: LocalServer | None) -> None:
        self.query_one("#attach-choose").display = False
        self.query_one("#attach-watch").display = True
        self.query_one("#attach-state", Static).update(f"attaching to {url}…")
        self.target = AttachTarget(url, local, *self._rest())
        if self.watch_enabled:
            self._watch(url, local)

    def _rest(self) -> tuple[Any, ...]:
        t = self.target
        return (t.api_key, t.interval_s, t.given, t.model, t.options)

    @work(thread=True, exit_on_error=False, group="attach-watch", exclusive=True)
    def _watch(self, url: str, local: LocalServer | None) -> None:
        worker = get_current_worker()
        t = self.target
        process = LocalProcess(local.pid) if local is not None else None
        attacher = Attacher(url, api_key=t.api_key, interval_s=t.interval_s, process=process)
        planned: str | None = None
        stop = threading.Event()
        try:
            while not worker.is_cancelled:
                sample = attacher.tick()
                self.post_message(self.Ticked(sample))
                if sample.state == "ok" and (planned != sample.model or self._replan.is_set()):
                    self._replan.clear()
                    planned = sample.model
                    self.post_message(self.Planned(plan_server(
                        sample, local, model=t.model, given=t.given, options=t.options
                    )))  # fmt: skip
                stop.wait(t.interval_s)
        finally:
            attacher.close()

    def action_replan(self) -> None:
        self._replan.set()

    def action_close(self) -> None:
        self.workers.cancel_group(self, "attach-watch")
        self.dismiss(None)

    @on(Planned)
    def _planned(self, message: Planned) -> None:
        self.show_plan(message.plan)

    @on(Ticked)
    def _ticked(self, message: Ticked) -> None:
        self.show_sample(message.sample)

    def show_plan(self, p: ServerPlan) -> None:
        self.plan = p
        if self.samples:
            self.show_sample(self.samples[-1], append=False)

    def show_sample(self, s: ServerSample, append: bool = True) -> None:
        if append:
            self.samples = [*self.samples[-9:], s]
            held = [b for b in s.process.vram_bytes if b is not None]
            self.tg.append(s.timestamp, s.tg_tokens_per_s if s.state == "ok" else None)
            self.rss.append(s.timestamp, s.process.rss_bytes)
            self.vram.append(s.timestamp, sum(held) if held else None)
        self._layout(self.size.width)
        p = self.plan
        self.query_one("#attach-model", Static).update(self._model_line(s, p))
        state = Text(inert(s.message, max_chars=200), "bold red" if s.state != "ok" else "")
        self.query_one("#attach-state", Static).update(state)
        self._show_gauges(s, p)
        self.query_one("#attach-tps", TimeGraph).show(
            self.tg, predicted=p.tg_tokens_per_s if p else None
        )
        slots = Text(f"slots {s.busy_slots} of {len(s.slots)} busy")
        if s.requests_processing is not None:
            slots.append(f" · {s.requests_deferred or 0} deferred")
        slots.append("\n")
        slots.append_text(kv_line(s))
        self.query_one("#attach-slots", Static).update(slots)
        host = p.host_bytes if p else None
        self.query_one("#attach-rss", TimeGraph).show(
            self.rss, predicted=float(host) if host is not None else None
        )
        vram = self.query_one("#attach-vram", TimeGraph)
        predicted = sum(p.gpu_bytes) if p and p.gpu_bytes else None
        vram.display = vram.display and bool(len(self.vram) and self.vram.last is not None)
        vram.show(self.vram, predicted=float(predicted) if predicted else None)

    def _model_line(self, s: ServerSample, p: ServerPlan | None) -> Text:
        text = Text()
        name = (p.model if p else None) or s.model or s.url
        text.append(inert(name.replace("\\", "/").rsplit("/", 1)[-1], max_chars=60), "bold")
        if s.process.pid is not None:
            text.append(f" · pid {s.process.pid}")
        text.append("\n")
        if p is None:
            text.append("planning…" if s.state == "ok" else "no plan yet", "dim")
        elif p.plan is None:
            text.append(f"no plan: {inert(p.problem or '', max_chars=160)}", "yellow")
        else:
            q = p.plan
            text.append(q.verdict, VERDICT_STYLE.get(q.verdict, ""))
            text.append(
                f" · ngl {q.n_gpu_layers} · ctx {q.n_ctx:,} · {p.settings.n_parallel} slots"
            )
        return text

    def _show_gauges(self, s: ServerSample, p: ServerPlan | None) -> None:
        box = self.query_one("#attach-gpus", Vertical)
        readings: list[Reading] = []
        for i, held in enumerate(s.process.vram_bytes):
            predicted = p.gpu_bytes[i] if p and i < len(p.gpu_bytes) else None
            if held is None and predicted is None:
                continue
            totals = s.process.gpu_total_bytes
            total = totals[i] if i < len(totals) else self._gpu_total(i)
            readings.append(Reading(f"VRAM GPU {i}", f"GPU {i}", held, total, predicted))
        gauges = list(box.query(MemoryGauge))
        if len(gauges) != len(readings):
            box.remove_children()
            box.mount_all(MemoryGauge(r) for r in readings)
        else:
            for gauge, r in zip(gauges, readings, strict=True):
                gauge.reading = r
        ram = self.query_one("#attach-ram", MemoryGauge)
        ram.display = s.process.rss_bytes is not None
        host = p.host_bytes if p else None
        total = s.process.ram_total_bytes
        if total is None and p is not None and p.plan is not None:
            total = p.plan.host.capacity_bytes
        ram.reading = Reading("RAM (server RSS)", "RSS", s.process.rss_bytes, total, host)

    def _gpu_total(self, index: int) -> int | None:
        p = self.plan
        if p is None or p.plan is None or index >= len(p.plan.local_gpus):
            return None
        return p.plan.local_gpus[index].capacity_bytes


class AttachApp(App[None]):
    """``llmtune attach`` on a terminal: the attach screen alone."""

    CSS_PATH = "../llmtune.tcss"
    TITLE = "llmtune attach"

    def __init__(self, target: AttachTarget, *, watch: bool = True) -> None:
        super().__init__()
        self.target = target
        self.watch_enabled = watch

    def on_mount(self) -> None:
        self.push_screen(AttachScreen(self.target, watch=self.watch_enabled), self._screen_closed)

    def _screen_closed(self, _result: None) -> None:
        self.exit()
