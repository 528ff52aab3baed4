"""The llmtune Textual app.

For now one screen: the model summary. The panes of the full app (quantization,
offload, monitor, run) build on this in later work.
"""

from __future__ import annotations

from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.widgets import Footer, Header, Static

from llmtune.model import ModelSpec
from llmtune.model.describe import inspect_lines
from llmtune.textsafe import inert


class ModelSummary(Static):
    """The inspect summary of one model, re-laid out to the pane's width."""

    def __init__(self, spec: ModelSpec, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.spec = spec

    def on_mount(self) -> None:
        self._render_summary()

    def on_resize(self) -> None:
        self._render_summary()

    def _render_summary(self) -> None:
        width = max(40, self.size.width or 80)
        # Plain Text, never markup: metadata strings cannot inject styles.
        self.update(Text("\n".join(inspect_lines(self.spec, width=width))))


class LlmtuneApp(App[None]):
    CSS_PATH = "llmtune.tcss"
    TITLE = "llmtune"
    BINDINGS = [Binding("q", "quit", "Quit")]

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec

    def compose(self) -> ComposeResult:
        yield Header()
        with VerticalScroll(id="model-pane"):
            yield ModelSummary(self.spec, id="model-summary")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = inert(self.spec.name, max_chars=60)


def make_app(spec: ModelSpec) -> LlmtuneApp:
    """Build the app; tests call this with their own model."""
    return LlmtuneApp(spec)
