"""Write SVG screenshots of the app on the demo model into screenshots/.

`make screenshots` runs this. Each view is driven headless with ``run_test``
and saved with ``App.save_screenshot``: the whole app at 120x40 (every pane at
once), and each pane at 80x24 (tabs) and 50x40 (a tmux side pane), plus the
gauges view. The model is planned for an RTX 3060 12GB with 32 GiB of RAM, as a
user on this GPU-less machine would with `g`. The run and monitor views load
the demo model in the real llama.cpp worker and generate, so their numbers are
this machine's; the other views depend only on the model and these settings.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from textual.pilot import Pilot

from llmtune.hardware.host import host_device
from llmtune.hardware.machine import Machine, MachineOptions, machine
from llmtune.hardware.profiles import parse_gpu_spec
from llmtune.model import read_spec
from llmtune.model.demo import DEMO_FILE, fetch_demo_model
from llmtune.telemetry.sampler import SampleCallback, Sampler
from llmtune.ui.app import AppOptions, LlmtuneApp, make_app
from llmtune.ui.panes.quant import QuantPane
from llmtune.ui.panes.run import RunPane
from llmtune.units import GIB

REPO = Path(__file__).resolve().parent.parent
# Where the demo model is cached differs between machines and users; the pictures
# show its default place on Linux rather than the path of whoever ran this.
DEMO_PATH_LABEL = f"~/.cache/llmtune/models/{DEMO_FILE}"
PANES = ("model", "quant", "offload", "monitor", "run")
PROMPT = "In one sentence, what is a GPU?"

Setup = Callable[[Pilot[None], LlmtuneApp], Awaitable[None]]


def hardware() -> Machine:
    host = host_device(ram_bytes=32 * GIB, bandwidth_gbps=51.2)
    return Machine((host,)).with_what_if([parse_gpu_spec("rtx3060-12g")])


def two_machines() -> Machine:
    """The same desktop and, on another machine, an RTX 3090 lent through llama.cpp's
    RPC server (a what-if, so the picture needs no server and no network)."""
    return machine(MachineOptions(gpus=("rtx3060-12g", "rtx3090@rpc"), ram="32GiB"))


def sampler(callback: SampleCallback, interval_s: float) -> Sampler:
    return Sampler(callback, interval_s=0.25)


async def until(pilot: Pilot[None], ready: Callable[[], bool], timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        if time.monotonic() > deadline:
            raise SystemExit("screenshots: the app never got ready (is the worker broken?)")
        await pilot.pause(0.1)


async def settle(pilot: Pilot[None], app: LlmtuneApp) -> None:
    await until(pilot, lambda: bool(app.query_one(QuantPane).rows))
    await pilot.pause()


async def run_and_generate(pilot: Pilot[None], app: LlmtuneApp) -> None:
    await settle(pilot, app)
    await pilot.press("a")
    await until(pilot, lambda: app.worker_state == "loaded")
    app.generate(PROMPT)
    await until(pilot, lambda: app.worker_state == "loaded" and app.last_stats is not None)
    await pilot.pause(1.5)  # a few more samples for the graphs


async def shoot(
    model: Path,
    name: str,
    size: tuple[int, int],
    key: str,
    out_dir: Path,
    live: bool,
    on: Callable[[], Machine] = hardware,
) -> Path:
    app = make_app(
        read_spec(model),
        path_label=DEMO_PATH_LABEL,
        hardware=on(),
        options=AppOptions(persist=False, interval_s=0.25),
        sampler_factory=sampler if live else None,
    )
    async with app.run_test(size=size) as pilot:
        if live:
            await run_and_generate(pilot, app)
        else:
            await settle(pilot, app)
        if key:
            await pilot.press("escape", key)
        await pilot.pause()
        await pilot.wait_for_scheduled_animations()
        await pilot.pause()
        if live:
            app.query_one(RunPane).query_one("#prompt").blur()
        width, height = size
        written = app.save_screenshot(f"{name}-{width}x{height}.svg", path=str(out_dir))
    return Path(written)


async def main_async(model: Path, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    shots: list[tuple[str, tuple[int, int], str, bool]] = [("wide", (120, 40), "", True)]
    for size in ((80, 24), (50, 40)):
        for i, pane in enumerate(PANES):
            shots.append((pane, size, str(i + 1), pane in ("monitor", "run")))
    shots.append(("gauges", (50, 40), "0", True))
    paths = [await shoot(model, name, size, key, out_dir, live) for name, size, key, live in shots]
    paths.append(await shoot(model, "rpc-offload", (80, 24), "3", out_dir, False, two_machines))
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--model", type=Path, help="a .gguf file (default: the demo model)")
    parser.add_argument("--out", type=Path, default=REPO / "screenshots", help="output folder")
    args = parser.parse_args(argv)
    model = args.model or fetch_demo_model()
    for old in args.out.glob("*.svg"):
        old.unlink()
    for path in asyncio.run(main_async(model, args.out)):
        try:
            shown = path.resolve().relative_to(Path.cwd())
        except ValueError:
            shown = path
        print(f"wrote {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
