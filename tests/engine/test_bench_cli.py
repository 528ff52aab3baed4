"""`llmtune bench` on the demo model: llama-bench-like figures, measured beside
predicted, and the measured speed kept as this machine's calibration."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import threading
from pathlib import Path

import pytest


def _llmtune(*args: str, config_dir: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, LLMTUNE_CONFIG_DIR=str(config_dir))
    return subprocess.run(
        [sys.executable, "-m", "llmtune.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def test_bench_measures_and_calibrates(demo_model: Path, tmp_path: Path) -> None:
    result = _llmtune(
        "bench", str(demo_model), "--json", "--repeat", "2", "--prompt-tokens", "64",
        "--gen-tokens", "16", config_dir=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    for key in ("settings", "load_s", "pp_tokens_per_s", "tg_tokens_per_s", "measured",
                "predicted", "peak_rss_bytes"):  # fmt: skip
        assert key in data
    assert data["n_gen"] == 16 and len(data["tg_tokens_per_s"]["runs"]) == 2
    assert data["tg_tokens_per_s"]["mean"] > 0 and data["pp_tokens_per_s"]["mean"] > 0
    assert data["tg_tokens_per_s"]["stdev"] >= 0
    # the worker's peak RSS holds at least the KV cache and the compute buffer
    assert data["peak_rss_bytes"] > 100 * 2**20
    weights = next(c for c in data["comparison"] if c["device"] == "CPU" and c["kind"] == "weights")
    assert abs(weights["error_pct"]) < 0.5
    assert data["calibrated"]
    assert (tmp_path / "calibration.json").is_file()

    # fit on this machine now predicts the speed bench measured
    fit = _llmtune("fit", str(demo_model), "--json", config_dir=tmp_path)
    predicted = json.loads(fit.stdout)["predicted"]["tg_tokens_per_s"]
    assert abs(predicted - data["tg_tokens_per_s"]["mean"]) / predicted < 0.01

    # and the run is in the history, predicted beside measured
    shown = _llmtune("bench", "--history", "--json", config_dir=tmp_path)
    (entry,) = json.loads(shown.stdout)["entries"]
    assert (entry["source"], entry["backend"], entry["folded"]) == ("bench", "CPU", True)
    assert entry["measured_tg"] == pytest.approx(data["tg_tokens_per_s"]["mean"], rel=1e-3)
    assert entry["predicted_tg"] == pytest.approx(data["predicted"]["tg_tokens_per_s"], rel=1e-3)


def test_a_corrupt_calibration_file_means_defaults(demo_model: Path, tmp_path: Path) -> None:
    (tmp_path / "calibration.json").write_text("{not json", encoding="utf-8")
    fit = _llmtune("fit", str(demo_model), "--json", config_dir=tmp_path)
    assert fit.returncode == 0 and json.loads(fit.stdout)["predicted"]["tg_tokens_per_s"] > 0


def test_bench_refuses_what_only_fit_can_do(demo_model: Path, tmp_path: Path) -> None:
    result = _llmtune("bench", str(demo_model), "--gpu", "rtx3090", config_dir=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("llmtune: error:") and "this machine" in result.stderr
    result = _llmtune("bench", str(demo_model), "--repeat", "0", config_dir=tmp_path)
    assert result.returncode == 2 and "--repeat" in result.stderr


def test_bench_table_and_progress_line(demo_model: Path, tmp_path: Path) -> None:
    """As a user sees it in a terminal: a progress line on stderr while it loads
    and runs, then an 80-column table of speeds and buffers on stdout."""
    primary, secondary = pty.openpty()  # stderr is a terminal, stdout a pipe
    env = dict(os.environ, LLMTUNE_CONFIG_DIR=str(tmp_path), COLUMNS="80")
    chunks: list[bytes] = []

    def drain() -> None:  # read as it comes, so a full terminal buffer never blocks bench
        while True:
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # EIO: the other end is closed and everything was read
                return
            if not chunk:
                return
            chunks.append(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "llmtune.cli", "bench", str(demo_model), "--repeat", "2",
             "--prompt-tokens", "64", "--gen-tokens", "16", "--no-calibrate"],
            stdout=subprocess.PIPE, stderr=secondary, text=True, timeout=300, env=env,
        )  # fmt: skip
    finally:
        os.close(secondary)
        reader.join(timeout=10)
        os.close(primary)
    seen = b"".join(chunks)
    assert result.returncode == 0, seen.decode(errors="replace")
    progress = seen.decode(errors="replace")
    assert "\r\x1b[2Kloading" in progress
    assert "run 1/2: 64 prompt + 16 generated tokens" in progress
    assert "run 2/2" in progress
    assert progress.endswith("\r\x1b[2K")  # the line is cleared before the table
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    pp = next(line.split() for line in lines if line.strip().startswith("pp"))
    tg = next(line.split() for line in lines if line.strip().startswith("tg16"))
    assert float(pp[1]) > 0 and float(tg[1]) > 0  # tokens/s, then stdev and predicted
    assert any("predicted" in line and "llama.cpp" in line and "error" in line for line in lines)
    weights = next(line for line in lines if line.split()[:2] == ["CPU", "weights"])
    assert weights.rstrip().endswith("%")
    assert any(line.strip().startswith("peak worker RSS") for line in lines)
    assert "Kept as this machine's calibration" not in result.stdout  # --no-calibrate
    assert not (tmp_path / "calibration.json").exists()


def test_bench_reports_the_vram_the_model_took_and_the_cpu_only_build(
    demo_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a GPU present, bench reports how much more of its memory is used once
    the model is loaded, and that this CPU-only build cannot use it (NVML stands in
    for the GPU this machine lacks)."""
    from fake_pynvml import GIB, FakeGPU, FakeNVML, install
    from llmtune.engine.bench import run_bench
    from llmtune.engine.config import RunConfig
    from llmtune.fit.plan import plan
    from llmtune.fit.settings import Settings
    from llmtune.hardware import nvml
    from llmtune.hardware.host import host_device
    from llmtune.model import read_spec

    gpu = FakeGPU(used=2 * GIB)
    install(monkeypatch, FakeNVML(gpus=[gpu]))
    try:
        settings = Settings(n_ctx=1024, threads=2)
        fit_plan = plan(read_spec(demo_model), [host_device()], settings)
        lines: list[str] = []

        def on_progress(line: str) -> None:
            lines.append(line)
            if line.startswith("loading"):
                gpu.used = 3 * GIB  # the load took a GiB of the GPU

        result = run_bench(
            RunConfig.from_settings(demo_model, fit_plan.settings),
            fit_plan,
            prompt_tokens=16,
            gen_tokens=4,
            repeat=1,
            on_progress=on_progress,
        )
    finally:
        nvml.reset()
    assert result.vram_delta_bytes == GIB
    # This llama-cpp-python is the CPU build: with a GPU present, bench says why it
    # will not see a speed-up, with the command that fixes it.
    assert any('CMAKE_ARGS="-DGGML_CUDA=on -DGGML_RPC=on"' in note for note in result.notes), (
        result.notes
    )
    assert any(line.startswith("loading") for line in lines)
    assert lines[-1] == "run 1/1: 16 prompt + 4 generated tokens"
