"""Every run corrects the prediction: bench, tune and the app's runs fold into this
machine's calibration and leave a bounded, atomic history of predicted against
measured (``llmtune bench --history``); a CPU run far faster than predicted
re-probes the host's bandwidth."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from gguf import GGMLQuantizationType as Q

from llmtune.engine import calibration, history
from llmtune.engine.calibration import REPROBE_RATIO, load, record_run
from llmtune.engine.history import HistoryEntry
from llmtune.fit.plan import plan
from llmtune.fit.settings import Settings
from llmtune.fit.speed import DEFAULT_SPEED_MODEL
from llmtune.hardware.host import host_device
from llmtune.hardware.profiles import parse_gpu_spec
from llmtune.model import ModelSpec, read_spec
from llmtune.units import GIB
from synth import llama_like


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "config"
    monkeypatch.setenv("LLMTUNE_CONFIG_DIR", str(folder))
    return folder


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> ModelSpec:
    (path,) = llama_like(
        tmp_path_factory.mktemp("hist") / "m.gguf",
        n_layer=8, n_embd=2048, n_head=16, n_head_kv=4, n_ff=5632, n_vocab=32000,
    )  # fmt: skip
    return read_spec(path)


HOST = host_device(ram_bytes=64 * GIB, bandwidth_gbps=7.1, measured=True)


def cpu_plan(spec: ModelSpec):
    return plan(spec, [HOST], Settings(n_ctx=512, n_gpu_layers=0))


def no_reprobe() -> tuple[float | None, float | None]:
    raise AssertionError("not expected to re-probe")


def test_a_bench_folds_in_and_is_kept_in_the_history(folder: Path, spec: ModelSpec) -> None:
    p = cpu_plan(spec)
    predicted = p.predicted.tg_tokens_per_s
    recorded = record_run(
        p, predicted * 0.8, p.predicted.pp_tokens_per_s * 2, host_measured=True,
        speed=DEFAULT_SPEED_MODEL, source="bench", model="m", reprobe=no_reprobe,
    )  # fmt: skip
    assert recorded.speed is not None and recorded.speed == load()[0]
    (entry,) = history.read(calibration.machine_key())
    assert (entry.source, entry.backend, entry.model, entry.folded) == ("bench", "CPU", "m", True)
    assert entry.tg_ratio == pytest.approx(0.8, rel=1e-3)
    assert entry.pp_ratio == pytest.approx(2.0, rel=1e-3)
    # The next plan predicts what was measured.
    again = plan(spec, [HOST], Settings(n_ctx=512, n_gpu_layers=0), recorded.speed)
    assert again.predicted.tg_tokens_per_s == pytest.approx(predicted * 0.8, rel=0.02)
    assert sorted(p.name for p in folder.iterdir()) == [calibration.FILE_NAME, history.FILE_NAME]


def test_an_app_run_moves_the_model_half_way(folder: Path, spec: ModelSpec) -> None:
    p = cpu_plan(spec)
    recorded = record_run(
        p, p.predicted.tg_tokens_per_s * 0.64, 0.0, host_measured=True,
        speed=DEFAULT_SPEED_MODEL, source="run", model="m", weight=0.5, reprobe=no_reprobe,
    )  # fmt: skip
    assert recorded.speed is not None
    again = plan(spec, [HOST], Settings(n_ctx=512, n_gpu_layers=0), recorded.speed)
    # Half way, geometrically: 0.8x the prediction rather than 0.64x.
    assert again.predicted.tg_tokens_per_s / p.predicted.tg_tokens_per_s == pytest.approx(
        0.8, rel=0.03
    )
    assert recorded.speed.cpu_compute_efficiency == DEFAULT_SPEED_MODEL.cpu_compute_efficiency
    assert history.read()[-1].source == "run"


def test_a_split_run_is_recorded_but_not_folded(folder: Path, spec: ModelSpec) -> None:
    gpu = parse_gpu_spec("rtx3060-12g")
    p = plan(spec, [gpu, HOST], Settings(n_ctx=512, n_gpu_layers=4))
    recorded = record_run(
        p, 5.0, 0.0, host_measured=True, speed=DEFAULT_SPEED_MODEL, source="tune", model="m",
        reprobe=no_reprobe,
    )  # fmt: skip
    assert recorded.speed is None and load()[0] == DEFAULT_SPEED_MODEL
    (entry,) = history.read()
    assert not entry.folded and entry.backend == "CUDA"


def test_a_cpu_run_far_faster_than_predicted_reprobes_the_host(
    folder: Path, spec: ModelSpec
) -> None:
    """A probe taken on a busy machine (7.1 GB/s against 28.4 quiet) made the
    prediction 4x slow: the run re-probes, and the calibration learns from the
    prediction at the new figure instead of blaming llama.cpp."""
    p = cpu_plan(spec)
    asked: list[int] = []

    def reprobe() -> tuple[float | None, float | None]:
        asked.append(1)
        return 7.1, 28.4

    quiet = replace(HOST, bandwidth_gbps=28.4)
    truth = plan(spec, [quiet], Settings(n_ctx=512, n_gpu_layers=0)).predicted.tg_tokens_per_s
    recorded = record_run(
        p, truth, 0.0, host_measured=True, speed=DEFAULT_SPEED_MODEL, source="bench",
        model="m", reprobe=reprobe,
    )  # fmt: skip
    assert asked == [1] and recorded.host_bandwidth_gbps == 28.4
    assert "7.1 -> 28.4 GB/s" in recorded.entry.note
    # The run went as predicted at 28.4 GB/s: the efficiency barely moves (not clamped at 1.5).
    assert recorded.speed is not None
    assert recorded.speed.cpu_measured_bandwidth_efficiency == pytest.approx(1.0, abs=0.05)
    # A run within REPROBE_RATIO of the prediction does not re-probe.
    record_run(
        p, p.predicted.tg_tokens_per_s * (REPROBE_RATIO - 0.1), 0.0, host_measured=True,
        speed=DEFAULT_SPEED_MODEL, source="bench", model="m", reprobe=no_reprobe,
    )  # fmt: skip


def test_the_history_is_bounded_and_atomic(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(history, "MAX_ENTRIES", 5)
    for i in range(8):
        assert history.append(HistoryEntry("t", "me", "CPU", "bench", f"m{i}", 10.0, float(i)))
    assert [e.model for e in history.read()] == ["m3", "m4", "m5", "m6", "m7"]
    assert os.listdir(folder) == [history.FILE_NAME]  # no temporary file left
    # A corrupt file reads as empty and is replaced whole by the next run.
    (folder / history.FILE_NAME).write_text('{"entries": [{"at": 1')
    assert history.read() == []
    history.append(HistoryEntry("t", "me", "CPU", "run", "again", 10.0, 9.0))
    assert [e.model for e in history.read()] == ["again"]
    # Entries of the wrong shape are skipped, not trusted.
    (folder / history.FILE_NAME).write_text(
        json.dumps({"entries": [{"at": "t", "evil": 1}, {"at": "t", "machine": "me",
                    "backend": "CPU", "source": "run", "model": "ok", "predicted_tg": 1.0,
                    "measured_tg": "fast"}]})
    )  # fmt: skip
    assert history.read() == []


def test_a_full_disk_keeps_the_old_history(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    history.append(HistoryEntry("t", "me", "CPU", "bench", "old", 10.0, 9.0))

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    assert not history.append(HistoryEntry("t", "me", "CPU", "bench", "new", 10.0, 9.0))
    assert [e.model for e in history.read()] == ["old"]
    assert os.listdir(folder) == [history.FILE_NAME]


def _llmtune(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, LLMTUNE_CONFIG_DIR=str(folder))
    return subprocess.run(
        [sys.executable, "-m", "llmtune.cli", *args],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip


def test_bench_history_table_and_json(folder: Path) -> None:
    empty = _llmtune(folder, "bench", "--history")
    assert empty.returncode == 0 and "No runs recorded" in empty.stdout
    me = calibration.machine_key()
    history.append(HistoryEntry("2026-12-04T10:00:00+00:00", me, "CPU", "bench", "Smol", 10.0, 12.0, 100.0, 150.0, True))  # fmt: skip
    history.append(HistoryEntry("2026-12-04T11:00:00+00:00", me, "CUDA", "run", "Big\x1b[31m", 50.0, 40.0))  # fmt: skip
    history.append(HistoryEntry("2026-12-04T12:00:00+00:00", "another machine", "CPU", "bench", "x", 1.0, 1.0))  # fmt: skip
    text = _llmtune(folder, "bench", "--history")
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0].split()[:4] == ["when", "from", "on", "tg"]
    assert len(lines) == 3  # this machine's two runs
    assert "1.20" in lines[1] and " yes  Smol" in lines[1]
    assert "0.80" in lines[2] and " no   Big" in lines[2] and "\x1b" not in text.stdout
    assert max(len(line) for line in lines) <= 80
    data = json.loads(_llmtune(folder, "bench", "--history", "--json").stdout)
    assert data["machine"] == me
    assert [e["tg_ratio"] for e in data["entries"]] == [1.2, 0.8]
    assert data["entries"][0]["pp_ratio"] == 1.5 and data["entries"][1]["pp_ratio"] is None
    last = json.loads(_llmtune(folder, "bench", "--history", "--json", "--last", "1").stdout)
    assert [e["model"] for e in last["entries"]] == ["Big\x1b[31m"]


def test_tune_folds_its_best_trial(
    folder: Path, spec: ModelSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llmtune.commands import tune as tune_command
    from llmtune.engine import tune as tune_engine
    from llmtune.hardware import machine as machine_module
    from llmtune.hardware.machine import Machine, MachineOptions

    here = Machine((HOST,))
    monkeypatch.setattr(machine_module, "machine", lambda *a, **k: here)
    monkeypatch.setattr(tune_command, "machine", lambda *a, **k: here)
    p = cpu_plan(spec)

    class FakeTuner:
        def __init__(self, *args, **kwargs) -> None:
            self.n_ctx = 512

        def run(self):
            best = tune_engine.Trial(
                index=1, stage="threads", settings=p.settings, status="ok",
                tg_tokens_per_s=p.predicted.tg_tokens_per_s * 0.9,
                pp_tokens_per_s=p.predicted.pp_tokens_per_s,
                predicted_tg_tokens_per_s=p.predicted.tg_tokens_per_s,
            )  # fmt: skip
            return tune_engine.TuneResult(
                objective="tg", n_ctx=512, trials=(best,), best=best, plan=p, handoff=None,
                pruned=0,
            )  # fmt: skip

    monkeypatch.setattr(tune_engine, "Tuner", FakeTuner)
    monkeypatch.setattr(tune_command, "read_spec", lambda path: spec, raising=False)
    import llmtune.model as model_module

    monkeypatch.setattr(model_module, "read_spec", lambda path: spec)
    monkeypatch.setattr(
        tune_engine, "TuneSpace", type("S", (), {"around": staticmethod(lambda *a: None)})
    )
    monkeypatch.setattr(tune_command, "tune_dict", lambda *a: {}, raising=False)
    import llmtune.engine.report as report

    monkeypatch.setattr(report, "tune_dict", lambda *a: {})
    args = argparse.Namespace(
        threads=None, gen_tokens=64, repeat=1, max_trials=1, prompt_tokens=None,
        json=True, objective="tg", model=str(spec.path), quant=None, list_gpus=False,
    )  # fmt: skip
    assert tune_command.run(args, Settings(n_ctx=512), MachineOptions(), ()) == 0
    (entry,) = history.read()
    assert (entry.source, entry.folded) == ("tune", True)
    assert entry.tg_ratio == pytest.approx(0.9, rel=1e-3)


def test_a_small_model_does_not_calibrate_prompt_speed(folder: Path, tmp_path: Path) -> None:
    """The demo model's prompt runs at a fraction of its FLOPs' speed (fixed costs):
    folding that into the compute efficiency predicted a 13B's prompt speed at a
    third of what llama-bench measured (3.3 against 10.1 tokens/s)."""
    (path,) = llama_like(
        tmp_path / "tiny.gguf", n_layer=30, n_embd=576, n_head=9, n_head_kv=3, n_ff=1536,
        n_vocab=49152, weight_type=Q.Q4_0, file_type=2,
    )  # fmt: skip
    tiny = read_spec(path)
    quiet = replace(HOST, bandwidth_gbps=28.4)
    p = plan(tiny, [quiet], Settings(n_ctx=512, n_gpu_layers=0))
    assert (
        p.predicted.tg_overhead_s * 4 > 1 / p.predicted.tg_tokens_per_s - p.predicted.tg_overhead_s
    )
    recorded = record_run(
        p, p.predicted.tg_tokens_per_s * 0.6, p.predicted.pp_tokens_per_s * 0.2,
        host_measured=True, speed=DEFAULT_SPEED_MODEL, source="bench", model="tiny",
        reprobe=no_reprobe,
    )  # fmt: skip
    assert recorded.speed is not None
    assert recorded.speed.cpu_compute_efficiency == DEFAULT_SPEED_MODEL.cpu_compute_efficiency
    assert recorded.speed.cpu_layer_overhead_s != DEFAULT_SPEED_MODEL.cpu_layer_overhead_s
