"""The llmtune Textual app: model, quantization, offload, monitor and run panes.

The app owns the state (the model, the settings, the what-if quantization and
hardware, the worker) and sets it on the panes ("attributes down"); panes and
widgets post what the user asked for ("messages up"). Every change re-plans at
once (``fit.plan`` is well under a millisecond); the quantization table, which
plans every file type, is refreshed in a thread a moment later. The llama.cpp
worker is a separate process driven through ``engine.Supervisor``; its events
and the sampler's ticks arrive as messages from their threads.

Layout follows the terminal's width: every pane at once from 120 columns, tabs
from 60, and under 60 (or with ``--compact``) a side-pane view of gauges.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields, replace
from typing import ClassVar, Literal

from rich.text import Text
from textual import events, on, work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding, BindingType
from textual.containers import Container
from textual.css.query import NoMatches
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import Footer, Header, Static, Tab, Tabs

from llmtune import config_store
from llmtune.engine.compare import Comparison, compare
from llmtune.engine.config import RunConfig
from llmtune.engine.protocol import (
    Event,
    Exited,
    Failed,
    Loaded,
    Progress,
    Started,
    Stats,
    Token,
    Unloaded,
)
from llmtune.engine.quantize import default_output
from llmtune.engine.supervisor import Supervisor
from llmtune.errors import LlmtuneError
from llmtune.fit.handoff import Handoff, plan_handoff
from llmtune.fit.plan import FitPlan
from llmtune.fit.settings import Settings
from llmtune.fit.whatif import QuantRow
from llmtune.hardware.device import Device
from llmtune.model import ModelSpec, read_spec
from llmtune.model.chat import render_chat
from llmtune.telemetry.sampler import SampleCallback, Sampler
from llmtune.telemetry.store import TelemetryStore
from llmtune.textsafe import inert
from llmtune.ui.messages import SampleArrived, WorkerEvent
from llmtune.ui.panes.gauges import GaugesPane
from llmtune.ui.panes.model import ModelPane
from llmtune.ui.panes.monitor import Expected, MonitorPane
from llmtune.ui.panes.offload import OffloadPane, PlanView
from llmtune.ui.panes.quant import QuantPane
from llmtune.ui.panes.run import RunPane
from llmtune.ui.planner import Hardware, Planner
from llmtune.ui.widgets.slider import LayerSlider
from llmtune.ui.widgets.stepper import Stepper
from llmtune.ui.widgets.summary import ModelSummary

__all__ = ["AppOptions", "LlmtuneApp", "ModelSummary", "make_app"]

Layout = Literal["wide", "tabs", "narrow"]
WorkerState = Literal["stopped", "starting", "loading", "loaded", "generating", "dead"]

WIDE_COLUMNS = 120
NARROW_COLUMNS = 60
# (pane, tab label) in the order of the keys 1-5; "gauges" is key 0, for narrow panes.
PANES: tuple[tuple[str, str], ...] = (
    ("model", "Model"),
    ("quant", "Quant"),
    ("offload", "Offload"),
    ("monitor", "Monitor"),
    ("run", "Run"),
)
GEN_MAX_TOKENS = 256
TPS_WINDOW_S = 2.0

EngineFactory = Callable[[Callable[[Event], None]], Supervisor]
SamplerFactory = Callable[[SampleCallback, float], Sampler]


@dataclass(frozen=True)
class AppOptions:
    interval_s: float = 1.0
    compact: bool = False
    theme: str | None = None
    path_label: str | None = None  # shown instead of the model's path (screenshots)
    persist: bool = True  # read and write the saved settings
    autoapply_delay_s: float = 0.8  # while a model is loaded, settings reload it after this
    quant_delay_s: float = 0.15


def default_engine_factory(on_event: Callable[[Event], None]) -> Supervisor:
    return Supervisor(on_event)


def default_sampler_factory(callback: SampleCallback, interval_s: float) -> Sampler:
    return Sampler(callback, interval_s=interval_s)


class LlmtuneApp(App[None]):
    CSS_PATH = "llmtune.tcss"
    TITLE = "llmtune"
    BINDINGS: ClassVar[list[BindingType]] = [
        # The footer lists the focused pane's keys, then these in this order, and
        # cuts what does not fit (? shows every key): the likeliest needed first.
        Binding("a", "apply", "Apply"),
        Binding("t", "tune", "Tune"),
        Binding("h", "handoff", "Hand-off"),
        Binding("question_mark", "help", "Help"),
        Binding("o", "open_model", "Open"),
        Binding("q", "quit", "Quit"),
        Binding("escape", "stop", "Stop", show=False),
        Binding("R", "restart", "Restart worker", show=False),
        Binding("ctrl+r", "restart", "Restart worker", show=False, priority=True),
        Binding("u", "unload", "Unload", show=False),
        Binding("g", "choose_gpu", "GPU", show=False),  # the status line offers it
        Binding("c", "copy_command", "Copy cmd", show=False),
        Binding("w", "quantize", "Quantize", show=False),
        Binding("left_square_bracket", "layers(-1)", "-layer", show=False),
        Binding("right_square_bracket", "layers(1)", "+layer", show=False),
        Binding("slash", "search_metadata", "Search", show=False),
        Binding("0", "pane('gauges')", "Gauges", show=False),
        Binding("1", "pane('model')", "Panes", key_display="1-5", show=False),
        *(
            Binding(str(i + 1), f"pane('{name}')", label, show=False)
            for i, (name, label) in enumerate(PANES)
            if i
        ),
    ]

    def __init__(
        self,
        spec: ModelSpec | None,
        model_path: str | None,
        hardware: Hardware,
        *,
        options: AppOptions | None = None,
        engine_factory: EngineFactory = default_engine_factory,
        sampler_factory: SamplerFactory | None = default_sampler_factory,
    ) -> None:
        super().__init__()
        self.options = options or AppOptions()
        if self.options.theme:
            self.theme = self.options.theme
        self.spec = spec
        self.model_path = model_path
        self.hardware = hardware
        self.planner = Planner(spec) if spec is not None else None
        self.settings = Settings()
        self.quant: str | None = None
        self.view: PlanView | None = None
        self.layout_mode: Layout = "tabs"
        self.active_pane = "offload"
        self.quant_rows: list[QuantRow] = []
        self.siblings: dict[str, str] = {}
        # the worker
        self._engine_factory = engine_factory
        self.engine: Supervisor | None = None
        self.engine_generation = 0
        self.worker_state: WorkerState = "stopped"
        self.worker_reason = ""
        self.load_progress: float | None = None
        self.loaded_config: RunConfig | None = None
        self.loaded: Loaded | None = None
        self.loaded_settings: Settings | None = None
        self.loaded_plan: FitPlan | None = None  # made once per load, see _plan_loaded
        self.comparison: Comparison | None = None
        self.last_stats: Stats | None = None
        self._token_times: deque[float] = deque(maxlen=4096)
        self._prompt_pending = False  # a prompt whose chat template is being rendered
        self._queued_prompt: str | None = None  # Enter before the model was loaded
        self.live_tps: float | None = None  # read by the sampler thread
        self._autoapply_timer: object | None = None
        # telemetry
        self.telemetry = TelemetryStore(interval_s=self.options.interval_s)
        self._sampler_factory = sampler_factory
        self.sampler: Sampler | None = None
        # saved settings
        self.store = config_store.Store()
        self._save_timer: object | None = None
        self._quant_timer: object | None = None

    # -- building ------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        # The app keeps its own references: `query_one` looks in the screen on top,
        # which may be a dialog when a worker event or a sample arrives.
        self.status = Static("", id="status", markup=False)
        self.tabs = PaneTabs(
            Tab("Gauges", id="tab-gauges"),
            *(Tab(label, id=f"tab-{name}") for name, label in PANES),
            active="tab-offload",
            id="tabs",
        )
        self.offload_pane = OffloadPane(id="pane-offload", classes="pane")
        self.monitor_pane = MonitorPane(id="pane-monitor", classes="pane")
        self.run_pane = RunPane(id="pane-run", classes="pane")
        self.quant_pane = QuantPane(id="pane-quant", classes="pane")
        self.model_pane = ModelPane(
            self.spec, path_label=self.options.path_label, id="pane-model", classes="pane"
        )
        self.gauges_pane = GaugesPane(id="pane-gauges", classes="pane")
        self.panes: dict[str, Widget] = {
            "offload": self.offload_pane,
            "monitor": self.monitor_pane,
            "run": self.run_pane,
            "quant": self.quant_pane,
            "model": self.model_pane,
            "gauges": self.gauges_pane,
        }
        yield Header()
        yield self.status
        yield self.tabs
        with Container(id="panes"):
            # DOM order is the wide grid's reading order (see llmtune.tcss).
            yield from self.panes.values()
        yield Footer()

    def on_mount(self) -> None:
        for pane_id, title in (
            ("offload", "Offload"),
            ("monitor", "Monitor"),
            ("run", "Run"),
            ("quant", "Quantization"),
            ("model", "Model"),
            ("gauges", "llmtune"),
        ):
            self.panes[pane_id].border_title = title
        self._apply_layout(self.size.width)
        if self.options.persist:
            self.store, notice = config_store.load()
            if notice:
                self.notify(notice, severity="warning", markup=False, timeout=8)
        self._set_worker_state(self.worker_state)  # the run pane says how to load
        if self.spec is not None and self.model_path is not None:
            self._open_spec(self.spec, self.model_path)
        else:
            self.call_after_refresh(self._push_picker, False)
        if self._sampler_factory is not None:
            self.sampler = self._sampler_factory(self._on_sample, self.options.interval_s)
            self.sampler.start()
        self._focus_pane(self.active_pane)

    def on_unmount(self) -> None:
        if self.sampler is not None:
            self.sampler.stop()
        self._save_now()
        engine = self.engine
        self.engine = None
        if engine is not None:
            engine.shutdown(timeout_s=2.0)

    # -- layout --------------------------------------------------------------------
    def on_resize(self, event: events.Resize) -> None:
        self._apply_layout(event.size.width)

    def layout_for(self, width: int) -> Layout:
        if self.options.compact or width < NARROW_COLUMNS:
            return "narrow"
        return "wide" if width >= WIDE_COLUMNS else "tabs"

    def _apply_layout(self, width: int) -> None:
        mode = self.layout_for(width)
        previous = self.layout_mode
        self.layout_mode = mode
        for name in ("wide", "tabs", "narrow"):
            self.set_class(mode == name, f"-{name}")
        tabs = self.tabs
        if mode == "narrow":
            tabs.show("tab-gauges")
            # Gauges are the narrow view; a pane chosen in the tabs stays chosen.
            if not self.is_mounted_once or previous == "wide":
                self._activate("gauges")
        else:
            tabs.hide("tab-gauges")
            if self.active_pane == "gauges":
                self._activate("offload")
        self._mark_active()
        self.is_mounted_once = True

    is_mounted_once = False

    def _mark_active(self) -> None:
        for name, pane in self.panes.items():
            pane.set_class(name == self.active_pane, "-active")

    def _activate(self, pane: str) -> None:
        self.active_pane = pane
        tabs = self.tabs
        if tabs.active != f"tab-{pane}":
            tabs.active = f"tab-{pane}"
        self._mark_active()

    @on(Tabs.TabActivated, "#tabs")
    def _tab_activated(self, event: Tabs.TabActivated) -> None:
        tab_id = event.tab.id or ""
        pane = tab_id.removeprefix("tab-")
        if pane and pane != self.active_pane:
            self.active_pane = pane
            self._mark_active()
            self._focus_pane(pane)

    def _focus_pane(self, pane: str) -> None:
        # After the refresh that shows the pane: a hidden widget cannot take focus.
        self.call_after_refresh(self._focus_now, pane)

    def _focus_now(self, pane: str) -> None:
        target: dict[str, str] = {
            "offload": "#ngl",
            "quant": "#quant-table",
            "model": "#pane-model",
            "run": "#prompt",
            "monitor": "#pane-monitor",
            "gauges": "#ngl-compact",
        }
        try:
            widget = self.panes[pane].screen.query_one(target[pane])
        except Exception:  # the pane is gone (the app is closing)
            return
        if widget.focusable:
            widget.focus()

    def action_pane(self, pane: str) -> None:
        if pane == "gauges" and self.layout_mode != "narrow":
            self.notify("The gauges view is for panes under 60 columns (or --compact).",
                        markup=False)  # fmt: skip
            return
        self._activate(pane)
        self._focus_pane(pane)

    # -- the model -------------------------------------------------------------------
    def _push_picker(self, can_go_back: bool = True) -> None:
        from llmtune.ui.screens.picker import DEMO_DOWNLOAD, ModelPicker

        def chosen(path: str | None) -> None:
            if path == DEMO_DOWNLOAD:
                self._fetch_demo()
            elif path:
                self.open_model(path)

        self.push_screen(
            ModelPicker(can_go_back=can_go_back, last_model=self.store.last_model), chosen
        )

    @work(thread=True, exclusive=True, group="demo")
    def _fetch_demo(self) -> None:
        from llmtune.model.demo import fetch_demo_model

        self.call_from_thread(self.notify, "Downloading the demo model (98 MB)…", markup=False)
        try:
            path = fetch_demo_model()
        except Exception as exc:
            message = exc.one_line() if isinstance(exc, LlmtuneError) else str(exc)
            self.call_from_thread(
                self.notify, f"The demo model could not be downloaded: {inert(message)}",
                severity="error", markup=False,
            )  # fmt: skip
            if self.spec is None:
                self.call_from_thread(self._push_picker, False)
            return
        self.call_from_thread(self.open_model, str(path))

    def action_open_model(self) -> None:
        self._push_picker(self.spec is not None)

    def open_model(self, path: str) -> None:
        """Read ``path`` and show it; a file that cannot be read is a one-line error."""
        try:
            spec = read_spec(path)
        except LlmtuneError as exc:
            self.notify(exc.one_line(), severity="error", markup=False, timeout=10)
            if self.spec is None:
                self._push_picker(False)
            return
        except OSError as exc:
            self.notify(f"{inert(path)}: {exc.strerror or exc}", severity="error", markup=False)
            if self.spec is None:
                self._push_picker(False)
            return
        if self.worker_state in ("loading", "loaded", "generating") and self.engine is not None:
            self.engine.unload()
        self._open_spec(spec, os.path.abspath(path))

    def _open_spec(self, spec: ModelSpec, path: str) -> None:
        if self.spec is not None and self.model_path is not None and self.model_path != path:
            self._save_now()
        self.spec = spec
        self.model_path = path
        self.planner = Planner(spec)
        self.quant = None
        self.quant_rows = []
        self.siblings = {}
        saved = self.store.settings_for(path)
        self.settings = saved if saved is not None else Settings()
        self.sub_title = inert(spec.name, max_chars=60)
        self.model_pane.show(spec, self.options.path_label)
        self.store = self.store.with_last_model(path)
        self._schedule_save()
        self._replan()
        self._load_siblings(path)
        self._warm_quant(self.planner)

    @work(thread=True, exclusive=True, group="siblings")
    def _load_siblings(self, path: str) -> None:
        from llmtune.model.discover import sibling_quantizations

        found = {m.quant: m.path for m in sibling_quantizations(path) if m.quant}
        self.call_from_thread(self._siblings_found, path, found)

    def _siblings_found(self, path: str, found: dict[str, str]) -> None:
        if path == self.model_path:
            self.siblings = found
            self._show_quant_table()

    @work(thread=True, exclusive=True, group="warm")
    def _warm_quant(self, planner: Planner) -> None:
        planner.warm()
        self.call_from_thread(self._schedule_quant_table, 0.0)

    # -- planning ----------------------------------------------------------------------
    def change_settings(self, **changes: object) -> bool:
        """Apply a change the user asked for; re-plan at once. A combination llama.cpp
        would refuse is a one-line notice and changes nothing."""
        new = self.settings.with_(**changes)
        try:
            new.validate()
        except LlmtuneError as exc:
            self.notify(exc.what, severity="warning", markup=False)
            self._replan()  # put the widgets back to the settings in force
            return False
        self.settings = new
        self._replan()
        self._schedule_save()
        self._schedule_autoapply()
        return True

    def set_quant(self, quant: str | None) -> None:
        if self.spec is not None and quant == self.spec.file_type_name:
            quant = None
        self.quant = quant
        self._replan()

    def set_what_if(self, gpus: Iterable[Device]) -> None:
        self.hardware = self.hardware.with_what_if(tuple(gpus))
        self._show_status()
        self._replan()

    def _replan(self) -> None:
        planner, path = self.planner, self.model_path
        if planner is None or path is None:
            return
        try:
            p = planner.plan(self.hardware, self.settings, self.quant)
        except LlmtuneError as exc:
            self.notify(exc.what, severity="error", markup=False)
            return
        spec = planner.spec_for(self.quant)
        self.view = PlanView(
            spec=spec,
            plan=p,
            settings=self.settings,
            quant=self.quant,
            file_type=planner.file_type,
            hardware=self.hardware.describe(),
            command=self.command_for(p),
            has_gpu=bool(self.hardware.gpus),
        )
        self.offload_pane.show(self.view)
        self.gauges_pane.show(self.view)
        self.model_pane.show_what_if(self.quant, spec)
        self._schedule_quant_table(self.options.quant_delay_s)

    def command_for(self, p: FitPlan) -> str:
        return self.handoff_for(p).llama_server

    def handoff_for(self, p: FitPlan) -> Handoff:
        """The plan as llama-server, llama-cli, llama-cpp-python and Ollama would run it."""
        path = self.options.path_label or self.model_path or "model.gguf"
        if self.quant:
            path = self.siblings.get(self.quant) or default_output(path, self.quant)
        return plan_handoff(path, p)

    @property
    def plan(self) -> FitPlan | None:
        return self.view.plan if self.view is not None else None

    def _schedule_quant_table(self, delay_s: float) -> None:
        if self._quant_timer is not None:
            self._quant_timer.stop()  # type: ignore[attr-defined]
        # A zero-length Textual timer divides by its interval: never ask for one.
        self._quant_timer = self.set_timer(max(0.01, delay_s), self._compute_quant_table)

    def _compute_quant_table(self) -> None:
        self._quant_timer = None
        if self.planner is not None:
            self._quant_rows_worker(self.planner, self.hardware, self.settings)

    @work(thread=True, exclusive=True, group="quant")
    def _quant_rows_worker(self, planner: Planner, hardware: Hardware, settings: Settings) -> None:
        try:
            rows = planner.quant_rows(hardware, settings)
        except LlmtuneError:
            return
        self.call_from_thread(self._quant_rows_ready, planner, rows)

    def _quant_rows_ready(self, planner: Planner, rows: list[QuantRow]) -> None:
        if planner is not self.planner:
            return
        self.quant_rows = rows
        self._show_quant_table()

    def _show_quant_table(self) -> None:
        if not self.quant_rows:
            return
        hardware = self.hardware.describe()
        p = self.plan
        ctx = f"context {p.n_ctx:,}, " if p is not None else ""
        caption = f"{ctx}as many layers on the GPU as fit; {hardware}"
        self.quant_pane.show(self.quant_rows, self.quant, self.siblings, caption)

    # -- messages from the panes -------------------------------------------------------
    @on(LayerSlider.Changed)
    def _slider(self, event: LayerSlider.Changed) -> None:
        if not self.hardware.gpus:
            self._no_gpu_notice()
            return
        self.change_settings(n_gpu_layers=event.value)

    def _no_gpu_notice(self) -> None:
        self.notify("No GPU to offload to: press g to plan for one.", markup=False, timeout=4)

    def action_layers(self, delta: int) -> None:
        p = self.plan
        if p is None:
            return
        if not self.hardware.gpus:
            self._no_gpu_notice()
            return
        value = min(max(0, p.n_gpu_layers + delta), p.n_layer + 1)
        if value != p.n_gpu_layers:
            self.change_settings(n_gpu_layers=value)

    @on(Stepper.Changed)
    def _stepper(self, event: Stepper.Changed) -> None:
        name = (event.stepper.id or "").removeprefix("set-")
        if name == "kv_offload":
            self.change_settings(no_kv_offload=not event.value)
        elif name:
            self.change_settings(**{name: event.value})

    @on(QuantPane.Chosen)
    def _quant_chosen(self, event: QuantPane.Chosen) -> None:
        self.set_quant(event.file_type)
        shown = event.file_type or "the file as it is"
        self.notify(f"Planning as {shown}.", markup=False, timeout=3)

    @on(QuantPane.OpenFile)
    def _quant_open(self, event: QuantPane.OpenFile) -> None:
        self.open_model(event.path)

    @on(RunPane.Requested)
    def _run_requested(self, event: RunPane.Requested) -> None:
        if event.what == "generate":
            self.generate(event.prompt)
        elif event.what == "stop":
            self.action_stop()
        elif event.what == "reload":
            self.action_apply()

    # -- actions -----------------------------------------------------------------------
    def action_help(self) -> None:
        from llmtune.ui.screens.help import HelpScreen

        self.push_screen(HelpScreen())

    def action_search_metadata(self) -> None:
        self._activate("model")
        self.call_after_refresh(self.model_pane.query_one("#metadata-filter").focus)

    def action_choose_gpu(self) -> None:
        from llmtune.hardware.profiles import parse_gpu_spec
        from llmtune.ui.screens.choose_gpu import ChooseGPU

        gpus = self.hardware.machine_gpus
        label = ", ".join(d.name for d in gpus) if gpus else "CPU only"
        current = self.hardware.what_if[0].profile if self.hardware.what_if else None

        def chosen(key: str | None) -> None:
            if key is None:
                return
            self.set_what_if([parse_gpu_spec(key)] if key else [])
            self._focus_pane(self.active_pane)
            shown = self.hardware.describe()
            self.notify(shown[0].upper() + shown[1:] + ".", markup=False, timeout=4)

        self.push_screen(ChooseGPU(label, current), chosen)

    def action_copy_command(self) -> None:
        if self.view is None:
            return
        self.copy_to_clipboard(self.view.command)
        self.notify("Copied the llama-server command line (OSC 52).", markup=False, timeout=3)

    def copy_to_clipboard(self, text: str) -> None:
        """OSC 52, plain and, inside tmux, also wrapped for tmux's passthrough: the
        first works with `set-clipboard on`, the second with `allow-passthrough on`."""
        from llmtune.clipboard import osc52

        self._clipboard = text
        if self._driver is None:
            return
        self._driver.write(osc52(text, tmux=False))
        if os.environ.get("TMUX"):
            self._driver.write(osc52(text, tmux=True))

    def action_handoff(self) -> None:
        from llmtune.ui.screens.handoff import HandoffScreen

        if self.plan is None:
            return
        self.push_screen(HandoffScreen(self.handoff_for(self.plan), self.copy_to_clipboard))

    def action_tune(self) -> None:
        from llmtune.ui.screens.tune import TuneScreen

        if self.spec is None or self.planner is None:
            return
        if self.worker_state in ("loading", "loaded", "generating") and self.engine is not None:
            self._cancel_autoapply()
            self.engine.unload()
            self.notify("Unloaded the model: the tuner needs the memory.", markup=False)
        if self.hardware.what_if:
            self.notify(
                "Tuning runs here, on this machine's own hardware, not the what-if GPU.",
                markup=False,
                timeout=6,
            )

        def tuned(best: Settings | None) -> None:
            if best is None:
                return
            keep = {"margin_bytes": self.settings.margin_bytes}
            if self.change_settings(**{**_fields(best), **keep}):
                self.notify("Applied the tuned settings; a: load them.", markup=False)

        machine = self.hardware.machine
        self.push_screen(TuneScreen(self.spec, machine, self.settings, self.hardware.speed), tuned)

    def action_quantize(self) -> None:
        from llmtune.ui.screens.quantize import QuantizeScreen

        if self.model_path is None:
            return
        target = self.quant
        if self.active_pane == "quant" or self.layout_mode == "wide":
            row = self.quant_pane.highlighted()
            if row is not None and not row.is_current:
                target = row.file_type
        if target is None:
            self.notify(
                "Choose a file type in the quantization pane (2), then w writes it.",
                markup=False,
            )
            return

        def written(path: str | None) -> None:
            if path:
                self.open_model(path)

        self.push_screen(QuantizeScreen(self.model_path, target), written)

    def get_system_commands(self, screen: Screen[object]) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        for title, help_text, action in (
            ("Apply settings", "Load the model in llama.cpp with these settings (a)", "apply"),
            ("Stop generating", "Stop the answer being generated (escape)", "stop"),
            ("Restart the worker", "Start a new llama.cpp worker (R)", "restart"),
            ("Unload the model", "Free the worker's memory (u)", "unload"),
            ("Plan for another GPU", "Choose a GPU profile as a what-if target (g)", "choose_gpu"),
            ("Open a model", "Pick another GGUF file (o)", "open_model"),
            ("Copy the command line", "llama-server line to the clipboard (c)", "copy_command"),
            ("Hand-off", "llama-server, llama-cli, llama-cpp-python, Ollama (h)", "handoff"),
            ("Tune", "Find the fastest settings that fit, by real runs (t)", "tune"),
            ("Quantize", "Write the model at the chosen file type (w)", "quantize"),
            ("Search the metadata", "Filter the model's metadata (/)", "search_metadata"),
            ("One more layer on the GPU", "Move the offload slider up one layer (])", "layers(1)"),
            (
                "One fewer layer on the GPU",
                "Move the offload slider down one layer ([)",
                "layers(-1)",
            ),  # fmt: skip
            ("Show the gauges", "The side-pane view for under 60 columns (0)", "pane('gauges')"),
            ("Help", "Keys and what each pane shows (?)", "help"),
        ):
            yield SystemCommand(title, help_text, _runner(self, action))
        for i, (name, label) in enumerate(PANES):
            yield SystemCommand(
                f"Show the {label} pane", f"key {i + 1}", _runner(self, f"pane('{name}')")
            )

    # -- the worker ----------------------------------------------------------------------
    def run_settings(self) -> Settings | None:
        """The settings the worker runs here: a what-if GPU's layers can only go to
        this machine's CPU."""
        p = self.plan
        if p is None:
            return None
        n_gpu_layers = p.n_gpu_layers if self.hardware.machine_gpus else 0
        return self.settings.with_(n_gpu_layers=n_gpu_layers)

    def run_config(self) -> RunConfig | None:
        settings = self.run_settings()
        if settings is None or self.model_path is None:
            return None
        return RunConfig.from_settings(self.model_path, settings)

    def action_apply(self) -> None:
        config = self.run_config()
        settings = self.run_settings()
        if config is None or settings is None:
            return
        if self.quant:
            self.notify(
                f"The {self.quant} what-if is a plan: llama.cpp loads the file as it is "
                f"({self.planner.file_type if self.planner else ''}).",
                markup=False,
                timeout=6,
            )
        self._cancel_autoapply()
        if self.engine is None or not self.engine.alive:
            self._start_engine()
        assert self.engine is not None
        if self.worker_state == "generating":
            self.engine.stop()
        self.engine.load(config)
        self.loaded_config = config
        self.loaded_settings = settings
        self.loaded = None
        self.loaded_plan = None
        self.comparison = None
        self.monitor_pane.show_comparison(None)
        self._set_worker_state("loading", progress=0.0)

    def _start_engine(self) -> None:
        old = self.engine
        if old is not None:
            self._retire(old)
        self.engine_generation += 1
        generation = self.engine_generation

        def on_event(event: Event) -> None:
            self.post_message(WorkerEvent(event, generation))

        self.engine = self._engine_factory(on_event)
        self.engine.start()
        self._set_worker_state("starting")

    @work(thread=True, group="retire")
    def _retire(self, engine: Supervisor) -> None:
        engine.kill()
        engine.shutdown(timeout_s=2.0)

    def action_restart(self) -> None:
        self._start_engine()
        self.action_apply()

    def action_unload(self) -> None:
        if self.engine is not None and self.engine.alive:
            self._cancel_autoapply()
            self.engine.unload()

    def action_stop(self) -> None:
        self._queued_prompt = None  # a prompt waiting for the load is not wanted now
        if self._prompt_pending:
            # Stopped while the chat template rendered: nothing was sent yet.
            self._prompt_pending = False
            self._set_worker_state("loaded")
        elif self.worker_state == "generating" and self.engine is not None:
            self.engine.stop()
        elif self.worker_state == "loading" and self.engine is not None:
            self.engine.stop()
        elif self.focused is not None and self.focused.id == "prompt":
            self.set_focus(None)

    def generate(self, prompt: str) -> None:
        """Generate an answer; with no model loaded yet, load it with the panes'
        settings first and answer once it is loaded."""
        if not prompt.strip():
            self.notify("Type a prompt first.", markup=False)
            return
        state = self.worker_state
        if state == "generating":
            self.notify("Still answering: Escape stops it.", markup=False, timeout=3)
            return
        if state == "dead":
            self.notify("The worker died: ctrl+r restarts it.", severity="error", markup=False)
            return
        if state != "loaded" or self.engine is None or self.spec is None:
            if self.spec is None:
                return
            self._queued_prompt = prompt
            if state == "stopped":
                self.action_apply()
            self.notify("Loading the model; the answer follows.", markup=False, timeout=3)
            return
        self._prompt_pending = True
        self._set_worker_state("generating")
        self._render_and_generate(self.spec, prompt, self.engine_generation)

    @work(thread=True, exclusive=True, group="chat")
    def _render_and_generate(self, spec: ModelSpec, prompt: str, generation: int) -> None:
        # The chat template renders in a child process (up to a few seconds for a
        # hostile one): never on the UI thread.
        text = render_chat(spec, prompt) or prompt
        self.call_from_thread(self._send_generate, text, generation)

    def _send_generate(self, text: str, generation: int) -> None:
        pending, self._prompt_pending = self._prompt_pending, False
        if not pending or generation != self.engine_generation or self.engine is None:
            return  # stopped, or the worker replaced, before the template was ready
        self.run_pane.clear_output(text)
        self._token_times.clear()
        self.engine.generate(text, GEN_MAX_TOKENS, temperature=0.7, seed=42)

    def _schedule_autoapply(self) -> None:
        if self.worker_state not in ("loaded", "generating", "loading"):
            return
        self._cancel_autoapply()
        self._autoapply_timer = self.set_timer(self.options.autoapply_delay_s, self._autoapply)

    def _cancel_autoapply(self) -> None:
        if self._autoapply_timer is not None:
            self._autoapply_timer.stop()  # type: ignore[attr-defined]
            self._autoapply_timer = None

    def _autoapply(self) -> None:
        self._autoapply_timer = None
        config = self.run_config()
        if config is not None and config != self.loaded_config:
            self.action_apply()

    @on(WorkerEvent)
    def _worker_event(self, message: WorkerEvent) -> None:
        if message.generation != self.engine_generation:
            return  # from a worker that has been replaced
        event = message.event
        monitor = self.monitor_pane
        if isinstance(event, Started):
            if self.sampler is not None:
                self.sampler.watch_worker(event.pid, self._tokens_per_s)
            if self.worker_state == "starting":
                self._set_worker_state("loading" if self.loaded_config else "stopped")
        elif isinstance(event, Progress):
            self._set_worker_state("loading", progress=event.fraction)
        elif isinstance(event, Loaded):
            self.loaded = event
            self.loaded_plan = self._plan_loaded()
            self.comparison = compare(event, self.loaded_plan) if self.loaded_plan else None
            monitor.show_comparison(self.comparison)
            self._set_worker_state("loaded")
            self.notify(
                f"Loaded in {event.load_s + event.context_s:.1f} s.", markup=False, timeout=3
            )
            queued, self._queued_prompt = self._queued_prompt, None
            if queued is not None:
                self.generate(queued)
        elif isinstance(event, Token):
            self._on_token(event)
        elif isinstance(event, Stats):
            self.last_stats = event
            self.live_tps = None
            self.run_pane.show_stats(event, self._predicted_machine_tg())
            self._set_worker_state("loaded")
        elif isinstance(event, Unloaded):
            self.loaded = None
            self.loaded_config = None
            self._set_worker_state("stopped")
        elif isinstance(event, Failed):
            self._on_failed(event)
        elif isinstance(event, Exited):
            self._on_exited(event)
        if self.engine is not None:
            monitor.show_log(self.engine.log_tail(20))

    def _plan_loaded(self) -> FitPlan | None:
        """The plan for what the worker loaded: the file, on this machine, as it ran.
        Made once per load; the comparison, the graphs' predicted levels and the
        run pane's predicted speed all read it."""
        if self.planner is None or self.loaded_settings is None:
            return None
        try:
            return self.planner.machine_plan(self.hardware, self.loaded_settings)
        except LlmtuneError:
            return None

    def _on_token(self, token: Token) -> None:
        self.run_pane.append(token.text)
        times = self._token_times
        times.append(token.t)
        while len(times) > 2 and times[-1] - times[0] > TPS_WINDOW_S:
            times.popleft()
        if len(times) >= 2 and times[-1] > times[0]:
            self.live_tps = (len(times) - 1) / (times[-1] - times[0])

    def _tokens_per_s(self) -> float | None:
        """For the sampler thread: the latest measured rate while generating."""
        return self.live_tps

    def _on_failed(self, event: Failed) -> None:
        reason = inert(event.reason, max_chars=400)
        if event.fatal:
            self.worker_reason = reason
            self._set_worker_state("dead")
            self.notify(f"{reason} — ctrl+r restarts it.", severity="error", markup=False,
                        timeout=10)  # fmt: skip
        else:
            self.worker_reason = reason
            self.loaded = None
            self._set_worker_state("stopped")
            self.notify(reason, severity="error", markup=False, timeout=8)
        self.live_tps = None

    def _on_exited(self, event: Exited) -> None:
        self.live_tps = None
        if self.sampler is not None:
            self.sampler.watch_worker(None)
        if self.worker_state != "dead":
            # An exit we asked for (shutdown), or one already reported as Failed.
            self._set_worker_state("stopped")
        self.loaded = None

    def _set_worker_state(self, state: WorkerState, progress: float | None = None) -> None:
        if state != "generating":
            self._prompt_pending = False
        if state in ("stopped", "dead"):
            self._queued_prompt = None  # the load it waited for failed or was undone
        self.worker_state = state
        self.load_progress = progress if state == "loading" else None
        line = self.worker_line()
        self.run_pane.show_state(line, self.load_progress)
        self.monitor_pane.show_state(line)
        self.gauges_pane.show_state(line)
        self._show_status()

    def worker_line(self) -> str:
        state = self.worker_state
        pid = self.engine.pid if self.engine is not None else None
        if state == "stopped":
            why = f" ({self.worker_reason})" if self.worker_reason else ""
            return f"worker: no model loaded{why} · a: load with these settings"
        if state == "starting":
            return "worker: starting…"
        if state == "loading":
            pct = f" {self.load_progress * 100:.0f}%" if self.load_progress is not None else ""
            return f"worker {pid}: loading{pct}"
        if state == "dead":
            # The key first: in a narrow pane the end of the line is cut.
            return f"ctrl+r: restart · {self.worker_reason}"
        loaded = self.loaded
        when = f" in {loaded.load_s + loaded.context_s:.1f} s" if loaded else ""
        doing = "generating" if state == "generating" else "loaded"
        return f"worker {pid}: {doing}{when} · ctx {loaded.n_ctx:,}" if loaded else doing

    def _predicted_machine_tg(self) -> float | None:
        p = self.loaded_plan
        return p.predicted.tg_tokens_per_s if p is not None else None

    # -- telemetry -----------------------------------------------------------------------
    def _on_sample(self, sample: object) -> None:
        """The sampler thread's callback: hand the sample to the UI thread."""
        from llmtune.telemetry.sample import Sample

        if isinstance(sample, Sample):
            self.post_message(SampleArrived(sample))

    @on(SampleArrived)
    def _sample_arrived(self, message: SampleArrived) -> None:
        if not self.telemetry.append(message.sample):
            return
        expected = self._expected()
        try:
            if self.layout_mode == "narrow":
                self.gauges_pane.show_samples(self.telemetry, expected)
            if self.layout_mode == "wide" or self.active_pane == "monitor":
                self.monitor_pane.show_samples(self.telemetry, expected)
        except NoMatches:
            pass  # a tick that lands while the app closes and its widgets are gone

    def _expected(self) -> Expected:
        p = self.loaded_plan
        if self.loaded is None or p is None:
            return Expected()
        return Expected(
            gpu_bytes=tuple(d.total_bytes for d in p.gpus),
            host_bytes=p.host.total_bytes,
            tg_tokens_per_s=p.predicted.tg_tokens_per_s,
        )

    # -- status and persistence -----------------------------------------------------------
    def _show_status(self) -> None:
        # Most urgent first: the line is cut at the terminal's width.
        parts: list[str] = []
        if self.worker_state == "dead":
            parts.append(self.worker_line())
        if self.hardware.notice:
            parts.append(self.hardware.notice)
        if self.hardware.what_if or not parts:
            parts.append(self.hardware.describe())
        self.status.update(Text(" · ".join(parts)))
        self.status.set_class(self.worker_state == "dead", "-error")

    def _schedule_save(self) -> None:
        if not self.options.persist:
            return
        if self._save_timer is not None:
            self._save_timer.stop()  # type: ignore[attr-defined]
        self._save_timer = self.set_timer(0.5, self._save_now)

    def _save_now(self) -> None:
        self._save_timer = None
        if not self.options.persist or self.model_path is None:
            return
        self.store = self.store.with_settings(self.model_path, self.settings)
        problem = config_store.save(self.store)
        if problem and self.is_running:
            self.notify(problem, severity="warning", markup=False)


class PaneTabs(Tabs, can_focus=False):
    """The pane tabs answer clicks and the number keys; they never take focus, so
    the arrow keys always reach the slider or setting in hand."""


def _runner(app: LlmtuneApp, action: str) -> Callable[[], object]:
    async def run() -> None:
        await app.run_action(action)

    return run


def _fields(settings: Settings) -> dict[str, object]:
    return {f.name: getattr(settings, f.name) for f in fields(settings)}


def machine_hardware(
    gpu_specs: Iterable[str] = (), *, exclude_pids: Iterable[int] = ()
) -> Hardware:
    """This machine's devices, the notice about them, and GPU profiles asked for with --gpu."""
    from llmtune.engine import calibration
    from llmtune.hardware.detect import detect, gpu_build_warning, supports_gpu_offload
    from llmtune.hardware.nvml import nvml_status
    from llmtune.hardware.profiles import parse_gpu_spec

    devices = tuple(detect(exclude_pids))
    available, sentence = nvml_status()
    notice: str | None = None if available else sentence
    offload: bool | None = None
    if any(d.is_gpu for d in devices):
        offload = supports_gpu_offload()
        notice = gpu_build_warning(devices, offload) or notice
    what_if = tuple(parse_gpu_spec(text, index=i) for i, text in enumerate(gpu_specs))
    speed, damaged = calibration.load()
    if damaged:  # the calibration file was unusable: say so, and predict with the defaults
        notice = f"{notice} · {damaged}" if notice else damaged
    return Hardware(devices, what_if, notice, speed, offload)


def make_app(
    spec: ModelSpec | None = None,
    *,
    model_path: str | None = None,
    path_label: str | None = None,
    hardware: Hardware | None = None,
    options: AppOptions | None = None,
    engine_factory: EngineFactory = default_engine_factory,
    sampler_factory: SamplerFactory | None = None,
) -> LlmtuneApp:
    """Build the app; tests and screenshots pass their own model, hardware and sampler.

    ``path_label``: what to show instead of the model's path (fixed text for
    snapshots and screenshots). Without ``hardware``, a CPU-only machine with
    this machine's RAM is assumed (tests must not depend on the machine);
    the command line passes ``machine_hardware()``. Without ``sampler_factory``
    no sampler runs (again for repeatable tests); the command line passes
    ``default_sampler_factory``.
    """
    if hardware is None:
        from llmtune.hardware.host import host_device

        hardware = Hardware((host_device(),))
    opts = options or AppOptions(persist=False)
    if path_label is not None:
        opts = replace(opts, path_label=path_label)
    if spec is not None and model_path is None:
        model_path = spec.path
    return LlmtuneApp(
        spec,
        model_path,
        hardware,
        options=opts,
        engine_factory=engine_factory,
        sampler_factory=sampler_factory,
    )
