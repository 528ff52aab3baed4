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
- ``--rpc HOST:PORT[,HOST:PORT...]`` adds llama.cpp RPC hosts: each is probed
  (devices, free memory, round trip, bandwidth) and lends its devices to the
  plan, before the GPUs, as llama.cpp places them. They are real machines, not a
  what-if. ``HOST:PORT=GPU`` says what is behind a host (a ``--gpu`` spec) so its
  speed is that GPU's; otherwise it is planned at this machine's CPU speed (an
  ``llmtune rpc-server`` on a CPU). ``--gpu SPEC@rpc`` is a what-if RPC device,
  and ``--network SPEED`` sets the link for every RPC device (default: measured;
  what-if devices 1 Gbit/s).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from llmtune.fit.speed import DEFAULT_SPEED_MODEL, SpeedModel
from llmtune.hardware.bandwidth import HostBandwidth
from llmtune.hardware.device import Device
from llmtune.units import format_bytes

NoticeKind = Literal[
    "no_gpu_driver", "gpu_build", "calibration", "no_engine", "unified_memory", "host_bandwidth"
]


@dataclass(frozen=True)
class Notice:
    """Something the user should know about the machine, in one sentence.

    ``no_gpu_driver``: NVML (and amdsmi) are missing or failing, so the plan is CPU-only;
    ``unified_memory``: a Mac's GPU limit in its one pool of RAM, where it comes
    from and how to raise it;
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
        return self.kind in ("no_gpu_driver", "gpu_build", "unified_memory")


@dataclass(frozen=True)
class MachineOptions:
    """The hardware options as the user wrote them (``--gpu``, ``--ram``, ``--host``)."""

    gpus: tuple[str, ...] = ()
    ram: str | None = None
    host: str | None = None
    rpc: tuple[str, ...] = ()  # --rpc values as written (each a comma-separated list)
    network: str | None = None  # --network: the link speed to plan RPC devices with

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
    rpc: tuple[Device, ...] = ()  # devices lent by --rpc hosts (probed), in llama.cpp's order
    rpc_notes: tuple[str, ...] = ()  # what the plan assumed about them
    # This machine's measured host bandwidth as the plans use it (None: not probed).
    host_bandwidth: HostBandwidth | None = None

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
        """What plans are made for: RPC devices, GPUs, then the host."""
        if not self.is_what_if:
            return (*self.rpc, *self.machine_gpus, self.host)
        return (*self.rpc, *self.what_if, self.host)

    @property
    def gpus(self) -> tuple[Device, ...]:
        """Every device layers can be offloaded to (RPC devices and GPUs)."""
        return tuple(d for d in self.devices if d.offloads)

    @property
    def endpoints(self) -> tuple[str, ...]:
        """The probed RPC hosts, in order (what the worker registers)."""
        seen: list[str] = []
        for d in self.rpc:
            if d.endpoint and d.endpoint not in seen:
                seen.append(d.endpoint)
        return tuple(seen)

    @property
    def plan_speed(self) -> SpeedModel:
        """This machine's calibration does not describe another machine's hardware."""
        return DEFAULT_SPEED_MODEL if self.is_what_if else self.speed

    @property
    def host_line(self) -> str:
        """``host 28.4 GB/s (best of 3 probes, 2026-12-04)`` for this machine's own
        host; "" for another machine's RAM or before any probe."""
        if self.what_if_host is not None or self.host_bandwidth is None:
            return ""
        return self.host_bandwidth.describe()

    @property
    def notice(self) -> str | None:
        """Every notice on one line (the app's status line), or None."""
        return " · ".join(n.text for n in self.notices) or None

    def plan_notes(self) -> tuple[str, ...]:
        """What a plan on these devices should say about the machine: this
        machine's GPU notices only when it is this machine's GPUs being planned."""
        if self.is_what_if:
            return self.rpc_notes
        return (*(n.text for n in self.notices if n.about_gpus), *self.rpc_notes)

    def with_what_if(self, gpus: Sequence[Device]) -> Machine:
        """The same machine planning for ``gpus`` instead (empty: its own again)."""
        return replace(self, what_if=tuple(gpus))

    def with_measured_host(self, bandwidth_gbps: float, record: HostBandwidth | None) -> Machine:
        """The same machine after its host's bandwidth was probed again."""
        local = tuple(
            replace(d, bandwidth_gbps=bandwidth_gbps)
            if d.kind == "cpu" and d.bandwidth_measured
            else d
            for d in self.local
        )
        return replace(self, local=local, host_bandwidth=record or self.host_bandwidth)

    def with_rpc(self, devices: Sequence[Device], notes: Sequence[str] = ()) -> Machine:
        """The same machine with these RPC devices (empty: none)."""
        return replace(self, rpc=tuple(devices), rpc_notes=tuple(notes))

    def describe(self) -> str:
        """One line: what the plan is for."""
        host = self.what_if_host
        with_host = (
            "this machine's RAM" if host is None else f"{format_bytes(host.capacity_bytes)} of RAM"
        )
        hosts = ""
        if self.endpoints:
            hosts = " + RPC " + ", ".join(self.endpoints)
        if self.what_if:
            names = ", ".join(d.name for d in self.what_if)
            return f"planning for {names}{hosts} (what-if) with {with_host}"
        if host is not None:
            only = "" if hosts else ", CPU only"
            return f"planning for a machine with {with_host}{hosts}{only} (what-if)"
        gpus = self.machine_gpus
        if not gpus and not hosts:
            return "planning for this machine: CPU only (g: plan for a GPU)"
        if not gpus:
            return f"planning for this machine{hosts}"
        return "planning for this machine: " + ", ".join(d.name for d in gpus) + hosts


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
    from llmtune.hardware.host import WHAT_IF_HOST_CORES, host_device
    from llmtune.hardware.profiles import host_profile
    from llmtune.units import parse_size

    network = parse_network_speed(options.network) if options.network is not None else None
    what_if = tuple(_what_if_device(text, i, network) for i, text in enumerate(options.gpus))
    what_if_host: Device | None = None
    if options.ram is not None or options.host is not None:
        ram = parse_size(options.ram, "--ram") if options.ram is not None else None
        if ram is not None and ram <= 0:
            raise ConfigError("host RAM must be more than 0", "--ram")
        bandwidth = host_profile(options.host).bandwidth_gbps if options.host else None
        what_if_host = host_device(
            ram_bytes=ram, bandwidth_gbps=bandwidth, cores=WHAT_IF_HOST_CORES
        )
    unified = next((d for d in what_if if d.unified), None)
    if unified is not None and what_if_host is None:
        what_if_host = _unified_host(unified)
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
    result = Machine(
        local=local,
        what_if=what_if,
        what_if_host=what_if_host,
        notices=tuple(notices),
        speed=speed,
        supports_offload=offload,
        host_bandwidth=_host_bandwidth(local),
    )
    if options.rpc:
        items = rpc_items(options.rpc)
        if for_worker:
            _require_rpc_build()
        devices, notes = rpc_devices(items, result.host, network)
        result = result.with_rpc(devices, notes)
    return result


def _unified_host(gpu: Device) -> Device:
    """The host of a Mac planned by its profile: its CPU shares the GPU's pool,
    the whole RAM (the plan takes the GPU's buffers off the host's free memory)."""
    from llmtune.hardware.host import host_device
    from llmtune.hardware.profiles import GPU_PROFILE_BY_KEY

    profile = GPU_PROFILE_BY_KEY.get(gpu.profile)
    ram = profile.memory_bytes if profile is not None else gpu.capacity_bytes
    return host_device(ram_bytes=ram, bandwidth_gbps=gpu.bandwidth_gbps, name="CPU (unified RAM)")


def _require_rpc_build() -> None:
    """A worker that will load on RPC hosts needs llama.cpp's RPC backend: say how
    to get it now, in one sentence, rather than when the load fails."""
    from llmtune.engine import llama_cpp_installed

    if not llama_cpp_installed():
        return  # the no_engine notice says what to install
    from llmtune.engine.ggml_rpc import RPC_REBUILD_HINT, rpc_supported
    from llmtune.hardware.rpc import RpcError

    if not rpc_supported():
        raise RpcError(f"--rpc: {RPC_REBUILD_HINT}")


# The link a what-if RPC device is planned with unless --network says otherwise,
# and its round trip (a switched LAN; llama.cpp makes about one per device per token).
WHAT_IF_NETWORK_BYTES_PER_S = 1e9 / 8
WHAT_IF_RTT_S = 0.3e-3
_NETWORK_RE = re.compile(
    r"^\s*(?P<n>[0-9]*\.?[0-9]+)\s*(?P<unit>[kmgt]?)(?P<what>bit|b|bps|bit/s|b/s|byte/s)?\s*$",
    re.IGNORECASE,
)


def parse_network_speed(text: str) -> float:
    """``--network``: ``1Gbit``, ``10gbit/s``, ``2.5Gbit``, ``100Mbit``, ``1GB/s``
    (B: bytes) as bytes per second."""
    from llmtune.errors import ConfigError

    m = _NETWORK_RE.match(text)
    what = (m.group("what") or "") if m else ""
    if not m or not what:
        raise ConfigError(
            f"not a network speed: {text!r} (try 1Gbit, 10Gbit or 1GB/s)", "--network"
        )
    scale = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}[m.group("unit").lower()]
    value = float(m.group("n")) * scale
    # Network speeds are written in bits (1Gbit, 1Gb/s); a capital B is bytes.
    bits = what.lower() in ("bit", "bit/s", "bps") or what in ("b", "b/s")
    if value <= 0:
        raise ConfigError(f"a network speed must be more than 0: {text!r}", "--network")
    return value / 8 if bits else value


def _what_if_device(text: str, index: int, network: float | None) -> Device:
    """A ``--gpu`` value; ``SPEC@rpc`` is that GPU on another machine, reached through RPC."""
    from llmtune.hardware.profiles import parse_gpu_spec

    spec, at, where = text.rpartition("@")
    if not at:
        return parse_gpu_spec(text, index=index)
    if where.strip().lower() != "rpc":
        from llmtune.errors import ConfigError

        raise ConfigError(
            f"{text!r}: only @rpc may follow a GPU (a GPU on another machine)", "--gpu"
        )
    gpu = parse_gpu_spec(spec, index=index)
    return replace(
        gpu,
        kind="rpc",
        name=f"{gpu.name} @rpc",
        endpoint=f"host{index + 1}:50052",
        index=0,
        rtt_s=WHAT_IF_RTT_S,
        network_bytes_per_s=network or WHAT_IF_NETWORK_BYTES_PER_S,
    )


def rpc_items(values: Iterable[str]) -> tuple[tuple[str, str | None], ...]:
    """``--rpc`` values as (endpoint, GPU spec or None); raises RpcError for a bad list."""
    from llmtune.hardware.rpc import RpcError, parse_endpoints

    items: list[tuple[str, str | None]] = []
    for value in values:
        for part in value.split(","):
            endpoint, eq, gpu = part.partition("=")
            if eq and not gpu.strip():
                raise RpcError(f"--rpc: {part.strip()!r} names no GPU after '='")
            items.append((endpoint.strip(), gpu.strip() if eq else None))
    endpoints = parse_endpoints(",".join(endpoint for endpoint, _ in items))
    return tuple((endpoint, gpu) for endpoint, (_, gpu) in zip(endpoints, items, strict=True))


def rpc_devices(
    items: Sequence[tuple[str, str | None]],
    host: Device,
    network: float | None = None,
    timeout_s: float = 3.0,
) -> tuple[tuple[Device, ...], tuple[str, ...]]:
    """Probe each host (each step waits at most ``timeout_s``) and describe the
    devices it lends, named as llama.cpp names them (RPC0, RPC1, ... across hosts
    in order), with one note per host on what the plan assumed; raises RpcError
    naming a host that cannot be used."""
    from llmtune.errors import ConfigError
    from llmtune.hardware.profiles import parse_gpu_spec
    from llmtune.hardware.rpc import probe

    devices: list[Device] = []
    notes: list[str] = []
    behind: list[Device | None] = []
    for _endpoint, gpu_text in items:  # every spec checked before any host is asked
        try:
            behind.append(parse_gpu_spec(gpu_text) if gpu_text else None)
        except ConfigError as exc:
            raise ConfigError(exc.what, "--rpc") from None
    for (endpoint, _text), gpu in zip(items, behind, strict=True):
        found = probe(endpoint, timeout_s=timeout_s)
        link = network or found.bandwidth_bytes_per_s or WHAT_IF_NETWORK_BYTES_PER_S
        for remote in found.devices:
            speed_like = gpu or host
            devices.append(
                Device(
                    name=rpc_device_name(len(devices), endpoint),
                    kind="rpc",
                    capacity_bytes=remote.total_bytes,
                    free_bytes=remote.free_bytes,
                    bandwidth_gbps=speed_like.bandwidth_gbps,
                    fp16_tflops=speed_like.fp16_tflops,
                    index=remote.index,
                    bandwidth_known=speed_like.bandwidth_known,
                    bandwidth_measured=gpu is None and host.bandwidth_measured,
                    source="rpc",
                    # "cpu": speed planned as a CPU's (fit.plan reads it).
                    profile=gpu.profile if gpu else "cpu",
                    backend=gpu.backend if gpu else "",
                    endpoint=endpoint,
                    rtt_s=found.rtt_s,
                    network_bytes_per_s=link,
                    # A CPU server: this machine's CPU, so llama.cpp's kernels as timed here.
                    kernel_rates=host.kernel_rates if gpu is None else (),
                    kernel_threads=host.kernel_threads if gpu is None else 0,
                    kernel_batch=host.kernel_batch if gpu is None else (),
                )
            )
        if endpoint.rpartition(":")[0] in ("127.0.0.1", "localhost", "::1"):
            notes.append(
                f"RPC {endpoint} runs on this machine: a CPU server's memory is this "
                "machine's RAM, which the plan counts again for the host"
            )
        if gpu is None:
            notes.append(
                f"RPC {endpoint}: planned at this machine's CPU speed "
                "(write HOST:PORT=GPU, e.g. =rtx3090, for a GPU behind it)"
            )
    return tuple(devices), tuple(notes)


def rpc_device_name(number: int, endpoint: str) -> str:
    """An RPC device as llama.cpp's client names it (``RPC<n>``, counted across
    the hosts in the order they are registered), with its host."""
    return f"RPC{number} {endpoint}"


def _detect(
    exclude_pids: Iterable[int], probe_bandwidth: bool
) -> tuple[tuple[Device, ...], list[Notice], bool | None]:
    """This machine's devices, what its driver and llama.cpp build mean for them,
    and whether the build can offload (None: no GPU here, or unknown)."""
    from llmtune.hardware.detect import detect_with_notes, gpu_build_warning, supports_gpu_offload
    from llmtune.hardware.gpus import gpu_status

    found, notes = detect_with_notes(exclude_pids, probe_bandwidth=probe_bandwidth)
    devices = tuple(found)
    notices = [Notice("unified_memory", note) for note in notes]
    available, sentence = gpu_status()
    if not available and not any(d.is_gpu for d in devices):
        notices.append(Notice("no_gpu_driver", sentence))
    offload: bool | None = None
    if any(d.is_gpu for d in devices):
        offload = supports_gpu_offload()
        warning = gpu_build_warning(devices, offload)
        if warning:
            # Said instead of the driver's sentence: the GPU is there, the build is the problem.
            notices = [n for n in notices if n.kind != "no_gpu_driver"]
            notices.append(Notice("gpu_build", warning))
    return devices, notices, offload


def _host_bandwidth(local: Sequence[Device]) -> HostBandwidth | None:
    """The probe record behind this machine's host, when its bandwidth was measured."""
    from llmtune.hardware.bandwidth import host_bandwidth_record

    if not any(d.kind == "cpu" and d.bandwidth_measured for d in local):
        return None
    return host_bandwidth_record()


def _calibration() -> tuple[SpeedModel, str | None]:
    """This machine's calibrated speed model (``llmtune bench`` keeps it), and a
    sentence when the file was unusable."""
    from llmtune.engine.calibration import load

    return load()
