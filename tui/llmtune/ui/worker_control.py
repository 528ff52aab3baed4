"""The app's half of the worker session: requests in, panes out.

``engine.session.Session`` decides (load, reload, generate, crash, restart);
``WorkerControl`` is what it talks to on the screen. It turns the app's keys
into session calls with the configuration the panes show, reloads after a
pause when a setting changes under a loaded model, and, as the session's
``SessionView``, sets what the session says on the run, monitor and gauges
panes and the status line. The two things the session asks for that take time
(rendering a chat template in a child process, reaping a replaced worker) run
as the app's thread workers, inside its error boundary. ``SessionAttributes``
gives the app the session's state under the names its readers know
(``app.worker_state``, ``app.loaded``, ``app.last_stats``...).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from textual.css.query import NoMatches
from textual.timer import Timer
from textual.worker import Worker

from llmtune.engine import history
from llmtune.engine.calibration import RUN_WEIGHT, Recorded, machine_key, record_run
from llmtune.engine.compare import Comparison
from llmtune.engine.config import RunConfig
from llmtune.engine.protocol import DeviceMemory, Event, Loaded, Stats
from llmtune.engine.session import EngineFactory, Session, Severity, WorkerState
from llmtune.engine.supervisor import Supervisor
from llmtune.fit.commandline import pinned_settings
from llmtune.fit.plan import FitPlan
from llmtune.fit.settings import Extras, Settings
from llmtune.hardware.bandwidth import host_bandwidth_record
from llmtune.model import ModelSpec
from llmtune.model.chat import render_chat
from llmtune.model.spec import is_url
from llmtune.telemetry.store import rpc_key
from llmtune.ui.messages import HistoryRead, PromptRendered, WorkerEvent
from llmtune.ui.panes.monitor import Expected

if TYPE_CHECKING:
    from llmtune.ui.app import LlmtuneApp

__all__ = ["SessionAttributes", "WorkerControl"]

MIN_RUN_TOKENS = 32  # shorter answers are too noisy to correct the prediction with
MIN_PROMPT_TOKENS = 64
HISTORY_SHOWN = 3  # on the monitor; llmtune bench --history has them all


class SessionAttributes:
    """The worker session's state as attributes of the app, read-only, under the
    names the panes' tests, the screenshots script and the benches read."""

    session: Session

    @property
    def worker_state(self) -> WorkerState:
        return self.session.state

    @property
    def worker_reason(self) -> str:
        return self.session.reason

    @property
    def load_progress(self) -> float | None:
        return self.session.load_progress

    @property
    def engine(self) -> Supervisor | None:
        return self.session.engine

    @property
    def engine_generation(self) -> int:
        return self.session.generation

    @property
    def loaded(self) -> Loaded | None:
        return self.session.loaded

    @property
    def comparison(self) -> Comparison | None:
        return self.session.comparison

    @property
    def last_stats(self) -> Stats | None:
        return self.session.last_stats

    @property
    def device_memory(self) -> DeviceMemory | None:
        """The worker's latest reading of its RPC devices' memory."""
        return self.session.device_memory


def rpc_levels(p: FitPlan) -> tuple[tuple[str, int], ...]:
    """Each RPC device's predicted use (``telemetry.store.rpc_key``: its host, its
    place there): what the plan puts on it and what was in use when it was asked."""
    levels: list[tuple[str, int]] = []
    per_host: dict[str, int] = {}
    for d in p.rpc_devices:
        ordinal = per_host.get(d.endpoint, 0)
        per_host[d.endpoint] = ordinal + 1
        in_use = max(0, d.capacity_bytes - d.free_bytes)
        levels.append((rpc_key(d.endpoint, ordinal), d.total_bytes + in_use))
    return tuple(levels)


class WorkerControl:
    """The worker session as the app's panes show it; see the module docstring."""

    def __init__(self, app: LlmtuneApp, engine_factory: EngineFactory) -> None:
        self.app = app
        self.session = Session(engine_factory, self._post, self, plan_for=self._plan_for)
        self._autoapply_timer: Timer | None = None

    def _post(self, event: Event, generation: int) -> None:
        """On the supervisor's reader thread: the event goes to the UI thread."""
        self.app.post_message(WorkerEvent(event, generation))

    def _plan_for(self, settings: Settings) -> FitPlan | None:
        """The plan for what the worker loaded: the file, on this machine, as it ran."""
        app = self.app
        return app.planner.machine_plan(app.hardware, settings) if app.planner else None

    # -- what the user asks ------------------------------------------------------------
    def run_settings(self) -> Settings | None:
        """The settings the worker runs here: with neither a GPU here nor an RPC
        host, a what-if GPU's layers can only go to this machine's CPU."""
        app = self.app
        p = app.plan
        if p is None:
            return None
        offloads = app.hardware.machine_gpus or app.hardware.rpc
        # What was planned: with --ngl auto the fit's choice (layers, split, experts
        # on the CPU, context); over several devices here the split pinned, since
        # llama.cpp would split by the free memory it sees at load time.
        planned = p.settings if app.hardware.is_what_if else pinned_settings(p)
        return planned.with_(n_gpu_layers=p.n_gpu_layers if offloads else 0)

    def run_config(self) -> RunConfig | None:
        settings = self.run_settings()
        if settings is None or self.app.model_path is None:
            return None
        if is_url(self.app.model_path):
            # Planned from its header alone: llama.cpp needs the file.
            self.app.notify(
                "This model is planned from its header on the network: download it first "
                "(d in the repo table, or llmtune download --hf OWNER/REPO:QUANT).",
                severity="warning",
                markup=False,
                timeout=8,
            )
            return None
        # The worker registers the RPC hosts the plan uses before it loads.
        extras = Extras(rpc_servers=self.app.hardware.endpoints)
        return RunConfig.from_settings(self.app.model_path, settings, extras)

    def apply(self) -> None:
        """Load the model with the settings the panes show."""
        app = self.app
        config, settings = self.run_config(), self.run_settings()
        if config is None or settings is None:
            return
        if app.quant:
            app.notify(
                f"The {app.quant} what-if is a plan: llama.cpp loads the file as it is "
                f"({app.planner.file_type if app.planner else ''}).",
                markup=False,
                timeout=6,
            )
        self.cancel_autoapply()
        self.session.apply(config, settings)

    def restart(self) -> None:
        if self.session.restart():
            self.apply()

    def unload(self) -> None:
        self.cancel_autoapply()
        self.session.unload()

    def generate(self, prompt: str) -> None:
        """Answer ``prompt``; with no model loaded yet, load it with the panes'
        settings first and answer once it is loaded."""
        self.session.request_generate(prompt, self.apply if self.app.spec else None)

    def schedule_autoapply(self) -> None:
        """A setting changed: with a model loaded, reload it after a pause (a run of
        quick changes makes one reload, with the last values)."""
        if not self.session.reload_wanted():
            return
        self.cancel_autoapply()
        delay_s = self.app.options.autoapply_delay_s
        self._autoapply_timer = self.app.set_timer(delay_s, self._autoapply)

    def cancel_autoapply(self) -> None:
        if self._autoapply_timer is not None:
            self._autoapply_timer.stop()
            self._autoapply_timer = None

    def _autoapply(self) -> None:
        self._autoapply_timer = None
        if self.session.is_stale(self.run_config()):
            self.apply()

    # -- what the worker says ------------------------------------------------------------
    def on_event(self, message: WorkerEvent) -> None:
        session = self.session
        if session.on_event(message.event, message.generation) and session.engine is not None:
            self.app.monitor_pane.show_log(session.engine.log_tail(20))

    def expected(self) -> Expected:
        """The loaded plan's levels, drawn on the monitor's graphs beside the samples."""
        p = self.session.loaded_plan
        if self.session.loaded is None or p is None:
            return Expected()
        return Expected(
            gpu_bytes=tuple(d.total_bytes for d in p.local_gpus),  # as NVML numbers them
            host_bytes=p.host.total_bytes,
            tg_tokens_per_s=p.predicted.tg_tokens_per_s,
            rpc_bytes=rpc_levels(p),
            tg_network_s=p.predicted.tg_network_s,
            tg_token_s=p.predicted.tg_token_s,
        )

    # -- engine.session.SessionView ----------------------------------------------------
    def session_changed(self) -> None:
        app, line = self.app, self.session.line()
        try:
            app.run_pane.show_state(line, self.session.load_progress)
            app.monitor_pane.show_state(line)
            app.gauges_pane.show_state(line)
        except NoMatches:
            return  # the app is closing: a retired worker's last event has no pane left
        app.show_status()

    def notify_user(self, text: str, severity: Severity, timeout_s: float) -> None:
        self.app.notify(text, severity=severity, markup=False, timeout=timeout_s)

    def show_comparison(self, comparison: Comparison | None) -> None:
        self.app.monitor_pane.show_comparison(comparison)

    def worker_started(self, pid: int) -> None:
        if self.app.sampler is not None:
            self.app.sampler.watch_worker(pid, self.session.tokens_per_s)

    def worker_gone(self) -> None:
        if self.app.sampler is not None:
            self.app.sampler.watch_worker(None)

    def render_prompt(self, prompt: str, generation: int) -> None:
        spec = self.app.spec
        if spec is None:  # no template to apply
            self.session.prompt_rendered(prompt, generation)
            return
        self._thread(lambda: self._render(spec, prompt, generation), "chat", exclusive=True)

    def _render(self, spec: ModelSpec, prompt: str, generation: int) -> None:
        # The chat template renders in a child process (up to a few seconds for a
        # hostile one): never on the UI thread.
        self.app.post_message(PromptRendered(render_chat(spec, prompt) or prompt, generation))

    def retire(self, engine: Supervisor) -> None:
        def reap() -> None:
            engine.kill()
            engine.shutdown(timeout_s=2.0)

        self._thread(reap, "retire")

    def answer_started(self, prompt_text: str) -> None:
        self.app.run_pane.clear_output(prompt_text)

    def answer_token(self, text: str) -> None:
        self.app.run_pane.append(text)

    def answer_finished(self, stats: Stats) -> None:
        p = self.session.loaded_plan
        self.app.run_pane.show_stats(stats, p.predicted.tg_tokens_per_s if p else None)
        if p is not None and self.app.options.persist and stats.n_gen >= MIN_RUN_TOKENS:
            self._calibrate(p, stats)

    # -- every run corrects the prediction -------------------------------------------------
    def show_history(self) -> None:
        """The last runs that corrected this machine's speed model, on the monitor."""
        self._thread(lambda: self._show_history(None), "history", exclusive=True)

    def _show_history(self, recorded: Recorded | None) -> None:
        """On a thread: read the history, then show it (and ``recorded``'s changes) on
        the UI thread."""
        lines = [e.line() for e in history.read(machine_key())[-HISTORY_SHOWN:]]
        record = host_bandwidth_record() if recorded and recorded.host_bandwidth_gbps else None
        self.app.post_message(HistoryRead(recorded, lines, record))

    def _calibrate(self, p: FitPlan, stats: Stats) -> None:
        """Fold a generation of the loaded plan into the calibration, on a thread (it
        may re-probe the host's bandwidth for a few seconds)."""
        hardware = self.app.hardware
        host_measured = any(d.kind == "cpu" and d.bandwidth_measured for d in hardware.local)
        # A short prompt's speed is mostly fixed costs: only long ones teach prompt speed.
        pp = stats.pp_tokens_per_s if stats.n_prompt >= MIN_PROMPT_TOKENS else 0.0
        name = self.app.spec.name if self.app.spec else ""

        def work() -> None:
            recorded = record_run(
                p,
                stats.tg_tokens_per_s,
                pp,
                host_measured=host_measured,
                speed=hardware.speed,
                source="run",
                model=name,
                weight=RUN_WEIGHT,
            )
            self._show_history(recorded)

        self._thread(work, "calibrate")

    def calibrated(self, message: HistoryRead) -> None:
        """On the UI thread: the history on the monitor, the new speed model (and host
        bandwidth) in the plans."""
        recorded, lines, record = message.recorded, message.lines, message.record
        try:
            self.app.monitor_pane.show_history(lines)
        except NoMatches:
            return  # the app is closing
        if recorded is None:
            return
        hardware = self.app.hardware
        if recorded.host_bandwidth_gbps:
            hardware = hardware.with_measured_host(recorded.host_bandwidth_gbps, record)
        if recorded.speed is not None:
            hardware = replace(hardware, speed=recorded.speed)
        if hardware is not self.app.hardware:
            self.app.set_hardware(hardware)

    def device_memory(self, memory: DeviceMemory) -> None:
        """The RPC hosts' memory, read by the worker: into the telemetry store (on
        this, the UI thread), then on the monitor's graphs and the gauges."""
        readings = tuple((r.name, r.endpoint, r.free_bytes, r.total_bytes) for r in memory.readings)
        if self.app.telemetry.append_device_memory(memory.t, readings):
            self.app.show_device_memory()

    def _thread(
        self, work: Callable[[], None], group: str, *, exclusive: bool = False
    ) -> Worker[None]:
        """A thread worker of the app's, inside its error boundary (``ui.boundary``)."""
        return self.app.run_worker(
            work,
            name=group,
            group=group,
            exclusive=exclusive,
            thread=True,
            exit_on_error=False,
        )
