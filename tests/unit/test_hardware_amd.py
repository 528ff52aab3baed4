"""AMD GPUs through a scripted amdsmi: fields, failures, processes, Devices and the build warning."""

from __future__ import annotations

import logging
import os
import sys
import types

import pytest

import fake_pynvml
from fake_amdsmi import (
    AMDSMI_STATUS_DRM_ERROR,
    AMDSMI_STATUS_NOT_SUPPORTED,
    GIB,
    MIB,
    FakeAmdSmi,
    FakeProc,
    FakeRadeon,
    install,
    uninstall,
)
from fake_pynvml import NVML_ERROR_LIBRARY_NOT_FOUND, FakeGPU, FakeNVML
from llmtune.hardware import amd, gpus, nvml
from llmtune.hardware.detect import (
    HIP_REINSTALL_COMMAND,
    VULKAN_REINSTALL_COMMAND,
    detect,
    gpu_build_warning,
    gpu_device,
)
from llmtune.hardware.machine import machine
from llmtune.hardware.nvml import GPUProcess, GPUState
from llmtune.telemetry.sampler import NvmlGPUProbe


@pytest.fixture(autouse=True)
def _fresh(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("LLMTUNE_CACHE_DIR", str(tmp_path / "cache"))
    fake_pynvml.install(monkeypatch, FakeNVML(init_error=NVML_ERROR_LIBRARY_NOT_FOUND))
    yield
    amd.reset()
    nvml.reset()


def test_two_gpus_with_every_field(monkeypatch: pytest.MonkeyPatch) -> None:
    me = os.getpid()
    install(
        monkeypatch,
        FakeAmdSmi(
            gpus=[
                FakeRadeon(
                    used=6 * GIB,
                    gfx_activity=87,
                    processes=[FakeProc(pid=4242, vram=3 * GIB), FakeProc(pid=me, vram=2 * GIB)],
                ),
                FakeRadeon(name="AMD Instinct MI300X", total=192 * GIB, used=0, uuid="mi300x"),
            ]
        ),
    )
    assert amd.amd_status() == (True, "amdsmi sees 2 AMD GPUs.")
    first, second = amd.snapshot()
    assert first == GPUState(
        index=0,
        name="AMD Radeon RX 7900 XTX",
        uuid="2eff744c-0000-1000-80f0-5a4c6c6b79b1",
        memory_total_bytes=24560 * MIB,
        memory_used_bytes=6 * GIB,
        memory_free_bytes=24560 * MIB - 6 * GIB,
        utilization_gpu_percent=87,
        processes=(
            GPUProcess(pid=4242, used_bytes=3 * GIB, kind="compute"),
            GPUProcess(pid=me, used_bytes=2 * GIB, kind="compute"),
        )
        if 4242 < me
        else (
            GPUProcess(pid=me, used_bytes=2 * GIB, kind="compute"),
            GPUProcess(pid=4242, used_bytes=3 * GIB, kind="compute"),
        ),
        other_processes_bytes=3 * GIB,  # this process does not count as another's
        backend="ROCm",
    )
    assert (second.name, second.memory_total_bytes, second.backend) == (
        "AMD Instinct MI300X",
        192 * GIB,
        "ROCm",
    )
    # The worker's memory is not "other processes'" either.
    assert amd.snapshot(exclude_pids=[4242])[0].other_processes_bytes == 0


def test_old_process_handles_are_read_one_by_one(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = install(
        monkeypatch,
        FakeAmdSmi(gpus=[FakeRadeon(processes=[FakeProc(pid=77, vram=GIB)])], process_handles=True),
    )
    (state,) = amd.snapshot()
    assert state.processes == (GPUProcess(pid=77, used_bytes=GIB, kind="compute"),)
    assert fake.calls["amdsmi_get_gpu_process_info"] == 1


def test_unsupported_calls_are_asked_once_and_transient_ones_retried(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    gpu = FakeRadeon(
        gfx_activity="N/A",
        errors={
            "amdsmi_get_gpu_process_list": AMDSMI_STATUS_NOT_SUPPORTED,
            "amdsmi_get_gpu_memory_usage": AMDSMI_STATUS_DRM_ERROR,
        },
    )
    fake = install(monkeypatch, FakeAmdSmi(gpus=[gpu]))
    with caplog.at_level(logging.INFO, logger="llmtune.hardware.amd"):
        for _ in range(3):
            (state,) = amd.snapshot()
    assert state.memory_total_bytes == 24560 * MIB
    assert state.memory_used_bytes is None and state.memory_free_bytes is None
    assert state.utilization_gpu_percent is None  # "N/A"
    assert state.processes is None and state.other_processes_bytes is None
    assert fake.calls["amdsmi_get_gpu_process_list"] == 1  # not supported: asked once
    assert fake.calls["amdsmi_get_gpu_memory_usage"] == 3  # a DRM error: asked every tick
    assert fake.calls["amdsmi_get_gpu_asic_info"] == 1  # the name is read once
    messages = [r.getMessage() for r in caplog.records]
    assert sum("amdsmi_get_gpu_memory_usage" in m for m in messages) == 1  # logged once


@pytest.mark.parametrize(
    "script",
    [
        FakeAmdSmi(init_error=AMDSMI_STATUS_DRM_ERROR),  # no driver
        FakeAmdSmi(gpus=[]),  # no GPU
    ],
)
def test_no_amd_gpu_is_an_empty_snapshot(monkeypatch: pytest.MonkeyPatch, script) -> None:
    install(monkeypatch, script)
    available, sentence = amd.amd_status()
    assert not available and sentence
    assert amd.snapshot() == ()


def test_no_library_at_all(monkeypatch: pytest.MonkeyPatch) -> None:
    uninstall(monkeypatch)
    assert amd.snapshot() == ()
    available, sentence = amd.amd_status()
    assert not available and sentence.startswith("amdsmi is not installed")


def test_a_crashing_library_never_reaches_the_caller(monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("amdsmi")
    module.amdsmi_init = lambda *a: None  # type: ignore[attr-defined]

    calls = {"n": 0}

    def handles():
        calls["n"] += 1
        if calls["n"] > 1:
            raise MemoryError("the library fell over")
        return [object()]

    module.amdsmi_get_processor_handles = handles  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "amdsmi", module)
    amd.reset()
    assert amd.amd_status()[0]
    (lost,) = amd.snapshot()  # handles failed this tick: the GPU is reported lost
    assert lost.lost and lost.backend == "ROCm"


def test_amd_gpus_become_rocm_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch, FakeAmdSmi(gpus=[FakeRadeon(used=4 * GIB)]))
    radeon, host = detect(probe_bandwidth=False)
    assert (radeon.kind, radeon.ggml_backend, radeon.buffer_name) == ("gpu", "ROCm", "ROCm0")
    assert radeon.capacity_bytes == 24560 * MIB
    assert radeon.free_bytes == 24560 * MIB - 4 * GIB
    assert host.kind == "cpu"
    # The GPU is there: no "running CPU-only" sentence from NVML.
    m = machine(probe_bandwidth=False)
    assert [d.ggml_backend for d in m.devices] == ["ROCm", "CPU"]
    assert not [n for n in m.notices if n.kind == "no_gpu_driver"]


def test_nvidia_and_amd_together(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_pynvml.install(monkeypatch, FakeNVML(gpus=[FakeGPU()]))
    install(monkeypatch, FakeAmdSmi(gpus=[FakeRadeon()]))
    states = gpus.snapshot()
    assert [(s.backend, s.index) for s in states] == [("CUDA", 0), ("ROCm", 0)]
    devices = [gpu_device(s) for s in states]
    assert [d.buffer_name for d in devices if d] == ["CUDA0", "ROCm0"]


def test_the_monitor_samples_amd_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch, FakeAmdSmi(gpus=[FakeRadeon(used=5 * GIB, gfx_activity=42)]))
    (sample,) = NvmlGPUProbe()()
    assert (sample.memory_used_bytes, sample.utilization_percent) == (5 * GIB, 42.0)


def test_cpu_only_build_names_hip_and_vulkan(monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch, FakeAmdSmi(gpus=[FakeRadeon()]))
    devices = detect(probe_bandwidth=False)
    warning = gpu_build_warning(devices, supports_offload=False)
    assert warning is not None
    assert warning.startswith("AMD Radeon RX 7900 XTX found, but this llama-cpp-python build")
    assert HIP_REINSTALL_COMMAND in warning and VULKAN_REINSTALL_COMMAND in warning
    assert '"-DGGML_HIP=on -DGGML_RPC=on"' in warning
    assert '"-DGGML_VULKAN=on -DGGML_RPC=on"' in warning
    assert "\n" not in warning


def test_rocm_driver_without_amdsmi_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    uninstall(monkeypatch)
    real_exists = os.path.exists
    monkeypatch.setattr(os.path, "exists", lambda p: p == amd.KFD_PATH or real_exists(p))
    available, sentence = gpus.gpu_status()
    assert not available and "pip install amdsmi" in sentence
