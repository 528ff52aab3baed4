"""The attach screen at fixed samples and a fixed plan: 80x24 and 50x24 snapshots,
and pilots that choose a server and open the screen from the app and the picker."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from rendered import screen_text
from textual.pilot import Pilot

from llmtune.engine.attach import ProcessReading, ServerSample, SlotSample
from llmtune.engine.attach_local import server_of
from llmtune.engine.attach_plan import ServerPlan
from llmtune.fit.plan import plan
from llmtune.fit.settings import Settings
from llmtune.hardware.host import host_device
from llmtune.model import ModelSpec
from llmtune.ui.app import make_app
from llmtune.ui.screens.attach import AttachApp, AttachScreen, AttachTarget
from llmtune.units import GIB, MIB

URL = "http://127.0.0.1:8080"


def samples() -> list[ServerSample]:
    out = []
    for i in range(30):
        out.append(
            ServerSample(
                timestamp=float(i),
                url=URL,
                state="ok",
                message="llama-server answering · 1 of 2 slots busy",
                model="/models/SmolLM2-135M-Instruct.Q4_1.gguf",
                n_ctx_slot=1024,
                total_slots=2,
                slots=(
                    SlotSample(0, 1024, True, 300 + i, i, 12, 4),
                    SlotSample(1, 1024, False, 40),
                ),
                requests_processing=1,
                requests_deferred=0,
                tg_tokens_per_s=20.0 + (i % 7),
                speed_from="metrics",
                metrics=True,
                process=ProcessReading(4242, 190 * MIB, (), True, (), 32 * GIB),
            )
        )
    return out


def fixed_plan(spec: ModelSpec) -> ServerPlan:
    settings = Settings(n_ctx=2048, n_parallel=2, n_gpu_layers=0)
    host = host_device(ram_bytes=32 * GIB, bandwidth_gbps=51.2)
    return ServerPlan(
        spec.path, settings, "its command line (pid 4242)", plan(spec, [host], settings)
    )


def fed(spec: ModelSpec) -> Callable[[Pilot[None]], object]:
    async def run_before(pilot: Pilot[None]) -> None:
        screen = pilot.app.screen
        assert isinstance(screen, AttachScreen)
        screen.show_plan(fixed_plan(spec))
        for s in samples():
            screen.show_sample(s)
        await pilot.pause()

    return run_before


@pytest.mark.parametrize("size", [(80, 24), (50, 24)], ids=["attach-80x24", "attach-50x24"])
def test_attach_screen_snapshots(
    snap_compare: Callable[..., bool], demo_spec: ModelSpec, size: tuple[int, int]
) -> None:
    app = AttachApp(AttachTarget(URL), watch=False)
    assert snap_compare(app, terminal_size=size, run_before=fed(demo_spec))


async def test_the_narrow_view_fits_one_screen(demo_spec: ModelSpec) -> None:
    app = AttachApp(AttachTarget(URL), watch=False)
    async with app.run_test(size=(50, 24)) as pilot:
        await fed(demo_spec)(pilot)
        text = "\n".join(screen_text(app))
        for shown in ("SmolLM2-135M-Instruct.Q4_1.gguf", "fits", "RAM (server RSS)",
                      "predicted", "tokens/s", "slot 0", "slot 1", "busy"):  # fmt: skip
            assert shown in text, shown
        assert "32%" in text  # slot 0's KV fill: 329 of 1,024 cells


async def test_choosing_a_local_server_starts_watching() -> None:
    app = AttachApp(AttachTarget(), watch=False)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        assert isinstance(screen, AttachScreen)
        server = server_of(99, ["llama-server", "-m", "/m.gguf", "--port", "9001"], "/", [])
        screen.show_servers([server])
        await pilot.pause()
        await pilot.press("enter")
        await pilot.pause()
        assert screen.target.url == "http://127.0.0.1:9001"
        assert screen.target.local is server


async def test_the_app_key_and_the_picker_open_the_attach_screen(demo_spec: ModelSpec) -> None:
    app = make_app(demo_spec)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("A")
        await pilot.pause()
        assert isinstance(app.screen, AttachScreen)
        app.screen.workers.cancel_all()
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, AttachScreen)
        await pilot.press("o")
        await pilot.pause()
        await pilot.press("ctrl+l")
        await pilot.pause()
        assert isinstance(app.screen, AttachScreen)
