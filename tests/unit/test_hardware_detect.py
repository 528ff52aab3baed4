"""Detection: NVML GPUs as Devices, the host, llama.cpp's system info and the build warning."""

from __future__ import annotations

import os
import subprocess
import sys
import types

import pytest

from fake_pynvml import (
    GIB,
    MIB,
    NVML_ERROR_LIBRARY_NOT_FOUND,
    NVML_ERROR_NOT_SUPPORTED,
    FakeGPU,
    FakeNVML,
    FakeProcess,
    install,
)
from llmtune.hardware import bandwidth, nvml
from llmtune.hardware.detect import (
    CUDA_REINSTALL_COMMAND,
    HostState,
    cpu_features,
    detect,
    gpu_build_warning,
    host_state,
    llama_system_info,
    match_gpu_profile,
    parse_system_info,
    process_rss_bytes,
    supports_gpu_offload,
)
from llmtune.hardware.device import Device
from llmtune.hardware.host import DEFAULT_HOST_BANDWIDTH_GBPS
from llmtune.hardware.machine import machine
from llmtune.hardware.nvml import nvml_status, snapshot
from llmtune.hardware.profiles import DEFAULT_GPU_BANDWIDTH_GBPS, parse_gpu_spec

NO_BUS_WIDTH = {"nvmlDeviceGetMemoryBusWidth": NVML_ERROR_NOT_SUPPORTED}

# What llama-cpp-python 0.3.36 (CPU build) prints on an AVX-512 machine.
CPU_BUILD_INFO = (
    b"CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX_VNNI = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | "
    b"BMI2 = 1 | AVX512 = 1 | AVX512_VBMI = 1 | AVX512_VNNI = 1 | AVX512_BF16 = 1 | "
    b"LLAMAFILE = 1 | OPENMP = 1 | REPACK = 1 | "
)
CUDA_BUILD_INFO = (
    "CUDA : ARCHS = 500,610,700,750,800,860 | USE_GRAPHS = 1 | PEER_MAX_BATCH_SIZE = 128 | "
    "CPU : SSE3 = 1 | AVX = 1 | AVX2 = 1 | AVX512 = 0 | REPACK = 1 | "
)


PROBE_BYTES = 4 * MIB


@pytest.fixture(autouse=True)
def probes(monkeypatch, tmp_path):
    """A fresh NVML session and an empty cache; counts the bandwidth probes,
    each a real measurement of a small array."""
    monkeypatch.setenv("LLMTUNE_CACHE_DIR", str(tmp_path / "cache"))
    runs = []
    real = bandwidth.measure_host_bandwidth

    def counted(*args, **kwargs):
        runs.append(1)
        return real(array_bytes=PROBE_BYTES, repeats=2)

    monkeypatch.setattr(bandwidth, "measure_host_bandwidth", counted)
    nvml.reset()
    yield runs
    nvml.reset()


def test_detect_gpus_then_host(monkeypatch):
    install(
        monkeypatch,
        FakeNVML(
            gpus=[
                FakeGPU(used=3 * GIB),  # RTX 3090, bandwidth from NVML
                FakeGPU(name="NVIDIA GeForce RTX 3060", total=12288 * MIB, errors=NO_BUS_WIDTH),
                FakeGPU(name="NVIDIA Mystery Card", total=16 * GIB, errors=NO_BUS_WIDTH),
            ]
        ),
    )
    rtx3090, rtx3060, mystery, host = detect()

    assert (rtx3090.kind, rtx3090.index, rtx3090.source) == ("gpu", 0, "detected")
    assert rtx3090.capacity_bytes == 24 * GIB
    assert rtx3090.free_bytes == 21 * GIB  # what NVML reports free now
    assert rtx3090.bandwidth_gbps == pytest.approx(936.1, abs=0.1)
    assert rtx3090.bandwidth_known and rtx3090.profile == "rtx3090"
    assert rtx3090.fp16_tflops == 142.0

    assert rtx3060.index == 1
    assert rtx3060.bandwidth_gbps == 360.0  # from the rtx3060-12g profile
    assert rtx3060.bandwidth_known and rtx3060.profile == "rtx3060-12g"

    assert mystery.bandwidth_gbps == DEFAULT_GPU_BANDWIDTH_GBPS
    assert not mystery.bandwidth_known and mystery.profile == ""

    assert host.kind == "cpu" and host.bandwidth_known  # measured by the probe


def test_detect_without_nvml_is_just_the_host(monkeypatch):
    install(monkeypatch, FakeNVML(init_error=NVML_ERROR_LIBRARY_NOT_FOUND))
    (host,) = detect()
    assert host.kind == "cpu" and host.capacity_bytes > 0


def test_detect_skips_lost_gpus_and_gpus_without_memory(monkeypatch):
    gpus = [
        FakeGPU(uuid="GPU-a"),
        FakeGPU(lost=True),
        FakeGPU(errors={"nvmlDeviceGetMemoryInfo": NVML_ERROR_NOT_SUPPORTED}),
    ]
    install(monkeypatch, FakeNVML(gpus=gpus))
    devices = detect()
    assert [(d.kind, d.index) for d in devices] == [("gpu", 0), ("cpu", 0)]


def test_detect_uses_the_cached_host_bandwidth(monkeypatch, probes):
    install(monkeypatch, FakeNVML())
    bandwidth.store_host_bandwidth(bandwidth.BandwidthMeasurement(87.5, 256 * MIB, 5, 8))
    (host,) = detect()
    assert host.bandwidth_gbps == 87.5 and host.bandwidth_known
    assert probes == []


def test_first_detection_measures_the_host_bandwidth_once(monkeypatch, probes):
    install(monkeypatch, FakeNVML())
    (host,) = detect()
    # This machine's measured bandwidth, not the DDR4-3200 guess, and it is kept.
    assert host.bandwidth_known and host.bandwidth_gbps > 0
    assert host.bandwidth_gbps == bandwidth.cached_host_bandwidth_gbps()
    assert probes == [1]
    (again,) = detect()
    assert again.bandwidth_gbps == host.bandwidth_gbps and probes == [1]


def test_detection_that_must_not_wait_never_probes(monkeypatch, probes):
    install(monkeypatch, FakeNVML())
    (host,) = detect(probe_bandwidth=False)
    assert host.bandwidth_gbps == DEFAULT_HOST_BANDWIDTH_GBPS and not host.bandwidth_known
    assert probes == []


@pytest.mark.parametrize(
    ("nvml_name", "memory_mib", "profile"),
    [
        ("NVIDIA GeForce RTX 3090", 24576, "rtx3090"),
        ("NVIDIA GeForce RTX 3060", 12288, "rtx3060-12g"),
        ("NVIDIA GeForce RTX 3060 Laptop GPU", 6144, None),  # not the 12 GiB desktop card
        ("NVIDIA GeForce RTX 4070 Ti", 12282, "rtx4070ti"),  # not the plain 4070
        ("NVIDIA GeForce RTX 4060 Ti", 16380, "rtx4060ti-16g"),
        ("NVIDIA A10", 23028, "a10"),
        ("NVIDIA A100-SXM4-80GB", 81920, "a100-80g"),  # a100, not a10
        ("NVIDIA A100-PCIE-40GB", 40960, "a100-40g"),
        ("Tesla T4", 15360, "t4"),
        ("NVIDIA RTX A6000", 49140, "rtxa6000"),
        ("NVIDIA RTX A2000 12GB", 12288, None),  # no profile
    ],
)
def test_match_gpu_profile(nvml_name, memory_mib, profile):
    found = match_gpu_profile(nvml_name, memory_mib * MIB)
    assert (found.key if found else None) == profile


def test_parse_system_info_of_this_cpu_build():
    info = parse_system_info(CPU_BUILD_INFO)
    assert list(info) == ["CPU"]
    assert info["CPU"]["AVX2"] == "1" and info["CPU"]["REPACK"] == "1"
    features = cpu_features(info)
    assert features["AVX512"] and features["AVX2"] and features["REPACK"]
    assert len(features) == 15


def test_parse_system_info_of_a_cuda_build():
    info = parse_system_info(CUDA_BUILD_INFO)
    assert info["CUDA"] == {
        "ARCHS": "500,610,700,750,800,860",
        "USE_GRAPHS": "1",
        "PEER_MAX_BATCH_SIZE": "128",
    }
    assert cpu_features(info) == {
        "SSE3": True,
        "AVX": True,
        "AVX2": True,
        "AVX512": False,
        "REPACK": True,
    }


@pytest.mark.parametrize("text", ["", "|||", "garbage without equals", b"\xff\xfe"])
def test_parse_system_info_tolerates_odd_text(text):
    assert cpu_features(parse_system_info(text)) == {}


def test_parse_system_info_of_an_old_build_without_backend_names():
    info = parse_system_info("AVX = 1 | AVX2 = 1 | AVX512 = 0 | FMA = 1 |")
    assert cpu_features(info) == {"AVX": True, "AVX2": True, "AVX512": False, "FMA": True}


def test_the_installed_llama_cpp():
    info = llama_system_info()
    if info is None:
        pytest.skip("llama_cpp does not load here")
    assert "CPU" in parse_system_info(info)
    assert supports_gpu_offload() in (True, False)


def test_llama_cpp_that_will_not_import(monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    assert llama_system_info() is None
    assert supports_gpu_offload() is None


def _detected_gpu(name="NVIDIA GeForce RTX 3090", index=0):
    return Device(
        name=name,
        kind="gpu",
        index=index,
        capacity_bytes=24 * GIB,
        free_bytes=24 * GIB,
        bandwidth_gbps=936.0,
        source="detected",
    )


def test_gpu_build_warning_names_the_reinstall_command():
    warning = gpu_build_warning([_detected_gpu()], supports_offload=False)
    assert warning is not None
    assert warning.startswith("NVIDIA GeForce RTX 3090 found, but this llama-cpp-python build is")
    assert warning.endswith(
        'CMAKE_ARGS="-DGGML_CUDA=on -DGGML_RPC=on" pip install --force-reinstall --no-cache-dir '
        "llama-cpp-python==0.3.36"
    )
    assert CUDA_REINSTALL_COMMAND in warning
    assert "\n" not in warning
    two = gpu_build_warning([_detected_gpu(), _detected_gpu(index=1)], supports_offload=False)
    assert two is not None and two.startswith("2 NVIDIA GPUs found")


@pytest.mark.parametrize(
    ("devices", "supports_offload"),
    [
        ("detected", True),  # a CUDA build: nothing to say
        ("detected", None),  # llama.cpp did not load: another message's job
        ("profile", False),  # planning for a card that is not here
        ("none", False),  # no GPU at all
    ],
)
def test_gpu_build_warning_silent(devices, supports_offload):
    chosen = {
        "detected": [_detected_gpu()],
        "profile": [parse_gpu_spec("rtx3090")],
        "none": [],
    }[devices]
    assert gpu_build_warning(chosen, supports_offload) is None


def test_host_state_of_this_machine():
    state = host_state(pid=os.getpid())
    assert state.ram_total_bytes and state.ram_total_bytes > 0
    assert state.ram_available_bytes is not None
    assert 0 <= state.ram_available_bytes <= state.ram_total_bytes
    assert state.swap_total_bytes is not None and state.swap_total_bytes >= 0
    assert state.cores_logical and state.cores_physical
    assert state.cores_logical >= state.cores_physical
    assert state.rss_bytes and state.rss_bytes > 0
    later = host_state()
    load = later.load_percent_since(state)
    assert load is None or 0.0 <= load <= 100.0


def test_rss_of_a_process_that_is_gone():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert process_rss_bytes(child.pid) is None


def test_load_percent_between_two_states():
    before = HostState(cpu_busy_s=100.0, cpu_total_s=400.0)
    after = HostState(cpu_busy_s=103.0, cpu_total_s=408.0)
    assert after.load_percent_since(before) == pytest.approx(37.5)
    assert after.load_percent_since(HostState()) is None
    assert before.load_percent_since(before) is None  # no time passed


def test_machine_warns_about_a_cpu_only_build(monkeypatch, tmp_path):
    gpu = FakeGPU(compute=[FakeProcess(pid=77, usedGpuMemory=int(3.1 * GIB))], used=4 * GIB)
    install(monkeypatch, FakeNVML(gpus=[gpu]))
    fake_llama = types.ModuleType("llama_cpp")
    fake_llama.llama_print_system_info = lambda: CPU_BUILD_INFO  # type: ignore[attr-defined]
    fake_llama.llama_supports_gpu_offload = lambda: False  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "llama_cpp", fake_llama)
    monkeypatch.setenv("LLMTUNE_CONFIG_DIR", str(tmp_path))

    here = machine(for_worker=True, probe_bandwidth=False)
    assert nvml_status() == (True, "NVML sees 1 NVIDIA GPU (driver 550.54.14).")
    assert [d.kind for d in here.devices] == ["gpu", "cpu"]
    assert snapshot()[0].other_processes_note() == "other processes hold 3.10 GiB of this GPU"
    assert cpu_features(parse_system_info(llama_system_info()))["AVX2"]
    assert here.supports_offload is False
    assert here.notice is not None and CUDA_REINSTALL_COMMAND in here.notice
    assert [n.kind for n in here.notices] == ["gpu_build"]
