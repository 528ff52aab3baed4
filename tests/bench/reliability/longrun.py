"""Long runs: the app left in a tmux pane for days.

The app (headless, 120x40: every pane, the monitor's graphs drawn) takes a
simulated day of telemetry at 10 Hz, 864,000 samples with timestamps 0.1 s
apart: a GPU whose memory and load move, the host, and a worker whose RSS and
tokens/s move. Each sample goes through the app's own handler for the
sampler's message, and the app renders between batches as it would between
ticks. After an hour of warm-up the app process's resident memory, the
number of live Python objects, widgets and timers are recorded every
simulated hour. Targets: memory flat after warm-up (under 2 MB
of growth over the remaining 23 hours), no growth in widgets or timers.
"""

from __future__ import annotations

import asyncio
import gc
import math
import os
import time

import psutil

from reliability import Section

TICKS_PER_HOUR = 36_000  # 10 Hz
HOURS = int(os.environ.get("LLMTUNE_LONGRUN_HOURS", "24"))
BATCH = 200  # samples between renders
RSS_GROWTH_TARGET_MB = 2.0


def sample_at(i: int, pid: int) -> object:
    from llmtune.telemetry.sample import GPUSample, HostSample, Sample, WorkerSample

    wave = math.sin(i / 50.0)
    gib = 2**30
    return Sample(
        timestamp=1000.0 + i * 0.1,
        host=HostSample(
            ram_total_bytes=32 * gib,
            ram_available_bytes=int((20 + 2 * wave) * gib),
            swap_used_bytes=0,
            cpu_percent=50 + 40 * wave,
        ),
        gpus=(
            GPUSample(
                index=0,
                memory_used_bytes=int((6 + 3 * wave) * gib),
                memory_total_bytes=12 * gib,
                utilization_percent=60 + 30 * wave,
                temperature_c=60.0,
                power_w=150.0,
                other_processes_bytes=gib,
                name="NVIDIA GeForce RTX 3060",
            ),
        ),
        worker=WorkerSample(pid=pid, rss_bytes=int((3 + wave) * gib), tokens_per_s=30 + 5 * wave),
    )


def counts(app: object) -> tuple[int, int, int]:
    """Widgets on every screen, live timers of the app and its widgets, Python objects."""
    nodes = [app, *(w for screen in app.screen_stack for w in screen.walk_children(with_self=True))]  # type: ignore[attr-defined]
    timers = sum(len(getattr(node, "_timers", ())) for node in nodes)
    return len(nodes) - 1, timers, len(gc.get_objects())


async def simulate(section: Section) -> None:
    from llmtune.hardware.host import host_device
    from llmtune.hardware.machine import Machine
    from llmtune.hardware.profiles import parse_gpu_spec
    from llmtune.model import read_spec
    from llmtune.model.demo import fetch_demo_model
    from llmtune.ui.app import AppOptions, make_app
    from llmtune.ui.messages import SampleArrived

    gib = 2**30
    hardware = Machine(
        (parse_gpu_spec("rtx3060-12g"), host_device(ram_bytes=32 * gib, bandwidth_gbps=51.2))
    )
    app = make_app(
        read_spec(fetch_demo_model()),
        hardware=hardware,
        options=AppOptions(persist=False, interval_s=0.1),
    )
    process = psutil.Process(os.getpid())
    rows: list[tuple[int, float, int, int, int]] = []
    started = time.monotonic()
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause(0.5)
        for hour in range(HOURS + 1):
            if hour:
                for i in range((hour - 1) * TICKS_PER_HOUR, hour * TICKS_PER_HOUR):
                    app._sample_arrived(SampleArrived(sample_at(i, 4242)))  # type: ignore[arg-type]
                    if i % BATCH == 0:
                        await pilot.pause()
            await pilot.pause()
            gc.collect()
            widgets, timers, objects = counts(app)
            rows.append((hour, process.memory_info().rss / 2**20, objects, widgets, timers))
        stored = len(app.telemetry.host.ram_used_bytes)
        capacity = app.telemetry.capacity
    elapsed = time.monotonic() - started
    warm = rows[1]
    last = rows[-1]
    rss_growth = last[1] - warm[1]
    object_growth = last[2] - warm[2]
    section.add(
        f"app memory over a simulated day at 10 Hz ({HOURS * TICKS_PER_HOUR:,} samples)",
        f"RSS {warm[1]:.1f} -> {last[1]:.1f} MB after warm-up ({rss_growth:+.2f} MB), "
        f"Python objects {warm[2]:,} -> {last[2]:,}",
        f"growth < {RSS_GROWTH_TARGET_MB:g} MB, objects flat",
        rss_growth < RSS_GROWTH_TARGET_MB and object_growth < 1000,
    )
    section.add(
        "widgets and timers",
        f"widgets {warm[3]} -> {last[3]}, timers {warm[4]} -> {last[4]}",
        "no growth",
        last[3] <= warm[3] and last[4] <= warm[4],
    )
    section.add(
        "telemetry kept",
        f"{stored:,} points per series (capacity {capacity:,}: the last 10 minutes)",
        "bounded",
        stored <= capacity,
    )
    section.notes.append(
        f"simulated {HOURS} h in {elapsed:.0f} s; hourly RSS MB: "
        + ", ".join(f"{r[1]:.0f}" for r in rows)
    )


def run() -> Section:
    section = Section("long runs: a simulated day of telemetry")
    asyncio.run(simulate(section))
    return section
