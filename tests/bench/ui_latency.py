"""How long a slider key takes to show its new plan, on an 80-layer model.

Target (issue 5): under 50 ms from a key press on the n_gpu_layers slider to the
repainted plan, measured through Textual's pilot. Printed beside the baseline
of the same run: ``fit.plan`` alone for the same settings, so the ratio says
how much the app adds to the estimate.

Each key goes in as the pilot sends keys (a Key event through the headless
driver) and is timed until both the slider and the GPU's bar have been
rendered again showing the new plan. ``pilot.press`` itself is not the clock:
it waits for the whole process to look idle (CPU time against wall time),
which includes the quantization table's refresh in a background thread, a
moment after the key and off the path to the screen.
"""

from __future__ import annotations

import asyncio
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from textual import events  # noqa: E402
from textual.widget import Widget  # noqa: E402

from llmtune.fit.plan import plan  # noqa: E402
from llmtune.fit.settings import Settings  # noqa: E402
from llmtune.hardware.host import host_device  # noqa: E402
from llmtune.hardware.machine import Machine  # noqa: E402
from llmtune.hardware.profiles import parse_gpu_spec  # noqa: E402
from llmtune.model import read_spec  # noqa: E402
from llmtune.ui.app import make_app  # noqa: E402
from llmtune.ui.widgets.devicebar import DeviceBar  # noqa: E402
from llmtune.ui.widgets.slider import LayerSlider  # noqa: E402
from llmtune.units import GIB  # noqa: E402
from synth import llama2_70b_q4_k_m  # noqa: E402

TARGET_MS = 50.0
PRESSES = 60


async def measure(path: str) -> tuple[list[float], float]:
    spec = read_spec(path)
    hardware = Machine((host_device(ram_bytes=64 * GIB, bandwidth_gbps=51.2),)).with_what_if(
        [parse_gpu_spec("rtx3060-12g")]
    )
    app = make_app(spec, hardware=hardware)
    timings: list[float] = []
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause(1.0)  # the quantization table's first fill
        slider = app.query_one("#ngl", LayerSlider)
        gpu_bar = app.query_one("#offload-devices").query(DeviceBar).first()
        slider.focus()
        await pilot.pause()
        painted: dict[str, tuple[float, int]] = {}

        def watch(name: str, widget: Widget, value: Callable[[], int]) -> None:
            render = widget.render

            def timed() -> Any:
                out = render()
                painted[name] = (time.perf_counter(), value())
                return out

            widget.render = timed  # type: ignore[method-assign]

        watch("slider", slider, lambda: slider.value)
        watch("bar", gpu_bar, lambda: gpu_bar.plan.n_layers if gpu_bar.plan else -1)
        driver = app._driver
        assert driver is not None
        for i in range(PRESSES):
            key = "left" if (i // 10) % 2 == 0 else "right"
            want = (app.plan.n_gpu_layers if app.plan else 0) + (-1 if key == "left" else 1)
            # -ngl counts the output layer: the GPU holds want - 1 repeating layers.
            want_layers = want - 1
            painted.clear()
            event = events.Key(key, None)
            event.set_sender(app)
            t0 = time.perf_counter()
            driver.send_message(event)
            deadline = t0 + 5.0
            while not (
                painted.get("slider", (0, -1))[1] == want
                and painted.get("bar", (0, -1))[1] == want_layers
            ):
                if time.perf_counter() > deadline:
                    raise SystemExit(f"ui_latency: press {i} never showed the new plan")
                await asyncio.sleep(0.0005)
            done = max(painted["slider"][0], painted["bar"][0])
            timings.append((done - t0) * 1000)
            await pilot.pause(0.2)  # let the background table refresh finish between presses
    devices = hardware.devices
    settings = [Settings(n_gpu_layers=n) for n in range(82)]
    t0 = time.perf_counter()
    for s in settings:
        plan(spec, devices, s)
    plan_ms = (time.perf_counter() - t0) * 1000 / len(settings)
    return timings, plan_ms


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "llama-2-70b-shape.Q4_K_M.gguf")
        llama2_70b_q4_k_m(path)
        timings, plan_ms = asyncio.run(measure(path))
    median = statistics.median(timings)
    p90 = statistics.quantiles(timings, n=10)[-1]
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, {date.today()}"
    )
    print("model: synthetic Llama-2-70B shape (80 layers, Q4_K_M), RTX 3060 12GB what-if")
    print(f"slider key -> slider and GPU bar repainted, {len(timings)} presses at 120x40")
    print(f"  median {median:.1f} ms, 90th percentile {p90:.1f} ms, max {max(timings):.1f} ms")
    print(f"  baseline fit.plan alone: {plan_ms:.3f} ms (app / plan = {median / plan_ms:.0f}x)")
    verdict = "PASS" if median < TARGET_MS else "MISS"
    print(f"  target < {TARGET_MS:g} ms: {verdict} (median / target = {median / TARGET_MS:.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
