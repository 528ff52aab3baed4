"""`n`: the llama.cpp RPC hosts whose devices take layers, added and removed.

Lists each host with its devices (free of total memory), round trip and link
speed. Typing ``HOST:PORT[=GPU]`` and enter asks that host in a thread worker
(the screen stays live); a host that cannot be used is one line here and
changes nothing. With the list focused, delete removes the highlighted host.
Escape closes: with the list changed, the screen returns the new list.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import Input, OptionList, Static
from textual.widgets.option_list import Option
from textual.worker import Worker, WorkerState

from llmtune.errors import LlmtuneError
from llmtune.hardware.device import Device
from llmtune.textsafe import inert
from llmtune.ui.boundary import error_words, forward_failure
from llmtune.ui.hosts import HostEntry, parse_hosts, probe_host, renumbered

HINT = "enter: add · tab: the list · del: remove · esc: done"
EMPTY = "No RPC hosts: every layer stays on this machine."


class RpcHostsScreen(ModalScreen[tuple[HostEntry, ...] | None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "done", "Done"),
        Binding("delete,backspace,x", "remove", "Remove host", show=False),
    ]

    @dataclass
    class Probed(Message):
        """The thread's answer for what was typed: the hosts, or why not."""

        text: str
        entries: tuple[HostEntry, ...]
        error: str | None = None

    def __init__(
        self,
        entries: Sequence[HostEntry],
        host: Device,
        *,
        network_bytes_per_s: float | None = None,
        timeout_s: float = 3.0,
    ) -> None:
        super().__init__()
        self.entries = renumbered(entries)
        self.changed = False
        self.probing: str | None = None  # what is being asked now
        self._host = host
        self._network = network_bytes_per_s
        self._timeout_s = timeout_s

    def compose(self) -> ComposeResult:
        with Vertical(id="rpc-hosts"):
            yield Static("llama.cpp RPC hosts", id="rpc-hosts-title", markup=False)
            yield Static(
                "Their devices take layers before this machine's GPUs, in this order.",
                id="rpc-hosts-about",
                markup=False,
            )
            yield OptionList(id="rpc-hosts-list")
            yield Input(placeholder="HOST:PORT or HOST:PORT=GPU", id="rpc-hosts-add")
            yield Static("", id="rpc-hosts-status", markup=False)
            yield Static(HINT, id="rpc-hosts-hint", markup=False)

    def on_mount(self) -> None:
        self._fill()
        self.query_one("#rpc-hosts-add", Input).focus()

    # -- the list ----------------------------------------------------------------
    def _fill(self, highlight: int | None = None) -> None:
        options = self.query_one("#rpc-hosts-list", OptionList)
        options.clear_options()
        for i, entry in enumerate(self.entries):
            lines = [inert(line, max_chars=200) for line in entry.lines()]
            text = Text(lines[0], "bold")
            for line in lines[1:]:
                text.append("\n" + line)
            options.add_option(Option(text, id=str(i)))
        if not self.entries:
            options.add_option(Option(Text(EMPTY, "dim"), id="empty", disabled=True))
            options.highlighted = None
        elif highlight is not None:
            options.highlighted = min(max(0, highlight), len(self.entries) - 1)

    def _say(self, text: str, *, error: bool = False) -> None:
        status = self.query_one("#rpc-hosts-status", Static)
        status.update(text)
        status.set_class(error, "-error")

    # -- adding: the probe runs in a thread ----------------------------------------
    @on(Input.Submitted, "#rpc-hosts-add")
    def _add(self, event: Input.Submitted) -> None:
        text = event.value.strip()
        if not text:
            return
        if self.probing is not None:
            self._say(f"Still asking {inert(self.probing, max_chars=80)}…")
            return
        try:
            items = parse_hosts(text, [e.endpoint for e in self.entries])
        except LlmtuneError as exc:
            self._say(exc.one_line(), error=True)
            return
        self.probing = ", ".join(endpoint for endpoint, _ in items)
        self._say(f"Asking {inert(self.probing, max_chars=80)}…")
        host, network, timeout_s = self._host, self._network, self._timeout_s

        def ask() -> None:
            try:
                found = tuple(
                    probe_host(endpoint, gpu, host, network, timeout_s) for endpoint, gpu in items
                )
            except LlmtuneError as exc:  # a host that cannot be used: said here, nothing changes
                self.post_message(self.Probed(text, (), exc.one_line()))
                return
            self.post_message(self.Probed(text, found))

        self.run_worker(ask, name="rpc", group="rpc", thread=True, exit_on_error=False)

    @on(Probed)
    def _probed(self, message: Probed) -> None:
        self.probing = None
        if message.error is not None:
            self._say(message.error, error=True)
            return
        present = {e.endpoint for e in self.entries}
        added = tuple(e for e in message.entries if e.endpoint not in present)
        self.entries = renumbered(self.entries + added)
        self.changed = self.changed or bool(added)
        self._fill(highlight=len(self.entries) - 1)
        devices = sum(len(e.devices) for e in added)
        names = ", ".join(e.endpoint for e in added)
        self._say(f"Added {inert(names, max_chars=80)}: {devices} device{'s' * (devices != 1)}.")
        field = self.query_one("#rpc-hosts-add", Input)
        if field.value.strip() == message.text:
            field.value = ""

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """A probe that failed unexpectedly: said here, and by the app's boundary."""
        forward_failure(self.app, event)
        if event.state == WorkerState.ERROR:
            self.probing = None
            self._say(f"Asking the host failed: {error_words(event.worker.error)}", error=True)

    # -- removing and closing ------------------------------------------------------
    def action_remove(self) -> None:
        options = self.query_one("#rpc-hosts-list", OptionList)
        if not options.has_focus:
            return
        index = options.highlighted
        if index is None or index >= len(self.entries):
            return
        gone = self.entries[index]
        self.entries = renumbered(self.entries[:index] + self.entries[index + 1 :])
        self.changed = True
        self._fill(highlight=index)
        self._say(f"Removed {inert(gone.endpoint, max_chars=80)}.")

    def action_done(self) -> None:
        self.dismiss(self.entries if self.changed else None)
