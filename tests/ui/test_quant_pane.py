"""The quantization pane: every file type planned; a row applies as a what-if to
every pane; siblings of the model on disk are marked and open with `o`."""

from __future__ import annotations

from pathlib import Path

from gguf import GGMLQuantizationType as Q
from rendered import screen_text
from textual.widgets import Static
from ui_support import cpu_only, wait_for, with_gpu

from llmtune.fit.quant import requantize
from llmtune.model import read_spec
from llmtune.ui.app import LlmtuneApp, make_app
from llmtune.ui.panes.quant import QuantPane, QuantTable
from synth import llama_like


def quant_pane(app: LlmtuneApp) -> QuantPane:
    return app.query_one(QuantPane)


async def move_to(pilot: object, app: LlmtuneApp, file_type: str) -> None:
    table = app.query_one(QuantTable)
    index = [r.file_type for r in quant_pane(app).rows].index(file_type)
    table.move_cursor(row=index)


async def test_a_row_applies_its_file_type_to_every_pane(tmp_path: Path) -> None:
    (path,) = llama_like(tmp_path / "tiny.F16.gguf", n_layer=8, n_embd=512, n_ff=1024)
    spec = read_spec(path)
    app = make_app(spec, hardware=with_gpu("rtx3060-12g"))
    async with app.run_test(size=(100, 40)) as pilot:
        await pilot.press("2")
        await wait_for(pilot, lambda: bool(quant_pane(app).rows))
        types = [r.file_type for r in quant_pane(app).rows]
        assert {"F16", "Q8_0", "Q4_K_M", "Q2_K"} <= set(types)
        sizes = [r.file_bytes for r in quant_pane(app).rows]
        assert sizes == sorted(sizes, reverse=True)  # largest (best) first
        text = "\n".join(screen_text(app))
        assert "this file" in text and "practically lossless" in text
        weights_f16 = app.plan.gpus[0].weights_bytes if app.plan else 0

        await move_to(pilot, app, "Q4_K_M")
        await pilot.press("enter")
        await pilot.pause()
        assert app.quant == "Q4_K_M"
        p = app.plan
        assert p is not None
        assert p.gpus[0].weights_bytes < weights_f16 / 2
        expected = requantize(spec, "Q4_K_M")
        assert app.view is not None and app.view.spec.file_bytes == expected.file_bytes
        await pilot.press("3")
        await pilot.pause()
        line = str(app.query_one("#offload-model", Static).render())
        assert "Q4_K_M (what-if)" in line
        # The command line names the file that type would be.
        assert "tiny.Q4_K_M.gguf" in str(app.query_one("#offload-command", Static).render())
        # The model pane shows the mix llama.cpp would write, and says it is a what-if.
        await pilot.press("1")
        await pilot.pause()
        shown = "\n".join(screen_text(app))
        assert "What-if Q4_K_M (the file is F16)" in shown, shown
        assert "llama · Q4_K_M" in shown
        assert "Q4_K" in shown and "Q6_K" in shown  # llama.cpp raises some tensors to Q6_K

        # The file's own row goes back to the file as it is.
        await pilot.press("2")
        await move_to(pilot, app, "F16")
        await pilot.press("enter")
        await pilot.pause()
        assert app.quant is None
        await pilot.press("1")
        await pilot.pause()
        assert "What-if" not in "\n".join(screen_text(app))


async def test_siblings_on_disk_are_marked_and_open(tmp_path: Path) -> None:
    (f16,) = llama_like(tmp_path / "tiny.F16.gguf", n_layer=4)
    (q8,) = llama_like(tmp_path / "tiny.Q8_0.gguf", n_layer=4, weight_type=Q.Q8_0, file_type=7)
    llama_like(tmp_path / "other-model.Q4_K_M.gguf", n_layer=2, weight_type=Q.Q4_K, file_type=15)
    app = make_app(read_spec(f16), hardware=cpu_only())
    async with app.run_test(size=(100, 40)) as pilot:
        await pilot.press("2")
        await wait_for(pilot, lambda: bool(quant_pane(app).rows) and bool(app.siblings))
        await pilot.pause()
        assert app.siblings == {"Q8_0": str(q8)}  # another model's file is no sibling
        marks = {r.file_type: _mark(app, r.file_type) for r in quant_pane(app).rows}
        assert marks["Q8_0"] == "on disk" and marks["F16"] == "this file"
        assert marks["Q4_K_M"] == ""
        await move_to(pilot, app, "Q4_K_M")
        await pilot.press("o")
        await pilot.pause()
        assert app.model_path == str(f16)  # nothing to open: a notice, and nothing changes
        assert any("No Q4_K_M file" in n.message for n in app._notifications)
        await move_to(pilot, app, "Q8_0")
        await pilot.press("o")
        await pilot.pause()
        assert app.model_path == str(q8)
        assert app.spec is not None and app.spec.file_type_name == "Q8_0"


def _mark(app: LlmtuneApp, file_type: str) -> str:
    table = app.query_one(QuantTable)
    return str(table.get_cell(file_type, "mark").plain)
