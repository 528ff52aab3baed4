"""A MoE model's compute buffers on an RPC device and on the host, against
llama.cpp's own estimate (``llama-fit-params -fitp on -v``, the compute lines
of ``sched_reserve``) through a loopback ggml-rpc-server, for a Qwen3-MoE shape
of 6 layers, 64 experts, 8 used, vocab 32000 at ``-c 4096 -ngl 99``, with no
experts and with the first layer's experts on the CPU (``-ot`` / n_cpu_moe=1).

The numbers are llama.cpp's; the rule is fit.graph ``moe_peaks``.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from gguf import GGMLQuantizationType as Q

from llmtune.fit.plan import plan
from llmtune.fit.settings import Settings
from llmtune.hardware.host import host_device
from llmtune.hardware.machine import rpc_devices
from llmtune.model import read_spec
from rpc_support import FakeRpcServer
from synth_arch import build_qwen3moe

MIB = 1 << 20
HOST = host_device(ram_bytes=64 << 30, bandwidth_gbps=51.2)
SHAPE = {
    "n_layer": 6,
    "n_embd": 2048,
    "n_head": 16,
    "n_head_kv": 4,
    "head_dim": 128,
    "n_ff": 6144,
    "n_expert": 64,
    "n_expert_used": 8,
    "n_ff_exp": 768,
    "n_vocab": 32000,
}

# (shape changes, n_ubatch, flash attention): llama.cpp's MiB for the RPC
# device and the host with every expert offloaded, and the host's with layer
# 0's experts on the CPU.
MEASURED = [
    ({}, 512, "auto", 84.01, 12.01, 76.14),
    ({}, 128, "auto", 21.00, 3.00, 19.03),
    ({}, 1024, "auto", 168.02, 24.03, 152.28),
    ({}, 512, "off", 154.01, 18.01, 82.01),
    ({"n_embd": 3072}, 512, "auto", 104.01, 16.01, 100.01),
    ({"n_embd": 1024}, 512, "auto", 64.50, 8.01, 42.01),
    ({"n_ff_exp": 256}, 512, "auto", 66.50, 12.01, 40.14),
    ({"n_ff_exp": 1536}, 512, "auto", 88.01, 12.01, 80.14),
    ({"n_expert_used": 2}, 512, "auto", 66.50, 12.01, 16.14),
    ({"n_expert_used": 4}, 512, "auto", 66.50, 12.01, 42.14),
    ({"n_expert": 128}, 512, "auto", 84.01, 12.01, 76.26),
    ({"n_head": 32}, 512, "auto", 88.01, 12.01, 76.14),
]


@pytest.mark.parametrize(("shape", "n_ubatch", "fa", "device", "host", "host_cpu_moe"), MEASURED)
def test_moe_compute_matches_llama_cpp(
    tmp_path: Path,
    shape: dict[str, int],
    n_ubatch: int,
    fa: str,
    device: float,
    host: float,
    host_cpu_moe: float,
) -> None:
    path = tmp_path / "moe.gguf"
    build_qwen3moe(path, weight_type=Q.Q4_K, **{**SHAPE, **shape})
    spec = read_spec(path)
    with FakeRpcServer(devices=((64 << 30, 64 << 30),)) as server:
        devices = rpc_devices([(server.endpoint, None)], HOST)[0]
    base = Settings(
        n_ctx=4096, n_gpu_layers=99, n_batch=max(2048, n_ubatch), n_ubatch=n_ubatch, flash_attn=fa
    )
    full = plan(spec, (*devices, HOST), base)
    cpu_moe = plan(spec, (*devices, HOST), replace(base, n_cpu_moe=1))
    got = (
        full.devices[0].compute_bytes / MIB,
        full.devices[-1].compute_bytes / MIB,
        cpu_moe.devices[-1].compute_bytes / MIB,
    )
    assert got == pytest.approx((device, host, host_cpu_moe), abs=0.006)
