"""`?`: what llmtune shows and every key, on one screen."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

KEYS: tuple[tuple[str, str], ...] = (
    ("1-5", "panes: model, quantization, offload, monitor, run (0: gauges)"),
    ("tab / shift+tab", "move between controls"),
    ("← →", "change the focused setting; on the slider, one layer"),
    ("PgUp PgDn", "slider: five layers; Home / End: none / all"),
    ("[ ]", "one layer fewer / more, from anywhere"),
    ("=", "layers back to auto: what llama.cpp's fit chooses"),
    ("a", "apply: load the model in llama.cpp with these settings"),
    (
        "enter",
        "in the prompt: generate (loading first if needed); quantization table: plan as that type",
    ),
    ("escape", "stop generating; leave the prompt box"),
    ("ctrl+r / R", "restart the worker (after a crash)"),
    ("u", "unload the model"),
    ("g", "plan for another GPU (a what-if target)"),
    ("n", "RPC hosts: add or remove llama.cpp RPC servers whose devices take layers"),
    ("o", "open another model"),
    ("c", "copy the llama.cpp command line (OSC 52: works over SSH)"),
    ("h", "hand-off: llama-server, llama-cli, llama-cpp-python, Ollama; enter copies"),
    ("t", "tune: the fastest settings that fit, by real loads; escape cancels"),
    ("w", "quantize to the file type chosen in the quantization pane"),
    ("m", "quantization pane: measure the highlighted type's quality (KL divergence)"),
    ("/", "search the metadata"),
    ("ctrl+p", "command palette: every action by name"),
    ("q", "quit"),
)

ABOUT = (
    "llmtune plans where llama.cpp will put each buffer before anything loads, "
    "following llama.cpp's own rules, and checks itself: after a load, the monitor "
    "shows each buffer llama.cpp allocated beside the prediction. Settings apply to "
    "the plan at once; `a` loads them for real, and while a model is loaded, changes "
    "reload it after a short pause."
)


class HelpScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q,question_mark", "dismiss(None)", "Close"),
    ]

    def compose(self) -> ComposeResult:
        text = Text()
        text.append("llmtune keys\n\n", "bold")
        width = max(len(k) for k, _ in KEYS) + 2
        for key, what in KEYS:
            text.append(key.ljust(width), "bold")
            text.append(what + "\n")
        text.append("\n" + ABOUT + "\n", "dim")
        with VerticalScroll(id="help"):
            yield Static(text, markup=False)
