"""This machine's calibration file (``llmtune.engine.calibration``): a damaged,
hand-edited or oversized file means the default speeds and one sentence saying
so, on ``llmtune fit``'s stderr too; a bench result replaces it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llmtune.engine import calibration
from llmtune.engine.calibration import Measurement, fold, load, machine_key, record
from llmtune.fit.speed import DEFAULT_SPEED_MODEL
from synth import llama_like


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "config"
    monkeypatch.setenv("LLMTUNE_CONFIG_DIR", str(folder))
    return folder


def one_sentence(notice: str | None) -> str:
    assert notice is not None
    assert notice.endswith(".") and "\n" not in notice
    return notice


def calibrate(efficiency: float) -> None:
    """As ``llmtune bench`` does after a CPU run that went at ``efficiency`` x the
    default prediction."""
    assert record(
        Measurement(on_gpu=False, predicted_tg=10.0, measured_tg=10.0 * efficiency),
        DEFAULT_SPEED_MODEL,
    )


def test_a_bench_result_is_what_the_next_plan_uses(folder: Path) -> None:
    calibrate(0.5)
    speed, notice = load()
    assert notice is None
    assert speed.cpu_bandwidth_efficiency == DEFAULT_SPEED_MODEL.cpu_bandwidth_efficiency / 2
    assert [p.name for p in folder.iterdir()] == [calibration.FILE_NAME]  # no temporary file


def test_no_file_means_the_defaults_and_no_notice(folder: Path) -> None:
    assert load() == (DEFAULT_SPEED_MODEL, None)


@pytest.mark.parametrize(
    "content",
    [
        b"{ not json",
        b'{"' + machine_key().encode() + b'": {"cpu_bandwidth',  # cut short by a full disk
        b"\xff\xfe{}",
        b"[]",
        b"null",
        b"[" * 100_000 + b"]" * 100_000,  # deep enough to exhaust a recursive parser
        b"",
    ],
    ids=["syntax", "truncated", "encoding", "list", "null", "deep", "empty"],
)
def test_a_corrupt_file_gives_the_defaults_and_one_sentence(folder: Path, content: bytes) -> None:
    folder.mkdir()
    (folder / calibration.FILE_NAME).write_bytes(content)

    speed, notice = load()

    assert speed == DEFAULT_SPEED_MODEL
    assert "corrupt" in one_sentence(notice)
    assert str(folder / calibration.FILE_NAME) in notice
    assert load()[0] == DEFAULT_SPEED_MODEL


def test_a_file_too_large_to_be_ours_is_not_read_whole(folder: Path) -> None:
    folder.mkdir()
    entry = json.dumps({machine_key(): {"cpu_bandwidth_efficiency": 0.3}})
    (folder / calibration.FILE_NAME).write_text(entry + " " * calibration.MAX_FILE_BYTES)

    speed, notice = load()

    assert speed == DEFAULT_SPEED_MODEL
    assert "too large" in one_sentence(notice)


def test_an_unreadable_file_gives_the_defaults_and_one_sentence(folder: Path) -> None:
    (folder / calibration.FILE_NAME).mkdir(parents=True)

    speed, notice = load()

    assert speed == DEFAULT_SPEED_MODEL
    assert one_sentence(notice).startswith("Could not read the calibration")


def test_a_bench_replaces_a_corrupt_file(folder: Path) -> None:
    folder.mkdir()
    (folder / calibration.FILE_NAME).write_bytes(b"[" * 100_000)
    calibrate(0.5)
    speed, notice = load()
    assert notice is None and speed != DEFAULT_SPEED_MODEL


def test_fit_here_with_a_corrupt_calibration_warns_once_and_plans(tmp_path: Path) -> None:
    (model,) = llama_like(tmp_path / "m.gguf", n_layer=2)
    config, cache = tmp_path / "config", tmp_path / "cache"
    config.mkdir()
    (config / calibration.FILE_NAME).write_text("{ not json")
    cache.mkdir()  # this machine's bandwidth as if measured, so fit does not probe
    (cache / "host_bandwidth.json").write_text(
        json.dumps({"version": 1, "machines": {_bandwidth_key(): {"bandwidth_gbps": 20.0}}})
    )
    env = {**os.environ, "LLMTUNE_CONFIG_DIR": str(config), "LLMTUNE_CACHE_DIR": str(cache)}

    result = subprocess.run(
        [sys.executable, "-m", "llmtune.cli", "fit", str(model), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["predicted"]["tg_tokens_per_s"] > 0
    warnings = [line for line in result.stderr.splitlines() if "calibration" in line]
    assert len(warnings) == 1
    assert warnings[0].startswith("llmtune: warning: The calibration file ")
    assert "corrupt" in warnings[0]


def _bandwidth_key() -> str:
    from llmtune.hardware.bandwidth import machine_key as bandwidth_machine_key

    return bandwidth_machine_key()


def test_a_small_model_calibrates_the_overhead_and_a_large_one_the_bandwidth() -> None:
    """Token time is reading plus a fixed cost per layer. A 135M model's time is
    mostly the fixed cost: its measurement must not make the reading of every
    larger model look slow (calibrating the bandwidth on it predicted 7B models
    at 0.37x their speed)."""
    from dataclasses import replace

    speed = DEFAULT_SPEED_MODEL
    layers = 31
    overhead = layers * speed.cpu_layer_overhead_s  # 3.1 ms
    # Predicted 3.5 ms reading + 3.1 ms overhead; measured 10.2 ms per token.
    small = fold(
        speed,
        Measurement(
            on_gpu=False,
            predicted_tg=1 / (3.5e-3 + overhead),
            measured_tg=1 / 10.2e-3,
            overhead_s=overhead,
            layers=layers,
            measured_bandwidth=True,
        ),
    )
    assert set(small) == {"cpu_layer_overhead_s"}  # the reading stays as it was
    assert small["cpu_layer_overhead_s"] == pytest.approx((10.2e-3 - 3.5e-3) / layers)

    # A 7B: 123 ms reading + 3.3 ms overhead predicted, 115 ms measured: the
    # reading was slower than the truth, and a measured bandwidth may go past 1.0.
    seven_b = Measurement(
        on_gpu=False,
        predicted_tg=1 / (123e-3 + 3.3e-3),
        measured_tg=1 / 115e-3,
        overhead_s=3.3e-3,
        layers=33,
        measured_bandwidth=True,
    )
    large = fold(speed, seven_b)
    assert set(large) == {"cpu_measured_bandwidth_efficiency"}
    assert large["cpu_measured_bandwidth_efficiency"] == pytest.approx(123 / 111.7, rel=1e-3)
    # A peak figure's efficiency stays at most 1.
    peak = fold(speed, replace(seven_b, measured_tg=1 / 50e-3, measured_bandwidth=False))
    assert peak == {"cpu_bandwidth_efficiency": 1.0}

    # An overhead pushed past its bounds leaves the rest to the reading.
    slow = replace(speed, cpu_layer_overhead_s=1e-3)
    fast = fold(
        slow,
        Measurement(
            on_gpu=False,
            predicted_tg=1 / 40e-3,
            measured_tg=1 / 5e-3,
            overhead_s=31e-3,
            layers=31,
            measured_bandwidth=True,
        ),
    )
    assert fast["cpu_layer_overhead_s"] == pytest.approx(5e-6)
    assert fast["cpu_measured_bandwidth_efficiency"] > speed.cpu_measured_bandwidth_efficiency


def test_a_mac_calibrates_its_own_per_layer_time() -> None:
    """The GPU per-layer field holds the consumer class's figure and every class
    scales from it: a Mac measured at 150 us a layer must then plan 150 us a
    layer for itself, not 150 x (Apple's 200 / consumer's 80)."""
    from dataclasses import replace

    from llmtune.fit.speed import CLASS_SPEEDS, gpu_rates
    from llmtune.hardware.profiles import parse_gpu_spec

    mac = parse_gpu_spec("m2-ultra-192g")
    layers = 31
    apple = CLASS_SPEEDS["apple"].layer_overhead_s
    overhead = layers * apple
    changes = fold(
        DEFAULT_SPEED_MODEL,
        Measurement(
            on_gpu=True,
            predicted_tg=1 / (1e-3 + overhead),
            measured_tg=1 / (1e-3 + layers * 150e-6),
            overhead_s=overhead,
            layers=layers,
            device_class="apple",
        ),
    )
    calibrated = replace(DEFAULT_SPEED_MODEL, **changes)
    assert gpu_rates(mac, calibrated).layer_s == pytest.approx(150e-6)
    # A consumer card measured at 150 us plans 150 us too.
    consumer = fold(
        DEFAULT_SPEED_MODEL,
        Measurement(
            on_gpu=True,
            predicted_tg=1 / (1e-3 + layers * 80e-6),
            measured_tg=1 / (1e-3 + layers * 150e-6),
            overhead_s=layers * 80e-6,
            layers=layers,
            device_class="nvidia-consumer",
        ),
    )
    card = parse_gpu_spec("rtx4090")
    assert gpu_rates(card, replace(DEFAULT_SPEED_MODEL, **consumer)).layer_s == pytest.approx(
        150e-6
    )
