"""Helpers for the Textual tests: fixed hardware, and waiting for the app."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from textual.pilot import Pilot

from llmtune.hardware.host import host_device
from llmtune.hardware.machine import Machine
from llmtune.hardware.profiles import parse_gpu_spec
from llmtune.units import GIB


def cpu_only() -> Machine:
    """A CPU-only machine with 32 GiB of DDR4-3200, whatever this one has."""
    return Machine((host_device(ram_bytes=32 * GIB, bandwidth_gbps=51.2),))


def with_gpu(spec: str = "rtx3060-12g") -> Machine:
    """That machine, planning for a GPU profile (what a user does with `g`)."""
    return cpu_only().with_what_if([parse_gpu_spec(spec)])


async def wait_for(pilot: Pilot[Any], ready: Callable[[], bool], timeout_s: float = 60.0) -> None:
    """Let the app run until ``ready()``; fail if it never is (a hang, not a speed target)."""
    deadline = time.monotonic() + timeout_s
    while not ready():
        if time.monotonic() > deadline:
            raise AssertionError("the app never reached the expected state")
        await pilot.pause(0.05)
        await asyncio.sleep(0)


async def whole_session(app: Any, pilot: Pilot[Any]) -> None:
    """What a user does in one sitting: load, look at every pane while samples
    come in, generate and stop, open the hand-off and the picker. The network
    test and the reliability report's strace run both drive the app through it."""
    from llmtune.ui.panes.run import RunPane

    await pilot.pause()
    await pilot.press("3", "a")
    await wait_for(pilot, lambda: app.worker_state == "loaded")
    for pane in "124":
        await pilot.press(pane)
        await pilot.pause(0.3)  # a few samples on each
    await pilot.press("5", *"Hi", "enter")  # the run pane's prompt takes the keys
    await wait_for(pilot, lambda: len(app.query_one(RunPane).output) > 3)
    await pilot.press("escape")
    await wait_for(pilot, lambda: app.worker_state == "loaded")
    await pilot.press("escape", "3", "h")  # the second escape leaves the prompt
    await wait_for(pilot, lambda: type(app.screen).__name__ == "HandoffScreen")
    await pilot.press("escape", "o")
    await wait_for(pilot, lambda: type(app.screen).__name__ == "ModelPicker")
    await pilot.pause(0.5)
    await pilot.press("escape")
    await pilot.pause()
