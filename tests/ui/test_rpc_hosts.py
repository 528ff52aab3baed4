"""llama.cpp RPC hosts in the app: their devices wherever GPUs show, the hosts
screen (`n`) adding and removing real hosts, and the monitor graphing the
memory the worker reads on them.

The hosts are real llama.cpp RPC servers on 127.0.0.1 (``rpc_support``), with
a refusing port and a silent listener for the failures; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from rendered import screen_text
from textual.pilot import Pilot
from textual.widgets import Input, Static
from ui_support import cpu_only, wait_for

from llmtune.engine.config import RunConfig
from llmtune.engine.protocol import DeviceMemory, DeviceReading, Event, Loaded
from llmtune.engine.rpc_host import RpcServerProcess
from llmtune.engine.supervisor import Supervisor
from llmtune.hardware.machine import Machine, rpc_devices, rpc_items
from llmtune.model import ModelSpec
from llmtune.ui.app import AppOptions, LlmtuneApp, make_app
from llmtune.ui.screens.rpc_hosts import RpcHostsScreen
from llmtune.ui.widgets.graph import TimeGraph
from llmtune.ui.widgets.memgauge import MemoryGauge
from llmtune.units import GIB, format_bytes
from rpc_support import real_servers, refusing_endpoint, silent_listener

PROBE_TIMEOUT_S = 0.5
# A refused or silent host is said within the probe's timeout, plus the pilot's pace.
SAID_WITHIN_S = 5.0


@pytest.fixture(scope="module")
def servers() -> Iterator[list[RpcServerProcess]]:
    """Two llama.cpp RPC servers for the whole module (each probe closes its connection)."""
    with real_servers(2) as started:
        yield started


def with_hosts(*endpoints: str) -> Machine:
    """The fixed CPU-only machine with these hosts asked and planned, as ``--rpc`` does."""
    base = cpu_only()
    devices, notes = rpc_devices(rpc_items([",".join(endpoints)]), base.host)
    return base.with_rpc(devices, notes)


def app_for(spec: ModelSpec, hardware: Machine) -> LlmtuneApp:
    return make_app(
        spec,
        hardware=hardware,
        path_label="demo.gguf",
        options=AppOptions(persist=False, rpc_timeout_s=PROBE_TIMEOUT_S),
    )


def shown(app: LlmtuneApp) -> str:
    return "\n".join(screen_text(app))


def hosts_screen(app: LlmtuneApp) -> RpcHostsScreen:
    screen = app.screen
    assert isinstance(screen, RpcHostsScreen)
    return screen


def said(app: LlmtuneApp) -> str:
    """The hosts screen's status line: what the last thing typed came to."""
    return str(hosts_screen(app).query_one("#rpc-hosts-status", Static).content)


def clear_input(app: LlmtuneApp) -> None:
    hosts_screen(app).query_one("#rpc-hosts-add", Input).value = ""


async def type_host(pilot: Pilot[Any], app: LlmtuneApp, text: str) -> None:
    """Type ``text`` into the hosts screen and wait for the probe's answer."""
    await pilot.press(*text, "enter")
    await wait_for(pilot, lambda: hosts_screen(app).probing is None, SAID_WITHIN_S)
    await pilot.pause()


async def test_two_hosts_show_as_devices_with_their_endpoints(
    demo_spec: ModelSpec, servers: list[RpcServerProcess]
) -> None:
    first, second = (s.endpoint for s in servers)
    hardware = with_hosts(first, second)
    async with app_for(demo_spec, hardware).run_test(size=(80, 24)) as pilot:
        app = pilot.app
        assert isinstance(app, LlmtuneApp)
        await pilot.press("3")
        await pilot.pause()
        text = shown(app)
        # The plan's order: the RPC devices, then the host.
        at = [text.index(f"RPC0 {first}"), text.index(f"RPC1 {second}"), text.index("CPU")]
        assert at == sorted(at)
        assert f"RPC {first}, {second}" in screen_text(app)[1]  # the status line
        assert "layers on 2 RPC hosts" in text
        assert "network " in text and " per token" in text  # beside the predicted speed
        assert app.plan is not None
        assert [d.endpoint for d in app.plan.rpc_devices] == [first, second]
        assert all(d.weights_bytes > 0 for d in app.plan.rpc_devices)

    async with app_for(demo_spec, hardware).run_test(size=(50, 24)) as pilot:
        app = pilot.app
        assert isinstance(app, LlmtuneApp)
        await pilot.pause()
        assert app.layout_mode == "narrow" and app.active_pane == "gauges"
        text = shown(app)
        assert f"RPC0 {first}" in text and f"RPC1 {second}" in text
        assert "network " in text and " per token" in text


async def test_a_narrow_bar_names_an_rpc_device_without_its_host(
    demo_spec: ModelSpec, servers: list[RpcServerProcess]
) -> None:
    endpoint = servers[0].endpoint
    async with app_for(demo_spec, with_hosts(endpoint)).run_test(size=(36, 24)) as pilot:
        app = pilot.app
        assert isinstance(app, LlmtuneApp)
        await pilot.pause()
        rows = screen_text(app)
        assert any(row.strip().startswith("RPC0  fits") for row in rows), rows
        assert not any(endpoint in row for row in rows[2:])  # no room for it beside the sizes


async def test_the_hosts_screen_adds_a_real_host_and_the_plan_gains_its_device(
    demo_spec: ModelSpec, servers: list[RpcServerProcess]
) -> None:
    endpoint = servers[0].endpoint
    async with app_for(demo_spec, cpu_only()).run_test(size=(80, 24)) as pilot:
        app = pilot.app
        assert isinstance(app, LlmtuneApp)
        await pilot.pause()
        assert app.plan is not None and not app.plan.gpus
        await pilot.press("n")
        await pilot.pause()
        assert "No RPC hosts" in shown(app)
        await type_host(pilot, app, endpoint)
        text = shown(app)
        assert f"Added {endpoint}: 1 device." in text
        assert endpoint in text and "RPC0" in text and "free of" in text and "round trip" in text
        await pilot.press("escape")
        await wait_for(pilot, lambda: not isinstance(app.screen, RpcHostsScreen))
        await pilot.press("3")
        await pilot.pause()
        assert app.plan is not None
        assert [d.name for d in app.plan.gpus] == [f"RPC0 {endpoint}"]
        assert app.plan.n_gpu_layers == app.plan.n_layer + 1  # everything fits on the host
        assert app.hardware.endpoints == (endpoint,)
        assert f"RPC0 {endpoint}" in shown(app)
        assert f"RPC {endpoint}" in screen_text(app)[1]
        # The worker will register the host, and load the layers the plan offloads.
        config = app.worker.run_config()
        assert config is not None and config.extras.rpc_servers == (endpoint,)
        settings = app.worker.run_settings()
        assert settings is not None and settings.n_gpu_layers == app.plan.n_gpu_layers


async def test_a_refusing_port_and_a_silent_host_are_one_line_and_change_nothing(
    demo_spec: ModelSpec, servers: list[RpcServerProcess]
) -> None:
    kept = servers[0].endpoint
    hardware = with_hosts(kept)
    refusing = refusing_endpoint()
    with silent_listener() as silent:
        async with app_for(demo_spec, hardware).run_test(size=(80, 24)) as pilot:
            app = pilot.app
            assert isinstance(app, LlmtuneApp)
            await pilot.pause()
            before = app.plan
            await pilot.press("n")
            await pilot.pause()

            started = time.monotonic()
            await type_host(pilot, app, refusing)
            assert time.monotonic() - started < SAID_WITHIN_S
            assert said(app).startswith(f"{refusing}: connection refused")
            assert "\n" not in said(app)  # one line (wrapped on the screen as it needs)

            clear_input(app)
            started = time.monotonic()
            await type_host(pilot, app, silent)
            assert time.monotonic() - started < SAID_WITHIN_S
            assert said(app).startswith(
                f"{silent}: accepted the connection but did not answer within 0.5 s"
            )

            assert [e.endpoint for e in hosts_screen(app).entries] == [kept]
            await pilot.press("escape")
            await wait_for(pilot, lambda: not isinstance(app.screen, RpcHostsScreen))
            assert app.hardware is hardware and app.plan == before  # nothing changed
            assert app.error is None  # an expected refusal is the screen's, not the app's


async def test_a_bad_item_is_said_before_any_host_is_asked(
    demo_spec: ModelSpec, servers: list[RpcServerProcess]
) -> None:
    endpoint = servers[0].endpoint
    async with app_for(demo_spec, with_hosts(endpoint)).run_test(size=(80, 24)) as pilot:
        app = pilot.app
        assert isinstance(app, LlmtuneApp)
        await pilot.pause()
        await pilot.press("n")
        await pilot.pause()
        await pilot.press(*"nohost", "enter")
        await pilot.pause()
        assert "'nohost' is not HOST:PORT" in said(app)
        clear_input(app)
        await pilot.press(*endpoint, "enter")
        await pilot.pause()
        assert said(app) == f"{endpoint} is already in the list"
        assert hosts_screen(app).probing is None


async def test_removing_a_host_removes_its_device_from_the_plan(
    demo_spec: ModelSpec, servers: list[RpcServerProcess]
) -> None:
    first, second = (s.endpoint for s in servers)
    async with app_for(demo_spec, with_hosts(first, second)).run_test(size=(80, 24)) as pilot:
        app = pilot.app
        assert isinstance(app, LlmtuneApp)
        await pilot.pause()
        await pilot.press("n")
        await pilot.pause()
        await pilot.press("tab")  # to the list
        await pilot.pause()
        await pilot.press("home", "delete")
        await pilot.pause()
        assert f"Removed {first}." in shown(app)
        assert [e.endpoint for e in hosts_screen(app).entries] == [second]
        await pilot.press("escape")
        await wait_for(pilot, lambda: not isinstance(app.screen, RpcHostsScreen))
        await pilot.press("3")
        await pilot.pause()
        assert app.plan is not None
        # llama.cpp numbers the devices of the hosts it registers: the one left is RPC0.
        assert [d.name for d in app.plan.gpus] == [f"RPC0 {second}"]
        text = shown(app)
        assert first not in text and f"RPC0 {second}" in text
        assert "layers on an RPC host" in text


class RecordingSupervisor(Supervisor):
    """The real supervisor, keeping each RunConfig the app sends."""

    def __init__(self, on_event: Callable[[Event], None], loads: list[RunConfig]) -> None:
        super().__init__(on_event)
        self.loads = loads

    def load(self, config: RunConfig) -> bool:
        self.loads.append(config)
        return super().load(config)


async def test_hosts_added_under_a_loaded_model_reload_it_with_them(
    demo_spec: ModelSpec, servers: list[RpcServerProcess]
) -> None:
    endpoint = servers[0].endpoint
    loads: list[RunConfig] = []
    app = make_app(
        demo_spec,
        hardware=cpu_only(),
        options=AppOptions(persist=False, rpc_timeout_s=PROBE_TIMEOUT_S, autoapply_delay_s=0.1),
        engine_factory=lambda on_event: RecordingSupervisor(on_event, loads),
    )
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        await pilot.press("a")
        await wait_for(pilot, lambda: app.worker_state == "loaded")
        assert loads[0].extras.rpc_servers == ()
        await pilot.press("n")
        await pilot.pause()
        await type_host(pilot, app, endpoint)
        await pilot.press("escape")
        await wait_for(pilot, lambda: not isinstance(app.screen, RpcHostsScreen))
        toasts = [n.message for n in app._notifications]
        assert "The new RPC hosts take effect when the worker reloads the model." in toasts
        # The normal path for a change under a loaded model: a reload, with the hosts.
        await wait_for(pilot, lambda: len(loads) == 2)
        assert loads[1].extras.rpc_servers == (endpoint,)
        assert app.plan is not None and loads[1].settings.n_gpu_layers == app.plan.n_gpu_layers


async def test_the_monitor_graphs_each_hosts_memory_with_the_predicted_level(
    demo_spec: ModelSpec, servers: list[RpcServerProcess]
) -> None:
    first, second = (s.endpoint for s in servers)
    app = app_for(demo_spec, with_hosts(first, second))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        await pilot.press("4")
        await pilot.pause()
        # As if the worker had loaded the plan (the session's own record of it).
        session = app.session
        session.loaded = Loaded(
            buffers=(),
            load_s=0.1,
            context_s=0.1,
            n_ctx=4096,
            n_ctx_seq=4096,
            n_batch=2048,
            n_ubatch=512,
            n_seq_max=1,
            n_threads=2,
            model_bytes=demo_spec.file_bytes,
            n_params=1,
            n_layer=30,
        )
        assert app.planner is not None
        session.loaded_plan = app.planner.machine_plan(app.hardware, app.settings)
        planned = session.loaded_plan.rpc_devices[0]
        predicted = planned.total_bytes + planned.capacity_bytes - planned.free_bytes
        total = planned.capacity_bytes
        # The first host fills up as the plan said it would; the second holds 2 GiB.
        for step in (1, 2, 3):
            free = planned.free_bytes - planned.total_bytes * step // 3
            reading = DeviceMemory(
                (
                    DeviceReading("RPC0", first, free, total),
                    DeviceReading("RPC1", second, total - 2 * GIB, total),
                ),
                t=100.0 + step,
            )
            app.worker.device_memory(reading)
            await pilot.pause()
        await pilot.pause()
        graphs = list(app.query_one("#rpc-graphs").query(TimeGraph))
        assert [g.title for g in graphs] == [f"RPC0 {first} used", f"RPC1 {second} used"]
        assert graphs[0].latest == predicted == graphs[0].predicted
        assert graphs[1].latest == 2 * GIB
        rows = [row.rstrip() for row in screen_text(app)]
        # At 80 columns the title is cut to the device's name, to keep the numbers.
        used, of = format_bytes(predicted), format_bytes(total)
        free_now = format_bytes(total - predicted)
        assert f" RPC0 used  {used}  ╌╌ predicted {used}  of {of}  free {free_now}" in rows
        assert any(row.startswith(" RPC1 used  2.00 GiB  ╌╌ predicted") for row in rows)
        # A stale reading (older than the latest) is dropped.
        app.worker.device_memory(DeviceMemory((DeviceReading("RPC0", first, 0, total),), t=1.0))
        await pilot.pause()
        assert graphs[0].latest == predicted

        await pilot.resize_terminal(50, 24)
        await pilot.pause()
        await pilot.press("0")
        await pilot.pause()
        gauges = list(app.query_one("#gauges-hosts").query(MemoryGauge))
        assert len(gauges) == 2
        gauges[1].scroll_visible(animate=False)
        await pilot.pause()
        text = shown(app)
        assert "RPC hosts, measured" in text
        assert f"RPC0 {first}" in text and f"{used} of {of}" in text
        assert f"RPC1 {second}" in text and f"2.00 GiB of {of}" in text
        assert f"predicted {used}" in text


def test_the_command_line_starts_the_app_with_its_rpc_hosts(
    demo_spec: ModelSpec, servers: list[RpcServerProcess], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``llmtune MODEL --rpc HOST:PORT --network 1Gbit``: the hosts are asked before
    the screen opens, and the app plans with them."""
    from llmtune import cli

    endpoint = servers[0].endpoint
    seen: dict[str, Any] = {}

    def run(self: LlmtuneApp) -> None:
        async def look() -> None:
            async with self.run_test(size=(80, 24)) as pilot:
                await pilot.press("3")
                await pilot.pause()
                seen["text"] = shown(self)
                seen["plan"] = self.plan

        asyncio.run(look())

    monkeypatch.setattr(LlmtuneApp, "run", run)
    assert cli.main([demo_spec.path, "--rpc", endpoint, "--network", "1Gbit"]) == 0
    assert f"RPC0 {endpoint}" in seen["text"]
    assert f"RPC {endpoint}" in seen["text"]
    assert [d.endpoint for d in seen["plan"].rpc_devices] == [endpoint]


def test_an_unreachable_rpc_host_is_one_line_before_the_screen_opens(
    demo_spec: ModelSpec,
) -> None:
    refusing = refusing_endpoint()
    done = subprocess.run(
        [sys.executable, "-m", "llmtune.cli", demo_spec.path, "--rpc", refusing],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 2 and done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"llmtune: error: {refusing}: connection refused"
    )
    assert "Traceback" not in done.stderr
