"""The monitor: graphs fed by the real sampler thread (NVML scripted by the
stand-in for pynvml, the host read through psutil), and the GPU notices."""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
from rendered import screen_text
from ui_support import cpu_only, wait_for

from fake_pynvml import FakeGPU, FakeNVML, FakeProcess, install
from llmtune.hardware import nvml
from llmtune.hardware.detect import CUDA_REINSTALL_COMMAND
from llmtune.hardware.machine import MachineOptions, machine
from llmtune.model import ModelSpec
from llmtune.telemetry.sampler import SampleCallback, Sampler
from llmtune.ui.app import AppOptions, default_sampler_factory, make_app
from llmtune.ui.widgets.graph import TimeGraph
from llmtune.units import GIB


@pytest.fixture
def gpu_machine(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeNVML]:
    """An RTX 3090 on which another process holds 3.1 GiB, and a CPU-only llama.cpp."""
    other = FakeProcess(pid=77, usedGpuMemory=int(3.1 * GIB))
    fake = install(monkeypatch, FakeNVML(gpus=[FakeGPU(used=4 * GIB, compute=[other])]))
    fake_llama = types.ModuleType("llama_cpp")
    fake_llama.llama_supports_gpu_offload = lambda: False  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "llama_cpp", fake_llama)
    yield fake
    nvml.reset()


def fast_sampler(callback: SampleCallback, interval_s: float) -> Sampler:
    return Sampler(callback, interval_s=0.2)


async def test_graphs_show_vram_ram_and_what_others_hold(
    demo_spec: ModelSpec, gpu_machine: FakeNVML
) -> None:
    hardware = machine(for_worker=True)
    gpu, host = hardware.local
    assert gpu.is_gpu and gpu.capacity_bytes == 24 * GIB
    app = make_app(
        demo_spec,
        hardware=hardware,
        options=AppOptions(persist=False, interval_s=0.2),
        sampler_factory=fast_sampler,
    )
    async with app.run_test(size=(100, 50)) as pilot:
        await pilot.press("4")
        await wait_for(pilot, lambda: len(app.telemetry.host.ram_used_bytes) >= 3)
        await pilot.pause()
        vram = app.query_one("#gpu-graphs").query(TimeGraph).first()
        assert vram.latest == 4 * GIB and vram.ceiling == 24 * GIB
        text = "\n".join(screen_text(app))
        assert "VRAM NVIDIA GeForce RTX 3090  4.00 GiB" in text
        assert "of 24.0 GiB" in text and "others hold 3.10 GiB" in text
        ram = app.query_one("#graph-ram", TimeGraph)
        assert ram.latest is not None and ram.latest > 0
        assert "host RAM used" in text


async def test_a_gpu_with_a_cpu_only_build_is_said_prominently(
    demo_spec: ModelSpec, gpu_machine: FakeNVML
) -> None:
    app = make_app(demo_spec, hardware=machine(for_worker=True))
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause()
        status = screen_text(app)[1]
        assert "CPU-only" in status and "RTX 3090" in status
        assert app.hardware.notice is not None and CUDA_REINSTALL_COMMAND in app.hardware.notice


async def test_no_gpu_is_one_sentence(
    demo_spec: ModelSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    install(monkeypatch, FakeNVML(init_error=12))  # NVML_ERROR_LIBRARY_NOT_FOUND
    try:
        app = make_app(demo_spec, hardware=machine(for_worker=True))
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.pause()
            status = screen_text(app)[1]
            assert "running CPU-only" in status
            assert app.plan is not None and not app.plan.gpus
    finally:
        nvml.reset()


async def test_the_real_sampler_runs_with_the_app_and_stops_with_it(demo_spec: ModelSpec) -> None:
    app = make_app(
        demo_spec,
        hardware=cpu_only(),
        options=AppOptions(persist=False, interval_s=0.2),
        sampler_factory=default_sampler_factory,
    )
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: len(app.telemetry.host.cpu_percent) >= 2)
        sampler = app.sampler
        assert sampler is not None and sampler.running
        # Memory is bounded: the series are ring buffers of a fixed size.
        assert app.telemetry.capacity == app.telemetry.host.ram_used_bytes.capacity
    assert not sampler.running


def test_gpu_spec_preselects_a_what_if_target(gpu_machine: FakeNVML) -> None:
    hardware = machine(MachineOptions(gpus=("rtx4090", "24GB:1008GB/s")), for_worker=True)
    assert [d.profile for d in hardware.what_if] == ["rtx4090", ""]
    assert [d.kind for d in hardware.devices] == ["gpu", "gpu", "cpu"]
    assert hardware.machine_gpus[0].name == "NVIDIA GeForce RTX 3090"  # still this machine's
    assert "what-if" in hardware.describe()


async def test_a_damaged_calibration_is_a_notice_and_defaults(
    demo_spec: ModelSpec, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from llmtune.fit.speed import DEFAULT_SPEED_MODEL

    monkeypatch.setenv("LLMTUNE_CONFIG_DIR", str(tmp_path))
    (tmp_path / "calibration.json").write_text("[" * 100_000)  # nested past any parser's depth
    install(monkeypatch, FakeNVML(init_error=12))
    try:
        hardware = machine(for_worker=True)
        assert hardware.speed == DEFAULT_SPEED_MODEL
        app = make_app(demo_spec, hardware=hardware)
        async with app.run_test(size=(160, 30)) as pilot:
            await pilot.pause()
            assert "calibration" in screen_text(app)[1]
    finally:
        nvml.reset()
