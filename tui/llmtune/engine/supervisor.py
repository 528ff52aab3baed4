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

A worker that stops answering (``kill -STOP``, a hang with the GIL held) never
closes its socket, so end of file would never come: a watchdog thread pings it
whenever it has been quiet for ``ping_interval_s``; the worker's reader thread
answers even while llama.cpp computes.
No answer within ``answer_timeout_s`` from a worker the kernel shows stopped
(state ``T`` in ``/proc/PID/stat``), or within ``hang_timeout_s`` from one that
is not, and the supervisor kills it and reports ``Failed(fatal=True)`` saying
so, then ``Exited``. A slow load or prompt decode answers the pings and is left
alone; a worker being traced (state ``t``: a debugger holds it) is never
killed. If the supervisor itself was suspended (Ctrl-Z of a whole job stops
the worker with it) the time it slept does not count against the worker.

If the parent dies the worker goes too: its socket reaches end of file, and on
Linux the parent-death signal is armed when the supervisor starts it from the
main thread.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import Connection

from llmtune.engine import require_llama_cpp
from llmtune.engine.config import RunConfig
from llmtune.engine.protocol import (
    Command,
    Event,
    Exited,
    Failed,
    Generate,
    Load,
    Ping,
    Pong,
    Quantize,
    Shutdown,
    Started,
    Stop,
    Unload,
)

log = logging.getLogger(__name__)

EventCallback = Callable[[Event], None]

PING_INTERVAL_S = 1.0  # quiet this long, and the worker is pinged
ANSWER_TIMEOUT_S = 0.5  # a stopped worker that has not answered for this long is dead
HANG_TIMEOUT_S = 10.0  # a running worker that has not answered for this long is hung
_LATE_S = 0.25  # a watchdog that wakes this much later than planned was itself suspended
_TICK_SLACK_S = 0.02  # so a timer that fires a hair early does not cost a whole tick


def process_state(pid: int) -> str | None:
    """The kernel's one-letter state of ``pid`` (``R``, ``S``, ``D``, ``T``, ``t``, ``Z``...), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:  # no such process, or no /proc (not Linux)
        return None
    fields = stat.rpartition(b")")[2].split()
    return fields[0].decode("ascii", "replace") if fields else None


class _Process:
    """One worker process, the two threads that read it and the one that watches it."""

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
        self.watchdog_thread: threading.Thread | None = None
        # Liveness, written by the reader thread and read by the watchdog.
        self.started = False  # the worker said Started: its reader thread runs
        self.last_event = time.monotonic()  # the last message other than a Pong
        self.pong_seq = 0
        self.hung_reason: str | None = None  # why the watchdog killed it


class Supervisor:
    """Owns at most one worker process at a time."""

    def __init__(
        self,
        on_event: EventCallback | None = None,
        *,
        log_lines: int = 200,
        python: str = sys.executable,
        env: dict[str, str] | None = None,
        ping_interval_s: float = PING_INTERVAL_S,
        answer_timeout_s: float = ANSWER_TIMEOUT_S,
        hang_timeout_s: float = HANG_TIMEOUT_S,
    ) -> None:
        self._on_event = on_event
        self._ping_interval_s = ping_interval_s
        self._answer_timeout_s = answer_timeout_s
        self._hang_timeout_s = hang_timeout_s
        self._events: queue.Queue[Event] = queue.Queue()
        self._log_lines = log_lines
        self._python = python
        self._env = env
        self._proc: _Process | None = None
        self._last: _Process | None = None  # the previous worker, for its log tail
        self._lock = threading.Lock()
        self._rpc_hosts: tuple[str, ...] = ()  # of the last load: named if one is lost

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
        """Start a worker (stopping any previous one) and return its pid.

        Raises EngineMissingError, before anything starts, without llama-cpp-python.
        """
        require_llama_cpp("running a model")
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
            proc.watchdog_thread = threading.Thread(
                target=self._watch, args=(proc,), name=f"worker-{proc.pid}-watch", daemon=True
            )
            self._proc = proc
            proc.stderr_thread.start()
            proc.reader_thread.start()
            proc.watchdog_thread.start()
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
        if process_state(proc.pid) == "T":
            # Stopped (kill -STOP): it cannot read the request, and the watchdog
            # stands down once an exit is expected; waiting would only delay the
            # user's quit or restart by the whole timeout.
            timeout_s = 0.0
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
        if config.extras.rpc_servers:
            self._rpc_hosts = config.extras.rpc_servers
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
            if isinstance(event, Pong):
                proc.pong_seq = max(proc.pong_seq, event.seq)
                continue
            proc.last_event = time.monotonic()
            if isinstance(event, Started):
                proc.started = True
            if isinstance(event, Failed) and event.fatal:
                failed = True
            self._emit(event)
        returncode = proc.popen.wait()  # reap: no zombie
        if proc.stderr_thread is not None:
            proc.stderr_thread.join(timeout=2.0)
        exited = Exited(returncode, proc.pid)
        if not proc.expected_exit and not failed:
            tail = tuple(list(proc.tail)[-20:])
            reason = proc.hung_reason or crash_reason(exited, tail)
            lost = lost_rpc_host(self._rpc_hosts)
            if lost is not None and not proc.hung_reason:
                reason = f"{lost}; {reason}"
            self._emit(Failed(reason, tail, fatal=True))
        proc.exited.set()
        self._emit(exited)

    def _watch(self, proc: _Process) -> None:
        """Ping a quiet worker; kill one that stops answering (see the module docstring).

        An unanswered ping ages only by the time this thread was awake to see
        it: a wake-up much later than planned means the supervisor itself was
        stopped or starved, and the ping is sent again. So is one sent before
        the worker's reader thread ran (before ``Started``).
        """
        interval = self._ping_interval_s
        check_s = min(interval, self._answer_timeout_s)
        seq = 0
        outstanding = sent_after_start = False
        sent_at = unanswered_s = 0.0
        sleep_s = interval
        while True:
            planned = time.monotonic() + sleep_s
            if proc.exited.wait(sleep_s) or proc.expected_exit:
                return
            now = time.monotonic()
            if outstanding and proc.pong_seq >= seq:
                outstanding = False
            if outstanding:
                stale = now - planned > _LATE_S or (proc.started and not sent_after_start)
                if not stale:
                    unanswered_s += now - planned + sleep_s
                    reason = self._unanswered(proc, unanswered_s)
                    if reason is not None:
                        self._kill_hung(proc, reason)
                        return
                    sleep_s = check_s
                    continue
            else:
                # Events show it is alive; pongs do not count, or idle pings would never stop.
                quiet_s = now - max(proc.last_event, sent_at)
                if quiet_s < interval - _TICK_SLACK_S:
                    sleep_s = interval - quiet_s
                    continue
            seq += 1
            outstanding, sent_after_start = True, proc.started
            sent_at, unanswered_s = now, 0.0
            if not self._send_to(proc, Ping(seq)):
                return  # the socket is closed: the reader sees end of file
            sleep_s = check_s

    def _unanswered(self, proc: _Process, unanswered_s: float) -> str | None:
        """Why a worker silent for ``unanswered_s`` is dead, or None while it may still answer."""
        state = process_state(proc.pid)
        if state == "t":
            return None  # a debugger holds it on purpose
        if state == "T":
            if unanswered_s < self._answer_timeout_s - _TICK_SLACK_S:
                return None
            return (
                "the llama.cpp worker stopped answering (it was stopped, as by kill -STOP, "
                f"and gave no answer for {unanswered_s:.1f} s); llmtune killed it"
            )
        if proc.started and unanswered_s >= self._hang_timeout_s - _TICK_SLACK_S:
            return (
                "the llama.cpp worker stopped answering (it is running but gave no answer "
                f"for {unanswered_s:.1f} s: hung); llmtune killed it"
            )
        return None

    def _kill_hung(self, proc: _Process, reason: str) -> None:
        """SIGKILL (it reaches a stopped process too); the reader then reaps and reports."""
        if proc.expected_exit:
            return
        proc.hung_reason = reason
        log.info("%s (pid %d)", reason, proc.pid)
        try:
            proc.popen.send_signal(signal.SIGKILL)  # nothing if it was reaped meanwhile
        except ProcessLookupError:
            pass


RPC_CHECK_TIMEOUT_S = 0.5  # per host, when a worker with RPC hosts died


def lost_rpc_host(endpoints: tuple[str, ...]) -> str | None:
    """Which RPC host went away, in words, when a worker that used them died:
    llama.cpp aborts the whole process when a host's connection breaks
    (ggml-rpc.cpp RPC_STATUS_ASSERT), and its log does not say which host.

    A TCP connect only (no HELLO): a live server queues it behind any client, a
    dead one refuses it, an unreachable one lets it time out."""
    for endpoint in endpoints:
        host, _, port = endpoint.rpartition(":")
        try:
            with socket.create_connection((host, int(port)), timeout=RPC_CHECK_TIMEOUT_S):
                pass
        except TimeoutError:
            return f"lost the RPC host {endpoint} (no answer within {RPC_CHECK_TIMEOUT_S:g} s)"
        except (OSError, ValueError) as exc:
            why = "connection refused" if isinstance(exc, ConnectionRefusedError) else str(exc)
            return f"lost the RPC host {endpoint} ({why})"
    return None


_CRASH_MARKERS = ("GGML_ASSERT", "GGML_ABORT", "terminate called", "what():", "error", "failed")
# ggml_abort prints the source file as compiled: a pip build directory, long and meaningless.
_BUILD_DIR_RE = re.compile(r"/\S*?/(?=(?:ggml|src|common|tools)/\S+:\d+:)")


def crash_reason(exited: Exited, tail: tuple[str, ...]) -> str:
    """Why the worker died, in one sentence, from its exit and its last lines."""
    why: list[str] = []
    for line in reversed(tail[-8:]):
        if any(marker in line for marker in _CRASH_MARKERS):
            why.insert(0, _BUILD_DIR_RE.sub("", line.strip()))
            if len(why) == 2:
                break
        elif why:
            break
    head = f"the llama.cpp worker died ({exited.describe})"
    if not why and exited.signal == signal.SIGKILL:
        # Nothing in llama.cpp's log: SIGKILL comes from outside, most often
        # the kernel when memory runs out.
        why.append("out of memory (the kernel's OOM killer), or another process killed it")
    return f"{head}: {' '.join(why)}" if why else head
