"""fit.plan options beyond the defaults: MoE experts on the CPU, KV on the host,
parallel sequences, GPU specs and profiles."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest

from llmtune.errors import ConfigError
from llmtune.fit.plan import plan
from llmtune.fit.settings import Settings
from llmtune.hardware.host import host_device
from llmtune.hardware.profiles import GPU_PROFILES, host_profile, parse_gpu_spec
from llmtune.model import read_spec
from llmtune.units import GIB
from synth_arch import build_gemma2, build_qwen3moe

HOST = host_device(ram_bytes=64 * GIB, bandwidth_gbps=51.2)
GPU = parse_gpu_spec("rtx4090")


@pytest.fixture(scope="module")
def moe(tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("moe") / "moe.gguf"
    build_qwen3moe(path, n_layer=8, n_embd=1024, n_vocab=8000)
    return read_spec(path)


def test_cpu_moe_moves_every_expert_to_the_host(moe) -> None:
    experts = sum(t.nbytes for g in moe.layers for t in g.tensors if "_exps" in t.name)
    normal = plan(moe, [GPU, HOST], Settings())
    cpu_moe = plan(moe, [GPU, HOST], Settings(n_cpu_moe=-1))
    moved = normal.gpus[0].weights_bytes - cpu_moe.gpus[0].weights_bytes
    assert moved == pytest.approx(experts, rel=0.001)
    assert cpu_moe.host.weights_bytes - normal.host.weights_bytes == moved
    # --n-cpu-moe N counts from the first layer
    first_two = plan(moe, [GPU, HOST], Settings(n_cpu_moe=2))
    per_layer = experts / 8
    assert normal.gpus[0].weights_bytes - first_two.gpus[0].weights_bytes == pytest.approx(
        2 * per_layer, rel=0.01
    )


def test_moe_generation_reads_only_the_experts_used(moe) -> None:
    # 2 of 8 experts are read per token, so the MoE predicts faster than its
    # size alone would suggest on the same device.
    # A CPU whose kernels get through 20 GB/s of weights: every weight once per
    # token would be 20e9 / size tokens/s.
    host = replace(HOST, kernel_rates=(("F16", 20.0),), kernel_threads=2)
    p = plan(moe, [host], Settings())
    assert p.predicted.tg_tokens_per_s > 1.5 * 20e9 / moe.tensor_bytes


def test_no_kv_offload_keeps_the_cache_on_the_host(moe) -> None:
    on_gpu = plan(moe, [GPU, HOST], Settings())
    on_host = plan(moe, [GPU, HOST], Settings(no_kv_offload=True))
    assert on_host.gpus[0].kv_bytes == 0
    assert on_host.host.kv_bytes == on_gpu.gpus[0].kv_bytes + on_gpu.host.kv_bytes


def test_parallel_sequences_split_and_pad_the_context(moe) -> None:
    # n_ctx 1000 over 3 sequences: each gets pad(333, 256) = 512 cells,
    # 1536 in all (llama_context: "rounding down" that rounds up).
    p = plan(moe, [HOST], Settings(n_ctx=1000, n_parallel=3))
    assert p.n_ctx_seq == 512 and p.kv_cells == 1536
    unified = plan(moe, [HOST], Settings(n_ctx=1000, n_parallel=3, kv_unified=True))
    assert unified.kv_cells == 1024


def test_sliding_window_layers_hold_fewer_cells(tmp_path) -> None:
    path = os.path.join(tmp_path, "g2.gguf")
    build_gemma2(path)
    spec = read_spec(path)
    p = plan(spec, [HOST], Settings(n_ctx=32768))
    assert p.swa_cells < p.kv_cells == 32768
    full = plan(spec, [HOST], Settings(n_ctx=32768, swa_full=True))
    assert full.swa_cells == 32768 and full.host.kv_bytes > p.host.kv_bytes


@pytest.mark.parametrize(
    ("text", "capacity", "bandwidth"),
    [
        ("12GiB", 12 * GIB, None),
        ("24GB:1008GB/s", 24 * 10**9, 1008.0),
        ("RTX 3090", 24576 * 2**20, 936.0),
        ("rtx3060_12g", 12288 * 2**20, 360.0),
    ],
)
def test_gpu_specs(text: str, capacity: int, bandwidth: float | None) -> None:
    device = parse_gpu_spec(text)
    assert device.capacity_bytes == capacity and device.kind == "gpu"
    if bandwidth is not None:
        assert device.bandwidth_gbps == bandwidth


@pytest.mark.parametrize("text", ["12XB", "0GiB", "rtx9999", "24GB:-5GB/s", ""])
def test_bad_gpu_specs_are_config_errors(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_gpu_spec(text)


# Every card issue 3 names, as a user types it: (spec, memory GiB, bandwidth GB/s).
CARDS = [
    ("rtx3060-12g", 12, 360), ("rtx3070", 8, 448), ("rtx3080-10g", 10, 760),
    ("rtx3080-12g", 12, 912), ("rtx3090", 24, 936), ("rtx4060ti-8g", 8, 288),
    ("rtx4060ti-16g", 16, 288), ("rtx4070", 12, 504), ("rtx4070ti", 12, 504),
    ("rtx4080", 16, 717), ("rtx4090", 24, 1008), ("rtx5080", 16, 960), ("rtx5090", 32, 1792),
    ("t4", 15, 320), ("v100", 32, 900), ("v100-16g", 16, 900), ("a10", 22.5, 600),
    ("l4", 22.5, 300), ("l40s", 45, 864), ("a100-40g", 40, 1555), ("a100-80g", 80, 2039),
    ("h100-pcie", 80, 2000), ("h100-sxm", 80, 3350), ("h200", 140, 4800),
]  # fmt: skip


@pytest.mark.parametrize(("key", "gib", "gbps"), CARDS, ids=[c[0] for c in CARDS])
def test_the_profiles_cover_the_cards_users_ask_about(key: str, gib: float, gbps: float) -> None:
    device = parse_gpu_spec(key)
    assert device.capacity_bytes / GIB == pytest.approx(gib, rel=0.02)
    assert device.bandwidth_gbps == gbps and device.bandwidth_known
    assert key in {p.key for p in GPU_PROFILES}


@pytest.mark.parametrize(("key", "gbps"), [("ddr4-3200", 51.2), ("ddr5-5600", 89.6)])
def test_host_profiles_are_dual_channel_peaks(key: str, gbps: float) -> None:
    # two channels x 8 bytes x the transfer rate
    rate = int(key.split("-")[1])
    assert host_profile(key).bandwidth_gbps == pytest.approx(2 * 8 * rate / 1000) == gbps
    assert "dual channel" in host_profile(key).name


def test_gpus_split_in_proportion_to_free_memory(moe) -> None:
    # llama.cpp's load_tensors: layer il goes to the GPU whose cumulative share of
    # free memory first exceeds (il - first) / n_offloaded. 24 + 8 GiB: 3/4 and 1/4.
    big, small = parse_gpu_spec("24GiB", index=0), parse_gpu_spec("8GiB", index=1)
    p = plan(moe, [big, small, HOST], Settings())
    assert [(g.n_layers, g.has_output) for g in p.gpus] == [(7, False), (1, True)]
    even = plan(moe, [big, small, HOST], Settings(tensor_split=(1, 1)))
    assert [(g.n_layers, g.has_output) for g in even.gpus] == [(5, False), (3, True)]


def test_split_mode_none_puts_everything_on_the_main_gpu(moe) -> None:
    a, b = parse_gpu_spec("24GiB", index=0), parse_gpu_spec("24GiB", index=1)
    p = plan(moe, [a, b, HOST], Settings(split_mode="none", main_gpu=1))
    (gpu,) = p.gpus
    assert gpu.index == 1 and gpu.n_layers == 8 and gpu.has_output


def test_each_gpu_loses_its_runtime_before_the_model_loads(moe) -> None:
    # llama.cpp's fit reads free memory after the CUDA context exists, and
    # initialises every device it plans on, layers or not.
    a, b = parse_gpu_spec("24GiB", index=0), parse_gpu_spec("h200", index=1)
    only_first = Settings(n_gpu_layers=2, tensor_split=(1, 0))
    auto = plan(moe, [a, b, HOST], only_first)
    assert [g.n_layers + g.has_output for g in auto.gpus] == [2, 0]
    assert [g.runtime_bytes for g in auto.gpus] == [457 * 2**20, 566 * 2**20]  # measured H200
    assert auto.host.runtime_bytes == 0
    assert auto.gpus[1].total_bytes == auto.gpus[1].runtime_bytes  # idle, context only
    given = plan(moe, [a, b, HOST], only_first.with_(gpu_runtime_bytes=300 * 2**20))
    assert [g.runtime_bytes for g in given.gpus] == [300 * 2**20] * 2
    assert given.gpus[0].total_bytes == auto.gpus[0].total_bytes - 157 * 2**20
    none = plan(moe, [a, b, HOST], only_first.with_(gpu_runtime_bytes=0))
    assert none.gpus[1].total_bytes == 0
