"""Layout by width: every pane from 120 columns, tabs at 80x24, gauges under 60
(or with --compact); keys, the footer, help and the command palette."""

from __future__ import annotations

import pytest
from rendered import screen_text
from textual.widget import Widget
from ui_support import cpu_only, wait_for, with_gpu

from llmtune.engine.protocol import Progress
from llmtune.model import ModelSpec
from llmtune.telemetry.sampler import Sampler
from llmtune.ui.app import AppOptions, LlmtuneApp, make_app
from llmtune.ui.messages import WorkerEvent
from llmtune.ui.panes.gauges import GaugesPane
from llmtune.ui.screens.help import HelpScreen
from llmtune.ui.widgets.devicebar import DeviceBar
from llmtune.ui.widgets.slider import LayerSlider

PANE_IDS = ("pane-model", "pane-quant", "pane-offload", "pane-monitor", "pane-run")


def visible(app: LlmtuneApp, widget_id: str) -> bool:
    widget: Widget = app.query_one(f"#{widget_id}")
    return widget.display and widget.region.area > 0


@pytest.mark.parametrize(
    ("size", "mode", "shown"),
    [
        ((120, 40), "wide", PANE_IDS),
        ((160, 50), "wide", PANE_IDS),
        ((80, 24), "tabs", ("pane-offload",)),
        ((50, 40), "narrow", ("pane-gauges",)),
    ],
)
async def test_layout_follows_the_width(
    demo_spec: ModelSpec, size: tuple[int, int], mode: str, shown: tuple[str, ...]
) -> None:
    app = make_app(demo_spec, hardware=with_gpu())
    async with app.run_test(size=size) as pilot:
        await pilot.pause()
        assert app.layout_mode == mode
        for pane in (*PANE_IDS, "pane-gauges"):
            assert visible(app, pane) == (pane in shown), pane
        assert visible(app, "tabs") == (mode != "wide")
        # No line of the screen is wider than the terminal.
        assert all(len(row) <= size[0] for row in screen_text(app))


async def test_the_narrow_view_shows_gauges_and_the_verdict(demo_spec: ModelSpec) -> None:
    app = make_app(demo_spec, hardware=with_gpu())
    async with app.run_test(size=(50, 40)) as pilot:
        await pilot.pause()
        gauges = app.query_one(GaugesPane)
        bars = list(gauges.query(DeviceBar))
        assert [b.plan.kind for b in bars if b.plan] == ["gpu", "cpu"]
        text = "\n".join(screen_text(app))
        assert "fits" in text and "t/s predicted" in text and "GPU layers 31 of 31" in text
        # The slider works from the narrow view too, and the bars follow.
        assert app.focused is app.query_one("#ngl-compact", LayerSlider)
        await pilot.press("pagedown")
        await pilot.pause()
        assert app.plan is not None and app.plan.n_gpu_layers == 26
        assert bars[0].plan is not None and bars[0].plan.n_layers == 25


async def test_compact_gives_the_narrow_view_at_any_width(demo_spec: ModelSpec) -> None:
    app = make_app(demo_spec, hardware=cpu_only(), options=AppOptions(compact=True, persist=False))
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        assert app.layout_mode == "narrow" and visible(app, "pane-gauges")


async def test_resizing_moves_between_layouts(demo_spec: ModelSpec) -> None:
    app = make_app(demo_spec, hardware=cpu_only())
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        assert app.layout_mode == "wide"
        await pilot.resize_terminal(50, 40)
        await pilot.pause()
        assert app.layout_mode == "narrow" and visible(app, "pane-gauges")
        await pilot.resize_terminal(80, 24)
        await pilot.pause()
        assert app.layout_mode == "tabs" and visible(app, "pane-offload")
        assert not visible(app, "pane-gauges")


async def test_number_keys_switch_panes(demo_spec: ModelSpec) -> None:
    app = make_app(demo_spec, hardware=cpu_only())
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        for key, pane in zip("12345", PANE_IDS, strict=True):
            await pilot.press("escape", key)
            await pilot.pause()
            assert visible(app, pane), pane
            assert [p for p in PANE_IDS if visible(app, p)] == [pane]


async def test_every_action_has_a_key_and_a_palette_entry(demo_spec: ModelSpec) -> None:
    app = make_app(demo_spec, hardware=cpu_only())
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: "Quit" in screen_text(app)[-1])  # the footer composes late
        footer = screen_text(app)[-1]
        for label in ("Quit", "Help", "Apply", "Open", "Hand-off", "Tune"):
            assert label in footer
        assert "g: plan for a GPU" in screen_text(app)[1]  # where g is offered, CPU only
        titles = {c.title for c in app.get_system_commands(app.screen)}
        for title in (
            "Apply settings",
            "Stop generating",
            "Restart the worker",
            "Plan for another GPU",
            "Open a model",
            "Copy the command line",
            "Show the Model pane",
            "Show the Run pane",
            "One more layer on the GPU",
            "Show the gauges",
        ):
            assert title in titles
        await pilot.press("question_mark")
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)
        text = "\n".join(screen_text(app))
        assert "apply: load the model" in text and "OSC 52" in text
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, HelpScreen)


async def test_copy_puts_the_command_line_on_the_clipboard(demo_spec: ModelSpec) -> None:
    app = make_app(demo_spec, hardware=with_gpu())
    async with app.run_test(size=(100, 40)) as pilot:
        await pilot.pause()
        await pilot.press("c")
        await pilot.pause()
        assert app.clipboard.startswith("llama-server -m ")
        assert "-ngl 31" in app.clipboard and "--fit off" in app.clipboard


async def test_no_color_still_tells_the_parts_apart(
    demo_spec: ModelSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    app = make_app(demo_spec, hardware=with_gpu())
    async with app.run_test(size=(100, 40)) as pilot:
        await pilot.pause()
        assert app.no_color
        text = "\n".join(screen_text(app))
        # Each part of a bar has its own glyph, named in the legend.
        assert "█ weights" in text and "▓ KV" in text and "▒ compute" in text


async def test_samples_and_worker_events_under_a_dialog(demo_spec: ModelSpec) -> None:
    # Ticks keep coming while help (or any dialog) is open; none of them may crash the app.
    app = make_app(
        demo_spec,
        hardware=cpu_only(),
        options=AppOptions(persist=False, interval_s=0.2),
        sampler_factory=lambda callback, interval_s: Sampler(callback, interval_s=0.2),
    )
    async with app.run_test(size=(50, 40)) as pilot:
        await pilot.press("question_mark")
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)
        seen = len(app.telemetry.host.ram_used_bytes)
        await wait_for(pilot, lambda: len(app.telemetry.host.ram_used_bytes) >= seen + 3)
        app.post_message(WorkerEvent(Progress(0.5), app.engine_generation))
        await pilot.pause()
        assert app.is_running and app.load_progress == 0.5
        await pilot.press("escape")
        await pilot.pause()
        assert "worker RSS" in "\n".join(screen_text(app))


async def test_the_footer_shows_the_focused_panes_keys_first(demo_spec: ModelSpec) -> None:
    """At 80 columns each pane's own keys lead the footer, then apply, tune and
    the hand-off; ? lists every key."""
    app = make_app(demo_spec, hardware=cpu_only())
    expected = {
        "1": ("/ Search",),
        "2": ("o Open file", "w Quantize"),
        "3": ("[ ] ±layer", "c Copy"),
        "4": ("u Unload", "R Restart"),
        "5": ("esc Stop",),
    }
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: "Apply" in screen_text(app)[-1])
        for key, labels in expected.items():
            await pilot.press(key)
            await wait_for(pilot, lambda labels=labels: labels[0] in screen_text(app)[-1])
            footer = screen_text(app)[-1]
            assert all(label in footer for label in labels), footer
            if key != "5":  # typing in the prompt, the letter keys are text
                assert "a Apply" in footer and "t Tune" in footer, footer
