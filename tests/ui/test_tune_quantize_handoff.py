"""Issue 6 in the app: the hand-off copied through OSC 52, tuning with a live
table and cancel, and quantizing with llama.cpp's quantizer from the
quantization pane."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from gguf import GGMLQuantizationType as Q
from rendered import screen_text
from textual.widgets import DataTable, Static
from ui_support import cpu_only, wait_for, with_gpu

from llmtune.fit.handoff import plan_handoff
from llmtune.model import ModelSpec, read_spec
from llmtune.ui.app import AppOptions, make_app
from llmtune.ui.panes.quant import QuantPane, QuantTable
from llmtune.ui.screens.handoff import HandoffScreen
from llmtune.ui.screens.quantize import QuantizeScreen
from llmtune.ui.screens.tune import TuneScreen
from synth import llama_like


async def test_handoff_copies_the_chosen_target(demo_spec: ModelSpec) -> None:
    app = make_app(demo_spec, hardware=with_gpu())
    async with app.run_test(size=(100, 40)) as pilot:
        await pilot.pause()
        app.change_settings(n_gpu_layers=20, n_ctx=2048)
        await pilot.press("h")
        await pilot.pause()
        assert isinstance(app.screen, HandoffScreen)
        assert app.plan is not None
        expected = plan_handoff(demo_spec.path, app.plan)
        await pilot.press("down", "enter")  # llama-cli
        await pilot.pause()
        assert app.clipboard == expected.llama_cli
        assert "-ngl 20" in app.clipboard and "-c 2048" in app.clipboard
        await pilot.press("down", "down", "c")  # the Ollama Modelfile
        await pilot.pause()
        assert app.clipboard == expected.ollama_modelfile
        assert "PARAMETER num_gpu 20" in app.clipboard
        text = "\n".join(screen_text(app))
        assert "PARAMETER num_ctx 2048" in text  # the chosen text is shown in full
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, HandoffScreen)


def test_copy_writes_osc52_and_the_tmux_passthrough(
    demo_spec: ModelSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    monkeypatch.setenv("TMUX", "/tmp/tmux-0/default,1,0")
    written: list[str] = []

    async def run() -> None:
        app = make_app(demo_spec, hardware=cpu_only())
        async with app.run_test(size=(100, 40)) as pilot:
            await pilot.pause()
            assert app._driver is not None
            monkeypatch.setattr(app._driver, "write", written.append)
            await pilot.press("c")
            await pilot.pause()

    asyncio.run(run())
    copies = [w for w in written if "]52;c;" in w]
    assert len(copies) == 2
    plain, wrapped = copies
    assert plain.startswith("\x1b]52;c;") and wrapped.startswith("\x1bPtmux;\x1b\x1b]52;c;")


async def test_tune_shows_trials_live_cancels_and_applies_the_best(demo_spec: ModelSpec) -> None:
    app = make_app(demo_spec, hardware=cpu_only(), options=AppOptions(persist=False))
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        await pilot.press("t")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, TuneScreen)
        await pilot.press("enter")
        await wait_for(pilot, lambda: len(screen.trials) >= 1, timeout_s=120)
        table = screen.query_one("#tune-trials", DataTable)
        assert table.row_count >= 1  # each trial shows as it finishes
        first = table.get_row_at(0)
        assert first[0].plain == str(screen.trials[0].index) == "1"  # numbered as the CLI does
        await pilot.press("escape")  # cancel: the running trial's worker is killed
        await wait_for(pilot, lambda: screen.state == "done", timeout_s=60)
        assert screen.result is not None and screen.result.cancelled
        best = screen.result.best
        assert best is not None and best.ok and best.tg_tokens_per_s > 0
        assert "Best:" in "\n".join(screen_text(app))
        await pilot.press("enter")  # apply the best to the app
        await pilot.pause()
        assert not isinstance(app.screen, TuneScreen)
        assert app.settings.threads == best.settings.threads
        assert app.settings.flash_attn == best.settings.flash_attn
        # No trial worker is left behind.
        await pilot.pause(0.5)
        children = _children(os.getpid())
        assert not [c for c in children if "llmtune.engine.worker" in c]


def _children(pid: int) -> list[str]:
    import psutil

    return [" ".join(p.cmdline()) for p in psutil.Process(pid).children(recursive=True)]


async def test_quantize_from_the_quantization_pane(tmp_path: Path) -> None:
    (path,) = llama_like(tmp_path / "tiny.F16.gguf", n_layer=2, n_embd=256, n_ff=512)
    app = make_app(read_spec(path), hardware=cpu_only())
    async with app.run_test(size=(100, 40)) as pilot:
        await pilot.press("2")
        await wait_for(pilot, lambda: bool(app.query_one(QuantPane).rows))
        table = app.query_one(QuantTable)
        rows = [r.file_type for r in app.query_one(QuantPane).rows]
        table.move_cursor(row=rows.index("Q8_0"))
        predicted = app.query_one(QuantPane).rows[rows.index("Q8_0")].file_bytes
        await pilot.press("w")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, QuantizeScreen)
        assert "tiny.Q8_0.gguf" in "\n".join(screen_text(app))
        await pilot.press("enter")
        await wait_for(pilot, lambda: screen.state in ("done", "failed"), timeout_s=120)
        assert screen.state == "done"
        # The title counted the tensors as llama.cpp does: it ends at "N of N".
        title = str(screen.query_one("#quantize-title", Static).render())
        done, count = map(int, re.search(r"tensor (\d+) of (\d+)", title).groups())  # type: ignore[union-attr]
        assert done == count == len(read_spec(path).tensors)
        out = tmp_path / "tiny.Q8_0.gguf"
        assert out.is_file() and out.stat().st_size == predicted
        assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.F16.gguf", "tiny.Q8_0.gguf"]
        await pilot.press("enter")  # open what was written
        await pilot.pause()
        assert app.model_path == str(out)
        assert app.spec is not None and app.spec.file_type_name == "Q8_0"


async def test_quantize_refusals_and_cancel_leave_the_folder_as_it_was(tmp_path: Path) -> None:
    (q8,) = llama_like(tmp_path / "tiny.Q8_0.gguf", n_layer=2, weight_type=Q.Q8_0, file_type=7)
    before = sorted(p.name for p in tmp_path.iterdir())
    app = make_app(read_spec(q8), hardware=cpu_only())
    async with app.run_test(size=(100, 40)) as pilot:
        await pilot.pause()
        app.set_quant("Q4_K_M")
        await pilot.press("w")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, QuantizeScreen)
        text = "\n".join(screen_text(app))
        assert "already quantized" in text and "requantize anyway" in text
        await pilot.press("enter")  # refused: nothing starts
        await pilot.pause()
        assert screen.state == "ready"
        await pilot.press("r", "enter")
        await wait_for(pilot, lambda: screen.state != "ready")
        await pilot.press("escape")  # cancel at once
        await wait_for(pilot, lambda: screen.state in ("failed", "done"), timeout_s=60)
        if screen.state == "failed":
            assert "Cancelled" in "\n".join(screen_text(app))
    after = sorted(p.name for p in tmp_path.iterdir())
    # Cancelled: nothing was left; finished before the cancel landed: only the new file.
    assert after in (before, sorted([*before, "tiny.Q4_K_M.gguf"]))
    assert not [n for n in after if n.endswith(".partial")]
