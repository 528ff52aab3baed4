"""The worker on llama.cpp RPC hosts: real servers on 127.0.0.1 started by llmtune.

It registers the hosts before loading, llama.cpp places layers on them as the
plan said, it reads their memory through its own connection, and a host that
dies (kill -9 during load, prompt or generation) is named in one sentence while
the worker goes and nothing is left running.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmtune.engine.compare import compare
from llmtune.engine.config import RunConfig
from llmtune.engine.protocol import (
    DeviceMemory,
    Event,
    Exited,
    Failed,
    Loaded,
    Progress,
    Stats,
    Token,
)
from llmtune.engine.rpc_host import RpcServerProcess
from llmtune.engine.supervisor import Supervisor
from llmtune.fit.commandline import pinned_settings
from llmtune.fit.plan import plan
from llmtune.fit.settings import Extras, Settings
from llmtune.hardware.host import host_device
from llmtune.hardware.machine import rpc_devices
from llmtune.model import read_spec
from rpc_support import real_servers, refusing_endpoint, silent_listener
from worker_events import until as wait_for_events

TIMEOUT_S = 60.0
LOST_WITHIN_S = 2.0  # a lost host is reported within this


def until(sup: Supervisor, *kinds: type) -> list[Event]:
    return wait_for_events(sup, *kinds, timeout_s=TIMEOUT_S)


@pytest.fixture
def two_hosts() -> Iterator[list[RpcServerProcess]]:
    with real_servers(2) as servers:
        yield servers


def config(demo_model: Path, hosts: list[str], **settings: object) -> RunConfig:
    s = Settings(n_ctx=1024, n_gpu_layers=-1, threads=2, **settings)  # type: ignore[arg-type]
    return RunConfig.from_settings(demo_model, s, Extras(rpc_servers=tuple(hosts)))


def test_loads_where_the_plan_says_and_reads_the_hosts_memory(
    sup: Supervisor, demo_model: Path, two_hosts: list[RpcServerProcess]
) -> None:
    endpoints = [s.endpoint for s in two_hosts]
    host = host_device(ram_bytes=32 << 30, bandwidth_gbps=20.0)
    devices, _notes = rpc_devices([(e, None) for e in endpoints], host)
    spec = read_spec(demo_model)
    planned = plan(spec, [*devices, host], Settings(n_ctx=1024, threads=2, tensor_split=(2.0, 1.0)))
    sup.start()
    sup.load(
        RunConfig.from_settings(
            demo_model, pinned_settings(planned), Extras(rpc_servers=tuple(endpoints))
        )
    )
    loaded = until(sup, Loaded, Failed)[-1]
    assert isinstance(loaded, Loaded), loaded
    # llama.cpp's own log: each host's buffers, as planned (a 2:1 split).
    names = {b.name for b in loaded.buffers if b.kind == "model"}
    assert {f"RPC0[{e}]" for e in endpoints} <= names
    comparison = compare(loaded, planned)
    for d in planned.rpc_devices:
        assert comparison.row(d.buffer_name, "weights").error_pct is not None
        assert abs(comparison.row(d.buffer_name, "weights").error_pct or 0) < 0.5
        assert abs(comparison.row(d.buffer_name, "kv").error_pct or 0) < 1.0
        assert abs(comparison.row(d.buffer_name, "compute").error_pct or 0) < 15.0
    memory = until(sup, DeviceMemory, Failed)[-1]
    assert isinstance(memory, DeviceMemory), memory
    assert [r.endpoint for r in memory.readings] == endpoints
    assert all(0 < r.free_bytes <= r.total_bytes for r in memory.readings)
    sup.generate("The capital of France is", max_tokens=4, ignore_eos=True)
    stats = until(sup, Stats, Failed)[-1]
    assert isinstance(stats, Stats) and stats.n_gen == 4


def _lost(sup: Supervisor, server: RpcServerProcess, killed_at: float) -> None:
    events = until(sup, Exited)
    reported = time.monotonic()
    failed = [e for e in events if isinstance(e, Failed)]
    assert failed, events
    reason = failed[-1].reason
    assert f"lost the RPC host {server.endpoint}" in reason, reason
    assert reported - killed_at < LOST_WITHIN_S + 1.0  # generous: the queue adds its wait
    assert not sup.alive


@pytest.mark.parametrize("when", ["load", "prompt", "generation"])
def test_a_host_killed_is_named(
    sup: Supervisor, demo_model: Path, two_hosts: list[RpcServerProcess], when: str
) -> None:
    endpoints = [s.endpoint for s in two_hosts]
    sup.start()
    sup.load(config(demo_model, endpoints, use_mmap=False))
    if when == "load":
        until(sup, Progress)
    else:
        assert isinstance(until(sup, Loaded, Failed)[-1], Loaded)
        prompt = "word " * (600 if when == "prompt" else 4)
        sup.generate(prompt, max_tokens=10_000, ignore_eos=True)
        if when == "generation":
            until(sup, Token)
    victim = two_hosts[1]
    pid = victim.pid
    killed_at = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    _lost(sup, victim, killed_at)
    victim.stop()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_a_refusing_or_silent_host_fails_the_load_in_one_line(
    sup: Supervisor, demo_model: Path
) -> None:
    sup.start()
    refused = refusing_endpoint()
    sup.load(config(demo_model, [refused]))
    failed = until(sup, Failed, Loaded)[-1]
    assert isinstance(failed, Failed) and refused in failed.reason and "refused" in failed.reason
    assert "\n" not in failed.reason and sup.alive
    with silent_listener() as silent:
        start = time.monotonic()
        sup.load(config(demo_model, [silent]))
        failed = until(sup, Failed, Loaded)[-1]
        assert isinstance(failed, Failed) and silent in failed.reason, failed
        assert time.monotonic() - start < 10.0  # the probe's timeout, not a hang
    assert sup.alive


def test_a_host_that_stops_answering_is_named(
    sup: Supervisor, demo_model: Path, two_hosts: list[RpcServerProcess]
) -> None:
    """A stopped host keeps its connection (its kernel still answers), so nothing
    breaks: the worker's memory reading goes unanswered, and that names it."""
    from llmtune.engine.worker_rpc import RPC_STALL_S

    endpoints = [s.endpoint for s in two_hosts]
    sup.start()
    sup.load(config(demo_model, endpoints))
    assert isinstance(until(sup, Loaded, Failed)[-1], Loaded)
    until(sup, DeviceMemory)
    victim = two_hosts[0]
    os.kill(victim.pid, signal.SIGSTOP)
    try:
        stopped_at = time.monotonic()
        events = until(sup, Exited)
        waited = time.monotonic() - stopped_at
    finally:
        os.kill(victim.pid, signal.SIGCONT)
    failed = [e for e in events if isinstance(e, Failed)]
    assert failed and f"lost the RPC host {victim.endpoint}" in failed[-1].reason, failed
    assert "stopped answering" in failed[-1].reason
    assert waited < RPC_STALL_S + RPC_STALL_S / 2 + 2.0
    assert not sup.alive


def test_the_worker_gives_its_host_connections_a_timeout() -> None:
    """llama.cpp's sockets wait forever; the worker sets keepalive and a user
    timeout on the ones to its hosts, and leaves every other socket alone."""
    import socket

    from llmtune.engine.worker_rpc import LINK_TIMEOUT_MS, harden_sockets

    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        pair = socket.socketpair()
        with socket.create_connection(("127.0.0.1", port)) as host_link:
            other = socket.create_connection(("127.0.0.1", port))
            try:
                done: set[int] = set()
                harden_sockets({("127.0.0.1", port)}, done)
                assert host_link.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
                assert other.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
                if hasattr(socket, "TCP_USER_TIMEOUT"):
                    got = host_link.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT)
                    assert got == LINK_TIMEOUT_MS
                assert pair[0].getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 0
                before = len(done)
                harden_sockets({("127.0.0.1", port)}, done)  # nothing new: nothing done twice
                assert len(done) == before
            finally:
                other.close()
                for end in pair:
                    end.close()
