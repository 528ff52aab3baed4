"""fit.plan's RPC devices beside llama.cpp's own log, on real RPC servers.

Shared by tests/engine/test_rpc_accuracy.py and tests/bench/rpc.py. A child
process (tests/engine/llama_probe.py) registers the servers, loads the model
with every layer offloaded (or ``n_gpu_layers``), creates a context, and logs
each device's buffers and which device each layer went to.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from llama_probe import measure

from llmtune.fit.plan import FitPlan, plan
from llmtune.fit.settings import Settings
from llmtune.hardware.device import Device
from llmtune.hardware.host import host_device
from llmtune.hardware.machine import rpc_devices
from llmtune.model import read_spec

HOST = host_device(ram_bytes=64 << 30, bandwidth_gbps=51.2)
_ASSIGNED_RE = re.compile(r"layer\s+(\d+) assigned to device (\S+),")
KINDS = ("weights", "kv", "compute")


@dataclass(frozen=True)
class DeviceRow:
    name: str  # llama.cpp's buffer name, RPC0[127.0.0.1:port]
    predicted: dict[str, int]
    measured: dict[str, int]
    predicted_layers: tuple[int, int]  # [first, end) of the repeating layers and the output
    measured_layers: tuple[int, int]

    def error_pct(self, kind: str) -> float:
        m = self.measured[kind]
        p = self.predicted[kind]
        return 100.0 * (p - m) / m if m else (0.0 if p == 0 else float("inf"))


def devices_for(endpoints: list[str]) -> tuple[Device, ...]:
    return rpc_devices([(e, None) for e in endpoints], HOST)[0]


def compare_rpc(
    path: str,
    endpoints: list[str],
    *,
    flash_attn: str = "auto",
    tensor_split: tuple[float, ...] = (),
    n_gpu_layers: int = 99,
    n_ctx: int = 4096,
) -> tuple[FitPlan, list[DeviceRow]]:
    """Plan ``path`` on ``endpoints`` and load it there; one row per RPC device."""
    settings = Settings(
        n_ctx=n_ctx,
        n_gpu_layers=n_gpu_layers,
        flash_attn=flash_attn,  # type: ignore[arg-type]
        tensor_split=tensor_split,
        use_mmap=False,
    )
    p = plan(read_spec(path), [*devices_for(endpoints), HOST], settings)
    m = measure(
        path,
        n_ctx=n_ctx,
        n_gpu_layers=n_gpu_layers,
        flash_attn=flash_attn,  # type: ignore[arg-type]
        rpc=tuple(endpoints),
        tensor_split=tensor_split,
        use_mmap=False,
        timeout_s=300,
    )
    measured: dict[str, dict[str, int]] = {}
    for b in m.log.buffers:
        kind = {"model": "weights", "kv": "kv", "rs": "kv", "compute": "compute"}.get(b.kind)
        if kind:
            kinds = measured.setdefault(b.name, {})
            kinds[kind] = kinds.get(kind, 0) + b.bytes
    layers: dict[str, list[int]] = {}
    for line in m.log_text.splitlines():
        found = _ASSIGNED_RE.search(line)
        if found:
            layers.setdefault(found.group(2), []).append(int(found.group(1)))
    rows: list[DeviceRow] = []
    start = p.n_layer + 1 - p.n_gpu_layers
    for i, d in enumerate(p.rpc_devices):
        got = layers.get(f"RPC{i}", [])
        rows.append(
            DeviceRow(
                name=d.buffer_name,
                predicted={
                    "weights": d.weights_bytes,
                    "kv": d.kv_bytes,
                    "compute": d.compute_bytes,
                },
                measured={k: measured.get(d.buffer_name, {}).get(k, 0) for k in KINDS},
                predicted_layers=(start, start + d.n_layers + d.has_output),
                measured_layers=(min(got), max(got) + 1) if got else (0, 0),
            )
        )
        start += d.n_layers + d.has_output
    return p, rows
