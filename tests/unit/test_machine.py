"""hardware.machine: one place turns --gpu/--ram/--host into the machine every
command and the app plan on, detecting only what that plan needs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fake_pynvml import FakeGPU, FakeNVML, install
from llmtune.engine import calibration
from llmtune.errors import ConfigError
from llmtune.fit.speed import DEFAULT_SPEED_MODEL
from llmtune.hardware import detect as detect_module
from llmtune.hardware import machine as machine_module
from llmtune.hardware.machine import Machine, MachineOptions, machine
from llmtune.units import GIB


@pytest.fixture()
def one_gpu(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """This machine: an RTX 3090, a CUDA build, and a calibration file that makes
    the CPU read at 0.5 of its measured bandwidth."""
    install(monkeypatch, FakeNVML(gpus=[FakeGPU()]))
    monkeypatch.setattr(detect_module, "supports_gpu_offload", lambda: True)
    monkeypatch.setenv("LLMTUNE_CONFIG_DIR", str(tmp_path))
    monkeypatch.setenv("LLMTUNE_CACHE_DIR", str(tmp_path / "cache"))  # no bandwidth measured
    (tmp_path / calibration.FILE_NAME).write_text(
        json.dumps({calibration.machine_key(): {"cpu_measured_bandwidth_efficiency": 0.5}})
    )
    return tmp_path


def test_no_option_plans_this_machine_with_its_calibration(one_gpu: Path) -> None:
    here = machine(probe_bandwidth=False)
    assert [d.kind for d in here.devices] == ["gpu", "cpu"]
    assert "RTX 3090" in here.devices[0].name and here.devices[0].source == "detected"
    assert not here.is_what_if
    assert here.plan_speed.cpu_measured_bandwidth_efficiency == 0.5
    assert here.supports_offload is True
    assert here.describe() == "planning for this machine: NVIDIA GeForce RTX 3090"


def test_a_what_if_gpu_keeps_this_host_and_uses_the_default_speed_model(one_gpu: Path) -> None:
    m = machine(MachineOptions(gpus=("rtx3060-12g", "24GB:1008GB/s")), probe_bandwidth=False)
    assert [d.name for d in m.gpus] == ["NVIDIA GeForce RTX 3060 12GB", "GPU 1 (24GB:1008GB/s)"]
    assert m.host.source == "detected" and m.host.bandwidth_measured is False
    assert m.machine_gpus == ()  # this machine's own GPUs were not probed
    assert m.plan_speed == DEFAULT_SPEED_MODEL
    assert m.describe().startswith("planning for NVIDIA GeForce RTX 3060 12GB, GPU 1")
    assert m.describe().endswith("(what-if) with this machine's RAM")


def test_ram_alone_plans_another_machine_without_a_gpu(
    one_gpu: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_detection(*args: object, **kwargs: object) -> None:
        raise AssertionError("a what-if host needs nothing detected here")

    monkeypatch.setattr(machine_module, "_detect", no_detection)
    m = machine(MachineOptions(ram="64GiB", host="ddr5-5600"))
    assert m.devices == (m.host,) and m.host.capacity_bytes == 64 * GIB
    assert m.host.bandwidth_gbps == pytest.approx(89.6)
    assert m.local == () and m.notices == ()
    assert m.describe() == "planning for a machine with 64.0 GiB of RAM, CPU only (what-if)"
    both = machine(MachineOptions(gpus=("rtx4090",), ram="64GiB"))
    assert [d.kind for d in both.devices] == ["gpu", "cpu"]
    assert both.describe().endswith("(what-if) with 64.0 GiB of RAM")


def test_the_worker_side_detects_this_machine_whatever_the_plan_is_for(one_gpu: Path) -> None:
    m = machine(MachineOptions(gpus=("rtx4090",)), for_worker=True, probe_bandwidth=False)
    assert [d.name for d in m.gpus] == ["NVIDIA GeForce RTX 4090"]
    assert "RTX 3090" in m.machine_gpus[0].name  # what the worker runs on
    assert m.speed.cpu_measured_bandwidth_efficiency == 0.5  # kept for the worker's plans
    assert m.plan_speed == DEFAULT_SPEED_MODEL
    assert m.with_what_if([]).devices == m.local


def test_notices_have_a_kind_and_only_this_machines_plans_carry_the_gpu_ones(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    install(monkeypatch, FakeNVML(gpus=[FakeGPU()]))
    monkeypatch.setattr(detect_module, "supports_gpu_offload", lambda: False)
    monkeypatch.setenv("LLMTUNE_CONFIG_DIR", str(tmp_path))
    (tmp_path / calibration.FILE_NAME).write_text("{not json")
    here = machine(probe_bandwidth=False)
    assert [n.kind for n in here.notices] == ["gpu_build", "calibration"]
    assert here.plan_notes() == (here.notices[0].text,)
    assert here.notice is not None and " · " in here.notice  # the app's status line
    assert here.speed == DEFAULT_SPEED_MODEL  # the damaged file is not used
    assert (
        here.with_what_if(list(machine(MachineOptions(gpus=("rtx4090",))).gpus)).plan_notes() == ()
    )


def test_no_driver_is_one_notice_of_its_own_kind(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    install(monkeypatch, FakeNVML(init_error=12))  # NVML_ERROR_LIBRARY_NOT_FOUND
    monkeypatch.setenv("LLMTUNE_CONFIG_DIR", str(tmp_path))
    here = machine(probe_bandwidth=False)
    assert [n.kind for n in here.notices] == ["no_gpu_driver"]
    assert "CPU-only" in here.notices[0].text
    assert here.describe() == "planning for this machine: CPU only (g: plan for a GPU)"


@pytest.mark.parametrize(
    ("options", "words"),
    [
        (MachineOptions(ram="0"), "more than 0"),
        (MachineOptions(ram="lots"), "--ram"),
        (MachineOptions(host="ddr9"), "unknown host memory profile"),
        (MachineOptions(gpus=("rtx3061",)), "did you mean"),
    ],
)
def test_bad_hardware_options_are_one_sentence(options: MachineOptions, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        machine(options)
    assert words in caught.value.one_line()


def test_a_machine_built_by_hand_plans_its_own_devices() -> None:
    """Tests and screenshots build a Machine from fixed devices."""
    from llmtune.hardware.host import host_device

    host = host_device(ram_bytes=32 * GIB, bandwidth_gbps=51.2)
    m = Machine((host,))
    assert m.devices == (host,) and m.host is host and m.notice is None


def test_without_llama_cpp_the_worker_side_says_how_to_add_it(
    one_gpu: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import llmtune.engine

    monkeypatch.setattr(llmtune.engine, "llama_cpp_installed", lambda: False)
    planning = machine(probe_bandwidth=False)
    assert all(n.kind != "no_engine" for n in planning.notices)  # fit never runs a model
    worker_side = machine(for_worker=True, probe_bandwidth=False)
    (notice,) = [n for n in worker_side.notices if n.kind == "no_engine"]
    assert "llmtune[engine]" in notice.text and notice.text in (worker_side.notice or "")
    assert notice.text not in worker_side.plan_notes()
