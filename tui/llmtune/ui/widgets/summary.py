"""ModelSummary: ``llmtune inspect``'s summary of a model, re-laid out to its width."""

from __future__ import annotations

from rich.cells import cell_len, set_cell_size
from rich.text import Text
from textual.widget import Widget

from llmtune.model import ModelSpec
from llmtune.model.describe import inspect_lines
from llmtune.textsafe import inert

# inspect_lines lays out no narrower than this; in a narrower pane lines are cut.
MIN_SUMMARY_WIDTH = 40

# inspect_lines puts the model's path on its second line (name, path, ...).
_PATH_LINE = 1


class ModelSummary(Widget):
    """The inspect summary of one model, re-laid out to the pane's width.

    ``path_label`` replaces the path line (tests and screenshots use it so the
    output does not depend on where the model file happens to live).
    """

    COMPONENT_CLASSES = {"model-summary--title", "model-summary--heading"}

    DEFAULT_CSS = """
    ModelSummary {
        height: auto;
        text-wrap: nowrap;
        text-overflow: ellipsis;
    }
    """

    def __init__(
        self,
        spec: ModelSpec,
        *,
        path_label: str | None = None,
        id: str | None = None,
        classes: str | None = None,
    ) -> None:
        super().__init__(id=id, classes=classes)
        self.spec = spec
        self.path_label = path_label
        self.lines: list[str] = []
        self._laid_out_width = 0

    def on_mount(self) -> None:
        self._lay_out()

    def show(self, spec: ModelSpec, path_label: str | None = None) -> None:
        """Show another model (or the same one as another quantization)."""
        self.spec = spec
        self.path_label = path_label
        self._laid_out_width = 0
        self._lay_out()

    def on_resize(self) -> None:
        self._lay_out()

    def summary_lines(self, width: int) -> list[str]:
        """The summary laid out for ``width`` columns, as shown: no line is wider."""
        lines = inspect_lines(self.spec, width=max(MIN_SUMMARY_WIDTH, width))
        if self.path_label is not None and len(lines) > _PATH_LINE:
            lines[_PATH_LINE] = "  " + _cut_left(inert(self.path_label, max_chars=None), width - 2)
        # Cut rather than wrap a line that is still too wide (wide characters count twice).
        return [_cut(line, width) for line in lines]

    def _lay_out(self) -> None:
        width = max(2, self.size.width or 80)
        if width == self._laid_out_width:
            return
        self._laid_out_width = width
        self.lines = self.summary_lines(width)
        self.refresh(layout=True)

    def render(self) -> Text:
        """Plain Text, never markup, so metadata cannot inject styles; ours go by line."""
        lines = self.lines
        text = Text()
        title = self.get_component_rich_style("model-summary--title", partial=True)
        heading = self.get_component_rich_style("model-summary--heading", partial=True)
        for index, line in enumerate(lines):
            if index:
                text.append("\n")
            if index == 0:
                text.append(line, title)
            elif _is_heading(line, lines[index + 1] if index + 1 < len(lines) else ""):
                text.append(line, heading)
            else:
                text.append(line)
        return text


def _is_heading(line: str, next_line: str) -> bool:
    """A section heading: an unindented line whose section follows indented."""
    return bool(line) and not line[0].isspace() and next_line.startswith("  ")


def _cut_left(path: str, width: int) -> str:
    """Keep a path's end, where the file name is, as inspect_lines does."""
    if cell_len(path) <= width or width < 2:
        return path
    tail = path[::-1]
    return "…" + set_cell_size(tail, width - 1)[::-1].lstrip()


def _cut(line: str, width: int) -> str:
    if cell_len(line) <= width:
        return line
    return set_cell_size(line, width - 1).rstrip() + "…"
