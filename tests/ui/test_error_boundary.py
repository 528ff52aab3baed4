"""The app's error boundary: whatever fails in a background task is one sentence on
the status line and in the log, and the app keeps running.

The case that found it: a GGUF whose tensor names a layer the model does not
have is refused by ``llmtune fit --quant``, and the quantization warm-up that
the app runs in a thread at model open raised the same ``FitError``, which
Textual's default ``exit_on_error`` turned into a dead app and a traceback.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from rendered import screen_text
from ui_support import cpu_only, wait_for

from llmtune.engine.config import RunConfig
from llmtune.engine.protocol import Started, Stats, Token
from llmtune.model import ModelSpec, read_spec
from llmtune.ui.app import AppOptions, LlmtuneApp, make_app
from synth import write_phantom_layer
from worker_events import loaded

UI = Path(__file__).resolve().parents[2] / "tui" / "llmtune" / "ui"
REFUSAL = "llama.cpp refuses tensor blk.3.ffn_down_exps.weight: layer 3 is not in [0, 1)"


def status_text(app: LlmtuneApp) -> str:
    return str(app.status.content)


async def test_a_phantom_layer_at_start_is_a_sentence_and_q_still_quits(tmp_path: Path) -> None:
    path = write_phantom_layer(tmp_path / "crafted.gguf")
    app = make_app(read_spec(path), hardware=cpu_only())
    async with app.run_test(size=(160, 40)) as pilot:
        await wait_for(pilot, lambda: app.error is not None)
        status = status_text(app)
        assert status.startswith(f"Sizing every file type failed: {REFUSAL}"), status
        assert REFUSAL in screen_text(app)[1]  # on screen, not only in the widget
        assert app.status.has_class("-error")
        assert any(REFUSAL in n.message for n in app._notifications)
        assert app.is_running and app._exception is None
        # The model itself is still planned and shown.
        assert app.plan is not None and app.spec is not None and app.spec.name == "crafted"
        await pilot.press("q")
        await pilot.pause()
    assert app.return_code == 0 and app._exception is None


async def test_a_phantom_layer_opened_from_a_working_model(
    demo_spec: ModelSpec, tmp_path: Path
) -> None:
    path = write_phantom_layer(tmp_path / "crafted.gguf")
    app = make_app(demo_spec, hardware=cpu_only())
    async with app.run_test(size=(160, 40)) as pilot:
        await wait_for(pilot, lambda: bool(app.quant_table.rows))
        assert app.error is None and not app.status.has_class("-error")
        app.open_model(str(path))
        await wait_for(pilot, lambda: app.error is not None)
        assert REFUSAL in status_text(app) and app.is_running
        # Opening a good file again clears the sentence: it was about the file before.
        app.open_model(demo_spec.path)
        await pilot.pause()
        assert app.error is None and REFUSAL not in status_text(app)
        assert not app.status.has_class("-error")
        await pilot.press("q")
        await pilot.pause()
    assert app.return_code == 0 and app._exception is None


async def test_the_traceback_goes_to_the_log_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMTUNE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("LLMTUNE_CONFIG_DIR", str(tmp_path / "config"))
    path = write_phantom_layer(tmp_path / "crafted.gguf")
    app = make_app(read_spec(path), hardware=cpu_only(), options=AppOptions(persist=True))
    async with app.run_test(size=(160, 40)) as pilot:
        await wait_for(pilot, lambda: app.error is not None)
        log = tmp_path / "cache" / "llmtune.log"
        assert app.log_path == log
        notice = next(n.message for n in app._notifications if REFUSAL in n.message)
        assert str(log) in notice  # the toast says where the details are
        await pilot.press("q")
        await pilot.pause()
    text = log.read_text()
    assert "ERROR llmtune.ui: Sizing every file type failed" in text
    assert "Traceback (most recent call last)" in text and "FitError" in text


async def test_a_screens_failed_worker_reaches_the_status_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Worker.StateChanged does not bubble: the picker hands its failure on."""

    def broken() -> list[Any]:
        raise RuntimeError("the disk went away")

    monkeypatch.setattr("llmtune.ui.screens.picker.find_models", broken)
    app = make_app(None, hardware=cpu_only())
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.error is not None)
        assert app.error == (
            "Looking for models on this machine failed: RuntimeError: the disk went away"
        )
        picker = app.screen
        assert type(picker).__name__ == "ModelPicker"
        await wait_for(pilot, lambda: not picker.searching)  # type: ignore[attr-defined]
        assert "searching" not in "\n".join(screen_text(app))
        assert "Enter downloads it" in "\n".join(screen_text(app))  # the demo is offered
        assert app.is_running and app._exception is None
        await pilot.press("ctrl+q")  # q is text in the picker's filter
        await pilot.pause()
    assert app.return_code == 0


LOADED = loaded(load_s=0.1, context_s=0.0, n_threads=1)


class InstantWorker:
    """A supervisor stand-in that loads and answers at once, without llama.cpp."""

    pid = 4242

    def __init__(self, on_event: Any) -> None:
        self.on_event = on_event
        self.alive = False
        self.prompts: list[str] = []

    def start(self) -> int:
        self.alive = True
        self.on_event(Started(self.pid))
        return self.pid

    def load(self, config: RunConfig) -> bool:
        self.on_event(LOADED)
        return True

    def generate(self, prompt: str, max_tokens: int = 128, **sampling: object) -> bool:
        self.prompts.append(prompt)
        self.on_event(Token(1, "ok", time.monotonic()))
        self.on_event(Stats(1, 1, 100.0, 10.0, 0.01, 0.1, "eog"))
        return True

    def stop(self) -> bool:
        return True

    def unload(self) -> bool:
        return True

    def log_tail(self, lines: int = 20) -> tuple[str, ...]:
        return ()

    def kill(self) -> None:
        self.alive = False

    def shutdown(self, timeout_s: float = 5.0) -> None:
        self.alive = False


async def test_a_chat_template_that_raises_leaves_the_worker_ready(
    demo_spec: ModelSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(spec: ModelSpec, prompt: str) -> str:
        raise ValueError("template engine broke")

    monkeypatch.setattr("llmtune.ui.worker_control.render_chat", broken)
    workers: list[InstantWorker] = []

    def factory(on_event: Any) -> InstantWorker:
        workers.append(InstantWorker(on_event))
        return workers[-1]

    app = make_app(demo_spec, hardware=cpu_only(), engine_factory=factory)  # type: ignore[arg-type]
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("a")
        await wait_for(pilot, lambda: app.worker_state == "loaded")
        app.generate("hello")
        await wait_for(pilot, lambda: app.error is not None)
        assert app.error == "Rendering the chat template failed: ValueError: template engine broke"
        assert app.worker_state == "loaded" and workers[0].prompts == []
        assert app.is_running and app._exception is None
        # The next prompt is answered once the template renders again.
        monkeypatch.setattr("llmtune.ui.worker_control.render_chat", lambda spec, p: None)
        app.generate("hello again")
        await wait_for(pilot, lambda: app.last_stats is not None)
        assert workers[0].prompts == ["hello again"] and app.run_pane.output == "ok"
        await wait_for(pilot, lambda: app.error is None)  # it works again: the line clears
        assert "chat template" not in status_text(app)


def test_every_thread_worker_is_inside_the_boundary() -> None:
    """No thread worker of the UI may end the app (Textual's default), and no thread
    reaches into a widget or a private method: results come back as messages."""
    problems: list[str] = []
    for path in sorted(UI.rglob("*.py")):
        text = path.read_text()
        for match in re.finditer(r"@work\((.*?)\)\n|run_worker\((.*?)\n\s*\)", text, re.S):
            call = match.group(0)
            if "thread=True" in call and "exit_on_error=False" not in call:
                line = text.count("\n", 0, match.start()) + 1
                problems.append(f"{path.name}:{line}: a thread worker without exit_on_error=False")
        if "call_from_thread" in text:
            problems.append(f"{path.name}: call_from_thread")
    assert not problems, problems


def test_the_app_in_a_terminal_shows_the_sentence_and_quits_cleanly(tmp_path: Path) -> None:
    """``llmtune FILE`` on a real pseudo-terminal: no traceback, exit status 0 after q."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from reliability.terminal import AppInTerminal

    path = write_phantom_layer(tmp_path / "crafted.gguf")
    env = {**os.environ, "LLMTUNE_CACHE_DIR": str(tmp_path / "cache")}
    with AppInTerminal([str(path)], columns=160, rows=40, env=env) as term:
        assert term.wait_for("blk.3.ffn_down_exps", timeout_s=60), term.output_bytes()[-2000:]
        term.send("q")
        deadline = time.monotonic() + 30
        status = None
        while status is None and time.monotonic() < deadline:
            done, raw = os.waitpid(term.pid, os.WNOHANG)
            status = os.waitstatus_to_exitcode(raw) if done else None
            time.sleep(0.1)
        output = term.output_bytes()
    assert status == 0, output[-2000:]
    assert b"Traceback" not in output
    assert "Traceback" in (tmp_path / "cache" / "llmtune.log").read_text()


def test_the_log_never_prints_when_it_cannot_write(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """A log under a file (no directory can be made) loses records quietly: no
    "--- Logging error ---" over the terminal."""
    code = (
        "import logging, sys\n"
        "from pathlib import Path\n"
        "from llmtune.logfile import open_log\n"
        "open_log(Path(sys.argv[1]) / 'sub')\n"
        "logging.getLogger('llmtune.ui').error('boom', exc_info=ValueError('x'))\n"
        "print('done')\n"
    )
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    done = subprocess.run(
        [sys.executable, "-c", code, str(blocker)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and done.stdout == "done\n" and done.stderr == ""


def test_the_log_rotates_at_a_mebibyte_and_keeps_two(tmp_path: Path) -> None:
    import logging

    from llmtune.logfile import close_log, open_log

    path = open_log(tmp_path)
    try:
        logger = logging.getLogger("llmtune.test")
        for i in range(3500):
            logger.info("%05d %s", i, "x" * 1000)
    finally:
        close_log()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["llmtune.log", "llmtune.log.1", "llmtune.log.2"]
    assert all(p.stat().st_size <= (1 << 20) for p in tmp_path.iterdir())
    assert path == tmp_path / "llmtune.log"
