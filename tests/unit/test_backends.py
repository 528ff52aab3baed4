"""Each device is planned with its backend's rules (fit.backends): the name a
plan gives it, the runtime a GPU holds before the model loads, and CUDA's
flash-attention scratch for a quantized cache, which an RPC device inherits
from its server's backend and the CPU does not have."""

from __future__ import annotations

from dataclasses import replace

import pytest
from gguf import GGMLQuantizationType as Q

from llmtune.fit.graph import pad
from llmtune.fit.plan import plan
from llmtune.fit.report import plan_lines
from llmtune.fit.settings import Settings
from llmtune.hardware.device import Device
from llmtune.hardware.host import host_device
from llmtune.hardware.profiles import parse_gpu_spec
from llmtune.model import ModelSpec, read_spec
from llmtune.units import GIB, MIB
from synth import llama_like

HOST = host_device(ram_bytes=64 * GIB, bandwidth_gbps=51.2)
CTX = 32768
K_WIDTH = 1024  # 8 KV heads of 128


@pytest.fixture(scope="module")
def long_context(tmp_path_factory: pytest.TempPathFactory) -> ModelSpec:
    # A narrow FFN and a long context: attention is the compute peak.
    path = tmp_path_factory.mktemp("backends") / "long.gguf"
    llama_like(path, n_layer=4, n_embd=1024, n_head=8, n_head_kv=8, n_ff=1024,
               n_vocab=512, n_ctx_train=CTX, weight_type=Q.Q8_0)  # fmt: skip
    return read_spec(path)


def _rpc(profile: str) -> Device:
    gpu = parse_gpu_spec("24GiB")
    return replace(
        gpu, kind="rpc", source="rpc", profile=profile, endpoint="127.0.0.1:50052", name="RPC0"
    )


def _compute(spec: ModelSpec, device: Device, cache: str) -> int:
    s = Settings(
        n_ctx=CTX, n_gpu_layers=-1, flash_attn="on", cache_type_k=cache, cache_type_v=cache
    )
    return plan(spec, [device, HOST], s).gpus[0].compute_bytes


def test_cuda_keeps_f16_copies_of_a_quantized_cache_beside_flash_attention(long_context) -> None:  # type: ignore[no-untyped-def]
    cuda = parse_gpu_spec("24GiB")
    grown = _compute(long_context, cuda, "q8_0") - _compute(long_context, cuda, "f16")
    # fattn.cu: one layer's K and V view over every cell, in F16, each padded to
    # 128; the attention peak then passes the FFN's (a few MiB below it before)
    scratch = 2 * pad(CTX * K_WIDTH * 2, 128)
    assert scratch - 8 * MIB < grown <= scratch
    # A CPU server (nothing named behind it) sizes flash attention by its output only.
    cpu_server = _rpc("cpu")
    assert _compute(long_context, cpu_server, "q8_0") == _compute(long_context, cpu_server, "f16")
    # A CUDA card behind an RPC server: the client asks the server (GET_ALLOC_SIZE).
    gpu_server = _rpc("rtx4090")
    assert (
        _compute(long_context, gpu_server, "q8_0") - _compute(long_context, gpu_server, "f16")
        == grown
    )


def test_the_plan_names_each_device_after_its_backend(long_context) -> None:  # type: ignore[no-untyped-def]
    devices = [parse_gpu_spec("rtx3060-12g", index=0), parse_gpu_spec("rtx4090", index=1), HOST]
    p = plan(long_context, devices, Settings(n_ctx=4096))
    assert [d.label for d in p.devices] == [
        "CUDA0 RTX 3060 12GB",
        "CUDA1 RTX 4090",
        "CPU (host RAM)",
    ]
    table = "\n".join(plan_lines(long_context, p, width=80))
    assert "CUDA0 RTX 3060 12GB" in table and "CUDA1 RTX 4090" in table
    assert "runtime: CUDA 457 MiB" in table


def test_an_rpc_device_holds_no_runtime_of_its_own(long_context) -> None:  # type: ignore[no-untyped-def]
    # Its server reports free memory with its context already there.
    p = plan(long_context, [_rpc("rtx4090"), HOST], Settings(n_ctx=4096))
    assert p.gpus[0].runtime_bytes == 0 and p.gpus[0].backend == "RPC"
    local = plan(long_context, [parse_gpu_spec("rtx4090"), HOST], Settings(n_ctx=4096))
    assert local.gpus[0].runtime_bytes == 457 * MIB
    assert local.gpus[0].total_bytes - p.gpus[0].total_bytes >= 457 * MIB - MIB
