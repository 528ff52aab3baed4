"""NVML access through a scripted pynvml: fields, failures, processes, bandwidth."""

from __future__ import annotations

import logging
import os
import sys

import pytest

from fake_pynvml import (
    GIB,
    MIB,
    NVML_ERROR_DRIVER_NOT_LOADED,
    NVML_ERROR_LIBRARY_NOT_FOUND,
    NVML_ERROR_NOT_SUPPORTED,
    NVML_ERROR_UNKNOWN,
    FakeGPU,
    FakeNVML,
    FakeProcess,
    install,
)
from llmtune.hardware import nvml
from llmtune.hardware.nvml import GPUProcess, GPUState

RTX_4090 = dict(
    name="NVIDIA GeForce RTX 4090",
    uuid="GPU-4090",
    total=24564 * MIB,
    max_clock_memory=10501,
    bus_width=384,
)


@pytest.fixture(autouse=True)
def _fresh_nvml():
    nvml.reset()
    yield
    nvml.reset()


def test_two_gpus_with_every_field(monkeypatch):
    install(
        monkeypatch,
        FakeNVML(
            gpus=[
                FakeGPU(
                    uuid="GPU-3090",
                    used=2 * GIB,
                    utilization_gpu=97,
                    utilization_memory=61,
                    temperature=71,
                    power_mw=312_456,
                    power_limit_mw=350_000,
                    clock_graphics=1905,
                    clock_memory=9751,
                    pcie_gen=3,
                    pcie_width=8,
                ),
                FakeGPU(**RTX_4090),
            ]
        ),
    )
    assert nvml.nvml_status() == (True, "NVML sees 2 NVIDIA GPUs (driver 550.54.14).")
    first, second = nvml.snapshot()
    assert first == GPUState(
        index=0,
        name="NVIDIA GeForce RTX 3090",
        uuid="GPU-3090",
        memory_total_bytes=24 * GIB,
        memory_used_bytes=2 * GIB,
        memory_free_bytes=22 * GIB,
        utilization_gpu_percent=97,
        utilization_memory_percent=61,
        temperature_c=71,
        power_draw_w=312.456,
        power_limit_w=350.0,
        clock_graphics_mhz=1905,
        clock_memory_mhz=9751,
        max_clock_memory_mhz=9751,
        memory_bus_width_bits=384,
        pcie_generation=3,
        pcie_width=8,
        pcie_max_generation=4,
        pcie_max_width=16,
        processes=(),
        other_processes_bytes=0,
    )
    assert second.index == 1
    assert second.name == "NVIDIA GeForce RTX 4090"
    assert second.memory_free_bytes == 24564 * MIB
    assert second.bandwidth_gbps == pytest.approx(1008.0, abs=0.1)
    assert first.other_processes_note() is None


@pytest.mark.parametrize(
    ("bus_bits", "max_memory_mhz", "published_gbps"),
    [
        (384, 9751, 936.0),  # RTX 3090, GDDR6X 19.5 Gbit/s: NVML reports half the data rate
        (384, 10501, 1008.0),  # RTX 4090, GDDR6X 21 Gbit/s
        (192, 7501, 360.0),  # RTX 3060 12GB, GDDR6 15 Gbit/s
        (256, 5001, 320.0),  # Tesla T4, GDDR6
        (5120, 1215, 1555.0),  # A100 40GB, HBM2
        (5120, 1593, 2039.0),  # A100 80GB, HBM2e
    ],
)
def test_bandwidth_from_bus_width_and_nvml_memory_clock(bus_bits, max_memory_mhz, published_gbps):
    state = GPUState(index=0, memory_bus_width_bits=bus_bits, max_clock_memory_mhz=max_memory_mhz)
    assert state.bandwidth_gbps == pytest.approx(published_gbps, rel=0.002)


def test_bandwidth_uses_the_max_memory_clock_not_the_idle_one(monkeypatch):
    install(monkeypatch, FakeNVML(gpus=[FakeGPU(clock_memory=405)]))
    (gpu,) = nvml.snapshot()
    assert gpu.clock_memory_mhz == 405
    assert gpu.bandwidth_gbps == pytest.approx(936.1, abs=0.1)


def test_bandwidth_unknown_without_bus_width():
    assert GPUState(index=0, max_clock_memory_mhz=9751).bandwidth_gbps is None


def test_unsupported_field_is_none_tried_once_and_logged_once(monkeypatch, caplog):
    fake = install(
        monkeypatch,
        FakeNVML(
            gpus=[
                FakeGPU(
                    errors={
                        "nvmlDeviceGetPowerUsage": NVML_ERROR_NOT_SUPPORTED,
                        "nvmlDeviceGetMemoryBusWidth": NVML_ERROR_NOT_SUPPORTED,
                    }
                )
            ]
        ),
    )
    with caplog.at_level(logging.INFO, logger="llmtune.hardware.nvml"):
        states = [nvml.snapshot()[0] for _ in range(3)]
    assert all(s.power_draw_w is None and s.bandwidth_gbps is None for s in states)
    assert all(s.power_limit_w == 350.0 and s.temperature_c == 40 for s in states)
    assert fake.calls["nvmlDeviceGetPowerUsage"] == 1
    assert fake.calls["nvmlDeviceGetMemoryBusWidth"] == 1
    assert fake.calls["nvmlDeviceGetTemperature"] == 3
    power_logs = [r for r in caplog.records if "nvmlDeviceGetPowerUsage" in r.getMessage()]
    assert len(power_logs) == 1


def test_static_facts_are_read_once(monkeypatch):
    fake = install(monkeypatch, FakeNVML(gpus=[FakeGPU()]))
    for _ in range(4):
        nvml.snapshot()
    assert fake.calls["nvmlInit"] == 1
    assert fake.calls["nvmlDeviceGetName"] == 1
    assert fake.calls["nvmlDeviceGetMaxClockInfo"] == 1
    assert fake.calls["nvmlDeviceGetMemoryInfo"] == 4


def test_a_transient_error_is_retried_next_tick(monkeypatch):
    gpu = FakeGPU(errors={"nvmlDeviceGetUtilizationRates": NVML_ERROR_UNKNOWN})
    fake = install(monkeypatch, FakeNVML(gpus=[gpu]))
    assert nvml.snapshot()[0].utilization_gpu_percent is None
    gpu.errors.clear()
    gpu.utilization_gpu = 55
    assert nvml.snapshot()[0].utilization_gpu_percent == 55
    assert fake.calls["nvmlDeviceGetUtilizationRates"] == 2


def test_a_non_nvml_exception_becomes_none(monkeypatch):
    gpu = FakeGPU(errors={"nvmlDeviceGetTemperature": RuntimeError("binding bug")})
    install(monkeypatch, FakeNVML(gpus=[gpu]))
    (state,) = nvml.snapshot()
    assert state.temperature_c is None
    assert state.memory_total_bytes == 24 * GIB


def test_no_library_means_cpu_only_with_a_sentence(monkeypatch):
    fake = install(monkeypatch, FakeNVML(init_error=NVML_ERROR_LIBRARY_NOT_FOUND))
    assert nvml.snapshot() == ()
    assert nvml.snapshot() == ()
    ok, reason = nvml.nvml_status()
    assert not ok
    assert reason == (
        "No NVIDIA driver found (the NVML library libnvidia-ml is missing): running CPU-only."
    )
    assert fake.calls["nvmlInit"] == 1  # initialised lazily, once


@pytest.mark.parametrize(
    ("init_error", "gpus", "sentence"),
    [
        (NVML_ERROR_DRIVER_NOT_LOADED, [], "The NVIDIA driver is installed but not loaded"),
        (None, [], "The NVIDIA driver is loaded but reports no GPU"),
        (NVML_ERROR_UNKNOWN, [], "NVML could not start (Unknown Error)"),
    ],
)
def test_other_reasons_for_cpu_only(monkeypatch, init_error, gpus, sentence):
    install(monkeypatch, FakeNVML(gpus=gpus, init_error=init_error))
    ok, reason = nvml.nvml_status()
    assert not ok
    assert reason.startswith(sentence)
    assert reason.endswith("running CPU-only.")
    assert nvml.snapshot() == ()


def test_nvidia_ml_py_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` fail
    ok, reason = nvml.nvml_status()
    assert not ok
    assert "nvidia-ml-py is not installed" in reason
    assert nvml.snapshot() == ()


def test_the_real_binding_never_raises():
    ok, reason = nvml.nvml_status()  # this machine: whatever it has
    assert isinstance(ok, bool)
    assert reason.endswith(".")
    assert ok or "CPU-only" in reason
    assert isinstance(nvml.snapshot(), tuple)


def test_other_processes_exclude_the_worker_and_this_process(monkeypatch):
    worker_pid = 4242
    gpu = FakeGPU(
        used=11 * GIB,
        compute=[
            FakeProcess(pid=100, usedGpuMemory=2 * GIB),
            FakeProcess(pid=worker_pid, usedGpuMemory=7 * GIB),
            FakeProcess(pid=os.getpid(), usedGpuMemory=300 * MIB),
        ],
        graphics=[
            FakeProcess(pid=300, usedGpuMemory=int(1.1 * GIB)),
            FakeProcess(pid=100, usedGpuMemory=2 * GIB),  # both contexts, counted once
            FakeProcess(pid=500, usedGpuMemory=None),  # Windows WDDM: unknown
        ],
    )
    install(monkeypatch, FakeNVML(gpus=[gpu]))
    (state,) = nvml.snapshot(exclude_pids=[worker_pid])
    assert state.processes is not None
    assert [p.pid for p in state.processes] == sorted(p.pid for p in state.processes)
    assert set(state.processes) == {
        GPUProcess(pid=100, used_bytes=2 * GIB, kind="compute+graphics"),
        GPUProcess(pid=300, used_bytes=int(1.1 * GIB), kind="graphics"),
        GPUProcess(pid=500, used_bytes=None, kind="graphics"),
        GPUProcess(pid=os.getpid(), used_bytes=300 * MIB, kind="compute"),
        GPUProcess(pid=worker_pid, used_bytes=7 * GIB, kind="compute"),
    }
    assert state.other_processes_bytes == int(3.1 * GIB)
    assert state.other_processes_note() == "other processes hold 3.10 GiB of this GPU"
    # Without the worker's pid, the worker counts as another process.
    (state,) = nvml.snapshot()
    assert state.other_processes_bytes == int(10.1 * GIB)


def test_process_lists_unavailable_means_unknown_not_zero(monkeypatch):
    gpu = FakeGPU(
        errors={
            "nvmlDeviceGetComputeRunningProcesses": NVML_ERROR_NOT_SUPPORTED,
            "nvmlDeviceGetGraphicsRunningProcesses": NVML_ERROR_NOT_SUPPORTED,
        }
    )
    install(monkeypatch, FakeNVML(gpus=[gpu]))
    (state,) = nvml.snapshot()
    assert state.processes is None
    assert state.other_processes_bytes is None
    assert state.other_processes_note() is None


def test_one_process_list_is_enough(monkeypatch):
    gpu = FakeGPU(
        compute=[FakeProcess(pid=100, usedGpuMemory=GIB)],
        errors={"nvmlDeviceGetGraphicsRunningProcesses": NVML_ERROR_NOT_SUPPORTED},
    )
    install(monkeypatch, FakeNVML(gpus=[gpu]))
    assert nvml.snapshot()[0].other_processes_bytes == GIB


def test_a_gpu_that_disappears(monkeypatch):
    gpus = [FakeGPU(uuid="GPU-a"), FakeGPU(**RTX_4090)]
    fake = install(monkeypatch, FakeNVML(gpus=gpus))
    assert [s.lost for s in nvml.snapshot()] == [False, False]

    gpus[1].lost = True  # falls off the bus: every call says GPU_IS_LOST
    first, second = nvml.snapshot()
    assert first.uuid == "GPU-a" and first.memory_total_bytes == 24 * GIB
    assert second == GPUState(index=1, lost=True)

    fake.gpus.pop()  # and the driver stops counting it
    (only,) = nvml.snapshot()
    assert only.uuid == "GPU-a" and not only.lost


def test_a_lost_gpu_mid_tick_stops_being_asked(monkeypatch):
    gpu = FakeGPU(errors={"nvmlDeviceGetMemoryInfo": 15})  # NVML_ERROR_GPU_IS_LOST
    fake = install(monkeypatch, FakeNVML(gpus=[gpu]))
    (state,) = nvml.snapshot()
    assert state == GPUState(index=0, lost=True)
    assert fake.calls["nvmlDeviceGetTemperature"] == 0
    gpu.errors.clear()  # lost is not "unsupported": the next tick asks again
    assert nvml.snapshot()[0].memory_total_bytes == 24 * GIB
