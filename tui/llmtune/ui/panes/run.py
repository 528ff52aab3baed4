"""The run pane: a prompt, the streamed answer, start/stop/reload and the load progress."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.widgets import Button, Input, ProgressBar, Static

from llmtune.engine.protocol import Stats
from llmtune.textsafe import inert

MAX_OUTPUT_CHARS = 200_000  # older text is dropped beyond this


class RunPane(Vertical):
    # Shown in the footer while this pane has focus (the app binds the same keys).
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "app.stop", "Stop"),
        Binding("ctrl+r", "app.restart", "Restart"),
    ]

    @dataclass
    class Requested(Message):
        """The user asked for ``what``: generate, stop or reload."""

        what: str
        prompt: str = ""

    def compose(self) -> ComposeResult:
        yield Static("", id="run-state", markup=False)
        yield ProgressBar(total=1.0, show_eta=False, id="load-progress")
        yield Input(placeholder="prompt, Enter to generate", id="prompt")
        with Horizontal(id="run-buttons"):
            yield Button("Generate", id="run-generate", variant="primary", compact=True)
            yield Button("Stop", id="run-stop", variant="error", compact=True)
            yield Button("Reload", id="run-reload", compact=True)
        yield Static("", id="run-stats", markup=False)
        with VerticalScroll(id="run-output-box"):
            yield Static("", id="run-output", markup=False)

    def on_mount(self) -> None:
        self._output = ""
        self.query_one("#load-progress", ProgressBar).display = False

    # -- attributes down ---------------------------------------------------------
    def show_state(self, line: str, progress: float | None) -> None:
        self.query_one("#run-state", Static).update(line)
        bar = self.query_one("#load-progress", ProgressBar)
        bar.display = progress is not None
        if progress is not None:
            bar.update(progress=progress)

    def clear_output(self, prompt: str) -> None:
        self._output = ""
        self.query_one("#run-stats", Static).update("")
        self._show(Text(inert(prompt, max_chars=2000, keep_newlines=True), "dim"))

    def append(self, text: str) -> None:
        self._output += text
        if len(self._output) > MAX_OUTPUT_CHARS:
            self._output = self._output[-MAX_OUTPUT_CHARS:]
        self._show(Text(inert(self._output, max_chars=None, keep_newlines=True)))

    @property
    def output(self) -> str:
        return self._output

    def show_stats(self, stats: Stats, predicted_tg: float | None) -> None:
        line = (
            f"{stats.n_gen} tokens at {stats.tg_tokens_per_s:,.1f} t/s"
            + (f" (predicted {predicted_tg:,.1f})" if predicted_tg else "")
            + f" · {_FINISH.get(stats.finish, stats.finish)}"
            + f" · prompt {stats.n_prompt} at {stats.pp_tokens_per_s:,.0f} t/s"
        )
        self.query_one("#run-stats", Static).update(line)

    def _show(self, text: Text) -> None:
        self.query_one("#run-output", Static).update(text)
        self.query_one("#run-output-box", VerticalScroll).scroll_end(animate=False)

    # -- messages up ---------------------------------------------------------------
    @on(Input.Submitted, "#prompt")
    def _submit(self, event: Input.Submitted) -> None:
        event.stop()
        # Kept and selected: Enter runs it again, typing replaces it (instead of
        # appending the next prompt to this one).
        event.input.select_all()
        self.post_message(self.Requested("generate", event.value))

    @on(Button.Pressed, "#run-generate")
    def _generate(self, event: Button.Pressed) -> None:
        event.stop()
        self.post_message(self.Requested("generate", self.query_one("#prompt", Input).value))

    @on(Button.Pressed, "#run-stop")
    def _stop(self, event: Button.Pressed) -> None:
        event.stop()
        self.post_message(self.Requested("stop"))

    @on(Button.Pressed, "#run-reload")
    def _reload(self, event: Button.Pressed) -> None:
        event.stop()
        self.post_message(self.Requested("reload"))


_FINISH = {
    "eog": "answer ended",
    "length": "token limit",
    "stop": "stopped",
    "context": "context full",
}
