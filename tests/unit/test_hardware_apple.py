"""Apple Silicon: detection from scripted sysctl outputs, the GPU's limit, one pool planned once."""

from __future__ import annotations

import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from gguf import GGMLQuantizationType as Q

import fake_amdsmi
import fake_pynvml
from fake_pynvml import NVML_ERROR_LIBRARY_NOT_FOUND, FakeNVML
from llmtune.fit.plan import plan
from llmtune.fit.settings import Settings
from llmtune.hardware import apple, detect
from llmtune.hardware.apple import (
    AppleChip,
    default_working_set_bytes,
    detect_chip,
    parse_chip,
    run_sysctl,
    unified_devices,
)
from llmtune.hardware.detect import METAL_REINSTALL_COMMAND, gpu_build_warning
from llmtune.hardware.device import Device
from llmtune.hardware.host import host_device
from llmtune.hardware.machine import machine
from llmtune.model import read_spec
from llmtune.units import GIB, MIB
from synth import llama_like

M2_MAX_32 = {
    "machdep.cpu.brand_string": "Apple M2 Max",
    "hw.memsize": str(32 * GIB),
    "iogpu.wired_limit_mb": "0",
}


def sysctl_of(outputs: dict[str, str | None]):
    asked: list[str] = []

    def sysctl(name: str) -> str | None:
        asked.append(name)
        return outputs.get(name)

    sysctl.asked = asked  # type: ignore[attr-defined]
    return sysctl


def test_a_mac_from_its_sysctl_outputs() -> None:
    chip = detect_chip(sysctl_of(M2_MAX_32), system="Darwin", working_set=lambda: None)
    assert chip == AppleChip(name="Apple M2 Max", ram_bytes=32 * GIB)
    limit, where = chip.gpu_limit()
    assert limit == 32 * GIB * 2 // 3  # 21,845 MB, as llama.cpp logs on a 32 GB M1 Max
    assert where == "macOS's default, estimated as 2/3"
    sentence = chip.limit_sentence()
    assert "Apple M2 Max shares 32.0 GiB of unified memory: the GPU may use 21.3 GiB" in sentence
    assert "sudo sysctl iogpu.wired_limit_mb=28672" in sentence


@pytest.mark.parametrize(
    ("ram_gib", "limit"),
    [
        (16, 16 * GIB * 2 // 3),
        (36, 36 * GIB * 2 // 3),  # up to 36 GiB: two thirds
        (96, 72 * GIB),  # above: three quarters (73,728 MB, llama.cpp#3213)
        (192, 144 * GIB),
    ],
)
def test_the_default_rule(ram_gib: int, limit: int) -> None:
    assert default_working_set_bytes(ram_gib * GIB) == limit


def test_wired_limit_overrides_the_default_and_metal_reports_it() -> None:
    outputs = dict(M2_MAX_32, **{"iogpu.wired_limit_mb": "30000"})
    chip = detect_chip(sysctl_of(outputs), system="Darwin", working_set=lambda: None)
    assert chip is not None and chip.wired_limit_mb == 30000
    assert chip.gpu_limit() == (30000 * MIB, "iogpu.wired_limit_mb=30000")
    # With a Metal build llama.cpp's MTL0 reports the working set: exact, and it follows the sysctl.
    metal = detect_chip(sysctl_of(outputs), system="Darwin", working_set=lambda: 30000 * MIB)
    assert metal is not None
    assert metal.gpu_limit() == (
        30000 * MIB,
        "Metal's recommendedMaxWorkingSetSize, set by iogpu.wired_limit_mb=30000",
    )
    # Already above the suggestion: no advice to raise it.
    assert "sudo sysctl" not in metal.limit_sentence()
    # A 36 GB M3 reports more than the rule (28,991 MB, ollama#2370): Metal's figure wins.
    m3 = parse_chip("Apple M3 Max", str(36 * GIB), "0", 28_991_030_000)
    assert m3 is not None and m3.gpu_limit() == (
        28_991_030_000,
        "Metal's recommendedMaxWorkingSetSize",
    )


@pytest.mark.parametrize(
    ("system", "outputs"),
    [
        ("Linux", M2_MAX_32),  # not a Mac: sysctl is never asked
        ("Darwin", dict(M2_MAX_32, **{"machdep.cpu.brand_string": "Intel(R) Core(TM) i9"})),
        ("Darwin", dict(M2_MAX_32, **{"hw.memsize": None})),  # sysctl failed
        ("Darwin", dict(M2_MAX_32, **{"hw.memsize": "lots"})),  # unreadable
        ("Darwin", {}),  # sysctl missing altogether
    ],
)
def test_not_an_apple_silicon_mac(system: str, outputs: dict[str, str | None]) -> None:
    sysctl = sysctl_of(outputs)
    assert detect_chip(sysctl, system=system, working_set=lambda: None) is None
    if system != "Darwin":
        assert sysctl.asked == []  # type: ignore[attr-defined]


def test_unreadable_wired_limit_is_the_default() -> None:
    chip = parse_chip("Apple M1", str(8 * GIB), "garbage")
    assert chip is not None and chip.wired_limit_mb is None


def test_detection_never_raises() -> None:
    def broken(name: str) -> str | None:
        raise RuntimeError("sysctl exploded")

    assert detect_chip(broken, system="Darwin", working_set=lambda: None) is None


def test_run_sysctl_failures_are_none(monkeypatch: pytest.MonkeyPatch) -> None:
    def timeout(*args, **kwargs):
        raise subprocess.TimeoutExpired(cmd="sysctl", timeout=2.0)

    monkeypatch.setattr(subprocess, "run", timeout)
    assert run_sysctl("hw.memsize") is None

    def missing(*args, **kwargs):
        raise FileNotFoundError("sysctl")

    monkeypatch.setattr(subprocess, "run", missing)
    assert run_sysctl("hw.memsize") is None

    def fails(*args, **kwargs):
        return subprocess.CompletedProcess(args, 1, stdout="", stderr="unknown oid")

    monkeypatch.setattr(subprocess, "run", fails)
    assert run_sysctl("iogpu.wired_limit_mb") is None


def _host(available: int) -> Device:
    return replace(host_device(ram_bytes=32 * GIB), free_bytes=available)


@pytest.mark.parametrize("available_gib", [30, 24, 20, 12, 2, 0])
def test_one_pool_is_never_counted_twice(available_gib: int) -> None:
    chip = AppleChip(name="Apple M2 Max", ram_bytes=32 * GIB)
    limit = chip.gpu_limit()[0]
    available = available_gib * GIB
    gpu, host = unified_devices(chip, _host(available))
    assert gpu.unified and host.unified
    assert (gpu.backend, gpu.ggml_backend, gpu.buffer_name) == ("MTL", "MTL", "MTL0")
    assert gpu.capacity_bytes == limit and host.capacity_bytes == 32 * GIB
    # Each sees the pool; the GPU at most its limit.
    assert gpu.free_bytes == min(limit, available) and host.free_bytes == available
    assert gpu.runtime_bytes == 0  # Metal holds no CUDA-like context


@pytest.fixture(scope="module")
def model_6gib(tmp_path_factory: pytest.TempPathFactory):
    """A Llama shape of about 6 GiB in F16 (a sparse file: nothing is written)."""
    folder = tmp_path_factory.mktemp("mac")
    (path,) = llama_like(
        folder / "mac.gguf", n_layer=16, n_embd=4096, n_head=32, n_head_kv=8, n_ff=11008,
        n_vocab=32000, weight_type=Q.F16,
    )  # fmt: skip
    return read_spec(path)


def test_a_mac_plan_uses_the_gpu_limit_and_the_pool(model_6gib) -> None:
    chip = AppleChip(name="Apple M2", ram_bytes=16 * GIB)  # the GPU may use 10.67 GiB
    settings = Settings(n_ctx=4096, n_gpu_layers=-1)
    # Plenty free: every layer fits under the GPU's limit, the host keeps the rest.
    gpu, host = unified_devices(chip, _host(15 * GIB))
    p = plan(model_6gib, [gpu, host], settings)
    assert p.fits
    assert p.devices[0].label.startswith("MTL0 Apple M2")
    # The same model with 6 GiB available: under the GPU's limit, but the RAM free
    # now is one pool, and the host keeps its part of it.
    gpu, host = unified_devices(chip, _host(6 * GIB))
    tight = plan(model_6gib, [gpu, host], settings)
    # (the GPU's buffers fit in 6 GiB, but the host's, in the same pool, do not)
    assert not tight.fits and tight.devices[-1].verdict == "over"
    # Never counted twice: what the GPU's buffers hold comes off the host's share.
    assert tight.devices[-1].free_bytes == 6 * GIB - tight.devices[0].total_bytes
    half = plan(model_6gib, [gpu, host], settings.with_(n_gpu_layers=8))
    assert half.devices[-1].free_bytes == 6 * GIB - half.devices[0].total_bytes
    # A bigger Mac whose GPU limit is below the model: over on the GPU, not on the host.
    small_limit = AppleChip(name="Apple M2", ram_bytes=16 * GIB, wired_limit_mb=4096)
    gpu, host = unified_devices(small_limit, _host(15 * GIB))
    over = plan(model_6gib, [gpu, host], settings)
    assert over.devices[0].verdict == "over" and over.devices[-1].verdict == "fits"


def test_machine_on_a_mac(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LLMTUNE_CACHE_DIR", str(tmp_path / "cache"))
    fake_pynvml.install(monkeypatch, FakeNVML(init_error=NVML_ERROR_LIBRARY_NOT_FOUND))
    fake_amdsmi.uninstall(monkeypatch)
    monkeypatch.setattr(
        apple,
        "detect_chip",
        lambda: parse_chip("Apple M3 Pro", str(18 * GIB), "0"),
    )
    m = machine(probe_bandwidth=False)
    gpu, host = m.devices
    assert (gpu.name, gpu.kind, gpu.ggml_backend, gpu.unified) == (
        "Apple M3 Pro",
        "gpu",
        "MTL",
        True,
    )
    assert host.unified and host.capacity_bytes == 18 * GIB
    assert gpu.capacity_bytes == 12 * GIB and gpu.free_bytes <= 12 * GIB
    assert host.free_bytes <= 18 * GIB
    # Which limit was used and how to raise it, among the plan's notes; no NVML sentence.
    kinds = [n.kind for n in m.notices]
    assert "unified_memory" in kinds and "no_gpu_driver" not in kinds
    (note,) = [n for n in m.plan_notes() if "unified memory" in n]
    assert "estimated as 2/3" in note and "sudo sysctl iogpu.wired_limit_mb=" in note


def test_a_cpu_only_build_on_a_mac_names_metal() -> None:
    chip = AppleChip(name="Apple M1", ram_bytes=8 * GIB)
    gpu, host = unified_devices(chip, _host(6 * GIB))
    warning = gpu_build_warning([gpu, host], supports_offload=False)
    assert warning is not None and warning.startswith("Apple M1 found")
    assert METAL_REINSTALL_COMMAND in warning and "-DGGML_METAL=on" in warning


def test_detect_adds_the_mac_gpu_before_the_host(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("LLMTUNE_CACHE_DIR", str(tmp_path / "cache"))
    fake_pynvml.install(monkeypatch, FakeNVML(init_error=NVML_ERROR_LIBRARY_NOT_FOUND))
    fake_amdsmi.uninstall(monkeypatch)
    monkeypatch.setattr(apple, "detect_chip", lambda: parse_chip("Apple M4", str(16 * GIB), None))
    devices, notes = detect.detect_with_notes(probe_bandwidth=False)
    assert [d.kind for d in devices] == ["gpu", "cpu"] and len(notes) == 1
