"""The machine a plan is for: one place turns the user's hardware options into it.

Every command and the app ask :func:`machine` and plan on what it returns, so
``llmtune fit``, ``bench``, ``tune`` and the app always agree on which devices,
which host and which speed model a plan uses, and say the same things about them.

- With no hardware option, the plan is for this machine: the GPUs NVML sees,
  the host with its measured memory bandwidth, and the speed model calibrated
  by ``llmtune bench`` here.
- ``--gpu SPEC`` (repeatable) plans for those GPUs instead of this machine's;
  ``--ram SIZE`` and ``--host PROFILE`` for another host. Any of them makes the
  plan a what-if: this machine's calibration does not describe other hardware,
  so it uses the default speed model, and what this machine's driver or
  llama.cpp build lacks is not the what-if's concern. A what-if GPU without
  ``--ram``/``--host`` keeps this machine's host; ``--ram``/``--host`` without
  ``--gpu`` plans a machine with no GPU (another computer, not this one's RAM).
- The worker always runs here: the app, ``bench`` and ``tune`` detect this
  machine in full (``for_worker=True``) whatever they plan for.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from llmtune.fit.speed import DEFAULT_SPEED_MODEL, SpeedModel
from llmtune.hardware.device import Device
from llmtune.units import format_bytes

NoticeKind = Literal["no_gpu_driver", "gpu_build", "calibration", "no_engine"]


@dataclass(frozen=True)
class Notice:
    """Something the user should know about the machine, in one sentence.

    ``no_gpu_driver``: NVML is missing or failing, so the plan is CPU-only;
    ``gpu_build``: a GPU is here but this llama.cpp build cannot use it (the
    command line shows it prominently); ``calibration``: the calibration file
    was unusable and the default speed model is used; ``no_engine``:
    llama-cpp-python is not installed, so plans work and runs do not.
    """

    kind: NoticeKind
    text: str

    @property
    def about_gpus(self) -> bool:
        """Whether it describes this machine's GPUs (moot when planning others)."""
        return self.kind in ("no_gpu_driver", "gpu_build")


@dataclass(frozen=True)
class MachineOptions:
    """The hardware options as the user wrote them (``--gpu``, ``--ram``, ``--host``)."""

    gpus: tuple[str, ...] = ()
    ram: str | None = None
    host: str | None = None

    @property
    def what_if(self) -> bool:
        return bool(self.gpus) or self.ram is not None or self.host is not None


@dataclass(frozen=True)
class Machine:
    """Devices to plan on (GPUs, then the host) and what the user should know about them.

    ``local`` is this machine's own devices, which the worker really runs on
    (empty when only a what-if was asked for and nothing needed detecting);
    ``what_if`` the GPUs planned instead of this machine's, ``what_if_host``
    another host (from ``--ram``/``--host``). ``speed`` is this machine's
    calibrated speed model.
    """

    local: tuple[Device, ...]
    what_if: tuple[Device, ...] = ()
    what_if_host: Device | None = None
    notices: tuple[Notice, ...] = ()
    speed: SpeedModel = DEFAULT_SPEED_MODEL
    supports_offload: bool | None = None

    @property
    def is_what_if(self) -> bool:
        return bool(self.what_if) or self.what_if_host is not None

    @property
    def host(self) -> Device:
        """The host plans are made with: the what-if one, else this machine's."""
        if self.what_if_host is not None:
            return self.what_if_host
        for device in self.local:
            if device.kind == "cpu":
                return device
        raise ValueError("a Machine needs a host: a what-if one or among its local devices")

    @property
    def machine_gpus(self) -> tuple[Device, ...]:
        """This machine's own GPUs (the worker can use them)."""
        return tuple(d for d in self.local if d.is_gpu)

    @property
    def devices(self) -> tuple[Device, ...]:
        """What plans are made for: GPUs, then the host."""
        if not self.is_what_if:
            return (*self.machine_gpus, self.host)
        return (*self.what_if, self.host)

    @property
    def gpus(self) -> tuple[Device, ...]:
        return tuple(d for d in self.devices if d.is_gpu)

    @property
    def plan_speed(self) -> SpeedModel:
        """This machine's calibration does not describe another machine's hardware."""
        return DEFAULT_SPEED_MODEL if self.is_what_if else self.speed

    @property
    def notice(self) -> str | None:
        """Every notice on one line (the app's status line), or None."""
        return " · ".join(n.text for n in self.notices) or None

    def plan_notes(self) -> tuple[str, ...]:
        """What a plan on these devices should say about the machine: this
        machine's GPU notices only when it is this machine's GPUs being planned."""
        if self.is_what_if:
            return ()
        return tuple(n.text for n in self.notices if n.about_gpus)

    def with_what_if(self, gpus: Sequence[Device]) -> Machine:
        """The same machine planning for ``gpus`` instead (empty: its own again)."""
        return replace(self, what_if=tuple(gpus))

    def describe(self) -> str:
        """One line: what the plan is for."""
        host = self.what_if_host
        with_host = (
            "this machine's RAM" if host is None else f"{format_bytes(host.capacity_bytes)} of RAM"
        )
        if self.what_if:
            names = ", ".join(d.name for d in self.what_if)
            return f"planning for {names} (what-if) with {with_host}"
        if host is not None:
            return f"planning for a machine with {with_host}, CPU only (what-if)"
        gpus = self.machine_gpus
        if not gpus:
            return "planning for this machine: CPU only (g: plan for a GPU)"
        return "planning for this machine: " + ", ".join(d.name for d in gpus)


def machine(
    options: MachineOptions = MachineOptions(),
    *,
    for_worker: bool = False,
    exclude_pids: Iterable[int] = (),
    probe_bandwidth: bool = True,
) -> Machine:
    """The machine ``options`` describe, detecting only what the plan needs.

    ``for_worker``: the caller runs llama.cpp here (the app, bench, tune), so
    this machine's GPUs, host and calibration are read whatever the options
    say. ``exclude_pids``: processes whose GPU memory counts as free (a worker
    being replaced). Raises ConfigError for a bad ``--gpu``/``--ram``/``--host``.
    """
    from llmtune.errors import ConfigError
    from llmtune.hardware.host import host_device
    from llmtune.hardware.profiles import host_profile, parse_gpu_spec
    from llmtune.units import parse_size

    what_if = tuple(parse_gpu_spec(text, index=i) for i, text in enumerate(options.gpus))
    what_if_host: Device | None = None
    if options.ram is not None or options.host is not None:
        ram = parse_size(options.ram, "--ram") if options.ram is not None else None
        if ram is not None and ram <= 0:
            raise ConfigError("host RAM must be more than 0", "--ram")
        bandwidth = host_profile(options.host).bandwidth_gbps if options.host else None
        what_if_host = host_device(ram_bytes=ram, bandwidth_gbps=bandwidth)
    local: tuple[Device, ...] = ()
    notices: list[Notice] = []
    speed = DEFAULT_SPEED_MODEL
    offload: bool | None = None
    if for_worker or not options.what_if:
        local, gpu_notices, offload = _detect(exclude_pids, probe_bandwidth)
        notices += gpu_notices
        speed, calibration_notice = _calibration()
        if calibration_notice:
            notices.append(Notice("calibration", calibration_notice))
    elif what_if_host is None:
        # A what-if GPU with this machine's RAM: the host alone, no GPU probing.
        from llmtune.hardware.host import host_device_measured

        local = (host_device_measured(probe=probe_bandwidth),)
    if for_worker:
        from llmtune.engine import ENGINE_INSTALL_HINT, llama_cpp_installed

        if not llama_cpp_installed():
            text = f"llama-cpp-python is not installed, so models are planned, not run: {ENGINE_INSTALL_HINT}"
            notices.append(Notice("no_engine", text))
    return Machine(
        local=local,
        what_if=what_if,
        what_if_host=what_if_host,
        notices=tuple(notices),
        speed=speed,
        supports_offload=offload,
    )


def _detect(
    exclude_pids: Iterable[int], probe_bandwidth: bool
) -> tuple[tuple[Device, ...], list[Notice], bool | None]:
    """This machine's devices, what its driver and llama.cpp build mean for them,
    and whether the build can offload (None: no GPU here, or unknown)."""
    from llmtune.hardware.detect import detect, gpu_build_warning, supports_gpu_offload
    from llmtune.hardware.nvml import nvml_status

    devices = tuple(detect(exclude_pids, probe_bandwidth=probe_bandwidth))
    notices: list[Notice] = []
    available, sentence = nvml_status()
    if not available:
        notices.append(Notice("no_gpu_driver", sentence))
    offload: bool | None = None
    if any(d.is_gpu for d in devices):
        offload = supports_gpu_offload()
        warning = gpu_build_warning(devices, offload)
        if warning:
            # Said instead of the driver's sentence: the GPU is there, the build is the problem.
            notices = [Notice("gpu_build", warning)]
    return devices, notices, offload


def _calibration() -> tuple[SpeedModel, str | None]:
    """This machine's calibrated speed model (``llmtune bench`` keeps it), and a
    sentence when the file was unusable."""
    from llmtune.engine.calibration import load

    return load()
