"""The real app in a pseudo-terminal, as a user runs it: for the sections that
measure the app process itself (CPU, memory, what reaches the terminal).

``AppInTerminal`` starts ``llmtune`` on a pty of a given size, drains and keeps
everything the app writes (a terminal that stops reading would block it), sends
keys, and gives the app's pid for psutil.
"""

from __future__ import annotations

import fcntl
import os
import pty
import select
import signal
import struct
import sys
import termios
import threading
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
LLMTUNE = str(REPO / ".venv" / "bin" / "llmtune")


class AppInTerminal:
    def __init__(
        self,
        args: Sequence[str],
        *,
        columns: int = 120,
        rows: int = 40,
        env: dict[str, str] | None = None,
    ) -> None:
        self.args = [LLMTUNE, *args] if os.path.exists(LLMTUNE) else [
            sys.executable, "-m", "llmtune.cli", *args
        ]  # fmt: skip
        self.columns = columns
        self.rows = rows
        self.env = dict(os.environ if env is None else env)
        self.env.setdefault("TERM", "xterm-256color")
        self.env.setdefault("COLORTERM", "truecolor")
        self.output = bytearray()
        self.pid = 0
        self._master = -1
        self._stop = threading.Event()
        self._reader: threading.Thread | None = None
        self._lock = threading.Lock()

    def __enter__(self) -> AppInTerminal:
        pid, master = pty.fork()
        if pid == 0:  # the child: the app on the pty
            try:
                os.execve(self.args[0], self.args, self.env)
            finally:
                os._exit(127)
        self.pid, self._master = pid, master
        fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", self.rows, self.columns, 0, 0))
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()
        return self

    def _drain(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self._master], [], [], 0.1)
            if not ready:
                continue
            try:
                chunk = os.read(self._master, 65536)
            except OSError:
                return
            if not chunk:
                return
            with self._lock:
                self.output += chunk

    def send(self, keys: str) -> None:
        os.write(self._master, keys.encode())

    def wait_for(self, text: str, timeout_s: float = 60.0) -> bool:
        deadline = time.monotonic() + timeout_s
        needle = text.encode()
        while time.monotonic() < deadline:
            with self._lock:
                if needle in self.output:
                    return True
            time.sleep(0.1)
        return False

    def output_bytes(self) -> bytes:
        with self._lock:
            return bytes(self.output)

    def __exit__(self, *exc: object) -> None:
        try:
            self.send("q")
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                done, _ = os.waitpid(self.pid, os.WNOHANG)
                if done:
                    break
                time.sleep(0.1)
            else:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
        except (OSError, ChildProcessError):
            pass
        self._stop.set()
        if self._reader is not None:
            self._reader.join(timeout=2)
        try:
            os.close(self._master)
        except OSError:
            pass
