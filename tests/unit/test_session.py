"""The worker session's state machine, with a scripted supervisor and no terminal.

Each test drives ``engine.session.Session`` as the app does (method calls for
the user's requests, ``on_event`` for what the worker says) and checks what it
sent to the worker and what it asked of the screen. The real worker behind the
same machine is tested in tests/ui/test_worker_ui.py and tests/engine/.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from llmtune.engine import ENGINE_INSTALL_HINT, EngineMissingError
from llmtune.engine.compare import Comparison
from llmtune.engine.config import RunConfig
from llmtune.engine.protocol import (
    DeviceMemory,
    Event,
    Exited,
    Failed,
    Progress,
    Started,
    Stats,
    Token,
    Unloaded,
)
from llmtune.engine.session import GEN_MAX_TOKENS, Session
from llmtune.errors import WorkerError
from llmtune.fit.settings import Settings
from worker_events import LOADED


class ScriptedWorker:
    """Stands in for ``Supervisor``: records each command, sends no events of its own
    (the test feeds them, as the worker would)."""

    def __init__(
        self, on_event: Callable[[Event], None], pid: int, fail_start: Exception | None
    ) -> None:
        self.on_event = on_event
        self.pid = pid
        self.fail_start = fail_start
        self.calls: list[tuple[Any, ...]] = []
        self.alive = False

    def start(self) -> int:
        if self.fail_start is not None:
            raise self.fail_start
        self.alive = True
        return self.pid

    def load(self, config: RunConfig) -> bool:
        self.calls.append(("load", config))
        return True

    def unload(self) -> bool:
        self.calls.append(("unload",))
        return True

    def stop(self) -> bool:
        self.calls.append(("stop",))
        return True

    def generate(self, prompt: str, max_tokens: int = 128, **sampling: object) -> bool:
        self.calls.append(("generate", prompt, max_tokens))
        return True

    def kill(self) -> None:
        self.calls.append(("kill",))
        self.alive = False

    def shutdown(self, timeout_s: float = 5.0) -> None:
        self.calls.append(("shutdown",))
        self.alive = False

    def names(self) -> list[str]:
        return [call[0] for call in self.calls]


class View:
    """Records what the session asks of the screen; ``load`` is the UI's apply."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.changes = 0
        self.notices: list[tuple[str, str]] = []
        self.rendering: list[tuple[str, int]] = []
        self.retired: list[ScriptedWorker] = []
        self.comparisons: list[Comparison | None] = []

    def session_changed(self) -> None:
        self.changes += 1

    def notify_user(self, text: str, severity: str, timeout_s: float) -> None:
        self.notices.append((text, severity))

    def show_comparison(self, comparison: Comparison | None) -> None:
        self.comparisons.append(comparison)

    def worker_started(self, pid: int) -> None:
        self.calls.append(("started", pid))

    def worker_gone(self) -> None:
        self.calls.append(("gone",))

    def render_prompt(self, prompt: str, generation: int) -> None:
        self.rendering.append((prompt, generation))

    def retire(self, engine: ScriptedWorker) -> None:
        self.retired.append(engine)

    def answer_started(self, prompt_text: str) -> None:
        self.calls.append(("answer", prompt_text))

    def answer_token(self, text: str) -> None:
        self.calls.append(("token", text))

    def answer_finished(self, stats: Stats) -> None:
        self.calls.append(("finished", stats.finish))

    def device_memory(self, memory: DeviceMemory) -> None:
        self.calls.append(("memory", len(memory.readings)))


class Rig:
    """A session, the workers it started, and the events they posted."""

    def __init__(self, fail_start: Exception | None = None) -> None:
        self.view = View()
        self.workers: list[ScriptedWorker] = []
        self.posted: list[tuple[Event, int]] = []
        self.fail_start = fail_start
        self.session = Session(self._factory, self._post, self.view)  # type: ignore[arg-type]

    def _factory(self, on_event: Callable[[Event], None]) -> ScriptedWorker:
        worker = ScriptedWorker(on_event, 4000 + len(self.workers), self.fail_start)
        self.workers.append(worker)
        return worker

    def _post(self, event: Event, generation: int) -> None:
        self.posted.append((event, generation))

    @property
    def worker(self) -> ScriptedWorker:
        return self.workers[-1]

    def say(self, *events: Event) -> None:
        """The current worker sends ``events``: through its callback (the supervisor's
        thread), then, as the app does on the UI thread, into the session."""
        for event in events:
            self.worker.on_event(event)
        while self.posted:
            event, generation = self.posted.pop(0)
            self.session.on_event(event, generation)

    def load(self, config: RunConfig = None) -> None:  # type: ignore[assignment]
        self.session.apply(config or CONFIG, SETTINGS)

    def loaded(self) -> None:
        """Apply, and the worker starts and loads."""
        self.load()
        self.say(Started(self.worker.pid), Progress(0.5), LOADED)


SETTINGS = Settings(n_ctx=2048)
CONFIG = RunConfig.from_settings("/models/m.gguf", SETTINGS)
STATS = Stats(4, 3, 100.0, 20.0, 0.04, 0.15, "eog")


def test_load_starts_a_worker_and_follows_it_to_loaded() -> None:
    rig = Rig()
    s = rig.session
    assert s.state == "stopped" and s.engine is None
    rig.load()
    assert rig.worker.names() == ["load"] and rig.worker.calls[0][1] == CONFIG
    assert s.state == "loading" and s.load_progress == 0.0 and s.generation == 1
    rig.say(Started(rig.worker.pid))
    assert ("started", rig.worker.pid) in rig.view.calls
    assert s.state == "loading"
    rig.say(Progress(0.5))
    assert s.load_progress == 0.5 and "loading 50%" in s.line()
    rig.say(LOADED)
    assert s.state == "loaded" and s.loaded is LOADED and s.load_progress is None
    assert s.loaded_config == CONFIG and s.loaded_settings == SETTINGS
    assert ("Loaded in 0.3 s.", "information") in rig.view.notices
    assert s.line() == f"worker {rig.worker.pid}: loaded in 0.3 s · ctx 2,048"


def test_loaded_compares_with_the_plan_for_what_ran(tmp_path: Path) -> None:
    from llmtune.fit.plan import plan
    from llmtune.hardware.host import host_device
    from llmtune.model import read_spec
    from synth import llama_like

    spec = read_spec(llama_like(tmp_path / "m.gguf", n_layer=2)[0])
    planned: list[Settings] = []

    def plan_for(settings: Settings) -> Any:
        planned.append(settings)
        return plan(spec, [host_device(ram_bytes=32 << 30)], settings)

    rig = Rig()
    rig.session._plan_for = plan_for
    rig.loaded()
    assert planned == [SETTINGS]
    assert rig.session.loaded_plan is not None and rig.session.comparison is not None
    assert rig.view.comparisons == [None, rig.session.comparison]


def test_a_settings_change_reloads_the_running_worker() -> None:
    rig = Rig()
    s = rig.session
    assert not s.reload_wanted()  # nothing loaded: a change only re-plans
    rig.loaded()
    assert s.reload_wanted()
    assert not s.is_stale(CONFIG)  # the same settings: nothing to reload
    changed = RunConfig.from_settings("/models/m.gguf", SETTINGS.with_(n_ctx=1024))
    assert s.is_stale(changed)
    worker = rig.worker
    s.apply(changed, SETTINGS.with_(n_ctx=1024))
    assert len(rig.workers) == 1 and worker.names() == ["load", "load"]  # the same worker
    assert s.state == "loading" and s.loaded is None and s.loaded_config == changed
    rig.say(LOADED)
    assert s.state == "loaded" and not s.is_stale(changed)


def test_a_reload_while_generating_stops_the_answer_first() -> None:
    rig = Rig()
    rig.loaded()
    rig.session.request_generate("hi", None)
    rig.session.prompt_rendered("<user>hi", rig.session.generation)
    assert rig.session.state == "generating"
    rig.session.apply(CONFIG, SETTINGS)
    assert rig.worker.names()[-2:] == ["stop", "load"]


def test_a_crash_is_dead_with_its_reason_until_restarted() -> None:
    rig = Rig()
    s = rig.session
    rig.loaded()
    rig.say(Failed("worker died: killed by SIGKILL", fatal=True))
    assert s.state == "dead" and s.reason == "worker died: killed by SIGKILL"
    assert s.line() == "ctrl+r: restart · worker died: killed by SIGKILL"
    assert rig.view.notices[-1] == (
        "worker died: killed by SIGKILL — ctrl+r restarts it.",
        "error",
    )
    rig.say(Exited(-9, rig.worker.pid))
    assert s.state == "dead" and s.loaded is None  # the exit keeps the reason shown
    assert rig.view.calls[-1] == ("gone",)
    s.request_generate("hello", lambda: None)
    assert rig.view.notices[-1] == ("The worker died: ctrl+r restarts it.", "error")
    assert not rig.view.rendering


def test_a_failed_load_stops_with_the_reason_and_the_worker_lives_on() -> None:
    rig = Rig()
    s = rig.session
    rig.load()
    rig.say(Started(rig.worker.pid), Failed("model too large for this machine"))
    assert s.state == "stopped" and s.reason == "model too large for this machine"
    assert s.line().startswith("worker: no model loaded (model too large")
    assert rig.view.notices[-1] == ("model too large for this machine", "error")
    assert s.engine is rig.worker and rig.worker.alive


def test_restart_is_a_new_generation_and_drops_the_old_workers_events() -> None:
    rig = Rig()
    s = rig.session
    rig.loaded()
    old = rig.worker
    rig.say(Failed("worker died", fatal=True))
    assert s.restart()
    assert rig.view.retired == [old] and s.generation == 2 and s.engine is rig.worker
    assert s.state == "starting"
    # The old worker's last events, still queued, change nothing.
    assert not s.on_event(Exited(-9, old.pid), 1)
    assert not s.on_event(LOADED, 1)
    assert s.state == "starting" and s.loaded is None
    s.apply(CONFIG, SETTINGS)
    rig.say(Started(rig.worker.pid), LOADED)
    assert s.state == "loaded" and s.engine.pid == 4001  # type: ignore[union-attr]


def test_a_restart_with_nothing_to_load_waits_stopped() -> None:
    rig = Rig()
    assert rig.session.restart()
    rig.say(Started(rig.worker.pid))
    assert rig.session.state == "stopped" and rig.worker.calls == []


def test_unload_frees_the_model() -> None:
    rig = Rig()
    s = rig.session
    assert not s.unload()  # no worker: nothing to ask
    rig.loaded()
    assert s.holds_model and s.unload()
    assert rig.worker.names()[-1] == "unload"
    rig.say(Unloaded())
    assert s.state == "stopped" and s.loaded is None and s.loaded_config is None
    assert not s.holds_model and not s.reload_wanted()


def test_stop_while_loading_asks_the_worker_to_stop() -> None:
    rig = Rig()
    rig.load()
    rig.say(Started(rig.worker.pid), Progress(0.2))
    assert rig.session.stop()
    assert rig.worker.names() == ["load", "stop"]
    rig.say(Failed("load cancelled"))
    assert rig.session.state == "stopped"


def test_stop_while_generating_asks_the_worker_to_stop() -> None:
    rig = Rig()
    s = rig.session
    rig.loaded()
    s.request_generate("Write a story", None)
    s.prompt_rendered("<user>Write a story", s.generation)
    assert rig.worker.calls[-1] == ("generate", "<user>Write a story", GEN_MAX_TOKENS)
    rig.say(Token(1, "Once", 10.0), Token(2, " upon", 10.05), Token(3, " a", 10.1))
    assert s.live_tps == pytest.approx(20.0) and s.tokens_per_s() == s.live_tps
    assert s.stop()
    assert rig.worker.names()[-1] == "stop"
    rig.say(Stats(4, 3, 100.0, 20.0, 0.04, 0.15, "stop"))
    assert s.state == "loaded" and s.live_tps is None and s.last_stats is not None
    assert ("answer", "<user>Write a story") in rig.view.calls
    assert [c[1] for c in rig.view.calls if c[0] == "token"] == ["Once", " upon", " a"]
    assert rig.view.calls[-1] == ("finished", "stop")


def test_stop_while_the_template_renders_sends_nothing() -> None:
    rig = Rig()
    s = rig.session
    rig.loaded()
    s.request_generate("hello", None)
    assert s.state == "generating" and s.prompt_pending
    assert rig.view.rendering == [("hello", 1)]
    assert s.stop()
    assert s.state == "loaded" and not s.prompt_pending
    s.prompt_rendered("<user>hello", 1)  # the template was ready too late
    assert "generate" not in rig.worker.names() and "stop" not in rig.worker.names()


def test_a_template_that_fails_to_render_leaves_the_worker_ready() -> None:
    rig = Rig()
    rig.loaded()
    rig.session.request_generate("hello", None)
    rig.session.prompt_failed()
    assert rig.session.state == "loaded" and "generate" not in rig.worker.names()


def test_stop_with_nothing_running_says_so() -> None:
    rig = Rig()
    assert not rig.session.stop()
    rig.loaded()
    assert not rig.session.stop()


def test_a_prompt_before_the_load_is_answered_once_loaded() -> None:
    rig = Rig()
    s = rig.session
    loads: list[int] = []

    def load() -> None:
        loads.append(1)
        rig.load()

    s.request_generate("hi", load)
    assert loads == [1] and s.queued_prompt == "hi" and s.state == "loading"
    assert rig.view.notices[-1] == ("Loading the model; the answer follows.", "information")
    s.request_generate("hi", load)  # asked again while it loads: no second load
    assert loads == [1]
    assert rig.view.rendering == []
    rig.say(Started(rig.worker.pid), LOADED)
    assert rig.view.rendering == [("hi", 1)] and s.queued_prompt is None
    s.prompt_rendered("<user>hi", 1)
    assert rig.worker.names() == ["load", "generate"]


def test_a_prompt_waiting_for_a_load_that_fails_is_dropped() -> None:
    rig = Rig()
    s = rig.session
    s.request_generate("hi", rig.load)
    rig.say(Started(rig.worker.pid), Failed("cannot allocate the KV cache"))
    assert s.queued_prompt is None and s.state == "stopped"
    s.apply(CONFIG, SETTINGS)
    rig.say(LOADED)
    assert rig.view.rendering == []  # the second load does not answer the old prompt


def test_a_prompt_waiting_for_a_load_that_is_stopped_is_dropped() -> None:
    rig = Rig()
    s = rig.session
    s.request_generate("hi", rig.load)
    assert s.stop()
    rig.say(Started(rig.worker.pid), LOADED)  # the load finished before the stop
    assert s.state == "loaded" and rig.view.rendering == []


def test_a_prompt_with_no_model_to_load_is_ignored() -> None:
    rig = Rig()
    rig.session.request_generate("hi", None)
    assert rig.workers == [] and rig.session.queued_prompt is None


def test_empty_and_overlapping_prompts_are_refused_in_words() -> None:
    rig = Rig()
    rig.session.request_generate("   ", rig.load)
    assert rig.workers == [] and rig.view.notices[-1][0] == "Type a prompt first."
    rig.loaded()
    rig.session.request_generate("one", None)
    rig.session.request_generate("two", None)
    assert rig.view.rendering == [("one", 1)]
    assert rig.view.notices[-1][0] == "Still answering: Escape stops it."


def test_a_worker_that_cannot_start_is_dead_with_the_reason_not_an_exception() -> None:
    rig = Rig(fail_start=WorkerError("no Python to run the worker", "sys.executable"))
    s = rig.session
    s.request_generate("hi", rig.load)
    assert s.state == "dead" and s.engine is None and s.queued_prompt is None
    assert s.reason.startswith("the worker could not start: no Python to run the worker")
    assert rig.view.notices[-1] == (s.reason, "error")
    assert not s.restart() and s.state == "dead"


def test_without_llama_cpp_the_session_stays_stopped_and_says_how_to_add_it() -> None:
    """A restart cannot help there (the status line would offer ctrl+r); installing can."""
    missing = f"running a model needs llama.cpp, and llama-cpp-python is not installed: {ENGINE_INSTALL_HINT}"
    rig = Rig(fail_start=EngineMissingError(missing))
    s = rig.session
    s.request_generate("hi", rig.load)
    assert s.state == "stopped" and s.engine is None and s.queued_prompt is None
    assert "llmtune[engine]" in s.reason and "could not start" not in s.reason
    assert rig.view.notices[-1] == (s.reason, "error")
    assert "ctrl+r" not in s.line()


def test_a_clean_exit_is_stopped_and_shutdown_ends_the_worker() -> None:
    rig = Rig()
    s = rig.session
    rig.loaded()
    rig.say(Exited(0, rig.worker.pid))
    assert s.state == "stopped" and s.loaded is None
    worker = rig.worker
    s.shutdown()
    assert worker.names()[-1] == "shutdown" and s.engine is None


def test_a_dead_worker_is_replaced_by_the_next_load() -> None:
    rig = Rig()
    s = rig.session
    rig.loaded()
    old = rig.worker
    old.alive = False
    rig.say(Failed("worker died", fatal=True), Exited(-6, old.pid))
    s.apply(CONFIG, SETTINGS)
    assert len(rig.workers) == 2 and rig.view.retired == [old] and s.generation == 2
    assert rig.worker.names() == ["load"] and s.state == "loading"
