"""Which panes show at the terminal's width, which one is active, where focus goes.

Every pane at once from 120 columns ("wide"), one pane at a time under tabs
from 60 ("tabs"), and under 60 columns, or with ``--compact``, the side-pane
view of gauges ("narrow"). The app sets ``-wide``, ``-tabs`` or ``-narrow`` on
itself and ``-active`` on the pane in hand; llmtune.tcss does the rest.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from textual.widgets import Tabs

if TYPE_CHECKING:
    from llmtune.ui.app import LlmtuneApp

__all__ = ["NARROW_COLUMNS", "PANES", "TITLES", "WIDE_COLUMNS", "Layout", "PaneLayout", "PaneTabs"]

Layout = Literal["wide", "tabs", "narrow"]

WIDE_COLUMNS = 120
NARROW_COLUMNS = 60
# (pane, tab label) in the order of the keys 1-5; "gauges" is key 0, for narrow panes.
PANES: tuple[tuple[str, str], ...] = (
    ("model", "Model"),
    ("quant", "Quant"),
    ("offload", "Offload"),
    ("monitor", "Monitor"),
    ("run", "Run"),
)
# Each pane's border title.
TITLES: dict[str, str] = {
    "offload": "Offload",
    "monitor": "Monitor",
    "run": "Run",
    "quant": "Quantization",
    "model": "Model",
    "gauges": "llmtune",
}
# The widget that takes the keys when a pane is chosen.
FOCUS: dict[str, str] = {
    "offload": "#ngl",
    "quant": "#quant-table",
    "model": "#pane-model",
    "run": "#prompt",
    "monitor": "#pane-monitor",
    "gauges": "#ngl-compact",
}


class PaneTabs(Tabs, can_focus=False):
    """The pane tabs answer clicks and the number keys; they never take focus, so
    the arrow keys always reach the slider or setting in hand."""


class PaneLayout:
    """The app's layout mode and active pane; the app routes resizes, tab clicks
    and the number keys here."""

    def __init__(self, app: LlmtuneApp, *, compact: bool) -> None:
        self.app = app
        self.compact = compact
        self.mode: Layout = "tabs"
        self.active = "offload"
        self._laid_out = False

    def mode_for(self, width: int) -> Layout:
        if self.compact or width < NARROW_COLUMNS:
            return "narrow"
        return "wide" if width >= WIDE_COLUMNS else "tabs"

    def apply(self, width: int) -> None:
        app, mode = self.app, self.mode_for(width)
        previous, self.mode = self.mode, mode
        for name in ("wide", "tabs", "narrow"):
            app.set_class(mode == name, f"-{name}")
        if mode == "narrow":
            app.tabs.show("tab-gauges")
            # Gauges are the narrow view; a pane chosen in the tabs stays chosen.
            if not self._laid_out or previous == "wide":
                self.activate("gauges")
        else:
            app.tabs.hide("tab-gauges")
            if self.active == "gauges":
                self.activate("offload")
        self._mark_active()
        self._laid_out = True

    def activate(self, pane: str) -> None:
        self.active = pane
        tabs = self.app.tabs
        if tabs.active != f"tab-{pane}":
            tabs.active = f"tab-{pane}"
        self._mark_active()

    def tab_activated(self, pane: str) -> None:
        """A tab was clicked (or set by :meth:`activate`)."""
        if pane and pane != self.active:
            self.active = pane
            self._mark_active()
            self.focus(pane)

    def show(self, pane: str) -> None:
        """The number keys: show ``pane`` and give it the keys."""
        if pane == "gauges" and self.mode != "narrow":
            self.app.notify("The gauges view is for panes under 60 columns (or --compact).",
                            markup=False)  # fmt: skip
            return
        self.activate(pane)
        self.focus(pane)

    def focus(self, pane: str) -> None:
        # After the refresh that shows the pane: a hidden widget cannot take focus.
        self.app.call_after_refresh(self._focus_now, pane)

    def _focus_now(self, pane: str) -> None:
        try:
            widget = self.app.panes[pane].screen.query_one(FOCUS[pane])
        except Exception:  # the pane is gone (the app is closing)
            return
        if widget.focusable:
            widget.focus()

    def _mark_active(self) -> None:
        for name, pane in self.app.panes.items():
            pane.set_class(name == self.active, "-active")
