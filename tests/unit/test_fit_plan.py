"""fit.plan on synthetic models: placement, KV sizes, solvers and bad settings."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from gguf import GGMLQuantizationType as Q

from llmtune.errors import FitError
from llmtune.fit.plan import offload_curve, plan
from llmtune.fit.settings import Settings
from llmtune.hardware.host import host_device
from llmtune.hardware.profiles import parse_gpu_spec
from llmtune.model import read_spec
from llmtune.units import GIB, MIB
from synth import llama_like


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("fit") / "m.gguf"
    llama_like(path, n_layer=8, n_embd=512, n_head=8, n_head_kv=2, n_ff=1024, n_vocab=2048)
    return read_spec(path)


HOST = host_device(ram_bytes=64 * GIB, bandwidth_gbps=51.2)


def test_ngl_counts_the_output_layer(model) -> None:
    gpu = parse_gpu_spec("rtx3060-12g")
    one = plan(model, [gpu, HOST], Settings(n_gpu_layers=1))
    assert one.gpus[0].n_layers == 0 and one.gpus[0].has_output
    three = plan(model, [gpu, HOST], Settings(n_gpu_layers=3))
    assert three.gpus[0].n_layers == 2 and three.gpus[0].has_output
    assert three.host.n_layers == 6 and not three.host.has_output
    every = plan(model, [gpu, HOST], Settings(n_gpu_layers=-1))
    assert every.n_gpu_layers == 9 and every.gpus[0].n_layers == 8
    # token_embd always stays on the host (load_tensors: dev_input is the CPU).
    embd = next(t for t in model.tensors if t.name == "token_embd.weight")
    assert every.host.weights_bytes >= embd.nbytes


def test_weights_add_up_to_the_file_whatever_the_split(model) -> None:
    gpu = parse_gpu_spec("rtx3060-12g")
    for ngl in range(0, 10):
        p = plan(model, [gpu, HOST], Settings(n_gpu_layers=ngl))
        total = sum(d.weights_bytes for d in p.devices)
        assert total == pytest.approx(model.tensor_bytes, rel=0.001), ngl


def test_kv_cache_is_layers_times_cells_times_rows(model) -> None:
    p = plan(model, [HOST], Settings(n_ctx=1000))
    # n_ctx is padded to 256 cells; K and V rows are head_dim x n_head_kv in f16.
    cells = 1024
    row = 64 * 2 * 2
    assert p.n_ctx == cells
    assert p.host.kv_bytes == 8 * cells * row * 2
    q8 = plan(model, [HOST], Settings(n_ctx=1000, cache_type_k="q8_0", cache_type_v="q8_0"))
    assert q8.host.kv_bytes == 8 * cells * (128 // 32 * 34) * 2


def test_two_gpus_split_by_free_memory(model) -> None:
    a = parse_gpu_spec("24GiB", index=0)
    b = parse_gpu_spec("24GiB", index=1)
    p = plan(model, [a, b, HOST], Settings())
    # 9 offloaded layers (8 + output) split at 0.5: il/9 < 0.5 for il 0..4, so the
    # first GPU takes 5 blocks and the second 3 blocks and the output layer.
    assert [g.n_layers for g in p.gpus] == [5, 3]
    assert not p.gpus[0].has_output and p.gpus[1].has_output
    skewed = plan(model, [a, b, HOST], Settings(tensor_split=(3, 1)))
    assert skewed.gpus[0].n_layers > skewed.gpus[1].n_layers


def test_max_gpu_layers_is_the_edge_of_fitting(tmp_path: Path) -> None:
    path = tmp_path / "big.gguf"
    llama_like(
        path,
        n_layer=40,
        n_embd=4096,
        n_head=32,
        n_head_kv=8,
        n_ff=11008,
        n_vocab=32000,
        weight_type=Q.Q4_K,
        embd_type=Q.Q4_K,
        output_type=Q.Q6_K,
        file_type=15,
    )
    spec = read_spec(path)
    gpu = parse_gpu_spec("4GiB")
    p = plan(spec, [gpu, HOST], Settings())
    assert 0 < p.max_gpu_layers < 41
    at_max = plan(spec, [gpu, HOST], Settings(n_gpu_layers=p.max_gpu_layers))
    over = plan(spec, [gpu, HOST], Settings(n_gpu_layers=p.max_gpu_layers + 1))
    assert at_max.gpus[0].total_bytes <= gpu.free_bytes - at_max.settings.margin_bytes
    assert over.gpus[0].total_bytes > gpu.free_bytes - over.settings.margin_bytes
    curve = offload_curve(spec, [gpu, HOST], Settings())
    assert len(curve) == 42
    gpu_totals = [pt.gpu_bytes[0] for pt in curve]
    assert gpu_totals == sorted(gpu_totals)
    # more layers on the GPU: faster generation
    assert curve[-1].tg_tokens_per_s > curve[0].tg_tokens_per_s


def test_no_gpu_means_everything_on_the_host(model) -> None:
    p = plan(model, [HOST], Settings(n_gpu_layers=-1))
    assert p.n_gpu_layers == 0 and p.max_gpu_layers == 0
    assert len(p.devices) == 1 and p.host.has_output
    assert any("no GPU" in n for n in p.notes)


def test_quantized_v_cache_needs_flash_attention(model) -> None:
    with pytest.raises(FitError, match="flash attention"):
        plan(model, [HOST], Settings(cache_type_v="q4_0", flash_attn="off"))
    p = plan(model, [HOST], Settings(cache_type_v="q4_0"))
    assert p.flash_attn and any("flash attention" in n for n in p.notes)


def test_more_context_needs_more_memory(model) -> None:
    small = plan(model, [HOST], Settings(n_ctx=2048))
    large = plan(model, [HOST], Settings(n_ctx=8192))
    assert large.host.kv_bytes == 4 * small.host.kv_bytes
    assert large.host.total_bytes > small.host.total_bytes


def _llmtune(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llmtune.cli", *args], capture_output=True, text=True, timeout=60
    )


def test_fit_json_contract(model) -> None:
    result = _llmtune("fit", model.path, "--gpu", "rtx3060-12g", "--ram", "64GiB", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    for key in ("settings", "devices", "fits", "max_gpu_layers", "predicted"):
        assert key in data
    assert data["settings"]["n_gpu_layers"] == 9
    gpu, host = data["devices"]
    assert gpu["kind"] == "gpu" and host["kind"] == "cpu"
    # The backend names the device, and its runtime (a CUDA context) is a part of its own.
    assert gpu["backend"] == "CUDA" and gpu["label"].startswith("CUDA0 ")
    assert gpu["runtime_bytes"] == 457 * MIB and host["runtime_bytes"] == 0
    for d in data["devices"]:
        assert d["total_bytes"] == (
            d["weights_bytes"]
            + d["kv_bytes"]
            + d["compute_bytes"]
            + d["other_bytes"]
            + d["runtime_bytes"]
        )
    assert host["capacity_bytes"] == 64 * GIB
    assert data["predicted"]["tg_tokens_per_s"] > 0
    assert "-ngl 9" in data["command"]


def test_fit_human_table_fits_80_columns(model) -> None:
    result = _llmtune("fit", model.path, "--gpu", "rtx3060-12g", "--ngl", "4")
    assert result.returncode == 0
    assert all(len(line) <= 80 for line in result.stdout.splitlines())
    assert "RTX 3060" in result.stdout and "llama-server" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ngl", "-3"], "--ngl"),
        (["--ngl", "lots"], "whole number"),
        (["--ctx", "-1"], "context"),
        (["--ctx", "0"], "context must be at least 1"),
        (["--cache-type-k", "q3_k"], "no KV cache type"),
        (["--gpu", "rtx3061"], "did you mean"),
        (["--gpu", "12XB"], "size"),
        (["--cache-type-v", "q8_0", "--flash-attn", "off"], "flash attention"),
        (["--ram", "lots"], "not a size: 'lots' (try 12GiB or 24GB) (--ram)"),
        (["--margin", "lots"], "(--margin)"),
        (["--overhead", "1ib"], "unknown size unit in '1ib' (use B, KB"),
        (["--overhead", "1XB"], "not a size: '1XB' (try 12GiB or 24GB) (--overhead)"),
        (["--ctx", "99999999999999999999"], "more than llama.cpp takes (2,147,483,647)"),
        (["--batch", "4294967296"], "more than llama.cpp takes"),
        (["--tensor-split", "nan,1", "--gpu", "8GiB", "--gpu", "8GiB"], "finite numbers"),
        (["--tensor-split=-1,2", "--gpu", "8GiB", "--gpu", "8GiB"], "must not be negative"),
        (["--split-mode", "none", "--main-gpu", "1", "--gpu", "8GiB"], "there is 1 GPU"),
    ],
)
def test_fit_bad_settings_are_one_line_errors(model, args: list[str], message: str) -> None:
    result = _llmtune("fit", model.path, *args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("llmtune: error:")
    assert message in lines[0]
    assert "Traceback" not in result.stderr


def test_margin_is_what_makes_a_plan_tight(model) -> None:
    total = plan(model, [HOST], Settings()).host.total_bytes
    snug = host_device(ram_bytes=total + 10 * MIB)
    p = plan(model, [snug], Settings())
    assert p.host.verdict == "tight" and p.fits
    short = host_device(ram_bytes=total - 10 * MIB)
    assert plan(model, [short], Settings()).host.verdict == "over"


def test_max_context_is_the_largest_that_fits(model) -> None:
    from llmtune.fit.plan import max_context

    gpu = parse_gpu_spec("1200MiB")
    s = Settings(margin_bytes=0)
    largest = max_context(model, [gpu, HOST], s)
    assert largest % 256 == 0 and 256 <= largest <= model.n_ctx_train
    assert plan(model, [gpu, HOST], s.with_(n_ctx=largest)).gpus[0].verdict != "over"
    if largest < model.n_ctx_train:
        over = plan(model, [gpu, HOST], s.with_(n_ctx=largest + 256)).gpus[0]
        assert over.verdict == "over"


def test_fit_ctx_max_picks_a_context(model) -> None:
    result = _llmtune(
        "fit",
        model.path,
        "--gpu",
        "56MiB",
        "--ctx",
        "max",
        "--margin",
        "0",
        "--overhead",
        "0",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert 256 <= data["settings"]["n_ctx"] < 4096
    assert data["fits"]
    none = _llmtune(
        "fit", model.path, "--gpu", "1MiB", "--ctx", "max", "--margin", "0", "--overhead", "0"
    )
    assert none.returncode == 2 and "not even 256 tokens" in none.stderr


def test_fit_ctx_max_with_every_file_type_says_what_to_give(model) -> None:
    # It once said "context must be positive, not -1": a value the user never typed.
    result = _llmtune("fit", model.path, "--gpu", "64MiB", "--ctx", "max", "--quant", "all")
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "--quant all plans every file type at one context" in result.stderr
    assert "-1" not in result.stderr


def test_human_table_shows_capacity_when_others_hold_part_of_a_device(model) -> None:
    from dataclasses import replace

    from llmtune.fit.report import plan_lines

    gpu = replace(parse_gpu_spec("rtx3090"), free_bytes=20 * GIB)  # 4 GiB held by others
    lines = plan_lines(model, plan(model, [gpu, HOST], Settings()), width=80)
    verdicts = [line for line in lines if line.startswith("    fits:")]
    assert verdicts[0].endswith("capacity 24.0 GiB")
    assert "capacity" not in verdicts[1]  # the planned host is all free
    header = next(line for line in lines if line.strip().startswith("device"))
    assert header.split()[-1] == "free"
    assert all(len(line) <= 80 for line in lines)


def _read_per_token(spec, n_layers: range, output: bool, kv_per_layer: float) -> float:
    """Weights a generated token reads (token_embd is a row lookup), plus the KV cache
    read at the speed model's depth."""
    weights = sum(spec.layers[i].nbytes for i in n_layers)
    if output:
        weights += sum(t.nbytes for t in spec.output_tensors)
    return weights + kv_per_layer * len(n_layers)


def _cpu_compute_bps(host) -> float:
    """The stand-in arithmetic of a CPU that was not probed, for this F16 model."""
    from llmtune.hardware.cpu_kernels import DEFAULT_CACHE_GBPS_PER_CORE
    from llmtune.hardware.host import HOST_TFLOPS_PER_CORE

    return DEFAULT_CACHE_GBPS_PER_CORE["F16"] * 1e9 * host.fp16_tflops / HOST_TFLOPS_PER_CORE


def test_generation_speed_is_memory_traffic_over_bandwidth(model) -> None:
    """A GPU reads; a CPU that was not probed reads the weights at its bandwidth and
    then multiplies them at the stand-in kernels' speed (the KV cache only reads)."""
    from llmtune.fit.graph import SPEED_DEPTH_TOKENS
    from llmtune.fit.speed import DEFAULT_SPEED_MODEL as SPEED

    s = Settings(n_ctx=4096)
    cpu_only = plan(model, [HOST], s)
    kv_read = cpu_only.host.kv_bytes / 8 * SPEED_DEPTH_TOKENS / 4096
    assert not HOST.bandwidth_measured  # a peak figure: the peak efficiency applies
    host_bw = HOST.bandwidth_gbps * 1e9 * SPEED.cpu_bandwidth_efficiency
    compute = _cpu_compute_bps(HOST)
    weights = _read_per_token(model, range(8), True, 0.0)
    kv = 8 * kv_read
    # Each layer (and the output) also costs a fixed time per token.
    seconds = weights / host_bw + weights / compute + kv / host_bw
    seconds += 9 * SPEED.cpu_layer_overhead_s
    assert cpu_only.predicted.tg_tokens_per_s == pytest.approx(1 / seconds, rel=1e-6)

    # Half the layers and the output on a GPU: the two devices run one after the other.
    gpu = parse_gpu_spec("rtx3060-12g")
    split = plan(model, [gpu, HOST], s.with_(n_gpu_layers=5))
    gpu_bw = gpu.bandwidth_gbps * 1e9 * SPEED.gpu_bandwidth_efficiency
    seconds = _read_per_token(model, range(4, 8), True, kv_read) / gpu_bw
    seconds += 5 * SPEED.gpu_layer_overhead_s
    host_weights = _read_per_token(model, range(4), False, 0.0)
    seconds += host_weights / host_bw + host_weights / compute + 4 * kv_read / host_bw
    seconds += 4 * SPEED.cpu_layer_overhead_s
    assert split.predicted.tg_tokens_per_s == pytest.approx(1 / seconds, rel=1e-6)

    # A bandwidth measured on this machine is what programs get: its own efficiency.
    measured = replace(HOST, bandwidth_measured=True)
    probed = plan(model, [measured], s).predicted.tg_tokens_per_s
    read = HOST.bandwidth_gbps * 1e9 * SPEED.cpu_measured_bandwidth_efficiency
    seconds = weights / read + weights / compute + kv / read + 9 * SPEED.cpu_layer_overhead_s
    assert probed == pytest.approx(1 / seconds, rel=1e-6)
    assert probed > cpu_only.predicted.tg_tokens_per_s


def test_prompt_speed_is_two_flops_per_weight_over_compute(model) -> None:
    from dataclasses import replace

    from llmtune.fit.speed import DEFAULT_SPEED_MODEL as SPEED
    from llmtune.fit.speed import KQ_BYTES_PER_CELL, PROMPT_TOKENS

    for flash_attn in ("on", "off"):
        p = plan(model, [HOST], Settings(flash_attn=flash_attn, n_ubatch=256))
        weights = _read_per_token(model, range(8), True, 0.0)
        params = weights * model.parameters / model.tensor_bytes
        flops = HOST.fp16_tflops * 1e12 * SPEED.cpu_compute_efficiency
        bandwidth = HOST.bandwidth_gbps * 1e9 * SPEED.cpu_bandwidth_efficiency
        # Two FLOPs per weight, the attention's four per query element per cell at
        # the prompt's mean depth (8 layers of 512 wide), without flash attention
        # the attention matrix's traffic (8 heads), and per ubatch of 256 tokens
        # the weights read and 9 layers walked once.
        depth = PROMPT_TOKENS / 2
        seconds = (2 * params + 4 * 512 * depth * 8) / flops
        if flash_attn == "off":
            seconds += 8 * depth * KQ_BYTES_PER_CELL * 8 / bandwidth
        seconds += (weights / bandwidth + 9 * SPEED.cpu_layer_overhead_s) / 256
        assert p.predicted.pp_tokens_per_s == pytest.approx(1 / seconds, rel=1e-6)
    p = plan(model, [HOST], Settings())
    faster = replace(HOST, fp16_tflops=2 * HOST.fp16_tflops)
    doubled = plan(model, [faster], Settings()).predicted
    assert doubled.pp_tokens_per_s > 1.8 * p.predicted.pp_tokens_per_s  # compute-bound
    # Generation reads at the same bandwidth; only its arithmetic part gains.
    assert p.predicted.tg_tokens_per_s < doubled.tg_tokens_per_s < 1.5 * p.predicted.tg_tokens_per_s
