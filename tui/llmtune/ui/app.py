"""The llmtune Textual app: model, quantization, offload, monitor and run panes.

The app composes the panes, binds the keys (``ui.keys``) and routes messages.
It owns the state the panes show (the model, the settings, the what-if
quantization and hardware) and sets it on them ("attributes down"); panes and
widgets post what the user asked for ("messages up"). Every change re-plans at
once (``fit.plan`` is well under a millisecond); the quantization table, which
plans every file type, follows in a thread a moment later (``ui.quant_table``).
The llama.cpp worker is driven by ``engine.session.Session``, a state machine
with no Textual in it; ``ui.worker_control`` hands it the user's requests and
the worker's events (posted from the supervisor's thread as ``WorkerEvent``)
and shows what it says on the panes. The dialogs the keys open are in
``ui.dialogs``, the layout by width in ``ui.layout``.

Thread workers post their results as messages (``ui.messages``) and never end
the app: a failure is one sentence on the status line, a toast, and the
traceback in the log (``ui.boundary``, ``llmtune.logfile``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar

from rich.text import Text
from textual import events, on
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import BindingType
from textual.containers import Container
from textual.css.query import NoMatches
from textual.screen import Screen
from textual.timer import Timer
from textual.widget import Widget
from textual.widgets import Footer, Header, Static, Tab, Tabs
from textual.worker import Worker, WorkerState

from llmtune import config_store
from llmtune.engine.protocol import Event
from llmtune.engine.quantize import default_output
from llmtune.engine.session import EngineFactory
from llmtune.engine.supervisor import Supervisor
from llmtune.errors import LlmtuneError
from llmtune.fit.handoff import Handoff, plan_handoff
from llmtune.fit.options import stepper_change
from llmtune.fit.plan import FitPlan
from llmtune.fit.settings import NGL_AUTO, Settings
from llmtune.hardware.device import Device
from llmtune.hardware.machine import Machine
from llmtune.model import ModelSpec, read_spec
from llmtune.model.spec import location
from llmtune.telemetry.sampler import SampleCallback, Sampler
from llmtune.telemetry.store import TelemetryStore
from llmtune.textsafe import inert
from llmtune.ui import dialogs, keys
from llmtune.ui.boundary import failure_sentence
from llmtune.ui.hosts import HostEntry, combine
from llmtune.ui.layout import PANES, TITLES, Layout, PaneLayout, PaneTabs
from llmtune.ui.messages import (
    DemoFetched,
    HistoryRead,
    ModelReady,
    PromptRendered,
    QuantRowsReady,
    QuantWarmed,
    SampleArrived,
    SiblingsFound,
    WorkerEvent,
)
from llmtune.ui.panes.gauges import GaugesPane
from llmtune.ui.panes.model import ModelPane
from llmtune.ui.panes.monitor import MonitorPane
from llmtune.ui.panes.offload import OffloadPane, PlanView
from llmtune.ui.panes.quant import QuantPane
from llmtune.ui.panes.run import RunPane
from llmtune.ui.planner import Planner
from llmtune.ui.quant_table import QuantTable
from llmtune.ui.status import status_line
from llmtune.ui.widgets.slider import LayerSlider
from llmtune.ui.widgets.stepper import Stepper
from llmtune.ui.widgets.summary import ModelSummary
from llmtune.ui.worker_control import SessionAttributes, WorkerControl

__all__ = ["AppOptions", "LlmtuneApp", "ModelSummary", "make_app"]

log = logging.getLogger("llmtune.ui")

SamplerFactory = Callable[[SampleCallback, float], Sampler]


@dataclass(frozen=True)
class AppOptions:
    interval_s: float = 1.0
    compact: bool = False
    theme: str | None = None
    path_label: str | None = None  # shown instead of the model's path (screenshots)
    persist: bool = True  # read and write the saved settings, and keep the log file
    autoapply_delay_s: float = 0.8  # while a model is loaded, settings reload it after this
    quant_delay_s: float = 0.15
    network_bytes_per_s: float | None = None  # --network: the link RPC hosts added here get
    rpc_timeout_s: float = 3.0  # how long a host being added may take to answer each step


def default_engine_factory(on_event: Callable[[Event], None]) -> Supervisor:
    return Supervisor(on_event)


def default_sampler_factory(callback: SampleCallback, interval_s: float) -> Sampler:
    return Sampler(callback, interval_s=interval_s)


class LlmtuneApp(SessionAttributes, App[None]):
    CSS_PATH = "llmtune.tcss"
    TITLE = "llmtune"
    BINDINGS: ClassVar[list[BindingType]] = keys.BINDINGS

    def __init__(
        self,
        spec: ModelSpec | None,
        model_path: str | None,
        hardware: Machine,
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
        self.panes_layout = PaneLayout(self, compact=self.options.compact)
        self.quant_table = QuantTable(self)
        # the worker: the session decides, the control shows it on the panes
        self.worker = WorkerControl(self, engine_factory)
        self.session = self.worker.session
        # what failed in the background, on the status line until the next file opens
        self.error: str | None = None
        self._error_group: str | None = None  # ... or until this group's task works again
        self.log_path: Path | None = None
        # telemetry
        self.telemetry = TelemetryStore(interval_s=self.options.interval_s)
        self._sampler_factory = sampler_factory
        self.sampler: Sampler | None = None
        # saved settings
        self.store = config_store.Store()
        self._save_timer: Timer | None = None

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
        for pane_id, title in TITLES.items():
            self.panes[pane_id].border_title = title
        self.panes_layout.apply(self.size.width)
        if self.options.persist:
            from llmtune.logfile import open_log

            self.log_path = open_log()
            self.store, notice = config_store.load()
            if notice:
                self.notify(notice, severity="warning", markup=False, timeout=8)
            self.worker.show_history()
        self.worker.session_changed()  # the run pane says how to load
        if self.spec is not None and self.model_path is not None:
            self._open_spec(self.spec, self.model_path)
        else:
            self.call_after_refresh(dialogs.picker, self, False)
        if self._sampler_factory is not None:
            self.sampler = self._sampler_factory(self._on_sample, self.options.interval_s)
            self.sampler.start()
        self.focus_pane(self.active_pane)

    def on_unmount(self) -> None:
        if self.sampler is not None:
            self.sampler.stop()
        self._save_now()
        self.session.shutdown()
        if self.log_path is not None:
            from llmtune.logfile import close_log

            close_log()

    # -- the error boundary ----------------------------------------------------------
    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """Any thread worker that raised, the app's or a screen's (they forward theirs):
        one sentence on the status line and in a toast, the traceback in the log."""
        worker = event.worker
        if event.state == WorkerState.SUCCESS and worker.group == self._error_group:
            self.error = self._error_group = None  # the task that failed works again
            self.show_status()
        if event.state != WorkerState.ERROR:
            return
        sentence = failure_sentence(worker.group, worker.error)
        log.error("%s (worker %s)", sentence, worker.name, exc_info=worker.error)
        if worker.group == "chat":
            self.session.prompt_failed()  # nothing was sent: the worker is ready again
        self.show_error(sentence, worker.group)

    def show_error(self, sentence: str, group: str | None = None) -> None:
        """Keep ``sentence`` on the status line, until the next file opens or the
        task of worker ``group`` next succeeds, and toast it."""
        self.error, self._error_group = sentence, group
        self.show_status()
        where = f" · details in {inert(str(self.log_path))}" if self.log_path else ""
        self.notify(sentence + where, severity="error", markup=False, timeout=10)

    # -- layout (ui.layout) ------------------------------------------------------------
    @property
    def layout_mode(self) -> Layout:
        return self.panes_layout.mode

    @property
    def active_pane(self) -> str:
        return self.panes_layout.active

    def on_resize(self, event: events.Resize) -> None:
        self.panes_layout.apply(event.size.width)

    @on(Tabs.TabActivated, "#tabs")
    def _tab_activated(self, event: Tabs.TabActivated) -> None:
        self.panes_layout.tab_activated((event.tab.id or "").removeprefix("tab-"))

    def focus_pane(self, pane: str) -> None:
        self.panes_layout.focus(pane)

    def action_pane(self, pane: str) -> None:
        self.panes_layout.show(pane)

    # -- the model -------------------------------------------------------------------
    @on(DemoFetched)
    def _demo_fetched(self, message: DemoFetched) -> None:
        if message.path is not None:
            self.open_model(message.path)
            return
        self.notify(f"The demo model could not be downloaded: {message.error}",
                    severity="error", markup=False)  # fmt: skip
        if self.spec is None:
            dialogs.picker(self, False)

    @on(ModelReady)
    def _model_ready(self, message: ModelReady) -> None:
        """A model read from the network (the picker's URL or Hub repo table)."""
        if message.spec is None:
            self.notify(message.error or "", severity="error", markup=False, timeout=10)
            return
        if self.session.holds_model:
            self.session.unload()
        self._open_spec(message.spec, location(message.spec.path))

    def action_open_model(self) -> None:
        dialogs.picker(self, self.spec is not None)

    def open_model(self, path: str) -> None:
        """Read ``path`` and show it; a file that cannot be read is a one-line error."""
        try:
            spec = read_spec(path)
        except (LlmtuneError, OSError) as exc:
            if isinstance(exc, LlmtuneError):
                self.notify(exc.one_line(), severity="error", markup=False, timeout=10)
            else:
                self.notify(f"{inert(path)}: {exc.strerror or exc}", severity="error", markup=False)
            if self.spec is None:
                dialogs.picker(self, False)
            return
        if self.session.holds_model:
            self.session.unload()
        self._open_spec(spec, os.path.abspath(path))

    def _open_spec(self, spec: ModelSpec, path: str) -> None:
        if self.spec is not None and self.model_path is not None and self.model_path != path:
            self._save_now()
        self.spec = spec
        self.model_path = path
        self.planner = Planner(spec)
        self.quant = None
        self.error = self._error_group = None  # what failed was about the file before
        saved = self.store.settings_for(path)
        self.settings = saved if saved is not None else Settings()
        self.sub_title = inert(spec.name, max_chars=60)
        self.model_pane.show(spec, self.options.path_label)
        self.store = self.store.with_last_model(path)
        self._schedule_save()
        self.show_status()
        self._replan()
        self.quant_table.model_opened(path, self.planner)

    @on(SiblingsFound)
    def _siblings_found(self, message: SiblingsFound) -> None:
        self.quant_table.siblings_found(message)

    @on(QuantWarmed)
    def _quant_warmed(self, message: QuantWarmed) -> None:
        self.quant_table.warmed(message)

    @on(QuantRowsReady)
    def _quant_rows_ready(self, message: QuantRowsReady) -> None:
        self.quant_table.rows_ready(message)

    @property
    def siblings(self) -> dict[str, str]:
        return self.quant_table.siblings

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
        self.worker.schedule_autoapply()
        return True

    def set_quant(self, quant: str | None) -> None:
        if self.spec is not None and quant == self.spec.file_type_name:
            quant = None
        self.quant = quant
        self._replan()

    def set_hardware(self, hardware: Machine) -> None:
        self.hardware = hardware
        self.show_status()
        self._replan()

    def set_what_if(self, gpus: Iterable[Device]) -> None:
        self.hardware = self.hardware.with_what_if(tuple(gpus))
        self.show_status()
        self._replan()

    def set_rpc_hosts(self, entries: Iterable[HostEntry]) -> None:
        """Plan with these RPC hosts (from the hosts screen, already asked). A loaded
        model moves to them as a settings change would: a reload after a pause, in a
        new worker (llama.cpp keeps the hosts a worker registered for good)."""
        devices, notes = combine(entries)
        self.hardware = self.hardware.with_rpc(devices, notes)
        self.show_status()
        self._replan()
        shown = self.hardware.describe()
        self.notify(shown[0].upper() + shown[1:] + ".", markup=False, timeout=4)
        if self.session.holds_model:
            self.notify(
                "The new RPC hosts take effect when the worker reloads the model.",
                markup=False,
                timeout=6,
            )
            self.worker.schedule_autoapply()

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
        self.quant_table.schedule(self.options.quant_delay_s)

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

    def action_layers_auto(self) -> None:
        """Back to llama.cpp's fit's choice (--ngl auto) after the slider moved."""
        if not self.hardware.gpus:
            self._no_gpu_notice()
        elif self.settings.n_gpu_layers != NGL_AUTO:
            self.change_settings(n_gpu_layers=NGL_AUTO)

    @on(Stepper.Changed)
    def _stepper(self, event: Stepper.Changed) -> None:
        stepper_id = event.stepper.id or ""
        if stepper_id.startswith("set-"):
            self.change_settings(**stepper_change(stepper_id.removeprefix("set-"), event.value))

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
        dialogs.help_screen(self)

    def action_search_metadata(self) -> None:
        self.panes_layout.activate("model")
        self.call_after_refresh(self.model_pane.query_one("#metadata-filter").focus)

    def action_choose_gpu(self) -> None:
        dialogs.choose_gpu(self)

    def action_rpc_hosts(self) -> None:
        dialogs.rpc_hosts(self)

    def action_copy_command(self) -> None:
        if self.view is None:
            return
        self.copy_to_clipboard(self.view.command)
        self.notify("Copied the llama-server command line (OSC 52).", markup=False, timeout=3)

    def copy_to_clipboard(self, text: str) -> None:
        self._clipboard = text
        dialogs.osc52_copy(self._driver, text)

    def action_handoff(self) -> None:
        dialogs.handoff(self)

    def action_tune(self) -> None:
        dialogs.tune(self)

    def action_quantize(self) -> None:
        dialogs.quantize(self)

    def action_attach(self) -> None:
        dialogs.attach(self)

    def get_system_commands(self, screen: Screen[object]) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        yield from keys.commands(self)

    # -- the worker ----------------------------------------------------------------------
    def action_apply(self) -> None:
        self.worker.apply()

    def action_restart(self) -> None:
        self.worker.restart()

    def action_unload(self) -> None:
        if self.session.engine is not None and self.session.engine.alive:
            self.worker.unload()

    def action_stop(self) -> None:
        if self.session.stop():
            return
        if self.focused is not None and self.focused.id == "prompt":
            self.set_focus(None)

    def generate(self, prompt: str) -> None:
        self.worker.generate(prompt)

    @on(WorkerEvent)
    def _worker_event(self, message: WorkerEvent) -> None:
        if self.is_running:  # not one still queued at shutdown: the panes are gone
            self.worker.on_event(message)

    @on(HistoryRead)
    def _history_read(self, message: HistoryRead) -> None:  # a run corrected the speeds
        self.worker.calibrated(message)

    @on(PromptRendered)
    def _prompt_rendered(self, message: PromptRendered) -> None:
        self.session.prompt_rendered(message.text, message.generation)

    # -- telemetry -----------------------------------------------------------------------
    def _on_sample(self, sample: object) -> None:
        """The sampler thread's callback: hand the sample to the UI thread."""
        from llmtune.telemetry.sample import Sample

        if isinstance(sample, Sample):
            self.post_message(SampleArrived(sample))

    def show_device_memory(self) -> None:
        """The RPC devices' memory the worker last read (``telemetry.rpc_devices``)."""
        expected = self.worker.expected()
        try:
            self.monitor_pane.show_rpc(self.telemetry, expected)
            self.gauges_pane.show_rpc(self.telemetry, expected)
        except NoMatches:
            pass  # a reading that lands while the app closes and its widgets are gone

    @on(SampleArrived)
    def _sample_arrived(self, message: SampleArrived) -> None:
        if not self.telemetry.append(message.sample):
            return
        expected = self.worker.expected()
        try:
            if self.layout_mode == "narrow":
                self.gauges_pane.show_samples(self.telemetry, expected)
            if self.layout_mode == "wide" or self.active_pane == "monitor":
                self.monitor_pane.show_samples(self.telemetry, expected)
        except NoMatches:
            pass  # a tick that lands while the app closes and its widgets are gone

    # -- status and persistence -----------------------------------------------------------
    def show_status(self) -> None:
        line, alarming = status_line(self.session, self.error, self.hardware)
        self.status.update(Text(line))
        self.status.set_class(alarming, "-error")

    def _schedule_save(self) -> None:
        if not self.options.persist:
            return
        if self._save_timer is not None:
            self._save_timer.stop()
        self._save_timer = self.set_timer(0.5, self._save_now)

    def _save_now(self) -> None:
        self._save_timer = None
        if not self.options.persist or self.model_path is None:
            return
        self.store = self.store.with_settings(self.model_path, self.settings)
        problem = config_store.save(self.store)
        if problem and self.is_running:
            self.notify(problem, severity="warning", markup=False)


def make_app(
    spec: ModelSpec | None = None,
    *,
    model_path: str | None = None,
    path_label: str | None = None,
    hardware: Machine | None = None,
    options: AppOptions | None = None,
    engine_factory: EngineFactory = default_engine_factory,
    sampler_factory: SamplerFactory | None = None,
) -> LlmtuneApp:
    """Build the app; tests and screenshots pass their own model, hardware and sampler.

    ``path_label``: what to show instead of the model's path (fixed text for
    snapshots and screenshots). Without ``hardware``, a CPU-only machine with
    this machine's RAM is assumed (tests must not depend on the machine);
    the command line passes ``machine(options, for_worker=True)``. Without
    ``sampler_factory`` no sampler runs (again for repeatable tests); the
    command line passes ``default_sampler_factory``.
    """
    if hardware is None:
        from llmtune.hardware.host import host_device

        hardware = Machine((host_device(),))
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
