"""Text from a model file is inert in every pane: no escape sequence, control or
bidi character reaches the terminal, and no markup is interpreted."""

from __future__ import annotations

import unicodedata
from pathlib import Path

import pytest
from rendered import screen_strips, screen_text
from ui_support import cpu_only, wait_for, with_gpu

from llmtune.model import read_spec
from llmtune.ui.app import make_app
from llmtune.ui.panes.model import ModelPane
from llmtune.ui.panes.quant import QuantPane
from synth import llama_like

EVIL = "evil\x1b[31m [bold red]markup[/] \u202egnp.exe \x1b]0;pwned\x07 [@click=app.quit]x[/]"
EVIL_SHOWN = "evil\\x1b[31m [bold red]markup[/] \\u202egnp.exe"
TEMPLATE = "{{ '\x1b[2J' }}[red]{% for m in messages %}{{ m.content }}{% endfor %}\u202e"


@pytest.fixture
def hostile(tmp_path: Path) -> Path:
    (path,) = llama_like(
        tmp_path / "evil\x1b[31m.Q8_0.gguf",
        name=EVIL,
        extra_kv=[
            ("general.description", EVIL * 3),
            ("tokenizer.chat_template", TEMPLATE),
            ("general.x\x1b[1mkey", "value\x00with NUL"),
            ("general.long", "A" * 1_000_000),
        ],
    )
    return path


def no_controls(text: str) -> bool:
    """No control or format character on any row (the rows' own line breaks aside)."""
    return not [ch for ch in text.replace("\n", "") if unicodedata.category(ch) in ("Cc", "Cf")]


def no_red(app: object) -> bool:
    for strip in screen_strips(app):  # type: ignore[arg-type]
        for seg in strip:
            if seg.text.strip() and "markup" in seg.text and seg.style and seg.style.color:
                if seg.style.color.name == "red":
                    return False
    return True


@pytest.mark.parametrize("key", ["1", "2", "3", "4", "5"])
async def test_every_pane_renders_hostile_text_inert(hostile: Path, key: str) -> None:
    app = make_app(read_spec(hostile), hardware=with_gpu())
    async with app.run_test(size=(100, 40)) as pilot:
        await pilot.press(key)
        await wait_for(pilot, lambda: bool(app.query_one(QuantPane).rows))
        await pilot.pause()
        text = "\n".join(screen_text(app))
        assert no_controls(text)
        assert no_red(app)
        assert app.is_running  # the [@click=app.quit] in the name did nothing


async def test_the_model_pane_shows_metadata_and_template_escaped(hostile: Path) -> None:
    app = make_app(read_spec(hostile), hardware=cpu_only())
    async with app.run_test(size=(120, 60)) as pilot:
        await pilot.press("1")
        await pilot.pause()
        pane = app.query_one(ModelPane)
        keys = pane.shown_keys
        assert "general.x\\x1b[1mkey" in keys
        await pilot.press("slash", *"description")
        await pilot.pause()
        assert pane.shown_keys == ["general.description"]
        template = str(app.query_one("#chat-template").render())
        assert "\\x1b[2J" in template and "[red]" in template and "\\u202e" in template
        text = "\n".join(screen_text(app))
        assert no_controls(text) and EVIL_SHOWN[:20] in text


async def test_a_megabyte_string_is_cut(hostile: Path) -> None:
    app = make_app(read_spec(hostile), hardware=cpu_only())
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("1")
        await pilot.pause()
        pane = app.query_one(ModelPane)
        long_row = next(r for r in pane._rows if r[0] == "general.long")
        assert len(long_row[2]) < 400 and "chars)" in long_row[2]


async def test_a_template_too_long_to_read_says_so(tmp_path: Path) -> None:
    template = "{{ messages[0].content }}" + "x" * (2 << 20)
    (path,) = llama_like(tmp_path / "long.gguf", extra_kv=[("tokenizer.chat_template", template)])
    app = make_app(read_spec(path), hardware=cpu_only())
    async with app.run_test(size=(100, 40)) as pilot:
        await pilot.press("1")
        await pilot.pause()
        shown = str(app.query_one("#chat-template").render())
        assert "too long to use" in shown and "{{ messages[0].content }}" in shown
        assert len(shown) < 30_000
