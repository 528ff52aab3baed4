"""Worker faults: the llama.cpp worker killed, aborted, out of memory or stopped.

Every case runs a real worker (``Supervisor`` and ``python -m
llmtune.engine.worker``) and checks what the app's user would see:

- ``kill -9`` at seeded random moments: at load start, mid-load (a read, not
  mapped, load), during context creation (a 16k context: its KV cache is
  allocated and cleared), during a prompt decode, mid-generation, idle, and
  while the worker starts up;
- SIGSTOP at the same moments: a worker that stops answering and keeps its
  socket open, which only the supervisor's pings can find;
- llama.cpp aborting on a model it accepted: a vocabulary without byte tokens
  (``std::out_of_range`` escapes ``llama_tokenize``) and a head size of 15
  (``GGML_ASSERT(n_dims % 2 == 0)`` in the CPU rope at the first decode); and a
  file whose tensor shapes contradict its metadata, which llama.cpp refuses;
- out of memory under an address-space limit (``RunConfig.oom_headroom_bytes``)
  at three sizes of room, while loading and while creating the context.

A death must be reported in words (``Failed(fatal=True)`` with a readable
reason, then ``Exited``) within 2 s of the fault, the process reaped, and a
new worker must load and generate; a refusal (``Failed``, not fatal) must leave
the same worker able to load and generate. After every case: no child process
left, no zombie, no supervisor thread.
"""

from __future__ import annotations

import os
import queue
import random
import signal
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from llmtune.engine.config import RunConfig
from llmtune.engine.protocol import (
    Event,
    Exited,
    Failed,
    Generate,
    Load,
    Loaded,
    Progress,
    Started,
    Stats,
    Token,
)
from llmtune.engine.supervisor import Supervisor
from reliability import Section

SEED = 20261202
KILLS_PER_PHASE = 4
STOPS_PER_PHASE = 2
STARTUP_FAULTS = 2
DETECT_TARGET_S = 2.0
EVENT_TIMEOUT_S = 60.0
PHASES = ("load start", "mid-load", "context creation", "prompt decode", "mid-generation", "idle")
# About 400 tokens: a second or more of prompt decode on two threads.
LONG_PROMPT = " ".join(f"item{i}" for i in range(120))
BIG_CTX = 16384
OOM_CASES = (
    ("load", 1),
    ("load", 16),
    ("load", 64),
    ("context", 1),
    ("context", 16),
    ("context", 64),
)


def demo_model() -> str:
    from llmtune.model.demo import fetch_demo_model

    return str(fetch_demo_model())


class Run:
    """One supervisor whose events are stamped with ``time.monotonic()`` as they arrive."""

    def __init__(self) -> None:
        self.inbox: queue.Queue[tuple[float, Event]] = queue.Queue()
        self.sup = Supervisor(lambda event: self.inbox.put((time.monotonic(), event)))
        self.seen: list[tuple[float, Event | Load | Generate]] = []  # commands too, in order
        self.pid = 0

    def start(self) -> int:
        self.pid = self.sup.start()
        return self.pid

    def until(self, *kinds: type, timeout_s: float = EVENT_TIMEOUT_S) -> tuple[float, Event]:
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                names = ", ".join(k.__name__ for k in kinds)
                raise TimeoutError(f"no {names} within {timeout_s:.0f} s")
            try:
                stamped = self.inbox.get(timeout=left)
            except queue.Empty:
                continue
            self.seen.append(stamped)
            if isinstance(stamped[1], kinds):
                return stamped

    def command(self, command: Load | Generate) -> None:
        self.seen.append((time.monotonic(), command))
        self.sup.send(command)

    def loaded(self, config: RunConfig) -> Loaded:
        self.command(Load(config))
        event = self.until(Loaded, Failed, Exited)[1]
        if not isinstance(event, Loaded):
            raise RuntimeError(f"the demo model did not load: {event}")
        return event

    def generates(self) -> bool:
        """Three tokens from the loaded model."""
        self.command(Generate("Hello", 3, ignore_eos=True))
        event = self.until(Stats, Failed, Exited)[1]
        return isinstance(event, Stats) and event.n_gen == 3


@dataclass
class Outcome:
    kind: str
    phase: str
    detect_s: float | None = None  # fault to Exited (deaths) or command to Failed (refusals)
    reason: str = ""
    phase_reached: str = ""
    problems: list[str] = field(default_factory=list)

    @property
    def survived(self) -> bool:
        return not self.problems


@dataclass(frozen=True)
class Timing:
    load_s: float  # not mapped
    context_s: float  # BIG_CTX
    prompt_s: float  # LONG_PROMPT


def readable(reason: str) -> bool:
    """One printable line a user can read: no control characters, not a dump."""
    return 10 <= len(reason) <= 600 and reason.isprintable()


def phase_reached(seen: list[tuple[float, Event | Load | Generate]]) -> str:
    """Where the worker was when it died, from what it had sent (all sent before the fault)."""
    kinds = [type(e) for _, e in seen if not (isinstance(e, Failed) and e.fatal)]
    kinds = [k for k in kinds if k is not Exited]
    if Generate in kinds:
        after = kinds[len(kinds) - 1 - kinds[::-1].index(Generate) :]
        if Stats in after:
            return "after generation"
        return "mid-generation" if Token in after else "prompt decode"
    if Load in kinds:
        after = kinds[kinds.index(Load) :]
        if Loaded in after:
            return "idle"
        progress = [e.fraction for _, e in seen if isinstance(e, Progress)]
        if progress and progress[-1] >= 1.0:
            return "context creation"
        return "mid-load" if progress else "load start"
    return "start-up" if Started not in kinds else "idle"


def leftovers(baseline: set[int]) -> list[str]:
    """Child processes (zombies included) and supervisor threads still there."""
    left: list[str] = []
    deadline = time.monotonic() + 2.0
    while True:
        children = [p for p in psutil.Process().children(recursive=True) if p.pid not in baseline]
        threads = [t.name for t in threading.enumerate() if t.name.startswith("worker-")]
        if (not children and not threads) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    for child in children:
        try:
            left.append(f"process {child.pid} ({child.status()})")
            child.kill()
        except psutil.Error:
            pass
    left += [f"thread {name}" for name in threads]
    return left


def check_death(run: Run, outcome: Outcome, t_fault: float, signal_: int, says: str) -> None:
    """Failed(fatal) in words, then Exited with ``signal_``, within the target; reaped."""
    try:
        t_exit, exited = run.until(Exited, timeout_s=30.0)
    except TimeoutError as exc:
        outcome.problems.append(f"never reported: {exc}")
        run.sup.kill()
        return
    outcome.detect_s = t_exit - t_fault
    outcome.phase_reached = phase_reached(run.seen)
    fatal = [e for _, e in run.seen if isinstance(e, Failed) and e.fatal]
    assert isinstance(exited, Exited)
    if len(fatal) != 1:
        outcome.problems.append(f"{len(fatal)} fatal Failed events")
    else:
        outcome.reason = fatal[0].reason
        if not readable(outcome.reason) or says not in outcome.reason:
            outcome.problems.append(f"reason not as expected: {outcome.reason!r}")
    if exited.returncode != -signal_:
        outcome.problems.append(f"Exited {exited.describe}, not {signal.Signals(signal_).name}")
    if outcome.detect_s > DETECT_TARGET_S:
        outcome.problems.append(f"reported after {outcome.detect_s:.2f} s")
    if os.path.exists(f"/proc/{exited.pid}"):
        outcome.problems.append(f"pid {exited.pid} still in the process table")
    if run.sup.alive:
        outcome.problems.append("the supervisor says the worker is alive")


def check_restart(run: Run, model: str, outcome: Outcome) -> None:
    try:
        run.start()
        run.until(Started, timeout_s=30.0)
        run.loaded(RunConfig.of(model, n_ctx=1024, threads=2))
        if not run.generates():
            outcome.problems.append("the new worker did not generate")
    except (TimeoutError, RuntimeError) as exc:
        outcome.problems.append(f"the new worker failed: {exc}")


def finish(run: Run, outcome: Outcome, baseline: set[int]) -> Outcome:
    run.sup.shutdown(timeout_s=5.0)
    left = leftovers(baseline)
    if left:
        outcome.problems.append("left behind: " + ", ".join(left))
    return outcome


def reach(run: Run, phase: str, model: str, rng: random.Random, timing: Timing) -> None:
    """Start a worker and take it into ``phase``, a seeded random time in."""
    run.start()
    if phase == "start-up":
        time.sleep(rng.uniform(0.0, 0.3))  # Python and llama.cpp are still loading
        return
    run.until(Started)
    small = RunConfig.of(model, n_ctx=1024, threads=2)
    if phase == "load start":
        run.command(Load(RunConfig.of(model, n_ctx=1024, threads=2, use_mmap=False)))
        time.sleep(rng.uniform(0.0, 0.01))
    elif phase == "mid-load":
        target = rng.uniform(0.05, 0.9)
        run.command(Load(RunConfig.of(model, n_ctx=1024, threads=2, use_mmap=False)))
        while True:
            event = run.until(Progress, Loaded, Failed)[1]
            if not isinstance(event, Progress) or event.fraction >= target:
                break
    elif phase == "context creation":
        run.command(Load(RunConfig.of(model, n_ctx=BIG_CTX, threads=2)))
        while True:
            event = run.until(Progress, Loaded, Failed)[1]
            if not isinstance(event, Progress) or event.fraction >= 1.0:
                break
        time.sleep(rng.uniform(0.0, 0.8 * timing.context_s))
    elif phase == "prompt decode":
        run.loaded(RunConfig.of(model, n_ctx=2048, threads=2))
        run.command(Generate(LONG_PROMPT, 1, ignore_eos=True))
        time.sleep(rng.uniform(0.05, 0.8 * timing.prompt_s))
    elif phase == "mid-generation":
        run.loaded(small)
        run.command(Generate("Once upon a time", 100_000, ignore_eos=True))
        run.until(Token)
        time.sleep(rng.uniform(0.0, 1.0))
    elif phase == "idle":
        run.loaded(small)
        time.sleep(rng.uniform(0.0, 1.5))
    else:
        raise ValueError(phase)


def signal_case(
    kind: str,
    sig: int,
    says: str,
    phase: str,
    model: str,
    rng: random.Random,
    timing: Timing,
    baseline: set[int],
) -> Outcome:
    outcome = Outcome(kind, phase)
    run = Run()
    try:
        reach(run, phase, model, rng, timing)
        t_fault = time.monotonic()
        os.kill(run.pid, sig)
        check_death(run, outcome, t_fault, signal.SIGKILL, says)
        check_restart(run, model, outcome)
    except Exception as exc:  # a case that breaks is a case not survived
        outcome.problems.append(f"{type(exc).__name__}: {exc}")
    return finish(run, outcome, baseline)


def abort_case(
    name: str, path: Path, prompt: str, says: str, model: str, baseline: set[int]
) -> Outcome:
    """A model llama.cpp loads and then aborts on, at the first prompt."""
    outcome = Outcome("abort", name)
    run = Run()
    try:
        run.start()
        run.loaded(RunConfig.of(str(path), n_ctx=256, threads=1))
        t_fault = time.monotonic()
        run.command(Generate(prompt, 4))
        check_death(run, outcome, t_fault, signal.SIGABRT, says)
        check_restart(run, model, outcome)
    except Exception as exc:
        outcome.problems.append(f"{type(exc).__name__}: {exc}")
    return finish(run, outcome, baseline)


def refusal_case(
    kind: str, name: str, config: RunConfig, says: str, model: str, baseline: set[int]
) -> Outcome:
    """A load llama.cpp refuses in words; the same worker then loads the demo model."""
    outcome = Outcome(kind, name)
    run = Run()
    try:
        run.start()
        run.until(Started)
        t_command = time.monotonic()
        run.command(Load(config))
        t_failed, failed = run.until(Failed, Loaded, Exited)
        if not isinstance(failed, Failed):
            outcome.problems.append(f"not refused: {type(failed).__name__}")
        else:
            outcome.detect_s = t_failed - t_command
            outcome.reason = failed.reason
            if failed.fatal:
                outcome.problems.append("the worker died")
            if not readable(failed.reason) or says not in failed.reason:
                outcome.problems.append(f"reason not as expected: {failed.reason!r}")
            if outcome.detect_s > DETECT_TARGET_S:
                outcome.problems.append(f"reported after {outcome.detect_s:.2f} s")
        if run.sup.alive:  # the same worker carries on
            run.loaded(RunConfig.of(model, n_ctx=1024, threads=2))
            if not run.generates():
                outcome.problems.append("the worker did not generate afterwards")
        else:
            outcome.problems.append("the worker is gone")
    except Exception as exc:
        outcome.problems.append(f"{type(exc).__name__}: {exc}")
    return finish(run, outcome, baseline)


def write_models(folder: Path) -> dict[str, Path]:
    from synth import llama_like, write_bad_shapes

    paths = {name: folder / f"{name}.gguf" for name in ("no-bytes", "head-15", "shapes")}
    llama_like(paths["no-bytes"], n_layer=1, n_embd=64, n_head=4, n_head_kv=2, n_ff=128, n_vocab=64)

    # Byte tokens, so any prompt tokenizes; 60 / 4 heads = 15, an odd rope dimension.
    llama_like(
        paths["head-15"],
        n_layer=1,
        n_embd=60,
        n_head=4,
        n_head_kv=4,
        n_ff=128,
        n_vocab=300,
        byte_tokens=True,
    )

    write_bad_shapes(paths["shapes"])  # the metadata says 128 wide; token_embd is 64
    return paths


def calibrate(model: str) -> Timing:
    """How long each phase lasts on this machine, so the random moments fall inside it."""
    run = Run()
    try:
        run.start()
        run.until(Started)
        slow = run.loaded(RunConfig.of(model, n_ctx=1024, threads=2, use_mmap=False))
        big = run.loaded(RunConfig.of(model, n_ctx=BIG_CTX, threads=2))
        run.loaded(RunConfig.of(model, n_ctx=2048, threads=2))
        run.command(Generate(LONG_PROMPT, 1, ignore_eos=True))
        stats = run.until(Stats, Failed, Exited)[1]
        if not isinstance(stats, Stats):
            raise RuntimeError(f"calibration: {stats}")
        return Timing(slow.load_s, big.context_s, stats.prompt_s)
    finally:
        run.sup.shutdown()


def summarize(outcomes: list[Outcome]) -> tuple[int, str]:
    """How many survived, and the detection times in words."""
    times = [o.detect_s for o in outcomes if o.detect_s is not None]
    survived = sum(o.survived for o in outcomes)
    if not times:
        return survived, "no time measured"
    worst, median = max(times), statistics.median(times)
    fmt: Callable[[float], str] = (
        (lambda s: f"{s * 1000:.0f} ms") if worst < 1.0 else (lambda s: f"{s:.2f} s")
    )
    return survived, f"reported in worst {fmt(worst)} (median {fmt(median)})"


def run() -> Section:
    section = Section("worker faults")
    baseline = {p.pid for p in psutil.Process().children(recursive=True)}
    model = demo_model()
    rng = random.Random(SEED)
    timing = calibrate(model)
    section.notes.append(
        f"phases on this machine: load (read, not mapped) {timing.load_s:.2f} s, "
        f"context creation at n_ctx {BIG_CTX} {timing.context_s:.2f} s, "
        f"prompt decode of LONG_PROMPT {timing.prompt_s:.2f} s; seed {SEED}"
    )

    plan = [p for p in PHASES for _ in range(KILLS_PER_PHASE)] + ["start-up"] * STARTUP_FAULTS
    kills = [
        signal_case("kill -9", signal.SIGKILL, "killed by SIGKILL", p, model, rng, timing, baseline)
        for p in plan
    ]
    plan = [p for p in PHASES for _ in range(STOPS_PER_PHASE)] + ["start-up"] * STARTUP_FAULTS
    says = "the llama.cpp worker stopped answering"
    stops = [
        signal_case("SIGSTOP", signal.SIGSTOP, says, p, model, rng, timing, baseline) for p in plan
    ]
    with tempfile.TemporaryDirectory(prefix="llmtune-worker-faults-") as tmp:
        paths = write_models(Path(tmp))
        aborts = [
            abort_case(
                "vocabulary without byte tokens",
                paths["no-bytes"],
                "h\u00e9llo \u2603",
                "out_of_range",
                model,
                baseline,
            ),
            abort_case(
                "head size 15",
                paths["head-15"],
                "hello",
                "GGML_ASSERT(n_dims % 2 == 0)",
                model,
                baseline,
            ),
        ]
        refused = refusal_case(
            "bad file",
            "tensor shapes contradict the metadata",
            RunConfig.of(str(paths["shapes"]), n_ctx=256, threads=1),
            "wrong shape",
            model,
            baseline,
        )
    ooms = [
        refusal_case(
            "out of memory",
            f"{stage}, {room} MiB of room",
            RunConfig.of(
                model,
                n_ctx=32768 if stage == "context" else 1024,
                threads=2,
                use_mmap=stage == "context",
                oom_headroom_bytes=room << 20,
                oom_stage=stage,
            ),
            "out of memory",
            model,
            baseline,
        )
        for stage, room in OOM_CASES
    ]

    target = f"all survived, each reported < {DETECT_TARGET_S:g} s"
    for label, outcomes in (
        (f"kill -9 at seeded random moments ({len(kills)})", kills),
        (f"SIGSTOP: a worker that stops answering ({len(stops)})", stops),
        (f"llama.cpp aborts ({len(aborts)})", aborts),
        (f"out of memory under an address-space limit ({len(ooms)})", ooms),
        ("a file llama.cpp refuses (1)", [refused]),
    ):
        survived, times = summarize(outcomes)
        section.add(
            label,
            f"{survived} of {len(outcomes)} survived; {times}",
            target,
            survived == len(outcomes),
        )
    every = kills + stops + aborts + ooms + [refused]
    left = [p for o in every for p in o.problems if p.startswith("left behind")]
    section.add(
        "left behind after each case: processes, zombies, threads",
        f"{len(left)} cases left something" if left else "nothing",
        "nothing",
        not left,
    )
    deaths = [o.detect_s for o in kills + stops + aborts if o.detect_s is not None]
    survived = sum(o.survived for o in every)
    section.add(
        f"all {len(every)} faults",
        f"{survived} survived; worst report of a death {max(deaths, default=0.0):.2f} s",
        target,
        survived == len(every),
    )
    hit = sum(o.phase_reached == o.phase for o in kills + stops)
    section.notes.append(
        f"kill -9: {KILLS_PER_PHASE} and SIGSTOP: {STOPS_PER_PHASE} at each of "
        f"{', '.join(PHASES)}, and {STARTUP_FAULTS} each at start-up; "
        f"{hit} of {len(kills + stops)} struck where aimed (judged by the events sent before)"
    )
    section.notes.append("aborts: " + "; ".join(o.phase for o in aborts))
    section.notes.append("out of memory: " + "; ".join(o.phase for o in ooms))
    reasons: dict[str, int] = {}
    for o in every:
        key = f"{o.kind}: {o.reason or '-'}"
        reasons[key] = reasons.get(key, 0) + 1
    for key, count in reasons.items():
        section.notes.append(f"{key}" + (f" (x{count})" if count > 1 else ""))
    for o in every:
        for problem in o.problems:
            section.notes.append(f"NOT SURVIVED: {o.kind} / {o.phase}: {problem}")
    return section
