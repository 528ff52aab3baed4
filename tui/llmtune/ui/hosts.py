"""The RPC hosts the app plans with, as the hosts screen edits them (no Textual here).

A host is asked what it lends once, when it is added (``probe_host``, in a
thread: up to a few seconds each). Hosts already in the plan are not asked
again: a host serves one client at a time, so one the worker is using would
not answer. The screen edits a list of :class:`HostEntry` and, when it closes
with changes, the app plans with :func:`combine`'s devices.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from llmtune.hardware.device import Device
from llmtune.hardware.machine import Machine, rpc_device_name, rpc_devices, rpc_items
from llmtune.hardware.rpc import RpcError
from llmtune.units import format_bytes

__all__ = [
    "HostEntry",
    "combine",
    "entries_of",
    "fmt_link",
    "fmt_ms",
    "parse_hosts",
    "probe_host",
    "renumbered",
    "short_name",
]


@dataclass(frozen=True)
class HostEntry:
    """One RPC host: what it lends and what the plan assumes about it."""

    endpoint: str
    devices: tuple[Device, ...]
    notes: tuple[str, ...] = ()
    gpu: str = ""  # the GPU written after '=' (its speed), or a profile found on its devices

    @property
    def rtt_s(self) -> float:
        return self.devices[0].rtt_s if self.devices else 0.0

    @property
    def network_bytes_per_s(self) -> float:
        return self.devices[0].network_bytes_per_s if self.devices else 0.0

    def lines(self) -> list[str]:
        """What the hosts screen says about it: the host, each device, the link."""
        head = self.endpoint + (f" = {self.gpu}" if self.gpu else "  (CPU speed)")
        out = [head]
        for d in self.devices:
            out.append(
                f"  {short_name(d)}  {format_bytes(d.free_bytes)} free"
                f" of {format_bytes(d.capacity_bytes)}"
            )
        link = f"  round trip {fmt_ms(self.rtt_s)}"
        if self.network_bytes_per_s > 0:
            link += f" · {fmt_link(self.network_bytes_per_s)}"
        out.append(link)
        return out


def short_name(d: Device | str) -> str:
    """llama.cpp's name for an RPC device without its host: ``RPC0``."""
    name = d if isinstance(d, str) else d.name
    return name.split(" ", 1)[0]


def fmt_ms(seconds: float) -> str:
    ms = seconds * 1e3
    if ms >= 10:
        return f"{ms:,.0f} ms"
    if ms >= 0.1:
        return f"{ms:.1f} ms"
    return f"{ms:.2g} ms"


def fmt_link(bytes_per_s: float) -> str:
    """A link's speed in bits, as networks are sold (``--network 1Gbit``)."""
    bits = bytes_per_s * 8
    if bits >= 1e9:
        return f"{bits / 1e9:.1f} Gbit/s"
    return f"{bits / 1e6:.0f} Mbit/s"


def entries_of(machine: Machine) -> tuple[HostEntry, ...]:
    """The machine's RPC hosts, in the plan's order."""
    entries: list[HostEntry] = []
    for endpoint in machine.endpoints:
        devices = tuple(d for d in machine.rpc if d.endpoint == endpoint)
        notes = tuple(n for n in machine.rpc_notes if endpoint in n)
        # "cpu" marks a host with no GPU named (planned at CPU speed), not a GPU.
        profiles = {d.profile for d in devices if d.profile and d.profile != "cpu"}
        gpu = profiles.pop() if len(profiles) == 1 else ""
        entries.append(HostEntry(endpoint, devices, notes, gpu))
    return tuple(entries)


def renumbered(entries: Iterable[HostEntry]) -> tuple[HostEntry, ...]:
    """The hosts with their devices named RPC0, RPC1, ... across the hosts in
    order, as llama.cpp numbers the devices of the hosts it registers (a host
    asked alone has its first device named RPC0)."""
    out: list[HostEntry] = []
    count = 0
    for entry in entries:
        devices = []
        for d in entry.devices:
            devices.append(replace(d, name=rpc_device_name(count, d.endpoint)))
            count += 1
        out.append(replace(entry, devices=tuple(devices)))
    return tuple(out)


def combine(entries: Iterable[HostEntry]) -> tuple[tuple[Device, ...], tuple[str, ...]]:
    """The devices and notes to plan with, in the hosts' order."""
    devices: list[Device] = []
    notes: list[str] = []
    for entry in renumbered(entries):
        devices += entry.devices
        notes += [n for n in entry.notes if n not in notes]
    return tuple(devices), tuple(notes)


def parse_hosts(text: str, present: Sequence[str]) -> tuple[tuple[str, str | None], ...]:
    """What the user typed (``HOST:PORT[=GPU][,...]``) as (endpoint, GPU spec) items;
    raises :class:`RpcError` for a bad item or a host already in the list."""
    items = rpc_items([text])
    for endpoint, _gpu in items:
        if endpoint in present:
            raise RpcError(f"{endpoint} is already in the list")
    return items


def probe_host(
    endpoint: str,
    gpu: str | None,
    host: Device,
    network_bytes_per_s: float | None,
    timeout_s: float,
) -> HostEntry:
    """Ask the host at ``endpoint`` what it lends (blocking: a thread's work).

    ``rpc_devices`` probes it, each step bounded by ``timeout_s`` (a host that
    refuses or never answers is said at once), and describes its devices as
    ``llmtune fit --rpc`` does. Raises :class:`RpcError` (or ``ConfigError``
    for a GPU it does not know after '='), one line naming the host.
    """
    if gpu:
        from llmtune.hardware.profiles import parse_gpu_spec

        parse_gpu_spec(gpu)  # a misspelt GPU is said before the network is asked
    devices, notes = rpc_devices(((endpoint, gpu),), host, network_bytes_per_s, timeout_s)
    return HostEntry(endpoint, devices, notes, gpu or "")
