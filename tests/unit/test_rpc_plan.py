"""Planning over llama.cpp RPC hosts: what ``llmtune fit --rpc`` answers.

The hosts are stand-ins speaking llama.cpp's RPC protocol on 127.0.0.1
(tests/rpc_support.py's FakeRpcServer: HELLO, device count, device memory, a
buffer write): planning needs nothing else from a host. Real servers and real
loads are in tests/engine/test_rpc_*.py.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from llmtune.cli import main
from llmtune.errors import ConfigError
from llmtune.fit.commandline import pinned_settings, plan_endpoints, rpc_server_commands
from llmtune.fit.plan import plan
from llmtune.fit.settings import Settings
from llmtune.hardware.host import host_device
from llmtune.hardware.machine import MachineOptions, machine, parse_network_speed
from llmtune.hardware.profiles import parse_gpu_spec
from llmtune.hardware.rpc import RpcError
from llmtune.model import read_spec
from rpc_support import FakeRpcServer, refusing_endpoint
from synth import llama_like

GIB = 1 << 30


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("rpc") / "m.gguf"
    llama_like(path, n_layer=8, n_embd=512, n_head=8, n_head_kv=2, n_ff=1024, n_vocab=2048)
    return path


def _fit(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, object]:
    assert main(["fit", *argv, "--json"]) == 0
    out: dict[str, object] = json.loads(capsys.readouterr().out)
    return out


@pytest.mark.parametrize(
    ("text", "gbit"),
    [
        ("1Gbit", 1.0),
        ("10gbit/s", 10.0),
        ("2.5Gbit", 2.5),
        ("100Mbit", 0.1),
        ("1GB/s", 8.0),
        ("1Gb/s", 1.0),
    ],
)
def test_network_speeds_read_as_people_write_them(text: str, gbit: float) -> None:
    assert parse_network_speed(text) * 8 / 1e9 == pytest.approx(gbit)


@pytest.mark.parametrize("text", ["fast", "10", "-1Gbit", "0Gbit", "1 parsec"])
def test_a_bad_network_speed_is_one_line(text: str) -> None:
    with pytest.raises(ConfigError, match="network speed"):
        parse_network_speed(text)


def test_rpc_devices_come_first_and_take_layers_like_gpus(
    model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with (
        FakeRpcServer(devices=((8 * GIB, 8 * GIB),)) as a,
        FakeRpcServer(devices=((4 * GIB, 4 * GIB),)) as b,
    ):
        out = _fit(
            capsys, str(model), "--rpc", f"{a.endpoint},{b.endpoint}", "--gpu", "rtx3060-12g"
        )
    kinds = [d["kind"] for d in out["devices"]]  # type: ignore[index,union-attr]
    assert kinds == ["rpc", "rpc", "gpu", "cpu"]
    devices = out["devices"]
    assert [d.get("endpoint") for d in devices[:2]] == [a.endpoint, b.endpoint]  # type: ignore[index,union-attr]
    # every layer offloaded: split by free memory, 8:4:12 GiB
    layers = [d["n_layers"] + d["has_output"] for d in devices[:3]]  # type: ignore[index,union-attr]
    assert sum(layers) == 9 and layers[0] > layers[1] and layers[2] > layers[0]
    args = shlex.split(out["command"])  # type: ignore[arg-type]
    assert args[args.index("--rpc") + 1] == f"{a.endpoint},{b.endpoint}"
    assert args[args.index("-ts") + 1] == ",".join(str(n) for n in layers)
    assert out["rpc_servers"] == [
        f"ggml-rpc-server -H 127.0.0.1 -p {e.rpartition(':')[2]}" for e in (a.endpoint, b.endpoint)
    ]
    assert out["predicted"]["tg_network_s"] > 0  # type: ignore[index]


def test_a_host_that_cannot_be_used_is_one_line_naming_it(
    model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    refused = refusing_endpoint()
    with pytest.raises(SystemExit) as exit_:
        main(["fit", str(model), "--rpc", refused])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert refused in err and "refused" in err and "\n" not in err
    with pytest.raises(SystemExit):
        main(["fit", str(model), "--rpc", "nohost"])
    assert "HOST:PORT" in capsys.readouterr().err


def test_a_what_if_remote_gpu_and_the_network_it_costs(model: Path) -> None:
    spec = read_spec(model)
    slow = machine(
        MachineOptions(gpus=("rtx3060-12g", "rtx3090@rpc"), ram="64GiB", network="100Mbit")
    )
    fast = machine(
        MachineOptions(gpus=("rtx3060-12g", "rtx3090@rpc"), ram="64GiB", network="10Gbit")
    )
    p_slow = plan(spec, slow.devices, Settings())
    p_fast = plan(spec, fast.devices, Settings())
    assert [d.kind for d in p_slow.devices] == ["rpc", "gpu", "cpu"]
    assert p_slow.predicted.tg_network_s > p_fast.predicted.tg_network_s > 0
    assert p_slow.predicted.tg_tokens_per_s < p_fast.predicted.tg_tokens_per_s
    assert plan_endpoints(p_slow) == ("host2:50052",)
    assert rpc_server_commands(p_slow) == ("ggml-rpc-server -H host2 -p 50052",)


def test_pipeline_parallelism_and_the_pinned_split(model: Path) -> None:
    gpus = [parse_gpu_spec("rtx4090"), parse_gpu_spec("rtx4090", index=1)]
    host = host_device(ram_bytes=64 * GIB, bandwidth_gbps=51.2)
    spec = read_spec(model)
    full = plan(spec, [*gpus, host], Settings())
    assert full.pipeline_copies == 4  # two devices, every layer and the output offloaded
    assert plan(spec, [*gpus, host], Settings(n_gpu_layers=5)).pipeline_copies == 1
    assert plan(spec, [*gpus, host], Settings(split_mode="none")).pipeline_copies == 1
    assert plan(spec, [gpus[0], host], Settings()).pipeline_copies == 1
    assert pinned_settings(full).tensor_split == tuple(
        float(d.n_layers + d.has_output) for d in full.gpus
    )
    given = plan(spec, [*gpus, host], Settings(tensor_split=(1.0, 3.0)))
    assert pinned_settings(given).tensor_split == (1.0, 3.0)  # the user's own split stays


def test_the_hand_off_runs_the_hosts_too(model: Path) -> None:
    from llmtune.fit.handoff import plan_handoff

    spec = read_spec(model)
    m = machine(MachineOptions(gpus=("rtx3060-12g", "rtx3090@rpc"), ram="64GiB"))
    h = plan_handoff(str(model), plan(spec, m.devices, Settings()))
    assert h.rpc_servers == ("ggml-rpc-server -H host2 -p 50052",)
    for args in (h.llama_server_args, h.llama_cli_args):
        assert args[args.index("--rpc") + 1] == "host2:50052"
        assert "-ts" in args
    assert any(note.startswith("llama-cpp-python:") and "RPC" in note for note in h.notes)
    assert any(note.startswith("Ollama:") and "RPC" in note for note in h.notes)
    assert next(iter(h.texts())).startswith("RPC hosts")


def test_a_worker_build_without_rpc_says_how_to_rebuild(monkeypatch: pytest.MonkeyPatch) -> None:
    from llmtune.engine import ggml_rpc

    monkeypatch.setattr(ggml_rpc, "rpc_supported", lambda: False)
    with FakeRpcServer() as host, pytest.raises(RpcError) as raised:
        machine(MachineOptions(rpc=(host.endpoint,)), for_worker=True, probe_bandwidth=False)
    line = raised.value.one_line()
    assert "-DGGML_RPC=on" in line and "\n" not in line
    with FakeRpcServer() as host:  # planning alone needs no llama.cpp at all
        assert machine(MachineOptions(rpc=(host.endpoint,)), probe_bandwidth=False).rpc


def test_a_cpu_server_is_planned_with_this_machines_kernels(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """An RPC host with no GPU named behind it runs "at this machine's CPU speed":
    llama.cpp's kernels as timed here, not the stand-in for an unknown CPU."""
    from llmtune.hardware import cpu_kernels

    monkeypatch.setenv("LLMTUNE_CACHE_DIR", str(tmp_path))
    timed = cpu_kernels.KernelRates({"Q4_K": 12.5}, {}, 2, batch={"Q4_K": {4: 14.0}})
    cpu_kernels.store_rates(timed)
    with FakeRpcServer() as host:
        m = machine(MachineOptions(rpc=(host.endpoint,)), probe_bandwidth=False)
    (remote,) = m.rpc
    assert dict(remote.kernel_rates) == {"Q4_K": 12.5}
    assert remote.kernel_threads == 2 and remote.kernel_batch == (("Q4_K", 4, 14.0),)
    with FakeRpcServer() as host:
        named = machine(MachineOptions(rpc=(f"{host.endpoint}=rtx3090",)), probe_bandwidth=False)
    assert named.rpc[0].kernel_rates == ()  # a GPU behind it: no CPU kernels
