"""What the Python process asks of the operating system, through audit hooks
(PEP 578): files opened and how, memory maps, sockets, child processes.

An audit hook cannot be removed once added, so one hook is added on first use
and records only inside :func:`recording`. It sees this process only: child
processes (the llama.cpp worker, the chat-template renderer) are checked from
the outside with strace (tests/engine/test_security_engine.py).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

# Events that open files, map them, reach the network or start programs.
FILE_EVENTS = frozenset({"open", "mmap.__new__", "os.truncate", "os.remove", "os.rename"})
NETWORK_EVENTS = frozenset(
    {
        "socket.connect",
        "socket.bind",
        "socket.sendto",
        "socket.sendmsg",
        "socket.getaddrinfo",
        "socket.gethostbyname",
        "socket.gethostbyaddr",
        "socket.getnameinfo",
        "urllib.Request",
        "http.client.connect",
        "ftplib.connect",
        "smtplib.connect",
        "webbrowser.open",
    }
)
PROCESS_EVENTS = frozenset({"subprocess.Popen", "os.exec", "os.posix_spawn", "os.system"})

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


@dataclass(frozen=True)
class Event:
    name: str
    args: tuple[Any, ...]

    @property
    def path(self) -> str | None:
        """The path of an ``open`` event, absolute."""
        if self.name != "open" or not isinstance(self.args[0], (str, bytes, os.PathLike)):
            return None
        return os.path.abspath(os.fsdecode(self.args[0]))

    @property
    def writes(self) -> bool:
        """Whether an ``open`` could write, or an ``mmap`` could change, the file."""
        if self.name == "open":
            mode, flags = self.args[1], self.args[2]
            if isinstance(mode, str) and any(c in mode for c in "wax+"):
                return True
            return isinstance(flags, int) and bool(flags & _WRITE_FLAGS)
        if self.name == "mmap.__new__":
            import mmap

            return bool(self.args[2] != mmap.ACCESS_READ)
        return self.name in ("os.truncate", "os.remove", "os.rename")


_active: list[tuple[frozenset[str], list[Event]]] = []
_installed = False


def _hook(name: str, args: tuple[Any, ...]) -> None:
    if not _active:
        return
    for names, events in _active:
        if name in names:
            events.append(Event(name, args))


@contextmanager
def recording(names: frozenset[str]) -> Iterator[list[Event]]:
    """Record the audit events ``names`` raised inside the block (any thread)."""
    global _installed
    if not _installed:
        sys.addaudithook(_hook)
        _installed = True
    events: list[Event] = []
    entry = (names, events)
    _active.append(entry)
    try:
        yield events
    finally:
        _active.remove(entry)
