"""Issue 16: GPU profiles with classes and sources, the per-class speed model,
prompt speed from n_ubatch and flash attention, parallel streams, Apple's one pool."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from llmtune.errors import ConfigError
from llmtune.fit.plan import plan
from llmtune.fit.settings import Settings
from llmtune.fit.speed import CLASS_SPEEDS, DEFAULT_SPEED_MODEL, device_class
from llmtune.hardware.host import host_device
from llmtune.hardware.machine import MachineOptions, machine
from llmtune.hardware.profiles import (
    DEVICE_CLASSES,
    GPU_PROFILE_BY_KEY,
    GPU_PROFILES,
    SOURCES,
    parse_gpu_spec,
)
from llmtune.model import read_spec
from llmtune.units import GIB
from synth import llama_like

HOST = host_device(ram_bytes=64 * GIB, bandwidth_gbps=51.2)

# Every GPU issue 16 names, by profile key.
ISSUE_16_GPUS = (
    "rtx3060-12g rtx3060ti rtx3070 rtx3070ti rtx3080-10g rtx3080ti rtx3090 rtx3090ti "
    "rtx4060 rtx4060ti-16g rtx4070 rtx4070super rtx4070ti rtx4070tisuper rtx4080 "
    "rtx4080super rtx4090 rtx5060 rtx5060ti-16g rtx5070 rtx5070ti rtx5080 rtx5090 "
    "rtx4000ada rtx5000ada rtx6000ada rtxa6000 a40 l4 l40s a100-40g a100-sxm-40g "
    "a100-pcie-80g a100-80g h100-pcie h100-sxm h200 b200 rx7900xtx rx7900xt rx7800xt rx7600 "
    "mi210 mi250 mi300x m1-16g m1-pro-32g m1-max-64g m1-ultra-128g m2-24g m2-pro-32g "
    "m2-max-96g m2-ultra-192g m3-24g m3-pro-36g m3-max-128g m3-ultra-512g m4-32g m4-pro-64g "
    "m4-max-128g"
).split()


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("gpu") / "m.gguf"
    llama_like(path, n_layer=8, n_embd=1024, n_head=16, n_head_kv=4, n_ff=2816, n_vocab=4096)
    return read_spec(path)


@pytest.mark.parametrize("key", ISSUE_16_GPUS)
def test_the_issue_s_gpus_have_profiles(key: str) -> None:
    profile = GPU_PROFILE_BY_KEY[key]
    assert profile.memory_mib > 0 and profile.bandwidth_gbps > 0 and profile.fp16_tflops > 0


def test_every_profile_has_a_class_a_backend_and_a_source() -> None:
    for p in GPU_PROFILES:
        assert p.device_class in DEVICE_CLASSES, p.key
        assert p.source in SOURCES and p.source_text, p.key
        expected = {"apple": "MTL", "amd-consumer": "ROCm", "amd-datacenter": "ROCm"}
        assert p.backend == expected.get(p.device_class, "CUDA"), p.key
        assert p.unified == (p.device_class == "apple"), p.key
    assert GPU_PROFILE_BY_KEY["h100-sxm"].device_class == "nvidia-datacenter"
    # The class follows the die: an L40S is an RTX 4090's AD102 with GDDR6.
    assert GPU_PROFILE_BY_KEY["l40s"].device_class == "nvidia-consumer"
    mac = parse_gpu_spec("m2-ultra-192g")
    # the GPU may wire three quarters of the 192 GB (macOS's default above 36 GiB)
    assert mac.unified and mac.backend == "MTL" and mac.capacity_bytes == 144 * GIB
    assert device_class(mac) == "apple" and mac.buffer_name == "MTL0"


def test_a_size_spec_may_give_the_throughput() -> None:
    gpu = parse_gpu_spec("24GB:936GB/s:71TF")
    assert (gpu.bandwidth_gbps, gpu.fp16_tflops) == (936.0, 71.0)
    assert parse_gpu_spec("24GB:936GB/s").fp16_tflops != 71.0
    for bad in ("24GB:936GB/s:0TF", "24GB:936GB/s:xTF", "24GB:71TF:936GB/s"):
        with pytest.raises(ConfigError):
            parse_gpu_spec(bad)


def test_prompt_speed_follows_ubatch_flash_attention_and_throughput(model) -> None:
    gpu = parse_gpu_spec("rtx4090")
    s = Settings(n_gpu_layers=-1, n_ctx=4096)
    base = plan(model, [gpu, HOST], s.with_(n_ubatch=512, flash_attn="on")).predicted
    small = plan(model, [gpu, HOST], s.with_(n_ubatch=32, flash_attn="on")).predicted
    no_fa = plan(model, [gpu, HOST], s.with_(n_ubatch=512, flash_attn="off")).predicted
    assert small.pp_tokens_per_s < 0.8 * base.pp_tokens_per_s  # weights read per ubatch
    assert no_fa.pp_tokens_per_s < base.pp_tokens_per_s  # the attention matrix's traffic
    assert small.tg_tokens_per_s == base.tg_tokens_per_s  # generation reads one token
    slower = plan(model, [parse_gpu_spec("24GB:1008GB/s:80TF"), HOST], s).predicted
    faster = plan(model, [parse_gpu_spec("24GB:1008GB/s:160TF"), HOST], s).predicted
    assert faster.pp_tokens_per_s > 1.5 * slower.pp_tokens_per_s
    assert faster.tg_tokens_per_s == pytest.approx(slower.tg_tokens_per_s)


def test_the_device_class_sets_the_efficiencies(model) -> None:
    desktop = replace(parse_gpu_spec("rtx4090"), bandwidth_gbps=2000.0, fp16_tflops=756.0)
    hbm = parse_gpu_spec("h100-pcie")
    s = Settings(n_gpu_layers=-1, n_ctx=4096)
    a, b = (plan(model, [d, HOST], s).predicted for d in (desktop, hbm))
    # Same bandwidth and throughput: the datacenter class reads and computes at less.
    assert b.tg_tokens_per_s < 0.8 * a.tg_tokens_per_s
    assert b.pp_tokens_per_s < a.pp_tokens_per_s
    consumer, dc = CLASS_SPEEDS["nvidia-consumer"], CLASS_SPEEDS["nvidia-datacenter"]
    assert dc.bandwidth_efficiency < consumer.bandwidth_efficiency


def test_a_calibration_scales_every_class(model) -> None:
    hbm = parse_gpu_spec("h100-pcie")
    s = Settings(n_gpu_layers=-1, n_ctx=4096)
    default = plan(model, [hbm, HOST], s).predicted
    halved = replace(
        DEFAULT_SPEED_MODEL,
        gpu_compute_efficiency=DEFAULT_SPEED_MODEL.gpu_compute_efficiency / 2,
    )
    calibrated = plan(model, [hbm, HOST], s, halved).predicted
    assert calibrated.pp_tokens_per_s < 0.9 * default.pp_tokens_per_s  # compute is part of it


def test_parallel_streams_share_the_weight_read(model) -> None:
    gpu = parse_gpu_spec("rtx3090")
    one = plan(model, [gpu, HOST], Settings(n_gpu_layers=-1, n_ctx=4096)).predicted
    assert one.n_parallel == 1
    assert one.tg_aggregate_tokens_per_s == one.tg_stream_tokens_per_s == one.tg_tokens_per_s
    four = plan(model, [gpu, HOST], Settings(n_gpu_layers=-1, n_ctx=4096, n_parallel=4))
    p = four.predicted
    assert p.n_parallel == 4
    assert p.tg_aggregate_tokens_per_s > 2 * p.tg_stream_tokens_per_s  # weights read once
    assert p.tg_stream_tokens_per_s < p.tg_tokens_per_s  # each stream adds its cache and math
    assert p.tg_aggregate_tokens_per_s == pytest.approx(4 * p.tg_stream_tokens_per_s)


def test_an_apple_profile_plans_as_one_pool(model, tmp_path: Path) -> None:
    mac = parse_gpu_spec("m1-8g")
    ram = host_device(ram_bytes=8 * GIB, bandwidth_gbps=68.25)
    p = plan(model, [mac, ram], Settings(n_gpu_layers=-1, n_ctx=4096))
    gpu, host = p.devices
    # The GPU's buffers come out of the same RAM the host plans with.
    assert host.free_bytes == 8 * GIB - gpu.total_bytes
    assert gpu.label.startswith("MTL0")
    # Planned by profile alone, the Mac's host is its own RAM, not this machine's.
    m = machine(MachineOptions(gpus=("m2-ultra-192g",)), probe_bandwidth=False)
    assert m.host.capacity_bytes == 192 * GIB and "unified" in m.host.name
    m = machine(MachineOptions(gpus=("m2-ultra-192g",), ram="64GiB"), probe_bandwidth=False)
    assert m.host.capacity_bytes == 64 * GIB  # --ram still says what the host has
