"""Faults: the worker dies or fails, the caller gets events and carries on.

Real llama.cpp: the demo model, a synthetic model whose tensor shapes
contradict its metadata, and one whose vocabulary has no byte tokens (llama.cpp
then throws inside ``llama_tokenize`` and the C++ runtime aborts the process).
A worker stopped with SIGSTOP closes nothing: the supervisor's pings find it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from llmtune.engine import supervisor as supervisor_module
from llmtune.engine.config import RunConfig
from llmtune.engine.protocol import (
    Event,
    Exited,
    Failed,
    Loaded,
    Progress,
    Started,
    Stats,
    Token,
)
from llmtune.engine.supervisor import Supervisor
from synth import llama_like, write_bad_shapes
from worker_events import until as wait_for_events

TIMEOUT_S = 30.0


def until(sup: Supervisor, *kinds: type) -> list[Event]:
    return wait_for_events(sup, *kinds, timeout_s=TIMEOUT_S)


def demo_config(demo_model: Path, **changes: Any) -> RunConfig:
    return RunConfig.of(str(demo_model), n_ctx=1024, threads=2, **changes)


def is_gone(pid: int) -> bool:
    """No such process, or a zombie waiting for a reaper (it runs no more)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rpartition(")")[2].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


def assert_reaped(pid: int) -> None:
    """The supervisor waited for ``pid``: it is no child of ours any more, not even a zombie."""
    assert not os.path.exists(f"/proc/{pid}"), f"worker {pid} is still in the process table"
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def assert_works(sup: Supervisor, demo_model: Path) -> None:
    """A fresh worker loads the demo model and generates."""
    sup.start()
    sup.load(demo_config(demo_model))
    assert isinstance(until(sup, Loaded, Failed)[-1], Loaded)
    sup.generate("Hello", max_tokens=3, ignore_eos=True)
    stats = until(sup, Stats, Failed)[-1]
    assert isinstance(stats, Stats) and stats.n_gen == 3, stats


def killed_worker(sup: Supervisor, pid: int) -> Exited:
    events = until(sup, Exited)
    exited = events[-1]
    assert isinstance(exited, Exited)
    assert exited.pid == pid and exited.returncode == -signal.SIGKILL and exited.signal == 9
    failed = [e for e in events if isinstance(e, Failed)]
    assert failed and failed[-1].fatal and "SIGKILL" in failed[-1].reason
    assert not sup.alive
    assert_reaped(pid)
    return exited


def test_kill_9_while_loading(sup: Supervisor, demo_model: Path) -> None:
    pid = sup.start()
    sup.load(demo_config(demo_model, use_mmap=False))  # read, not mapped: the slower load
    until(sup, Progress)
    os.kill(pid, signal.SIGKILL)
    killed_worker(sup, pid)
    assert_works(sup, demo_model)


def test_kill_9_while_generating(sup: Supervisor, demo_model: Path) -> None:
    pid = sup.start()
    sup.load(demo_config(demo_model))
    assert isinstance(until(sup, Loaded, Failed)[-1], Loaded)
    sup.generate("Once upon a time", max_tokens=1000, ignore_eos=True)
    until(sup, Token)
    sup.kill()
    killed_worker(sup, pid)
    assert_works(sup, demo_model)


def test_contradicting_shapes_fail_with_llama_cpp_lines(
    sup: Supervisor, demo_model: Path, tmp_path: Path
) -> None:
    path = tmp_path / "bad-shapes.gguf"
    write_bad_shapes(path)
    sup.start()
    sup.load(RunConfig.of(str(path), n_ctx=256, threads=1))
    failed = until(sup, Failed, Loaded)[-1]
    assert isinstance(failed, Failed), failed
    assert not failed.fatal
    assert "wrong shape" in failed.reason and "token_embd.weight" in failed.reason
    assert any("wrong shape" in line for line in failed.log_tail), failed.log_tail
    # The same worker is still there and loads a good model.
    assert sup.alive
    sup.load(demo_config(demo_model))
    assert isinstance(until(sup, Loaded, Failed)[-1], Loaded)


def test_llama_cpp_abort_is_reported_and_survived(
    sup: Supervisor, demo_model: Path, tmp_path: Path
) -> None:
    path = tmp_path / "no-byte-tokens.gguf"
    llama_like(path, n_layer=1, n_embd=64, n_head=4, n_head_kv=2, n_ff=128, n_vocab=64)
    pid = sup.start()
    sup.load(RunConfig.of(str(path), n_ctx=256, threads=1))
    assert isinstance(until(sup, Loaded, Failed)[-1], Loaded)
    sup.generate("h\u00e9llo \u2603", max_tokens=4)  # no <0xC3> token: std::out_of_range
    events = until(sup, Exited)
    exited = events[-1]
    assert isinstance(exited, Exited) and exited.returncode == -signal.SIGABRT
    failed = [e for e in events if isinstance(e, Failed)]
    assert len(failed) == 1 and failed[0].fatal
    assert "SIGABRT" in failed[0].reason and "out_of_range" in failed[0].reason
    assert any("terminate called" in line for line in failed[0].log_tail), failed[0].log_tail
    assert_reaped(pid)
    assert_works(sup, demo_model)


def test_ggml_assert_is_reported_by_its_condition(
    sup: Supervisor, demo_model: Path, tmp_path: Path
) -> None:
    """A head size of 15: llama.cpp loads the model, then the CPU rope asserts an
    even dimension at the first decode and aborts the worker."""
    path = tmp_path / "head-15.gguf"
    llama_like(
        path, n_layer=1, n_embd=60, n_head=4, n_head_kv=4, n_ff=128, n_vocab=300, byte_tokens=True
    )
    pid = sup.start()
    sup.load(RunConfig.of(str(path), n_ctx=256, threads=1))
    assert isinstance(until(sup, Loaded, Failed)[-1], Loaded)
    sup.generate("hello", max_tokens=4)
    events = until(sup, Exited)
    assert isinstance(events[-1], Exited) and events[-1].returncode == -signal.SIGABRT
    failed = [e for e in events if isinstance(e, Failed)]
    assert len(failed) == 1 and failed[0].fatal
    # The condition and llama.cpp's own source file, not the directory it was built in.
    assert "ggml/src/ggml-cpu/ops.cpp" in failed[0].reason, failed[0].reason
    assert "GGML_ASSERT(n_dims % 2 == 0) failed" in failed[0].reason
    assert "pip-install" not in failed[0].reason and "/vendor/" not in failed[0].reason
    assert_reaped(pid)
    assert_works(sup, demo_model)


def test_out_of_memory_names_the_buffer(sup: Supervisor, demo_model: Path) -> None:
    """An address-space limit 64 MiB above what the worker uses once the model
    is loaded: the 720 MiB KV cache of a 32k context cannot be allocated."""
    sup.start()
    sup.load(
        RunConfig.of(
            str(demo_model),
            n_ctx=32768,
            threads=2,
            oom_headroom_bytes=64 << 20,
            oom_stage="context",
        )
    )
    failed = until(sup, Failed, Loaded)[-1]
    assert isinstance(failed, Failed), failed
    assert failed.reason.startswith("out of memory") and "KV buffer" in failed.reason, failed
    assert any("failed to allocate" in line for line in failed.log_tail)
    # The limit was the test's only: the same worker loads the model afterwards.
    assert sup.alive
    sup.load(demo_config(demo_model))
    assert isinstance(until(sup, Loaded, Failed)[-1], Loaded)


def test_out_of_memory_while_loading_names_the_buffer(sup: Supervisor, demo_model: Path) -> None:
    sup.start()
    sup.load(
        RunConfig.of(
            str(demo_model),
            use_mmap=False,
            threads=2,
            oom_headroom_bytes=32 << 20,
            oom_stage="load",
        )
    )
    failed = until(sup, Failed, Loaded)[-1]
    assert isinstance(failed, Failed), failed
    assert "out of memory" in failed.reason and "CPU buffer" in failed.reason, failed


def test_out_of_memory_before_any_buffer_says_out_of_memory(
    sup: Supervisor, demo_model: Path
) -> None:
    """1 MiB of room: llama.cpp runs out while it reads the vocabulary from the
    header, long before it sizes a buffer, and says only std::bad_alloc."""
    sup.start()
    sup.load(RunConfig.of(str(demo_model), threads=2, oom_headroom_bytes=1 << 20, oom_stage="load"))
    failed = until(sup, Failed, Loaded)[-1]
    assert isinstance(failed, Failed), failed
    assert failed.reason.startswith("out of memory: llama.cpp could not load the model"), failed
    assert "tokenizer.ggml.tokens" in failed.reason, failed.reason
    assert sup.alive


_PARENT = textwrap.dedent(
    """
    import sys, threading, time
    from llmtune.engine.config import RunConfig
    from llmtune.engine.protocol import Token
    from llmtune.engine.supervisor import Supervisor

    sup = Supervisor()
    if sys.argv[2] == "thread":  # the parent-death signal is not armed: end of file must do
        t = threading.Thread(target=sup.start)
        t.start(); t.join()
    else:
        sup.start()
    sup.load(RunConfig.of(sys.argv[1], n_ctx=1024, threads=2))
    sup.generate("Once upon a time", max_tokens=100000, ignore_eos=True)
    while not isinstance(sup.next_event(30), Token):
        pass
    print(sup.pid, flush=True)
    time.sleep(60)
    """
)


@pytest.mark.parametrize("started_from", ["main", "thread"])
def test_worker_dies_with_its_parent(demo_model: Path, started_from: str) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", _PARENT, str(demo_model), started_from],
        stdout=subprocess.PIPE,
        text=True,
    )
    worker_pid = 0
    try:
        assert parent.stdout is not None
        worker_pid = int(parent.stdout.readline())  # the worker is generating now
        assert not is_gone(worker_pid)
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 2.0
        while not is_gone(worker_pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert is_gone(worker_pid), f"worker {worker_pid} outlived its parent by 2 s"
    finally:
        parent.kill()
        parent.wait()
        if worker_pid and not is_gone(worker_pid):
            os.kill(worker_pid, signal.SIGKILL)


def stopped_worker(sup: Supervisor, pid: int, why: str) -> Failed:
    """After a SIGSTOP: Failed saying why, then Exited(-9), and the process reaped."""
    events = until(sup, Exited)
    exited = events[-1]
    assert isinstance(exited, Exited) and exited.pid == pid
    assert exited.returncode == -signal.SIGKILL
    failed = [e for e in events if isinstance(e, Failed)]
    assert len(failed) == 1 and failed[0].fatal, events
    assert failed[0].reason.startswith("the llama.cpp worker stopped answering"), failed[0]
    assert why in failed[0].reason, failed[0].reason
    assert not sup.alive
    assert_reaped(pid)
    return failed[0]


def test_stopped_worker_is_reported_killed_and_replaced(sup: Supervisor, demo_model: Path) -> None:
    pid = sup.start()
    sup.load(demo_config(demo_model))
    assert isinstance(until(sup, Loaded, Failed)[-1], Loaded)
    sup.generate("Once upon a time", max_tokens=100000, ignore_eos=True)
    until(sup, Token)
    os.kill(pid, signal.SIGSTOP)  # its socket stays open: no end of file will come
    stopped_worker(sup, pid, "kill -STOP")
    assert_works(sup, demo_model)


def test_shutting_down_a_stopped_worker_does_not_wait_out_its_timeout(
    sup: Supervisor, demo_model: Path
) -> None:
    """Quit or restart right after a kill -STOP, before the watchdog acts: the
    stopped worker cannot read the request, so it is killed at once instead of
    after the hour the call allows (a minute without returning is a hang)."""
    pid = sup.start()
    sup.load(demo_config(demo_model))
    assert isinstance(until(sup, Loaded, Failed)[-1], Loaded)
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + 10.0
    while supervisor_module.process_state(pid) != "T" and time.monotonic() < deadline:
        time.sleep(0.01)
    quitting = threading.Thread(target=sup.shutdown, kwargs={"timeout_s": 3600.0}, daemon=True)
    quitting.start()
    quitting.join(60.0)
    hung = quitting.is_alive()
    if hung:
        os.kill(pid, signal.SIGKILL)  # let the call return before failing
        quitting.join()
    assert not hung, "shutdown waited on a stopped worker"
    assert not sup.alive
    assert_reaped(pid)


# About 400 tokens: a second or more of llama_decode on two threads, with no event on the way.
LONG_PROMPT = " ".join(f"item{i}" for i in range(120))


def test_busy_worker_answers_while_a_stopped_one_does_not(demo_model: Path) -> None:
    """A hang timeout shorter than the prompt decode: only the reader thread's
    answers, given while llama.cpp computes without the GIL, keep it alive."""
    ping_interval_s, hang_timeout_s = 0.1, 0.3
    sup = Supervisor(ping_interval_s=ping_interval_s, hang_timeout_s=hang_timeout_s)
    try:
        pid = sup.start()
        sup.load(RunConfig.of(str(demo_model), n_ctx=2048, threads=2))
        assert isinstance(until(sup, Loaded, Failed)[-1], Loaded)
        sup.generate(LONG_PROMPT, max_tokens=1, ignore_eos=True)
        stats = until(sup, Stats, Failed, Exited)[-1]
        assert isinstance(stats, Stats), stats
        # The decode outlasted a ping and its hang timeout (several, in practice).
        assert stats.prompt_s > ping_interval_s + hang_timeout_s, stats
        assert sup.alive and sup.pid == pid
        os.kill(pid, signal.SIGSTOP)  # idle, loaded, then stopped
        stopped_worker(sup, pid, "kill -STOP")
    finally:
        sup.shutdown()


def test_silent_worker_that_is_not_stopped_is_ended_as_hung(
    demo_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker that runs but answers nothing (its reader thread starved of the
    GIL, say) goes after the hang timeout. SIGSTOP makes it silent; the kernel's
    view of it is hidden, so only the hang rule can catch it."""
    monkeypatch.setattr(supervisor_module, "process_state", lambda pid: "S")
    sup = Supervisor(hang_timeout_s=1.0)
    try:
        pid = sup.start()
        assert isinstance(until(sup, Started)[-1], Started)
        os.kill(pid, signal.SIGSTOP)
        stopped_worker(sup, pid, "hung")
    finally:
        sup.shutdown()


_SUSPENDED_JOB = textwrap.dedent(
    """
    import os, signal, sys
    from llmtune.engine.config import RunConfig
    from llmtune.engine.protocol import Exited, Failed, Loaded, Stats
    from llmtune.engine.supervisor import Supervisor

    def until(*kinds):
        while True:
            event = sup.next_event(30)
            if event is None or isinstance(event, kinds):
                return event

    sup = Supervisor(ping_interval_s=0.2, answer_timeout_s=1.0, hang_timeout_s=1.0)
    sup.start()
    sup.load(RunConfig.of(sys.argv[1], n_ctx=1024, threads=2))
    until(Loaded, Failed, Exited)
    print(sup.pid, flush=True)
    sys.stdin.readline()  # the test stopped and continued this whole job meanwhile
    sup.generate("Hello", max_tokens=3, ignore_eos=True)
    print(type(until(Stats, Failed, Exited)).__name__, flush=True)
    os.kill(sup.pid, signal.SIGSTOP)  # now the worker alone
    event = until(Failed, Exited)
    print(event.reason if isinstance(event, Failed) else event, flush=True)
    sup.shutdown()
    """
)


def test_suspended_job_is_not_a_dead_worker(demo_model: Path) -> None:
    """Ctrl-Z of `llmtune bench` in a shell stops the supervisor and its worker
    together, maybe with a ping on its way; the time the supervisor was stopped
    does not count against the worker, which carries on after `fg`, even when
    it resumes a moment after its supervisor. A worker stopped alone is caught."""
    job = subprocess.Popen(
        [sys.executable, "-c", _SUSPENDED_JOB, str(demo_model)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a shell job has
    )
    try:
        assert job.stdin is not None and job.stdout is not None
        worker_pid = int(job.stdout.readline())
        # The worker first, so that a ping is surely out when the job stops
        # (pings every 0.2 s; the job ends a worker stopped for 1 s of its time).
        os.kill(worker_pid, signal.SIGSTOP)
        time.sleep(0.5)
        os.killpg(job.pid, signal.SIGSTOP)
        time.sleep(1.0)
        os.kill(job.pid, signal.SIGCONT)
        time.sleep(0.3)
        with contextlib.suppress(ProcessLookupError):  # gone if it was taken for dead
            os.kill(worker_pid, signal.SIGCONT)
        job.stdin.write("go\n")
        job.stdin.flush()
        assert job.stdout.readline() == "Stats\n"
        assert job.stdout.readline().startswith("the llama.cpp worker stopped answering")
        assert job.wait(timeout=TIMEOUT_S) == 0
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait()
