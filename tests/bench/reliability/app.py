"""Malformed model files through the app's open path: no input may end the app.

The inputs are the malformed-file corpus of ``reliability/files.py`` (cut
headers, bit flips, huge fields, retyped values, nested arrays, dense headers,
split sets), a deterministic sample spread over every family, after the
crafted file that once ended the app (``synth.write_phantom_layer``: it opens,
and its quantization warm-up raises). One pilot
session of the app, started on the demo model, opens each with
``app.open_model`` as the picker does, then waits for every thread the open
started (the quantization warm-up, the sibling search, the quantization
table) to finish. Outcomes per input: opened (the app shows it), refused (a
one-line error toast), or silent (neither: a fault). Across the run: app exits
(the app stopped running), tracebacks (an exception that reached Textual, a
thread's uncaught exception, an unraisable one), background failures (a
worker's exception turned into a sentence by the app's error boundary; those
that are not llmtune's own errors are listed).

The suite runs a 500-input sample, without the headers at the reader's limits
(tests/ui/test_app_open_corpus.py); ``reliability_report.py --only app`` runs
5,000 with them.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reliability import Section

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # tests/: synth
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "ui"))  # ui_support

BENCH_INPUTS = 5000
SUITE_INPUTS = 500
# Headers at the reader's limits (65,536 entries, 100,000 tensors) open, and then
# the quantization threads plan 100,000 tensors at every file type for 10-15 s
# each: the report runs them, the suite's sample leaves them out.
HEAVY = ("dense headers at and past the limits",)
PHANTOM = "crafted: a tensor named for a layer the model does not have"
SETTLE_TIMEOUT_S = 60.0  # an input whose threads run longer than this is a hang


@dataclass
class Opened:
    """What the app made of the inputs it was given."""

    inputs: int = 0
    opened: int = 0
    refused: int = 0  # a one-line error notice
    silent: list[str] = field(default_factory=list)  # neither opened nor a notice
    multi_line: list[str] = field(default_factory=list)  # a notice on more than one line
    background: list[str] = field(default_factory=list)  # the boundary's sentences
    foreign: list[str] = field(default_factory=list)  # ... of errors not llmtune's own
    hangs: list[str] = field(default_factory=list)
    app_exits: int = 0
    tracebacks: list[str] = field(default_factory=list)
    seconds: float = 0.0
    slowest: tuple[float, str] = (0.0, "")

    @property
    def clean(self) -> bool:
        return (
            not self.silent
            and not self.multi_line
            and not self.hangs
            and not self.app_exits
            and not self.tracebacks
            and self.opened + self.refused == self.inputs
        )


Maker = Callable[[Path], Any]  # writes one input into a folder, returns its ``Made``


def sample(count: int, skip: tuple[str, ...] = ()) -> Iterator[tuple[str, Maker]]:
    """``count`` or a few more inputs of the corpus, spread evenly over every family
    but those named in ``skip`` (all of a family smaller than its share), in a
    fixed order: (label, maker)."""
    from reliability.files import Made, build_bases, families
    from synth import write_phantom_layer

    def phantom(folder: Path) -> Made:
        path = write_phantom_layer(folder / "crafted.gguf")
        size = path.stat().st_size
        return Made(str(path), size, size)

    # The file that found the boundary missing: its quantization warm-up raises.
    yield PHANTOM, phantom
    with tempfile.TemporaryDirectory(prefix="llmtune-app-bases-") as folder:
        fams = [f for f in families(build_bases(Path(folder))) if f.name not in skip]
        per = math.ceil(count / len(fams))
        while sum(min(per, f.count) for f in fams) < count:
            per += 1
        for family in fams:
            take = min(per, family.count)
            for i in sorted({k * family.count // take for k in range(take)}):
                yield f"{family.name} #{i}", lambda f, make=family.make, i=i: make(i, f)


async def settle(app: Any, pilot: Any) -> bool:
    """Wait until the threads an open started have finished and their results are
    shown; False after ``SETTLE_TIMEOUT_S``."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    quiet = 0
    while quiet < 2:  # twice in a row: a finished worker's message may start a timer
        await pilot.pause(0.005)
        busy = any(not w.is_finished for w in app.workers) or app.quant_table._timer
        quiet = 0 if busy else quiet + 1
        if time.monotonic() > deadline:
            return False
    return True


async def open_each(
    inputs: Iterator[tuple[str, Maker]], app: Any, pilot: Any, failures: Failures
) -> Opened:
    """Open every input in the running ``app``, one after another."""
    from llmtune.errors import LlmtuneError

    result = Opened()
    notices: list[str] = []
    notify = app.notify

    def recording_notify(message: str, **kwargs: Any) -> None:
        if kwargs.get("severity") == "error":
            notices.append(message)
        notify(message, **kwargs)

    app.notify = recording_notify
    work = Path(tempfile.mkdtemp(prefix="llmtune-app-open-", dir=_work_dir()))
    t0 = time.monotonic()
    try:
        for n, (label, make) in enumerate(inputs):
            folder = work / str(n)  # a folder each: the sibling search lists it
            folder.mkdir()
            made = make(folder)
            before_spec, seen, failed = app.spec, len(notices), len(failures.records)
            started = time.monotonic()
            app.open_model(made.path)
            if not await settle(app, pilot):
                result.hangs.append(label)
            took = time.monotonic() - started
            result.slowest = max(result.slowest, (took, label))
            result.inputs += 1
            if not app.is_running or app.return_code is not None:
                result.app_exits += 1
                break
            said = notices[seen:]
            if app.spec is not before_spec and app.model_path == os.path.abspath(made.path):
                result.opened += 1
            elif said:
                result.refused += 1
            else:
                result.silent.append(label)
            result.multi_line += [f"{label}: {m!r}" for m in said if "\n" in m]
            for sentence, error in failures.records[failed:]:
                result.background.append(f"{label}: {sentence}")
                if not isinstance(error, LlmtuneError):
                    result.foreign.append(f"{label}: {sentence}")
            shutil.rmtree(folder, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        app.notify = notify
    result.seconds = time.monotonic() - t0
    return result


class Failures(logging.Handler):
    """What the app's error boundary logged: (sentence, the worker's exception)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[tuple[str, BaseException | None]] = []

    def emit(self, record: logging.LogRecord) -> None:
        error = record.exc_info[1] if record.exc_info else None
        self.records.append((record.getMessage(), error))

    def __enter__(self) -> Failures:
        logging.getLogger("llmtune.ui").addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        logging.getLogger("llmtune.ui").removeHandler(self)


def _work_dir() -> str | None:
    return "/dev/shm" if os.path.isdir("/dev/shm") else None


class Tracebacks:
    """Uncaught exceptions of threads and unraisable ones, while in use."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def __enter__(self) -> Tracebacks:
        self._thread_hook, self._unraisable_hook = threading.excepthook, sys.unraisablehook
        threading.excepthook = lambda args: self.seen.append(
            f"thread {args.thread.name if args.thread else '?'}: {args.exc_type.__name__}: "
            f"{args.exc_value}"
        )
        sys.unraisablehook = lambda args: self.seen.append(
            f"unraisable: {args.exc_type.__name__}: {args.exc_value}"
        )
        return self

    def __exit__(self, *exc: object) -> None:
        threading.excepthook, sys.unraisablehook = self._thread_hook, self._unraisable_hook


async def run_app(count: int, skip: tuple[str, ...] = ()) -> Opened:
    """Open ``count`` inputs of the corpus (not of the families in ``skip``) in one
    pilot session of the app."""
    from ui_support import cpu_only

    from llmtune.model import read_spec
    from llmtune.model.demo import fetch_demo_model
    from llmtune.ui.app import AppOptions, make_app

    app = make_app(
        read_spec(fetch_demo_model()),
        hardware=cpu_only(),
        options=AppOptions(persist=False, quant_delay_s=0.0),
    )
    with Tracebacks() as tracebacks, Failures() as failures:
        async with app.run_test(size=(120, 40)) as pilot:
            await settle(app, pilot)
            result = await open_each(sample(count, skip), app, pilot, failures)
        if app._exception is not None:
            tracebacks.seen.append(f"reached Textual: {app._exception!r}")
    result.tracebacks += tracebacks.seen
    if app.return_code not in (None, 0):
        result.app_exits = max(result.app_exits, 1)
    return result


def run(count: int = BENCH_INPUTS) -> Section:
    section = Section("Malformed model files through the app's open path")
    result = asyncio.run(run_app(count))
    section.add(
        "inputs opened in one app session (open_model, then its threads)",
        f"{result.inputs:,}: {result.opened:,} opened, {result.refused:,} refused in one line "
        f"in {result.seconds:.0f} s",
        f">= {count:,}; each opened or refused in one line",
        result.inputs >= count and result.clean,
    )
    section.add("app exits", str(result.app_exits), "0", result.app_exits == 0)
    section.add(
        "tracebacks (an exception that reached Textual, a thread's, an unraisable one)",
        str(len(result.tracebacks)),
        "0",
        not result.tracebacks,
    )
    section.add(
        "background failures shown as a sentence (the error boundary)",
        f"{len(result.background)}, {len(result.foreign)} of them not llmtune's own errors",
        "only llmtune's own errors",
        not result.foreign,
    )
    section.add(
        "inputs whose threads ran past the wait, or with neither a model nor a notice",
        f"{len(result.hangs)} hangs, {len(result.silent)} silent",
        "0",
        not result.hangs and not result.silent,
    )
    took, label = result.slowest
    section.notes.append(f"slowest input: {took * 1000:.0f} ms ({label})")
    for line in (
        result.tracebacks + result.foreign + result.multi_line + result.hangs + result.silent
    )[:8]:
        section.notes.append(line)
    for line in result.background[:3]:
        section.notes.append(f"background: {line}")
    return section
