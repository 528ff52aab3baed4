"""llama.cpp's RPC server under llmtune: ``llmtune rpc-server`` as a user runs it, and
the demo model split across two real servers on 127.0.0.1.

Each test owns its servers and stops them; every wait is bounded.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import psutil
import pytest

from llmtune.engine.rpc_host import RpcServerProcess
from llmtune.hardware.rpc import RpcError, probe
from rpc_support import free_port, real_servers, refusing_endpoint

WAIT_S = 60.0


def _cli(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "llmtune.cli", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _readline(stream: IO[str] | None, timeout_s: float = WAIT_S) -> str:
    """One line from a pipe, or a failure after ``timeout_s``."""
    assert stream is not None
    line: list[str] = []
    reader = threading.Thread(target=lambda: line.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(timeout_s)
    assert line, "no line within the timeout"
    return line[0]


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture
def cli_server() -> Iterator[tuple[subprocess.Popen[str], dict[str, object]]]:
    """``llmtune rpc-server --json`` on a free port, with its ready line."""
    port = free_port()
    proc = _cli("rpc-server", "--port", str(port), "--threads", "1", "--json")
    try:
        line = _readline(proc.stdout)
        ready = json.loads(line)
        yield proc, ready
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=WAIT_S)


def test_rpc_server_json_line_describes_a_server_that_answers_probes(
    cli_server: tuple[subprocess.Popen[str], dict[str, object]],
) -> None:
    proc, ready = cli_server
    endpoint = ready["endpoint"]
    assert isinstance(endpoint, str) and endpoint.startswith("127.0.0.1:")
    devices = ready["devices"]
    assert isinstance(devices, list) and devices
    assert devices[0]["name"] == "CPU"
    assert devices[0]["free_bytes"] > 0
    assert devices[0]["total_bytes"] >= devices[0]["free_bytes"]
    host = probe(endpoint)
    assert len(host.devices) == len(devices)
    assert host.devices[0].total_bytes == devices[0]["total_bytes"]
    assert host.devices[0].free_bytes > 0
    assert host.rtt_s > 0
    assert host.bandwidth_bytes_per_s is not None and host.bandwidth_bytes_per_s > 0
    # The server serves one client at a time: a second probe works only if the first hung up.
    assert probe(endpoint, measure_bandwidth=False).devices == host.devices


def test_rpc_server_stops_on_sigterm_and_leaves_no_child(
    cli_server: tuple[subprocess.Popen[str], dict[str, object]],
) -> None:
    proc, ready = cli_server
    child = ready["pid"]
    assert isinstance(child, int) and child != proc.pid
    assert child in [p.pid for p in psutil.Process(proc.pid).children()]
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=WAIT_S)
    assert proc.returncode == 0
    assert out == ""  # --json: the ready line and nothing else on stdout
    assert err.strip() == "stopped"
    assert _gone(child)


def test_rpc_server_says_when_its_server_dies(
    cli_server: tuple[subprocess.Popen[str], dict[str, object]],
) -> None:
    proc, ready = cli_server
    child = ready["pid"]
    assert isinstance(child, int)
    os.kill(child, signal.SIGKILL)
    _, err = proc.communicate(timeout=WAIT_S)
    assert proc.returncode == 1
    assert err.strip().splitlines() == [
        f"llmtune: error: the RPC server on {ready['endpoint']} stopped: "
        "the process was killed by SIGKILL"
    ]


def test_rpc_server_on_a_port_in_use_is_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        proc = _cli("rpc-server", "--port", str(port))
        out, err = proc.communicate(timeout=WAIT_S)
    assert proc.returncode == 2
    assert out == ""
    assert err.splitlines() == [
        f"llmtune: error: cannot start an RPC server on 127.0.0.1:{port}: "
        f"port {port} is in use (another RPC server, or another program)"
    ]


def test_server_process_explains_llama_cpps_bind_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    """Another program takes the port between llmtune's check and llama.cpp's bind:
    llama.cpp only prints 'Failed to create server socket', the error says why."""
    import llmtune.engine.rpc_host as rpc_host

    real_check = rpc_host.bind_problem
    checks: list[int] = []

    def first_check_passes(host: str, port: int) -> str | None:
        checks.append(port)
        return None if len(checks) == 1 else real_check(host, port)

    monkeypatch.setattr(rpc_host, "bind_problem", first_check_passes)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        server = RpcServerProcess(port=port, threads=1)
        with pytest.raises(RpcError) as caught:
            server.start()
    assert caught.value.one_line() == (
        f"the RPC server on 127.0.0.1:{port} could not start: "
        f"port {port} is in use (another RPC server, or another program)"
    )
    assert server.returncode() is not None
    assert any("Failed to create server socket" in line for line in server.output)


def test_register_servers_refuses_a_dead_host_instead_of_aborting() -> None:
    from llmtune.engine.ggml_rpc import register_servers

    endpoint = refusing_endpoint()
    with pytest.raises(RpcError) as caught:
        register_servers([endpoint], timeout_s=1.0)
    assert caught.value.one_line().startswith(f"{endpoint}: connection refused")


# Runs in a fresh interpreter: the servers must be registered before llama.cpp loads
# a model, and a registration lasts for the process.
_LOAD_ON_RPC = """
import sys
from llmtune.engine.ggml_rpc import device_memory, register_servers
from llmtune.hardware.rpc import probe

model, endpoints = sys.argv[1], sys.argv[2:]
names = register_servers(endpoints)
print("DEVICES", ",".join(names), flush=True)
# Registration leaves no connection open: each server takes a new client at once.
for endpoint in endpoints:
    probe(endpoint, timeout_s=5.0, measure_bandwidth=False)
print("FREE", all(device_memory(n)[0] > 0 for n in names), flush=True)

import llama_cpp

llm = llama_cpp.Llama(model_path=model, n_gpu_layers=99, n_ctx=256, n_threads=1, verbose=True)
out = llm("The capital of France is", max_tokens=4, temperature=0.0)
print("TEXT", repr(out["choices"][0]["text"]), flush=True)
"""


def test_demo_model_loads_across_two_rpc_servers(demo_model: Path) -> None:
    with real_servers(2) as (first, second):
        result = subprocess.run(
            [sys.executable, "-c", _LOAD_ON_RPC, str(demo_model), first.endpoint, second.endpoint],
            capture_output=True,
            text=True,
            timeout=300,
            stdin=subprocess.DEVNULL,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        assert first.returncode() is None and second.returncode() is None
    lines = result.stdout.splitlines()
    assert "DEVICES RPC0,RPC1" in lines
    assert "FREE True" in lines
    log = result.stderr
    # llama.cpp names an RPC buffer by the server's own device number and its endpoint
    # (ggml-rpc.cpp ggml_backend_rpc_buffer_type): both servers hold model weights.
    assert f"RPC0[{first.endpoint}] model buffer size" in log
    assert f"RPC0[{second.endpoint}] model buffer size" in log
    assert "assigned to device RPC0" in log
    assert "assigned to device RPC1" in log
    text = next(line for line in lines if line.startswith("TEXT "))
    assert text not in ("TEXT ''", 'TEXT ""')
