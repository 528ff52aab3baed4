"""Measured quality in the quantization pane: kept rows shown beside size, fit and speed,
types without one marked "not measured"; `m` measures the highlighted type in a dialog
whose Escape cancels and leaves no file (a real run, when ``make tools`` has built
llama-perplexity)."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest
from rendered import screen_text
from ui_support import cpu_only, wait_for

from llmtune.engine import tools
from llmtune.engine.quality_store import (
    QualityKey,
    QualityRow,
    StoredRow,
    fingerprint,
    llama_build,
    save_rows,
)
from llmtune.model import read_spec
from llmtune.ui.app import make_app
from llmtune.ui.panes.quant import QuantPane, QuantTable
from llmtune.ui.screens.quality import QualityScreen
from synth_quality import build_random_llama


def _row(file_type: str, kld: float, top: float, source: bool = False) -> QualityRow:
    values: dict[str, object] = {f.name: 0.0 for f in fields(QualityRow)}
    values.update(file_type=file_type, imatrix=False, file_bytes=1, kld_mean=kld,
                  same_top_pct=top, ppl=12.5, is_source=source)  # fmt: skip
    return QualityRow(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def model(demo_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Its own seed: other tests' runs on the engine's synthetic model keep rows under theirs.
    return build_random_llama(tmp_path_factory.mktemp("q") / "random-F16.gguf", demo_model, seed=7)


async def test_measured_rows_beside_the_plan(model: Path) -> None:
    key = QualityKey(fingerprint(str(model)), llama_build(), "a" * 64, 512, 9)
    save_rows([
        StoredRow(key, "bundled", 1.0, _row("F16", 0.0, 100.0, source=True)),
        StoredRow(key, "bundled", 2.0, _row("Q4_K_M", 0.0559, 83.7)),
    ])  # fmt: skip
    app = make_app(read_spec(model), hardware=cpu_only())
    async with app.run_test(size=(110, 40)) as pilot:
        await pilot.press("2")
        pane = app.query_one(QuantPane)
        await wait_for(pilot, lambda: bool(pane.rows) and bool(pane.measured))
        await pilot.pause(0.2)
        text = "\n".join(screen_text(app))
        lines = {
            word: line for line in text.splitlines() for word in line.split()[:3] if "MiB" in line
        }
        assert "this file" in lines["F16"] and "baseline" in lines["F16"]
        assert "0.0559  84%" in lines["Q4_K_M"]
        assert "unmeasured" in text  # Q8_0 and the rest
        assert "on 9×512 tokens of the bundled text" in text


async def test_m_measures_and_escape_cancels(model: Path) -> None:
    tools.build()  # llama-perplexity (make tools; built once when missing)
    before = {p.name for p in model.parent.iterdir()}
    app = make_app(read_spec(model), hardware=cpu_only())
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("2")
        pane = app.query_one(QuantPane)
        await wait_for(pilot, lambda: bool(pane.rows))
        table = app.query_one(QuantTable)
        table.move_cursor(row=[r.file_type for r in pane.rows].index("Q2_K"))
        table.focus()
        await pilot.press("m")
        await wait_for(pilot, lambda: isinstance(app.screen, QualityScreen))
        screen = app.screen
        assert isinstance(screen, QualityScreen) and screen.request is not None
        await pilot.press("enter")
        await wait_for(pilot, lambda: screen.state == "running")
        await pilot.pause(1.0)
        await pilot.press("escape")
        await wait_for(pilot, lambda: screen.state == "failed", timeout_s=60)
        assert "Cancelled" in "\n".join(screen_text(app))
        await pilot.press("escape")
        await wait_for(pilot, lambda: not isinstance(app.screen, QualityScreen))
    assert {p.name for p in model.parent.iterdir()} == before
