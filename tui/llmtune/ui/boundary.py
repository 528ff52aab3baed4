"""The app's error boundary: a failed background task is one sentence, never a dead app.

Every thread worker the app and its screens start runs with
``exit_on_error=False`` (Textual's default ends the app and prints a traceback
over the terminal), and the app's one ``on_worker_state_changed`` handler turns
a worker in the ``ERROR`` state into a sentence: what was being done, from the
worker's group, and the error in words, the way harlequin's app maps a failed
worker's name to a toast (harlequin ``app.py``, its ``Worker.StateChanged``
handler). ``Worker.StateChanged`` does not bubble (Textual posts it to the node
that started the worker), so a screen hands its own failures on with
:func:`forward_failure`.
"""

from __future__ import annotations

from typing import Any

from textual.app import App
from textual.worker import Worker, WorkerState

from llmtune.errors import LlmtuneError
from llmtune.textsafe import inert

__all__ = ["DOING", "error_words", "failure_sentence", "forward_failure"]

# What each group of thread workers does, as the start of a sentence.
DOING: dict[str, str] = {
    "warm": "Sizing every file type",
    "quant": "Planning every file type",
    "siblings": "Finding this model's other quantizations",
    "chat": "Rendering the chat template",
    "retire": "Stopping the replaced worker",
    "demo": "Downloading the demo model",
    "picker": "Looking for models on this machine",
    "tune": "Tuning",
    "quantize": "Quantizing",
    "rpc": "Asking an RPC host",
}


def error_words(error: BaseException | None) -> str:
    """An error on one line: llmtune's own message, else the exception's type and text."""
    if isinstance(error, LlmtuneError):
        return error.one_line()
    if error is None:
        return "no reason given"
    text = str(error)
    return inert(f"{type(error).__name__}: {text}" if text else type(error).__name__)


def failure_sentence(group: str, error: BaseException | None) -> str:
    doing = DOING.get(group, "A background task")
    return f"{doing} failed: {error_words(error)}"


def forward_failure(app: App[Any], event: Worker.StateChanged) -> None:
    """Hand a screen's failed worker to the app's boundary."""
    if event.state == WorkerState.ERROR:
        app.post_message(Worker.StateChanged(event.worker, event.state))
