"""llama.cpp's CPU kernels, probed through ggml in a child process, and what plans make of them."""

from __future__ import annotations

import json
import sys
from dataclasses import replace

import pytest

from llmtune.fit.plan import plan
from llmtune.fit.settings import Settings
from llmtune.fit.speed import DEFAULT_SPEED_MODEL
from llmtune.hardware import cpu_kernels
from llmtune.hardware.cpu_kernels import (
    KernelRates,
    cache_key,
    cache_path,
    cached_rates,
    host_kernel_rates,
    measure_kernel_rates,
    mixed_rate,
    nearest_rate,
    store_rates,
)
from llmtune.hardware.host import host_device
from llmtune.model import read_spec
from synth import llama_like

GIB = 1024**3


@pytest.fixture(autouse=True)
def cache(monkeypatch, tmp_path):
    path = tmp_path / "cache"
    monkeypatch.setenv("LLMTUNE_CACHE_DIR", str(path))
    return path


def test_the_probe_times_llamas_own_kernels_per_type():
    rates = measure_kernel_rates(threads=1, types=("Q8_0", "Q4_K", "IQ2_XXS"))
    assert set(rates.ram) == {"Q8_0", "Q4_K", "IQ2_XXS"}
    assert rates.threads == 1 and rates.measured_at
    for name, gbps in rates.ram.items():
        assert 0.1 < gbps < 1000, name
        # From the core's cache the same kernel only computes: never much slower.
        assert rates.cache[name] > 0.7 * gbps, name
    # A 2-bit lattice type unpacks far more per byte than Q8_0 does.
    assert rates.cache["IQ2_XXS"] < rates.cache["Q8_0"]


def test_a_failing_probe_is_one_line_and_plans_go_on(monkeypatch):
    monkeypatch.setattr(sys, "executable", "/nonexistent/python")
    with pytest.raises(RuntimeError, match="could not start the CPU kernel probe"):
        measure_kernel_rates(threads=1)
    assert host_kernel_rates(probe=True) is None  # logged, not raised
    assert not cache_path().exists()


def test_the_cache_is_per_machine_and_llama_cpp_version(cache, monkeypatch):
    rates = KernelRates(
        {"Q4_K": 17.0, "Q8_0": 16.1}, {"Q4_K": 26.0}, 2, "2026-12-04T00:00:00+00:00"
    )
    store_rates(rates)
    assert cached_rates() == rates
    assert cached_rates("another CPU | 64 GiB") is None
    assert host_kernel_rates(probe=False) == rates  # no probe when cached
    # Another llama-cpp-python's kernels are not these: probe again.
    monkeypatch.setattr(cpu_kernels, "llama_cpp_version", lambda: "0.3.99")
    assert cached_rates() is None
    # Without llama-cpp-python (planning only) the last probe here still answers.
    monkeypatch.setattr(cpu_kernels, "llama_cpp_version", lambda: "unknown")
    assert cached_rates() == rates
    cache_path().unlink()
    assert host_kernel_rates(probe=True) is None  # and there is nothing to time


@pytest.mark.parametrize(
    "text",
    ["{", json.dumps({"version": 99, "machines": {}}), json.dumps([1, 2]), "x" * (2 << 20)],
)
def test_an_unreadable_cache_is_ignored(cache, text):
    cache.mkdir(parents=True, exist_ok=True)
    cache_path().write_text(text)
    assert cached_rates() is None
    assert host_kernel_rates(probe=False) is None


def test_bad_figures_in_the_cache_are_dropped(cache):
    cache.mkdir(parents=True, exist_ok=True)
    entry = {"ram_gbps": {"Q4_K": 17.0, "F16": -1, "Q8_0": "fast", "Q6_K": float("inf")},
             "threads": 2, "llama_cpp_python": cpu_kernels.llama_cpp_version()}  # fmt: skip
    cache_path().write_text(json.dumps({"version": 1, "machines": {cache_key(): entry}}))
    rates = cached_rates()
    assert rates is not None and dict(rates.ram) == {"Q4_K": 17.0}


def test_a_mix_of_types_takes_each_at_its_own_rate():
    rates = {"Q4_K": 10.0, "Q6_K": 20.0}
    # 1 GB at 10 GB/s and 1 GB at 20 GB/s: 2 GB in 0.15 s.
    assert mixed_rate(rates, {"Q4_K": 10**9, "Q6_K": 10**9}) == pytest.approx(2e9 / 0.15)
    # A type that was not probed runs like the probed one nearest in bits per weight.
    assert nearest_rate(rates, "Q5_K") == 10.0
    assert nearest_rate(rates, "Q8_0") == 20.0


def _model(tmp_path, weight_type):
    from gguf import GGMLQuantizationType as T

    (path,) = llama_like(
        tmp_path / f"m-{weight_type}.gguf", n_layer=16, n_embd=2048, n_head=16, n_head_kv=4,
        n_ff=5632, n_vocab=32000, weight_type=getattr(T, weight_type), output_type=T.Q6_K,
        file_type=None,
    )  # fmt: skip
    return read_spec(path)


def _tg(spec, host, **settings):
    p = plan(spec, [host], Settings(n_ctx=512, n_gpu_layers=0, **settings), DEFAULT_SPEED_MODEL)
    return p.predicted.tg_tokens_per_s


def test_cpu_generation_follows_the_probed_kernels(tmp_path):
    """The probed rate per type sets the CPU's speed, not the memory bandwidth: on
    this project's machine Q4_0 runs at a third of the bandwidth."""
    q4 = _model(tmp_path, "Q4_0")
    plain = host_device(ram_bytes=32 * GIB, bandwidth_gbps=32.0, measured=True)
    probed = replace(plain, kernel_rates=(("Q4_0", 10.0), ("Q6_K", 15.0)), kernel_threads=2)
    slow = replace(probed, kernel_rates=(("Q4_0", 5.0), ("Q6_K", 7.5)))
    # Twice the bandwidth: the same speed (only the small KV cache reads at it).
    assert _tg(q4, replace(probed, bandwidth_gbps=64.0)) == pytest.approx(_tg(q4, probed), rel=0.02)
    assert _tg(q4, replace(plain, bandwidth_gbps=64.0)) > 1.2 * _tg(q4, plain)
    assert _tg(q4, slow) < 0.6 * _tg(q4, probed)
    # Fewer threads than probed: the kernels compute-bound, proportionally slower.
    assert _tg(q4, probed, threads=1) < 0.6 * _tg(q4, probed)
    # More threads than probed do not read faster.
    assert _tg(q4, probed, threads=8) == pytest.approx(_tg(q4, probed))


def test_the_weight_types_of_the_model_choose_the_rate(tmp_path):
    q4, q8 = _model(tmp_path, "Q4_0"), _model(tmp_path, "Q8_0")
    host = host_device(ram_bytes=32 * GIB, bandwidth_gbps=32.0, measured=True)
    host = replace(host, kernel_rates=(("Q4_0", 8.0), ("Q8_0", 16.0), ("Q6_K", 15.0)),
                   kernel_threads=2)  # fmt: skip
    # Q8_0 is twice the bytes at twice the rate: about the same speed.
    assert _tg(q8, host) == pytest.approx(_tg(q4, host), rel=0.1)


def test_an_unprobed_cpu_reads_then_computes(tmp_path):
    """Another machine's CPU (no probe): its bandwidth, then the stand-in kernels'
    arithmetic per core, so more cores help a compute-bound type."""
    q4 = _model(tmp_path, "Q4_0")
    two = host_device(ram_bytes=32 * GIB, bandwidth_gbps=100.0)
    many = replace(two, fp16_tflops=two.fp16_tflops * 8)
    assert _tg(q4, many) > 1.5 * _tg(q4, two)
    assert cpu_kernels.DEFAULT_CACHE_GBPS_PER_CORE["Q4_0"] > 0
