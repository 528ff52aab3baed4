"""What `llmtune fit` says about this machine: CPU-only mode, a CPU-only build, and
the host's measured memory bandwidth in its speed prediction."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from fake_pynvml import FakeGPU, FakeNVML, install
from llmtune import cli
from llmtune.hardware import bandwidth, nvml
from llmtune.hardware import detect as detect_module
from llmtune.hardware.detect import CUDA_REINSTALL_COMMAND, detect
from llmtune.hardware.machine import machine
from synth import llama_like


def test_gpu_with_a_cpu_only_build_warns_with_the_reinstall_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    install(monkeypatch, FakeNVML(gpus=[FakeGPU()]))
    monkeypatch.setattr(detect_module, "supports_gpu_offload", lambda: False)
    devices = detect(probe_bandwidth=False)
    assert devices[0].is_gpu and "3090" in devices[0].name
    notes = machine(probe_bandwidth=False).plan_notes()
    assert any(
        'CMAKE_ARGS="-DGGML_CUDA=on -DGGML_RPC=on"' in n and "llama-cpp-python==0.3.36" in n
        for n in notes
    )


def test_no_driver_is_cpu_only_in_one_sentence(monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch, FakeNVML(init_error=12))  # NVML_ERROR_LIBRARY_NOT_FOUND
    devices = detect(probe_bandwidth=False)
    assert [d.kind for d in devices] == ["cpu"]
    notes = machine(probe_bandwidth=False).plan_notes()
    assert len(notes) == 1 and "CPU-only" in notes[0]


def _fit_here(model: Path, cache: Path, config: Path) -> dict[str, Any]:
    """`llmtune fit --json` planning this machine (no --gpu/--ram), as a user runs it."""
    env = dict(os.environ, LLMTUNE_CACHE_DIR=str(cache), LLMTUNE_CONFIG_DIR=str(config))
    result = subprocess.run(
        [sys.executable, "-m", "llmtune.cli", "fit", str(model), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_fit_here_probes_the_host_once_and_predicts_with_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first plan on a machine measures its bandwidth and times llama.cpp's CPU
    kernels (real, in a child process); later plans read both and predict the CPU's
    weights at the kernels' rate for the model's type."""
    from llmtune.hardware import cpu_kernels

    (model,) = llama_like(tmp_path / "m.gguf", n_layer=4, n_embd=512, n_ff=1024, n_vocab=1000)
    cache = tmp_path / "cache"
    config = tmp_path / "config"  # no calibration: the default efficiencies
    first = _fit_here(model, cache, config)
    monkeypatch.setenv("LLMTUNE_CACHE_DIR", str(cache))
    measured = bandwidth.cached_host_bandwidth_gbps()
    assert measured is not None and measured > 0
    probed = cpu_kernels.cached_rates()
    assert probed is not None and probed.ram["F16"] > 0  # the model's type was timed
    assert first["predicted"]["tg_tokens_per_s"] > 0
    assert first["cpu_kernels"]["gbps"]["F16"] == pytest.approx(probed.ram["F16"], rel=0.01)

    # The prediction follows the kernels' rate for F16.
    speeds = []
    for gbps in (10.0, 40.0):
        cpu_kernels.store_rates(replace(probed, ram={**probed.ram, "F16": gbps}, batch={}))
        speeds.append(_fit_here(model, cache, config)["predicted"]["tg_tokens_per_s"])
    # Reading (the time beyond the fixed per-layer overhead: 4 layers and the
    # output, and the small cache read) takes a quarter as long at four times the rate.
    from llmtune.fit.speed import DEFAULT_SPEED_MODEL

    overhead = 5 * DEFAULT_SPEED_MODEL.cpu_layer_overhead_s
    reading = [1 / s - overhead for s in speeds]
    assert 3.3 < reading[0] / reading[1] <= 4.0  # the cache read is the same in both
    assert bandwidth.cached_host_bandwidth_gbps() == measured  # read, not measured again
    assert cpu_kernels.cached_rates().ram["F16"] == 40.0  # type: ignore[union-attr]


def test_fit_here_says_prominently_that_the_build_cannot_use_the_gpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (model,) = llama_like(tmp_path / "m.gguf", n_layer=2)
    monkeypatch.setenv("LLMTUNE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("LLMTUNE_CONFIG_DIR", str(tmp_path / "config"))
    bandwidth.store_host_bandwidth(bandwidth.BandwidthMeasurement(20.0, 256 << 20, 5, 2))
    install(monkeypatch, FakeNVML(gpus=[FakeGPU()]))
    monkeypatch.setattr(detect_module, "supports_gpu_offload", lambda: False)
    try:
        assert cli.main(["fit", str(model)]) == 0
        human = capsys.readouterr()
        assert cli.main(["fit", str(model), "--json"]) == 0
        machine = capsys.readouterr()
    finally:
        nvml.reset()
    (warning,) = human.err.splitlines()
    assert warning.startswith("llmtune: warning: NVIDIA GeForce RTX 3090 found, but this ")
    assert warning.endswith(CUDA_REINSTALL_COMMAND)
    assert "RTX 3090" in human.out  # the plan is still for the GPU found
    # --json: one object on stdout, the warning among its notes, nothing on stderr
    assert machine.err == ""
    assert any(CUDA_REINSTALL_COMMAND in note for note in json.loads(machine.out)["notes"])


@pytest.mark.parametrize("command", ["bench", "tune"])
@pytest.mark.parametrize(
    "flag", [["--gpu", "rtx3060-12g"], ["--list-gpus"], ["--ram", "64GiB"], ["--quant", "Q8_0"]]
)
def test_bench_and_tune_refuse_other_hardware_in_one_line(
    tmp_path: Path, command: str, flag: list[str]
) -> None:
    """They run the model here: a what-if option is refused before anything loads
    (--list-gpus once ran a whole tune), and their help does not offer them."""
    (model,) = llama_like(tmp_path / "m.gguf", n_layer=2)
    run = subprocess.run(
        [sys.executable, "-m", "llmtune.cli", command, str(model), *flag],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 2 and run.stdout == ""
    (line,) = run.stderr.splitlines()
    assert line.startswith(f"llmtune: error: {command} runs the model on this machine")
    helped = subprocess.run(
        [sys.executable, "-m", "llmtune.cli", command, "--help"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert flag[0] not in helped.stdout and "--ctx" in helped.stdout
