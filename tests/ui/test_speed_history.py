"""The app's generations correct the prediction: folded into the calibration, kept
in the history, listed on the monitor; the status line says which host bandwidth
CPU speeds are planned with."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.widgets import Static
from ui_support import wait_for

from llmtune.engine import history
from llmtune.engine.calibration import load
from llmtune.engine.protocol import Stats
from llmtune.fit.speed import DEFAULT_SPEED_MODEL
from llmtune.hardware.bandwidth import HostBandwidth
from llmtune.hardware.host import host_device
from llmtune.hardware.machine import Machine
from llmtune.model import ModelSpec
from llmtune.ui.app import AppOptions, LlmtuneApp, make_app
from llmtune.units import GIB

MEASURED = HostBandwidth(28.4, "2026-12-04T10:00:00+00:00", 3, "2026-12-04T11:00:00+00:00")


@pytest.fixture
def private_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LLMTUNE_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("LLMTUNE_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path


def measured_machine() -> Machine:
    host = host_device(ram_bytes=32 * GIB, bandwidth_gbps=28.4, measured=True)
    return Machine((host,), host_bandwidth=MEASURED)


def history_text(app: LlmtuneApp) -> str:
    widget = app.query_one("#monitor-history", Static)
    return str(widget.content) if widget.display else ""


def finished(app: LlmtuneApp, tg_scale: float, n_gen: int = 64) -> Stats:
    """A generation of the plan the worker 'loaded', at ``tg_scale`` x its prediction."""
    assert app.planner is not None
    p = app.planner.machine_plan(app.hardware, app.settings)
    app.session.loaded_plan = p
    return Stats(
        n_prompt=128,
        n_gen=n_gen,
        pp_tokens_per_s=p.predicted.pp_tokens_per_s,
        tg_tokens_per_s=p.predicted.tg_tokens_per_s * tg_scale,
        prompt_s=0.5,
        gen_s=1.0,
        finish="length",
    )


async def test_a_generation_corrects_the_prediction(
    private_dirs: Path, demo_spec: ModelSpec
) -> None:
    app = make_app(demo_spec, hardware=measured_machine(), options=AppOptions(persist=True))
    async with app.run_test(size=(120, 50)) as pilot:
        await pilot.pause()
        assert history_text(app) == ""  # nothing recorded yet: no line at all
        before = app.plan
        assert before is not None
        app.worker.answer_finished(finished(app, 0.64))
        await wait_for(pilot, lambda: "run CPU: tg" in history_text(app))
        assert "x0.64" in history_text(app)
        # The app plans with the corrected model now, and so will llmtune fit.
        await wait_for(pilot, lambda: app.hardware.speed != DEFAULT_SPEED_MODEL)
        assert load()[0] == app.hardware.speed
        after = app.plan
        assert after is not None
        ratio = after.predicted.tg_tokens_per_s / before.predicted.tg_tokens_per_s
        assert 0.64 < ratio < 1.0  # half way: one typed answer is a noisy measurement
        (entry,) = history.read()
        assert (entry.source, entry.folded) == ("run", True)


async def test_a_short_answer_or_a_test_app_records_nothing(
    private_dirs: Path, demo_spec: ModelSpec
) -> None:
    app = make_app(demo_spec, hardware=measured_machine(), options=AppOptions(persist=True))
    async with app.run_test(size=(120, 50)) as pilot:
        await pilot.pause()
        app.worker.answer_finished(finished(app, 0.5, n_gen=5))  # too short to tell
        await pilot.pause(0.2)
    quiet = make_app(demo_spec, hardware=measured_machine())  # persist off: tests, screenshots
    async with quiet.run_test(size=(120, 50)) as pilot:
        await pilot.pause()
        quiet.worker.answer_finished(finished(quiet, 0.5))
        await pilot.pause(0.2)
    assert history.read() == []


async def test_the_history_on_disk_shows_when_the_app_opens(
    private_dirs: Path, demo_spec: ModelSpec
) -> None:
    from llmtune.engine.calibration import machine_key

    for i in range(5):
        history.append(
            history.HistoryEntry("t", machine_key(), "CPU", "bench", f"m{i}", 10.0, 10.0 + i)
        )
    app = make_app(demo_spec, hardware=measured_machine(), options=AppOptions(persist=True))
    async with app.run_test(size=(120, 50)) as pilot:
        await wait_for(pilot, lambda: "bench CPU" in history_text(app))
        shown = history_text(app).splitlines()
        assert len(shown) == 4  # a title and the last three runs
        assert shown[-1].endswith("14.0 measured (x1.40)")


async def test_the_status_line_says_the_host_bandwidth_used(demo_spec: ModelSpec) -> None:
    app = make_app(demo_spec, hardware=measured_machine())
    async with app.run_test(size=(160, 40)) as pilot:
        await pilot.pause()
        status = str(app.status.content)
        assert "host 28.4 GB/s (best of 3 probes, 2026-12-04)" in status
