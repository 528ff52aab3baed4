"""The app driving the real llama.cpp worker: apply, generate, stop, crash, restart."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

from rendered import screen_text
from textual.widgets import DataTable, Input
from ui_support import cpu_only, wait_for

from llmtune.engine.config import RunConfig
from llmtune.engine.protocol import Event
from llmtune.engine.supervisor import Supervisor
from llmtune.model import ModelSpec, read_spec
from llmtune.ui.app import AppOptions, LlmtuneApp, make_app
from llmtune.ui.panes.run import RunPane
from synth import llama_like


class RecordingSupervisor(Supervisor):
    """The real supervisor, keeping each RunConfig the app sends."""

    def __init__(self, on_event: Callable[[Event], None], loads: list[RunConfig]) -> None:
        super().__init__(on_event)
        self.loads = loads

    def load(self, config: RunConfig) -> bool:
        self.loads.append(config)
        return super().load(config)


def recording_app(spec: ModelSpec, loads: list[RunConfig], **options: object) -> LlmtuneApp:
    return make_app(
        spec,
        hardware=cpu_only(),
        options=AppOptions(persist=False, **options),  # type: ignore[arg-type]
        engine_factory=lambda on_event: RecordingSupervisor(on_event, loads),
    )


def shown(app: LlmtuneApp) -> str:
    return "\n".join(screen_text(app))


async def test_apply_loads_what_the_panes_show(demo_spec: ModelSpec) -> None:
    loads: list[RunConfig] = []
    app = recording_app(demo_spec, loads)
    async with app.run_test(size=(100, 40)) as pilot:
        await pilot.pause()
        app.change_settings(n_ctx=2048, cache_type_k="q8_0", n_ubatch=256, threads=1)
        await pilot.press("a")
        await wait_for(pilot, lambda: app.worker_state == "loaded")
        (config,) = loads
        s = app.settings
        assert config.model_path == demo_spec.path
        c = config.settings
        assert (c.n_ctx, c.n_batch, c.n_ubatch) == (s.n_ctx, s.n_batch, s.n_ubatch)
        assert (c.cache_type_k, c.cache_type_v) == ("q8_0", "f16")
        assert (c.flash_attn, c.threads, c.n_parallel) == ("auto", 1, 1)
        assert c.n_gpu_layers == 0  # no GPU here
        # llama.cpp made the context the plan describes.
        assert app.loaded is not None and app.plan is not None
        assert app.loaded.n_ctx == app.plan.n_ctx == 2048
        assert app.loaded.n_ubatch == 256
        # Measured beside predicted, per buffer, in the monitor.
        await pilot.press("4")
        await pilot.pause()
        table = app.query_one("#compare", DataTable)
        assert table.display and table.row_count >= 3
        rows = [[cell.plain for cell in table.get_row_at(i)] for i in range(table.row_count)]
        kinds = {row[1] for row in rows}
        assert {"weights", "kv", "compute"} <= kinds
        weights = next(row for row in rows if row[1] == "weights")
        assert weights[4] in ("+0.0%", "-0.0%")  # weights are exact
        assert app.comparison is not None
        assert abs(app.comparison.row("CPU", "kv").error_pct or 0) < 1.0


async def test_generate_streams_and_stop_cancels(demo_spec: ModelSpec) -> None:
    loads: list[RunConfig] = []
    app = recording_app(demo_spec, loads)
    async with app.run_test(size=(100, 40)) as pilot:
        await pilot.pause()
        await pilot.press("a")
        await wait_for(pilot, lambda: app.worker_state == "loaded")
        await pilot.press("5")
        await pilot.press(*"Write a long story about a dragon.")
        await pilot.press("enter")
        await wait_for(pilot, lambda: len(app.query_one(RunPane).output) > 20)
        assert app.worker_state == "generating"
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.worker_state == "loaded")
        assert app.last_stats is not None and app.last_stats.finish == "stop"
        out = app.query_one(RunPane).output
        assert out.strip() and out[:15] in shown(app)
        assert "stopped" in shown(app) and "t/s" in shown(app)


async def test_a_killed_worker_says_why_and_restarts(demo_spec: ModelSpec) -> None:
    loads: list[RunConfig] = []
    app = recording_app(demo_spec, loads)
    async with app.run_test(size=(100, 40)) as pilot:
        await pilot.pause()
        await pilot.press("a")
        await wait_for(pilot, lambda: app.worker_state == "loaded")
        assert app.engine is not None and app.engine.pid is not None
        first_pid = app.engine.pid
        os.kill(first_pid, signal.SIGKILL)
        await wait_for(pilot, lambda: app.worker_state == "dead")
        assert "killed by SIGKILL" in app.worker_reason
        assert "out of memory" in app.worker_reason  # what a SIGKILL from outside usually is
        status = screen_text(app)[1]
        assert "worker died" in status and "SIGKILL" in status and "ctrl+r" in status
        # The dead worker was reaped: no zombie left behind.
        assert not os.path.exists(f"/proc/{first_pid}")
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: app.worker_state == "loaded")
        assert app.engine.pid != first_pid
        assert len(loads) == 2 and loads[1] == loads[0]
        assert "worker died" not in screen_text(app)[1]


async def test_changes_while_loaded_reload_after_a_pause(demo_spec: ModelSpec) -> None:
    loads: list[RunConfig] = []
    app = recording_app(demo_spec, loads, autoapply_delay_s=0.3)
    async with app.run_test(size=(100, 40)) as pilot:
        await pilot.pause()
        await pilot.press("a")
        await wait_for(pilot, lambda: app.worker_state == "loaded")
        # Three quick changes make one reload, with the last values.
        app.change_settings(n_ctx=1024)
        app.change_settings(n_ctx=2048)
        app.change_settings(cache_type_v="q8_0")
        await wait_for(pilot, lambda: len(loads) == 2 and app.worker_state == "loaded")
        await pilot.pause(0.5)
        assert len(loads) == 2
        assert (loads[1].settings.n_ctx, loads[1].settings.cache_type_v) == (2048, "q8_0")
        assert app.loaded is not None and app.loaded.n_ctx == 2048


async def test_enter_with_no_model_loaded_loads_it_then_answers(demo_spec: ModelSpec) -> None:
    """The run pane says how to load before anything runs; a prompt sent then
    loads the model with the panes' settings and is answered once it is loaded."""
    loads: list[RunConfig] = []
    app = recording_app(demo_spec, loads)
    async with app.run_test(size=(100, 40)) as pilot:
        await pilot.pause()
        await pilot.press("5")
        await pilot.pause()
        assert "no model loaded" in shown(app) and "a: load" in shown(app)
        app.change_settings(n_ctx=1024)
        app.query_one("#prompt").focus()
        await pilot.press(*"Hi", "enter")
        await wait_for(pilot, lambda: app.last_stats is not None)
        (config,) = loads  # one load, with what the panes show
        assert config.settings.n_ctx == 1024
        assert app.run_pane.output  # the answer streamed
        assert app.worker_state == "loaded"
        # The prompt stays for another run, selected: the next one typed replaces it.
        prompt = app.query_one("#prompt", Input)
        assert prompt.value == "Hi"
        await pilot.press(*"Why")
        assert prompt.value == "Why"


async def test_a_prompt_waiting_for_a_load_that_is_stopped_is_dropped(
    demo_spec: ModelSpec,
) -> None:
    loads: list[RunConfig] = []
    app = recording_app(demo_spec, loads)
    async with app.run_test(size=(100, 40)) as pilot:
        await pilot.pause()
        app.generate("hello")
        assert app.worker_state in ("starting", "loading") and len(loads) == 1
        await pilot.press("escape")  # while it loads (or just after: the prompt goes either way)
        await wait_for(pilot, lambda: app.worker_state in ("stopped", "loaded"))
        await pilot.pause(0.5)
        assert app.last_stats is None and app.run_pane.output == ""


SLOW_TEMPLATE = (
    "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}"
    "{{ messages[0].content }}"
)


async def test_a_slow_chat_template_never_freezes_the_app(tmp_path: Path) -> None:
    # The template runs for seconds (then is killed); meanwhile the app answers
    # keys, and a stop means nothing is generated at all.
    (path,) = llama_like(
        tmp_path / "slow.gguf", n_layer=2, extra_kv=[("tokenizer.chat_template", SLOW_TEMPLATE)]
    )
    loads: list[RunConfig] = []
    app = recording_app(read_spec(path), loads)
    async with app.run_test(size=(100, 40)) as pilot:
        await pilot.pause()
        await pilot.press("a")
        await wait_for(pilot, lambda: app.worker_state == "loaded")
        app.generate("hello")
        await pilot.pause()
        assert app.worker_state == "generating"
        await pilot.press("escape")
        await pilot.pause()
        assert app.worker_state == "loaded"
        await pilot.press("3", "pagedown")  # the UI thread is free: keys work at once
        await pilot.pause()
        assert app.active_pane == "offload"
        await pilot.pause(4.0)  # past the template's deadline
        assert app.last_stats is None and app.run_pane.output == ""
