"""The app's keys and its command palette: every action the user can reach.

The footer shows the focused pane's own keys (bound in the panes), then the
ones here marked to show, in this order; ``?`` lists them all.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from textual.app import SystemCommand
from textual.binding import Binding, BindingType

from llmtune.ui.layout import PANES

if TYPE_CHECKING:
    from llmtune.ui.app import LlmtuneApp

__all__ = ["BINDINGS", "COMMANDS", "commands"]

BINDINGS: list[BindingType] = [
    # The footer lists the focused pane's keys, then these in this order, and
    # cuts what does not fit (? shows every key): the likeliest needed first.
    Binding("a", "apply", "Apply"),
    Binding("t", "tune", "Tune"),
    Binding("h", "handoff", "Hand-off"),
    Binding("question_mark", "help", "Help"),
    Binding("o", "open_model", "Open"),
    Binding("q", "quit", "Quit"),
    Binding("escape", "stop", "Stop", show=False),
    Binding("R", "restart", "Restart worker", show=False),
    Binding("ctrl+r", "restart", "Restart worker", show=False, priority=True),
    Binding("u", "unload", "Unload", show=False),
    Binding("g", "choose_gpu", "GPU", show=False),  # the status line offers it
    Binding("n", "rpc_hosts", "RPC hosts", show=False),
    Binding("c", "copy_command", "Copy cmd", show=False),
    Binding("w", "quantize", "Quantize", show=False),
    Binding("A", "attach", "Attach", show=False),
    Binding("left_square_bracket", "layers(-1)", "-layer", show=False),
    Binding("right_square_bracket", "layers(1)", "+layer", show=False),
    Binding("equals_sign", "layers_auto", "auto layers", show=False),
    Binding("slash", "search_metadata", "Search", show=False),
    Binding("0", "pane('gauges')", "Gauges", show=False),
    Binding("1", "pane('model')", "Panes", key_display="1-5", show=False),
    *(
        Binding(str(i + 1), f"pane('{name}')", label, show=False)
        for i, (name, label) in enumerate(PANES)
        if i
    ),
]

# (title, help, action), in the palette's order.
COMMANDS: tuple[tuple[str, str, str], ...] = (
    ("Apply settings", "Load the model in llama.cpp with these settings (a)", "apply"),
    ("Stop generating", "Stop the answer being generated (escape)", "stop"),
    ("Restart the worker", "Start a new llama.cpp worker (R)", "restart"),
    ("Unload the model", "Free the worker's memory (u)", "unload"),
    ("Plan for another GPU", "Choose a GPU profile as a what-if target (g)", "choose_gpu"),
    ("RPC hosts", "Add or remove llama.cpp RPC servers that take layers (n)", "rpc_hosts"),
    ("Open a model", "Pick another GGUF file (o)", "open_model"),
    ("Copy the command line", "llama-server line to the clipboard (c)", "copy_command"),
    ("Hand-off", "llama-server, llama-cli, llama-cpp-python, Ollama (h)", "handoff"),
    ("Tune", "Find the fastest settings that fit, by real runs (t)", "tune"),
    ("Quantize", "Write the model at the chosen file type (w)", "quantize"),
    ("Attach to a llama-server", "Watch a running llama-server beside its plan (A)", "attach"),
    ("Search the metadata", "Filter the model's metadata (/)", "search_metadata"),
    ("One more layer on the GPU", "Move the offload slider up one layer (])", "layers(1)"),
    ("One fewer layer on the GPU", "Move the offload slider down one layer ([)", "layers(-1)"),
    (
        "Layers as llama.cpp's fit chooses",
        "Back to --ngl auto after moving the slider (=)",
        "layers_auto",
    ),
    ("Show the gauges", "The side-pane view for under 60 columns (0)", "pane('gauges')"),
    ("Help", "Keys and what each pane shows (?)", "help"),
)


def commands(app: LlmtuneApp) -> Iterator[SystemCommand]:
    """The app's own palette entries, then one per pane (keys 1-5)."""
    for title, help_text, action in COMMANDS:
        yield SystemCommand(title, help_text, _runner(app, action))
    yield SystemCommand(
        "Measure quality",
        "KL divergence of the highlighted file type from this model (m in the quantization pane)",
        lambda: _measure(app),
    )
    for i, (name, label) in enumerate(PANES):
        yield SystemCommand(
            f"Show the {label} pane", f"key {i + 1}", _runner(app, f"pane('{name}')")
        )


def _measure(app: LlmtuneApp) -> None:
    from llmtune.ui import dialogs

    row = app.quant_pane.highlighted()
    dialogs.quality(app, row.file_type if row is not None and not row.is_current else None)


def _runner(app: LlmtuneApp, action: str) -> Callable[[], object]:
    async def run() -> None:
        await app.run_action(action)

    return run
