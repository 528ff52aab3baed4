"""Read what a running app shows: rows of text and their styles, no pixels."""

from __future__ import annotations

from typing import Any

from rich.style import Style
from textual.app import App
from textual.strip import Strip
from textual.widget import Widget


def screen_strips(app: App[Any]) -> list[Strip]:
    """The whole screen as rendered, one strip per terminal row."""
    # Textual is pinned to an exact version, so its compositor is safe to read here.
    return app.screen._compositor.render_strips()


def screen_text(app: App[Any]) -> list[str]:
    return [strip.text for strip in screen_strips(app)]


def widget_rows(app: App[Any], widget: Widget) -> list[Strip]:
    """The screen rows showing ``widget``'s content, cropped to it: only the part
    its scrolling container shows now."""
    region = widget.content_region
    node = widget.parent
    while isinstance(node, Widget):
        if node.is_scrollable:
            region = region.intersection(node.scrollable_content_region)
        node = node.parent
    strips = screen_strips(app)
    return [strips[y].crop(region.x, region.right) for y in range(region.y, region.bottom)]


def styles_of(strip: Strip) -> set[Style]:
    """The distinct styles of a strip's visible characters (Textual's meta left out)."""
    return {_without_meta(seg.style or Style()) for seg in strip if seg.text.strip()}


def _without_meta(style: Style) -> Style:
    return Style(
        color=style.color,
        bgcolor=style.bgcolor,
        bold=style.bold,
        dim=style.dim,
        italic=style.italic,
        underline=style.underline,
        blink=style.blink,
        reverse=style.reverse,
        strike=style.strike,
        link=style.link,
    )
