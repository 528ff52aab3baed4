"""CPU used by telemetry sampling at 1 Hz (issue 4): target under 1% of one core.

Runs the real sampler (psutil host probe, the NVML GPU probe, this process as
the worker) for a minute and reads the CPU time of the sampling thread itself
(``time.thread_time`` inside the thread), so nothing else this process does is
counted. As a cross-check it also prints the process's CPU time while
sampling, above an idle baseline (the process asleep, no sampler) measured
just before in the same run.

    python tests/bench/sampler_overhead.py [--seconds 60] [--interval 1.0]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from datetime import date

from llmtune.telemetry import Sample, Sampler

TARGET_PERCENT = 1.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="how long to sample")
    parser.add_argument("--interval", type=float, default=1.0, help="sampling interval (s)")
    parser.add_argument(
        "--baseline-seconds", type=float, default=10.0, help="idle baseline length (0: skip)"
    )
    args = parser.parse_args()

    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}, "
        f"{date.today()}"
    )

    baseline_cpu_per_s = None
    if args.baseline_seconds > 0:
        cpu0, wall0 = time.process_time(), time.monotonic()
        time.sleep(args.baseline_seconds)
        baseline_cpu_per_s = (time.process_time() - cpu0) / (time.monotonic() - wall0)

    received: list[Sample] = []
    sampler = Sampler(received.append, interval_s=args.interval)
    sampler.watch_worker(os.getpid())
    cpu0, wall0 = time.process_time(), time.monotonic()
    sampler.start()
    time.sleep(sampler.interval_s / 2)  # the first tick (imports, NVML start-up) is over
    first_tick_cpu_s = sampler.cpu_time_s
    time.sleep(max(0.0, args.seconds - sampler.interval_s / 2))
    sampler.stop()
    wall_s = time.monotonic() - wall0
    process_cpu_s = time.process_time() - cpu0

    last = received[-1] if received else None
    gpus = len(last.gpus) if last else 0
    print(
        f"sampled {len(received)} ticks over {wall_s:.1f} s at {sampler.interval_s:g} s "
        f"(host, {gpus} GPU(s), worker pid {os.getpid()})"
    )
    thread_percent = 100.0 * sampler.cpu_time_s / wall_s
    later_tick_ms = 1000.0 * (sampler.cpu_time_s - first_tick_cpu_s) / max(1, sampler.ticks - 1)
    verdict = "PASS" if thread_percent < TARGET_PERCENT else "MISS"
    print(
        f"sampler thread CPU: {sampler.cpu_time_s * 1000:.1f} ms = {thread_percent:.3f}% of one core "
        f"(first tick {first_tick_cpu_s * 1000:.2f} ms, then {later_tick_ms:.2f} ms per tick); "
        f"target < {TARGET_PERCENT:g}%: {verdict}"
    )
    if baseline_cpu_per_s is not None:
        extra_percent = 100.0 * (process_cpu_s / wall_s - baseline_cpu_per_s)
        print(
            f"process CPU while sampling: {process_cpu_s * 1000:.1f} ms, "
            f"{extra_percent:.3f}% of one core above the idle baseline "
            f"({baseline_cpu_per_s * 1000:.2f} ms/s over {args.baseline_seconds:g} s)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
