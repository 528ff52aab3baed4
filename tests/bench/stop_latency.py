"""How fast a Stop ends a generation in the worker's event stream (issue 4, "Faults").

Target: the generation's last event (``Stats`` with ``finish == "stop"``) reaches
the parent within 200 ms of ``Supervisor.stop()``.

The demo model is loaded once in a real worker. Each trial starts a
generation, waits until it is under way, calls ``stop()`` and stamps, with the
parent's monotonic clock on the supervisor's reader thread, when ``Stats``
arrives. Two kinds of trial:

- generating: stop after the 5th token of a long greedy generation;
- prompt: stop while llama.cpp decodes a ~3,000-token prompt (the worker's
  abort callback ends the decode between graph nodes), 50 ms after the request.

The tests in ``tests/engine/test_worker_run.py`` check that a stop ends the
generation and what it leaves behind; the time it takes belongs here, not in
a test.

    python tests/bench/stop_latency.py [--trials 10] [--threads 2]

Exits 0 whatever the latency (it is a report, and ``make bench`` goes on to the
next script); non-zero only on a crash.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import queue
import statistics
import sys
import time

from llmtune.engine.config import RunConfig
from llmtune.engine.protocol import Event, Failed, Loaded, Stats, Token
from llmtune.engine.supervisor import Supervisor
from llmtune.model.demo import fetch_demo_model

TARGET_S = 0.200
TIMEOUT_S = 120.0
CHAT = "<|im_start|>user\nWrite a long story about a lighthouse.<|im_end|>\n<|im_start|>assistant\n"
LONG_PROMPT = "the cat sat on the mat " * 500  # ~3,000 tokens


class Worker:
    def __init__(self, config: RunConfig) -> None:
        self.events: queue.Queue[tuple[float, Event]] = queue.Queue()
        self.sup = Supervisor(lambda e: self.events.put((time.monotonic(), e)))
        self.sup.start()
        self.sup.load(config)
        self.until(Loaded)

    def until(self, kind: type) -> tuple[float, Event]:
        while True:
            try:
                stamp, event = self.events.get(timeout=TIMEOUT_S)
            except queue.Empty:
                raise SystemExit(f"no {kind.__name__} within {TIMEOUT_S:.0f} s") from None
            if isinstance(event, Failed):
                raise SystemExit(f"the worker failed: {event.reason}")
            if isinstance(event, kind):
                return stamp, event

    def stop_while_generating(self) -> tuple[float, Stats]:
        self.sup.generate(CHAT, max_tokens=100_000, ignore_eos=True)
        for _ in range(5):
            self.until(Token)
        asked = time.monotonic()
        self.sup.stop()
        stamp, stats = self.until(Stats)
        assert isinstance(stats, Stats)
        return stamp - asked, stats

    def stop_during_prompt(self) -> tuple[float, Stats]:
        self.sup.generate(LONG_PROMPT, max_tokens=50)
        time.sleep(0.05)
        asked = time.monotonic()
        self.sup.stop()
        stamp, stats = self.until(Stats)
        assert isinstance(stats, Stats)
        return stamp - asked, stats

    def close(self) -> None:
        self.sup.shutdown()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    args = parser.parse_args()
    model = fetch_demo_model()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {datetime.date.today()}")
    print(f"model: {model.name}, {args.threads} threads, {args.trials} trials per kind")
    print("measured: parent clock from stop() to the Stats event; target < 200 ms")
    worker = Worker(RunConfig.of(str(model), n_ctx=4096, n_ubatch=256, threads=args.threads))
    worst = 0.0
    try:
        print(f"{'stop while':<12}{'median ms':>11}{'worst ms':>10}  how it finished")
        for label, trial in (
            ("generating", worker.stop_while_generating),
            ("prompt", worker.stop_during_prompt),
        ):
            delays: list[float] = []
            finishes: set[str] = set()
            for _ in range(args.trials):
                delay, stats = trial()
                delays.append(delay)
                finishes.add(stats.finish)
            extra = ", ".join(sorted(finishes))
            print(
                f"{label:<12}{statistics.median(delays) * 1000:>11.1f}"
                f"{max(delays) * 1000:>10.1f}  {extra}"
            )
            worst = max(worst, max(delays))
    finally:
        worker.close()
    verdict = "PASS" if worst < TARGET_S else "MISS"
    print(f"worst stop {worst * 1000:.1f} ms, target < {TARGET_S * 1000:.0f} ms: {verdict}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except SystemExit:
        raise
    except Exception as exc:  # a crash is not a miss
        print(f"stop_latency: {type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(2)
