"""The parent side of the worker: start, command, watch, reap, restart.

``Supervisor`` runs ``python -m llmtune.engine.worker`` as a child process
with one end of a socket pair; a reader thread turns what arrives into events
and hands them to ``on_event`` (called on that thread: a UI posts a message
from it) or, without a callback, to a queue read with :meth:`next_event`.

A worker that dies (an abort in llama.cpp, the OOM killer, ``kill -9``) never
raises in the caller: the reader sees end of file, reaps the process, and
emits ``Failed(fatal=True)`` with llama.cpp's last log lines (read from the
worker's stderr by a second thread) when the death was not asked for, then
``Exited`` with the exit status or minus the signal.

If the parent dies the worker goes too: its socket reaches end of file, and on
Linux the parent-death signal is armed when the supervisor starts it from the
main thread.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import Connection

from llmtune.engine.config import RunConfig
from llmtune.engine.protocol import (
    Command,
    Event,
    Exited,
    Failed,
    Generate,
    Load,
    Quantize,
    Shutdown,
    Stop,
    Unload,
)

log = logging.getLogger(__name__)

EventCallback = Callable[[Event], None]


class _Process:
    """One worker process and the two threads that read it."""

    def __init__(self, popen: subprocess.Popen[bytes], conn: Connection, log_lines: int) -> None:
        self.popen = popen
        self.conn = conn
        self.pid = popen.pid
        self.tail: deque[str] = deque(maxlen=log_lines)
        self.send_lock = threading.Lock()
        self.expected_exit = False
        self.exited = threading.Event()
        self.stderr_thread: threading.Thread | None = None
        self.reader_thread: threading.Thread | None = None


class Supervisor:
    """Owns at most one worker process at a time."""

    def __init__(
        self,
        on_event: EventCallback | None = None,
        *,
        log_lines: int = 200,
        python: str = sys.executable,
        env: dict[str, str] | None = None,
    ) -> None:
        self._on_event = on_event
        self._events: queue.Queue[Event] = queue.Queue()
        self._log_lines = log_lines
        self._python = python
        self._env = env
        self._proc: _Process | None = None
        self._last: _Process | None = None  # the previous worker, for its log tail
        self._lock = threading.Lock()

    # ---- lifecycle --------------------------------------------------------
    @property
    def pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None else None

    @property
    def alive(self) -> bool:
        proc = self._proc
        return proc is not None and not proc.exited.is_set() and proc.popen.poll() is None

    def start(self) -> int:
        """Start a worker (stopping any previous one) and return its pid."""
        with self._lock:
            if self._proc is not None:
                self._stop_locked(timeout_s=2.0)
            parent_sock, child_sock = socket.socketpair()
            env = dict(os.environ if self._env is None else self._env)
            env["GGML_NO_BACKTRACE"] = "1"
            env.setdefault("PYTHONUNBUFFERED", "1")
            cmd = [self._python, "-m", "llmtune.engine.worker", "--fd", str(child_sock.fileno())]
            cmd += ["--parent", str(os.getpid())]
            # The parent-death signal follows the thread that forks: only the main thread lives long enough.
            if threading.current_thread() is threading.main_thread():
                cmd.append("--pdeathsig")
            try:
                popen = subprocess.Popen(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    pass_fds=(child_sock.fileno(),),
                    env=env,
                )
            finally:
                child_sock.close()
            conn = Connection(parent_sock.detach())
            proc = _Process(popen, conn, self._log_lines)
            proc.stderr_thread = threading.Thread(
                target=self._read_stderr, args=(proc,), name=f"worker-{proc.pid}-log", daemon=True
            )
            proc.reader_thread = threading.Thread(
                target=self._read_events, args=(proc,), name=f"worker-{proc.pid}", daemon=True
            )
            self._proc = proc
            proc.stderr_thread.start()
            proc.reader_thread.start()
            return proc.pid

    def restart(self) -> int:
        return self.start()

    def shutdown(self, timeout_s: float = 5.0) -> None:
        """Ask the worker to exit, then kill it if it does not; always reaps it."""
        with self._lock:
            self._stop_locked(timeout_s)

    close = shutdown

    def kill(self) -> None:
        """SIGKILL the worker (the caller then gets Exited(-9))."""
        proc = self._proc
        if proc is not None and proc.popen.poll() is None:
            try:
                os.kill(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def _stop_locked(self, timeout_s: float) -> None:
        proc = self._proc
        if proc is None:
            return
        proc.expected_exit = True
        self._send_to(proc, Shutdown())
        try:
            proc.popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.popen.kill()
            proc.popen.wait()
        # The reader thread emits Exited; wait for it so events stay in order.
        if proc.reader_thread is not None and proc.reader_thread is not threading.current_thread():
            proc.reader_thread.join(timeout=5.0)
        try:
            proc.conn.close()
        except OSError:
            pass
        if self._proc is proc:
            self._proc = None
        self._last = proc

    def __enter__(self) -> Supervisor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    # ---- commands ---------------------------------------------------------
    def send(self, command: Command) -> bool:
        """Send a command; False when there is no live worker (never raises)."""
        proc = self._proc
        if proc is None:
            return False
        return self._send_to(proc, command)

    def _send_to(self, proc: _Process, command: Command) -> bool:
        try:
            with proc.send_lock:
                proc.conn.send(command)
            return True
        except (OSError, ValueError):  # a dead worker or a closed socket
            return False

    def load(self, config: RunConfig) -> bool:
        return self.send(Load(config))

    def generate(self, prompt: str, max_tokens: int = 128, **sampling: object) -> bool:
        return self.send(Generate(prompt, max_tokens, **sampling))  # type: ignore[arg-type]

    def quantize(self, command: Quantize) -> bool:
        """Start llama.cpp's quantizer; events: QuantizeProgress..., then Quantized or Failed."""
        return self.send(command)

    def stop(self) -> bool:
        return self.send(Stop())

    def unload(self) -> bool:
        return self.send(Unload())

    # ---- events -----------------------------------------------------------
    def next_event(self, timeout_s: float | None = None) -> Event | None:
        """The next event when no callback was given; None after ``timeout_s``."""
        try:
            return self._events.get(timeout=timeout_s)
        except queue.Empty:
            return None

    def log_tail(self, lines: int = 20) -> tuple[str, ...]:
        """The (last) worker's last log lines: llama.cpp's log and anything on its stderr."""
        proc = self._proc or self._last
        if proc is None:
            return ()
        return tuple(list(proc.tail)[-lines:])

    def _emit(self, event: Event) -> None:
        if self._on_event is None:
            self._events.put(event)
            return
        try:
            self._on_event(event)
        except Exception:  # a broken callback must not kill the reader thread
            log.exception("worker event callback failed on %r", event)

    def _read_stderr(self, proc: _Process) -> None:
        stream = proc.popen.stderr
        if stream is None:
            return
        try:
            for raw in stream:
                proc.tail.append(raw.decode("utf-8", "replace").rstrip("\n"))
        except (OSError, ValueError):
            pass
        finally:
            stream.close()

    def _read_events(self, proc: _Process) -> None:
        failed = False
        while True:
            try:
                event = proc.conn.recv()
            except (EOFError, OSError, ValueError):
                break
            except Exception as exc:  # a frame that does not unpickle
                log.warning("unreadable message from the worker: %s", exc)
                continue
            if isinstance(event, Failed) and event.fatal:
                failed = True
            self._emit(event)
        returncode = proc.popen.wait()  # reap: no zombie
        if proc.stderr_thread is not None:
            proc.stderr_thread.join(timeout=2.0)
        exited = Exited(returncode, proc.pid)
        if not proc.expected_exit and not failed:
            tail = tuple(list(proc.tail)[-20:])
            self._emit(Failed(crash_reason(exited, tail), tail, fatal=True))
        proc.exited.set()
        self._emit(exited)


_CRASH_MARKERS = ("GGML_ASSERT", "GGML_ABORT", "terminate called", "what():", "error", "failed")


def crash_reason(exited: Exited, tail: tuple[str, ...]) -> str:
    """Why the worker died, in one sentence, from its exit and its last lines."""
    why: list[str] = []
    for line in reversed(tail[-8:]):
        if any(marker in line for marker in _CRASH_MARKERS):
            why.insert(0, line.strip())
            if len(why) == 2:
                break
        elif why:
            break
    head = f"the llama.cpp worker died ({exited.describe})"
    return f"{head}: {' '.join(why)}" if why else head
