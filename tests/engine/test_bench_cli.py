"""`llmtune bench` on the demo model: llama-bench-like figures, measured beside
predicted, and the measured speed kept as this machine's calibration."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


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
