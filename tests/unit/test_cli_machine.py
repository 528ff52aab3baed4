"""What `llmtune fit` says about this machine: CPU-only mode and a CPU-only build."""

from __future__ import annotations

import pytest
from fake_pynvml import FakeGPU, FakeNVML, install

from llmtune import cli
from llmtune.hardware import detect as detect_module
from llmtune.hardware.detect import detect


def test_gpu_with_a_cpu_only_build_warns_with_the_reinstall_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    install(monkeypatch, FakeNVML(gpus=[FakeGPU()]))
    monkeypatch.setattr(detect_module, "supports_gpu_offload", lambda: False)
    devices = detect()
    assert devices[0].is_gpu and "3090" in devices[0].name
    notes = cli._machine_notes(devices)
    assert any(
        'CMAKE_ARGS="-DGGML_CUDA=on"' in n and "llama-cpp-python==0.3.36" in n for n in notes
    )


def test_no_driver_is_cpu_only_in_one_sentence(monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch, FakeNVML(init_error=12))  # NVML_ERROR_LIBRARY_NOT_FOUND
    devices = detect()
    assert [d.kind for d in devices] == ["cpu"]
    notes = cli._machine_notes(devices)
    assert len(notes) == 1 and "CPU-only" in notes[0]
