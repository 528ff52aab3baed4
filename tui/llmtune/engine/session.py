"""The worker session: load, reload, generate, crash, restart and unload, as one
state machine that knows nothing of the screen.

``Session`` owns the llama.cpp worker's ``Supervisor`` and everything the app
knows about it: its state, why it stopped or died, the configuration it loaded,
llama.cpp's measured buffers beside the plan, the last generation's speed, a
prompt waiting for its chat template and a prompt waiting for a load. It is
driven by method calls on one thread (the UI's); the supervisor's events come
back through the ``post`` callback given at construction, which the UI turns
into a message and hands to :meth:`Session.on_event` on that same thread, so
nothing here needs a lock. The one value read from another thread is
:meth:`Session.tokens_per_s` (the sampler's), a float replaced whole.

What the UI must do in reply (redraw the worker's line, show a notice, render
the chat template or retire an old worker in a thread) it learns through a
``SessionView``: a small listener with no Textual types in it, so the machine
is tested with a scripted supervisor and a recording view
(tests/unit/test_session.py).

States::

    stopped --apply--> starting --Started--> loading --Loaded--> loaded
    loaded --request_generate--> generating (template renders, then tokens) --Stats--> loaded
    any --Failed(fatal)--> dead --restart--> starting
    loading|loaded --Failed / Unloaded--> stopped

Each start of a worker is a new *generation*; events of a replaced worker
(still in the UI's queue when it was retired) are dropped.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Literal, Protocol

from llmtune.engine import EngineMissingError
from llmtune.engine.compare import Comparison, compare
from llmtune.engine.config import RunConfig
from llmtune.engine.protocol import (
    DeviceMemory,
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
from llmtune.engine.supervisor import Supervisor
from llmtune.errors import LlmtuneError
from llmtune.fit.plan import FitPlan
from llmtune.fit.settings import Settings
from llmtune.textsafe import inert

__all__ = [
    "GEN_MAX_TOKENS",
    "EngineFactory",
    "Session",
    "SessionView",
    "Severity",
    "WorkerState",
]

WorkerState = Literal["stopped", "starting", "loading", "loaded", "generating", "dead"]
Severity = Literal["information", "warning", "error"]
EngineFactory = Callable[[Callable[[Event], None]], Supervisor]
# Called on the supervisor's reader thread: the UI posts (event, generation) to its own thread.
EventPoster = Callable[[Event, int], None]
# The plan for what the worker loaded (the file, this machine, the settings it ran with).
PlanFor = Callable[[Settings], "FitPlan | None"]

GEN_MAX_TOKENS = 256
TPS_WINDOW_S = 2.0  # the live rate is over the tokens of the last two seconds


class SessionView(Protocol):
    """What the session asks of the UI; every call comes on the UI thread."""

    def session_changed(self) -> None:
        """The state, its progress or its reason changed: redraw the worker's line."""

    def notify_user(self, text: str, severity: Severity, timeout_s: float) -> None:
        """One sentence for the user."""

    def show_comparison(self, comparison: Comparison | None) -> None:
        """llama.cpp's measured buffers beside the plan (None: nothing loaded)."""

    def worker_started(self, pid: int) -> None:
        """A worker process is up (the sampler follows its pid)."""

    def worker_gone(self) -> None:
        """The worker process exited."""

    def render_prompt(self, prompt: str, generation: int) -> None:
        """Render the chat template off the UI thread, then call
        :meth:`Session.prompt_rendered` (or :meth:`Session.prompt_failed`)."""

    def retire(self, engine: Supervisor) -> None:
        """Kill and reap a replaced worker off the UI thread (it may take seconds)."""

    def answer_started(self, prompt_text: str) -> None:
        """The prompt as sent, chat template applied: the answer follows."""

    def answer_token(self, text: str) -> None:
        """One more piece of the answer."""

    def answer_finished(self, stats: Stats) -> None:
        """The answer is complete (or stopped): its speed."""

    def device_memory(self, memory: DeviceMemory) -> None:
        """The RPC hosts' devices' memory, read by the worker (about once a second)."""


class Session:
    """The llama.cpp worker as the app drives it; see the module docstring."""

    def __init__(
        self,
        engine_factory: EngineFactory,
        post: EventPoster,
        view: SessionView,
        *,
        plan_for: PlanFor | None = None,
    ) -> None:
        self._engine_factory = engine_factory
        self._post = post
        self._view = view
        self._plan_for = plan_for
        self.engine: Supervisor | None = None
        self.generation = 0  # one more on every start of a worker
        self.state: WorkerState = "stopped"
        self.reason = ""  # why it stopped or died, in words
        self.load_progress: float | None = None
        self.loaded_config: RunConfig | None = None  # the last configuration sent to load
        self.loaded_settings: Settings | None = None
        self.loaded: Loaded | None = None
        self.loaded_plan: FitPlan | None = None  # made once per load
        self.comparison: Comparison | None = None
        self.last_stats: Stats | None = None
        self.device_memory: DeviceMemory | None = None  # the RPC devices' latest reading
        self._worker_hosts: tuple[str, ...] | None = None  # RPC hosts the worker registered
        self.live_tps: float | None = None  # read by the sampler thread
        self._token_times: deque[float] = deque(maxlen=4096)
        self.prompt_pending = False  # a prompt whose chat template is being rendered
        self.queued_prompt: str | None = None  # asked for before the model was loaded

    # -- what the UI asks -------------------------------------------------------------
    @property
    def holds_model(self) -> bool:
        """A model is loaded, or on its way: opening another file or tuning unloads it."""
        return self.engine is not None and self.state in ("loading", "loaded", "generating")

    def reload_wanted(self) -> bool:
        """Whether a settings change should reload the model (after a pause)."""
        return self.state in ("loaded", "generating", "loading")

    def is_stale(self, config: RunConfig | None) -> bool:
        """Whether ``config`` differs from what was last loaded: the reload is worth it."""
        return config is not None and config != self.loaded_config

    def apply(self, config: RunConfig, settings: Settings) -> None:
        """Load ``config`` (``settings`` as planned), starting a worker if none runs.

        A worker keeps the RPC hosts it registered for good (llama.cpp has no way
        to remove one, and places every later model on them too), so another set
        of hosts needs a new worker."""
        hosts = config.extras.rpc_servers
        other_hosts = self._worker_hosts is not None and self._worker_hosts != hosts
        if self.engine is None or not self.engine.alive or other_hosts:
            if not self._start():
                return
        if hosts:
            self._worker_hosts = hosts
        engine = self.engine
        assert engine is not None
        if self.state == "generating":
            engine.stop()
        engine.load(config)
        self.loaded_config = config
        self.loaded_settings = settings
        self.loaded = None
        self.loaded_plan = None
        self.comparison = None
        self._view.show_comparison(None)
        self._set_state("loading", progress=0.0)

    def restart(self) -> bool:
        """Start a new worker, retiring the old one; False when it could not start.
        The UI applies its settings next, as for a first load."""
        return self._start()

    def unload(self) -> bool:
        """Free the worker's memory; False when there is no worker to ask."""
        if self.engine is not None and self.engine.alive:
            return self.engine.unload()
        return False

    def stop(self) -> bool:
        """Stop what runs (an answer, a load, a template being rendered) and drop a
        prompt waiting for a load; False when there was nothing to stop."""
        self.queued_prompt = None  # a prompt waiting for the load is not wanted now
        if self.prompt_pending:
            # Stopped while the chat template rendered: nothing was sent yet.
            self.prompt_pending = False
            self._set_state("loaded")
            return True
        if self.state in ("generating", "loading") and self.engine is not None:
            self.engine.stop()
            return True
        return False

    def request_generate(self, prompt: str, load: Callable[[], None] | None) -> None:
        """Answer ``prompt``. With no model loaded, ``load`` (the UI's apply with the
        settings it shows; None when there is no model) loads it first, and the answer
        follows the load."""
        if not prompt.strip():
            self._notify("Type a prompt first.")
            return
        state = self.state
        if state == "generating":
            self._notify("Still answering: Escape stops it.", timeout_s=3)
            return
        if state == "dead":
            self._notify("The worker died: ctrl+r restarts it.", "error")
            return
        if state != "loaded" or self.engine is None:
            if load is None:
                return
            self.queued_prompt = prompt
            if state == "stopped":
                load()
            if self.queued_prompt is not None:  # the load started (or is under way)
                self._notify("Loading the model; the answer follows.", timeout_s=3)
            return
        self.prompt_pending = True
        self._set_state("generating")
        self._view.render_prompt(prompt, self.generation)

    def prompt_rendered(self, text: str, generation: int) -> None:
        """The chat template is applied: send it, unless stopped or replaced meanwhile."""
        pending, self.prompt_pending = self.prompt_pending, False
        if not pending or generation != self.generation or self.engine is None:
            return
        self._view.answer_started(text)
        self._token_times.clear()
        self.engine.generate(text, GEN_MAX_TOKENS, temperature=0.7, seed=42)

    def prompt_failed(self) -> None:
        """Rendering the template failed (the UI has said why): nothing is sent."""
        if self.prompt_pending:
            self.prompt_pending = False
            self._set_state("loaded")

    def tokens_per_s(self) -> float | None:
        """For the sampler thread: the latest measured rate while generating."""
        return self.live_tps

    def shutdown(self) -> None:
        """The app is closing: end the worker and wait for it (a couple of seconds at most)."""
        engine, self.engine = self.engine, None
        if engine is not None:
            engine.shutdown(timeout_s=2.0)

    # -- what the worker says ----------------------------------------------------------
    def on_event(self, event: Event, generation: int) -> bool:
        """One event from worker ``generation``; False (and ignored) when that worker
        has been replaced."""
        if generation != self.generation:
            return False
        if isinstance(event, Started):
            self._view.worker_started(event.pid)
            if self.state == "starting":
                self._set_state("loading" if self.loaded_config else "stopped")
        elif isinstance(event, Progress):
            self._set_state("loading", progress=event.fraction)
        elif isinstance(event, Loaded):
            self._on_loaded(event)
        elif isinstance(event, Token):
            self._on_token(event)
        elif isinstance(event, DeviceMemory):
            self.device_memory = event
            self._view.device_memory(event)
        elif isinstance(event, Stats):
            self.last_stats = event
            self.live_tps = None
            self._view.answer_finished(event)
            self._set_state("loaded")
        elif isinstance(event, Unloaded):
            self.loaded = None
            self.loaded_config = None
            self._set_state("stopped")
        elif isinstance(event, Failed):
            self._on_failed(event)
        elif isinstance(event, Exited):
            self._on_exited()
        return True

    def _on_loaded(self, event: Loaded) -> None:
        self.loaded = event
        self.loaded_plan = self._plan_loaded()
        self.comparison = compare(event, self.loaded_plan) if self.loaded_plan else None
        self._view.show_comparison(self.comparison)
        self._set_state("loaded")
        self._notify(f"Loaded in {event.load_s + event.context_s:.1f} s.", timeout_s=3)
        queued, self.queued_prompt = self.queued_prompt, None
        if queued is not None:
            self.request_generate(queued, None)

    def _plan_loaded(self) -> FitPlan | None:
        """The plan for what the worker loaded; the comparison, the graphs' predicted
        levels and the run pane's predicted speed all read it."""
        if self._plan_for is None or self.loaded_settings is None:
            return None
        try:
            return self._plan_for(self.loaded_settings)
        except LlmtuneError:
            return None

    def _on_token(self, token: Token) -> None:
        self._view.answer_token(token.text)
        times = self._token_times
        times.append(token.t)
        while len(times) > 2 and times[-1] - times[0] > TPS_WINDOW_S:
            times.popleft()
        if len(times) >= 2 and times[-1] > times[0]:
            self.live_tps = (len(times) - 1) / (times[-1] - times[0])

    def _on_failed(self, event: Failed) -> None:
        reason = inert(event.reason, max_chars=400)
        self.reason = reason
        self.live_tps = None
        if event.fatal:
            self._set_state("dead")
            self._notify(f"{reason} — ctrl+r restarts it.", "error", timeout_s=10)
        else:
            self.loaded = None
            self._set_state("stopped")
            self._notify(reason, "error", timeout_s=8)

    def _on_exited(self) -> None:
        self.live_tps = None
        self._view.worker_gone()
        if self.state != "dead":
            # An exit we asked for (shutdown), or one already reported as Failed.
            self._set_state("stopped")
        self.loaded = None

    # -- the worker's line -------------------------------------------------------------
    def line(self) -> str:
        """The worker's state in one line (the run, monitor and gauges panes show it)."""
        state = self.state
        pid = self.engine.pid if self.engine is not None else None
        if state == "stopped":
            why = f" ({self.reason})" if self.reason else ""
            return f"worker: no model loaded{why} · a: load with these settings"
        if state == "starting":
            return "worker: starting…"
        if state == "loading":
            pct = f" {self.load_progress * 100:.0f}%" if self.load_progress is not None else ""
            return f"worker {pid}: loading{pct}"
        if state == "dead":
            # The key first: in a narrow pane the end of the line is cut.
            return f"ctrl+r: restart · {self.reason}"
        loaded = self.loaded
        when = f" in {loaded.load_s + loaded.context_s:.1f} s" if loaded else ""
        doing = "generating" if state == "generating" else "loaded"
        return f"worker {pid}: {doing}{when} · ctx {loaded.n_ctx:,}" if loaded else doing

    # -- inside ------------------------------------------------------------------------
    def _start(self) -> bool:
        """A new worker (a new generation); the old one is retired. A worker that
        cannot start leaves the session dead with the reason (stopped when
        llama-cpp-python is missing), never an exception into the UI."""
        old, self.engine = self.engine, None
        if old is not None:
            self._view.retire(old)
        self.generation += 1
        generation, post = self.generation, self._post

        def on_event(event: Event) -> None:
            post(event, generation)

        try:
            engine = self._engine_factory(on_event)
            engine.start()
        except EngineMissingError as exc:
            # Restarting cannot help: installing llama-cpp-python can. The panes keep planning.
            self.reason = exc.one_line()
            self.live_tps = None
            self._set_state("stopped")
            self._notify(self.reason, "error", timeout_s=10)
            return False
        except (LlmtuneError, OSError) as exc:
            what = exc.one_line() if isinstance(exc, LlmtuneError) else str(exc)
            self.reason = f"the worker could not start: {inert(what, max_chars=300)}"
            self.live_tps = None
            self._set_state("dead")
            self._notify(self.reason, "error", timeout_s=10)
            return False
        self.engine = engine
        self._worker_hosts = None  # a new worker has registered no RPC host yet
        self.loaded = None  # a new worker holds nothing, whatever the old one's last events said
        self.live_tps = None
        self._set_state("starting")
        return True

    def _set_state(self, state: WorkerState, progress: float | None = None) -> None:
        if state != "generating":
            self.prompt_pending = False
        if state in ("stopped", "dead"):
            self.queued_prompt = None  # the load it waited for failed or was undone
        self.state = state
        self.load_progress = progress if state == "loading" else None
        self._view.session_changed()

    def _notify(
        self, text: str, severity: Severity = "information", timeout_s: float = 5.0
    ) -> None:
        self._view.notify_user(text, severity, timeout_s)
