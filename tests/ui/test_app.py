"""The model pane: `llmtune MODEL` shows the model summary (key 1), and `q` quits."""

from __future__ import annotations

import unicodedata
from pathlib import Path

import pytest
from rendered import screen_text, styles_of, widget_rows
from rich.cells import cell_len
from textual.pilot import Pilot
from textual.strip import Strip

from llmtune.model import ModelSpec, read_spec
from llmtune.model.describe import inspect_lines
from llmtune.ui.app import LlmtuneApp, ModelSummary, make_app
from synth import llama_like

DEMO_NAME = "Smollm2 135M 8k Lc100K Mix1 Ep2"


def summary(app: LlmtuneApp) -> ModelSummary:
    return app.query_one("#model-summary", ModelSummary)


def pane_width(app: LlmtuneApp) -> int:
    """The model pane's width inside its padding and scrollbar."""
    return app.query_one("#pane-model").scrollable_content_region.width


async def show_model_pane(pilot: Pilot[None]) -> None:
    await pilot.pause()
    await pilot.press("1")
    await pilot.pause()


async def test_shows_the_demo_model_summary(demo_spec: ModelSpec) -> None:
    app = make_app(demo_spec)
    async with app.run_test(size=(80, 24)) as pilot:
        await show_model_pane(pilot)
        widget = summary(app)
        rows = widget_rows(app, widget)
        shown = "\n".join(row.text for row in rows)
        assert DEMO_NAME in shown
        assert "layers 30" in shown
        assert "embedding 576" in shown
        assert "heads 9 (KV 3, GQA 3:1)" in shown
        assert "Q4_1" in shown and "Q8_0" in shown and "F32" in shown
        assert "272 tensors" in shown
        assert "SmolLM2-135M-Instruct.Q4_1.gguf" in shown
        # Section headings stand out; the lines under them are plain.
        heading = next(row for row in rows if row.text.startswith("Shape"))
        body = next(row for row in rows if row.text.startswith("  layers"))
        assert all(style.bold for style in styles_of(heading))
        assert not any(style.bold for style in styles_of(body))
        header = screen_text(app)[0]
        assert "llmtune" in header and DEMO_NAME in header
        footer = screen_text(app)[-1]
        assert "Quit" in footer and "Help" in footer and "Apply" in footer


async def test_q_quits(demo_spec: ModelSpec) -> None:
    app = make_app(demo_spec)
    async with app.run_test(size=(80, 24)) as pilot:
        await show_model_pane(pilot)
        assert app.is_running
        await pilot.press("q")
        await pilot.pause()
        assert not app.is_running
    assert app.return_code == 0


@pytest.mark.parametrize("size", [(80, 24), (50, 40), (120, 40)])
async def test_summary_fits_the_pane(demo_spec: ModelSpec, size: tuple[int, int]) -> None:
    app = make_app(demo_spec)
    async with app.run_test(size=size) as pilot:
        await show_model_pane(pilot)
        widget = summary(app)
        pane = app.query_one("#pane-model")
        width = widget.size.width
        # The summary takes the pane's full width inside its padding.
        assert width == pane.scrollable_content_region.width
        assert width >= 40
        assert widget.lines == widget.summary_lines(width)
        assert all(cell_len(line) <= width for line in widget.lines)
        # Every line is shown on its own row: nothing wraps or spills over.
        rows = [strip.text.rstrip() for strip in widget_rows(app, widget)]
        visible = pane.scrollable_content_region.height
        assert rows[:visible] == [line.rstrip() for line in widget.lines][:visible]


@pytest.mark.parametrize("size", [(80, 24), (50, 40), (120, 40)])
async def test_summary_needs_no_cutting(demo_spec: ModelSpec, size: tuple[int, int]) -> None:
    app = make_app(demo_spec)
    async with app.run_test(size=size) as pilot:
        await show_model_pane(pilot)
        widget = summary(app)
        # inspect_lines keeps to the width it is given, so the pane has nothing to cut.
        assert widget.lines == inspect_lines(demo_spec, width=widget.size.width)


async def test_wide_characters_are_cut_to_the_pane(tmp_path: Path) -> None:
    # Each of these takes two columns: a name as long as the pane in characters is twice too wide.
    (path,) = llama_like(tmp_path / "wide.gguf", name="模型" * 40)
    app = make_app(read_spec(path))
    async with app.run_test(size=(50, 40)) as pilot:
        await show_model_pane(pilot)
        widget = summary(app)
        w = pane_width(app)
        assert widget.size.width == w and w >= 46
        assert all(cell_len(line) <= w for line in widget.lines)
        assert widget.lines[0].endswith("…")
        rows = [strip.text.rstrip() for strip in widget_rows(app, widget)]
        assert rows and rows == [line.rstrip() for line in widget.lines][: len(rows)]


async def test_summary_re_lays_out_on_resize(demo_spec: ModelSpec) -> None:
    app = make_app(demo_spec)
    async with app.run_test(size=(100, 40)) as pilot:
        await show_model_pane(pilot)
        widget = summary(app)
        wide = list(widget.lines)
        assert max(cell_len(line) for line in wide) > 48
        await pilot.resize_terminal(50, 40)
        await pilot.pause()
        w = pane_width(app)
        assert widget.size.width == w and w < 50
        assert widget.lines == widget.summary_lines(w) != wide
        assert max(cell_len(line) for line in widget.lines) <= w
        rows = [strip.text.rstrip() for strip in widget_rows(app, widget)]
        assert rows and rows == [line.rstrip() for line in widget.lines][: len(rows)]
        await pilot.resize_terminal(100, 40)
        await pilot.pause()
        assert widget.lines == wide


async def test_path_label_replaces_the_path(demo_spec: ModelSpec, demo_model: Path) -> None:
    app = make_app(demo_spec, path_label="models/demo.gguf")
    async with app.run_test(size=(80, 24)) as pilot:
        await show_model_pane(pilot)
        widget = summary(app)
        default = inspect_lines(demo_spec, width=widget.size.width)
        # The line it replaces is the path line (inspect_lines keeps it second).
        assert default[1].strip().endswith(demo_model.name)
        assert widget.lines[1] == "  models/demo.gguf"
        assert widget.lines[:1] + widget.lines[2:] == default[:1] + default[2:]
        shown = "\n".join(strip.text for strip in widget_rows(app, widget))
        assert "models/demo.gguf" in shown
        assert str(demo_model.parent) not in shown


async def test_a_long_path_label_keeps_the_file_name(demo_spec: ModelSpec) -> None:
    label = "~/a/very/long/folder/name/that/does/not/fit/" + "SmolLM2-135M-Instruct.Q4_1.gguf"
    app = make_app(demo_spec, path_label=label)
    async with app.run_test(size=(50, 40)) as pilot:
        await show_model_pane(pilot)
        path_line = summary(app).lines[1]
        assert cell_len(path_line) == pane_width(app)
        assert path_line.startswith("  …") and path_line.endswith(
            "/SmolLM2-135M-Instruct.Q4_1.gguf"
        )


# (metadata as written, as it must appear): a terminal colour escape, Rich markup
# (unbalanced, and balanced with a Textual click action), a bidi override and a
# window-title escape (OSC 0).
HOSTILE_NAMES = [
    (
        "evil\x1b[31m [bold red]markup[/] \u202egnp.exe",
        "evil\\x1b[31m [bold red]markup[/] \\u202egnp.exe",
    ),
    (
        "[bold red]loud[/bold red] \x1b]0;pwned\x07 [@click=app.quit]click me[/]",
        "[bold red]loud[/bold red] \\x1b]0;pwned\\x07 [@click=app.quit]click me[/]",
    ),
]


async def name_row_and_header(path: Path) -> tuple[Strip, str, str]:
    """The summary's first row, the whole screen's text and the header's text."""
    app = make_app(read_spec(path))
    async with app.run_test(size=(80, 24)) as pilot:
        await show_model_pane(pilot)
        rows = widget_rows(app, summary(app))
        text = screen_text(app)
        return rows[0], "".join(text), text[0]


@pytest.mark.parametrize(("name", "shown"), HOSTILE_NAMES)
async def test_hostile_metadata_renders_inert(tmp_path: Path, name: str, shown: str) -> None:
    (path,) = llama_like(tmp_path / "hostile.gguf", name=name)
    assert read_spec(path).name == name
    (benign,) = llama_like(tmp_path / "benign.gguf", name="benign")
    name_row, screen, header = await name_row_and_header(path)
    benign_row, _, _ = await name_row_and_header(benign)
    assert name_row.text.rstrip() == shown
    # No control or bidi character reaches the screen.
    assert not [ch for ch in screen if unicodedata.category(ch) in ("Cc", "Cf")]
    # The markup applied no style: the row has the one style of a benign name.
    assert styles_of(name_row) == styles_of(benign_row)
    assert len(styles_of(name_row)) == 1
    (style,) = styles_of(name_row)
    assert style.color is not None and style.color.name != "red" and style.link is None
    # The header shows the same inert name, brackets and all.
    assert shown[:40] in header
