"""Measured against predicted: llama.cpp's buffers after a load beside ``fit.plan``.

Buffer names map to devices as llama.cpp names its buffer types: ``CPU``,
``CPU_Mapped``, ``CPU_REPACK`` and every ``*_Host`` (pinned host memory) are
host memory; ``CUDA0``, ``Vulkan1``, ``ROCm0`` ... are GPUs, their ordinal
being the position among the plan's local GPUs; ``RPC0[host:port]`` is the
device with that index on that RPC server (``DevicePlan.buffer_name``).

Per device the kinds compared are weights, kv, compute and output:

- weights: every model buffer. On the host, ``CPU_Mapped`` (the span of the
  mapped file, ``DevicePlan.mapped_bytes``) and ``CPU_REPACK`` (repacked copies,
  ``repack_bytes``) both count as weights, as llama.cpp logs them; without mmap
  the host's ``CPU`` model buffer holds the weights that were not repacked.
- kv: KV cache plus recurrent-state buffers.
- compute: the graph's compute buffers.
- output: the logits buffer, on the host (``other_bytes`` less repacked weights).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from llmtune.engine.logparse import Buffer
from llmtune.engine.protocol import Loaded
from llmtune.fit.plan import DevicePlan, FitPlan

HOST = "CPU"
CompareKind = Literal["weights", "kv", "compute", "output"]
COMPARE_KINDS: tuple[CompareKind, ...] = ("weights", "kv", "compute", "output")
_KIND_OF: dict[str, CompareKind] = {
    "model": "weights",
    "kv": "kv",
    "rs": "kv",
    "compute": "compute",
    "output": "output",
}
_GPU_RE = re.compile(r"^([A-Za-z]+?)(\d+)$")


def device_of(buffer_name: str) -> str:
    """``CPU`` for host memory, else the GPU's buffer name (``CUDA0``)."""
    if buffer_name.startswith("CPU") or buffer_name.endswith("_Host") or "_Host" in buffer_name:
        return HOST
    return buffer_name


def gpu_ordinal(device: str) -> int | None:
    m = _GPU_RE.match(device)
    return int(m.group(2)) if m else None


@dataclass(frozen=True)
class BufferComparison:
    device: str  # "CPU" or a GPU buffer name
    kind: CompareKind
    predicted_bytes: int
    measured_bytes: int
    precision_bytes: int  # the log prints MiB with two decimals

    @property
    def error_bytes(self) -> int:
        return self.predicted_bytes - self.measured_bytes

    @property
    def error_pct(self) -> float | None:
        """(predicted - measured) / measured in percent; None when nothing was measured."""
        if self.measured_bytes == 0:
            return 0.0 if self.predicted_bytes == 0 else None
        return 100.0 * self.error_bytes / self.measured_bytes


@dataclass(frozen=True)
class Comparison:
    rows: tuple[BufferComparison, ...]

    def row(self, device: str, kind: CompareKind) -> BufferComparison:
        for r in self.rows:
            if r.device == device and r.kind == kind:
                return r
        raise KeyError(f"{device} {kind}")

    def devices(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(r.device for r in self.rows))

    def worst_pct(self, kind: CompareKind) -> float | None:
        errors = [r.error_pct for r in self.rows if r.kind == kind and r.error_pct is not None]
        return max(errors, key=abs) if errors else None


def measured_by_device(buffers: Iterable[Buffer]) -> dict[str, dict[CompareKind, tuple[int, int]]]:
    """``{device: {kind: (bytes, precision)}}`` from llama.cpp's buffer lines."""
    out: dict[str, dict[CompareKind, tuple[int, int]]] = {}
    for b in buffers:
        kind = _KIND_OF[b.kind]
        kinds = out.setdefault(device_of(b.name), {})
        size, precision = kinds.get(kind, (0, 0))
        kinds[kind] = (size + b.bytes, precision + b.precision_bytes)
    return out


def predicted_by_kind(d: DevicePlan) -> dict[CompareKind, int]:
    """A DevicePlan's bytes in the shape llama.cpp logs them."""
    if d.kind != "cpu":
        return {
            "weights": d.weights_bytes,
            "kv": d.kv_bytes,
            "compute": d.compute_bytes,
            "output": 0,
        }
    weights = (d.mapped_bytes or d.weights_bytes) + d.repack_bytes
    return {
        "weights": weights,
        "kv": d.kv_bytes,
        "compute": d.compute_bytes,
        "output": d.other_bytes - d.repack_bytes,
    }


def compare(loaded: Loaded | Iterable[Buffer], plan: FitPlan) -> Comparison:
    """Each device's buffers, measured beside predicted, kind by kind."""
    buffers = loaded.buffers if isinstance(loaded, Loaded) else tuple(loaded)
    measured = measured_by_device(buffers)
    planned: dict[str, DevicePlan] = {HOST: plan.host}
    gpus = plan.gpus
    local = plan.local_gpus
    rpc = {d.buffer_name: d for d in plan.rpc_devices}
    for device in measured:
        if device in rpc:
            planned[device] = rpc[device]
            continue
        ordinal = gpu_ordinal(device) if device != HOST else None
        if ordinal is not None and ordinal < len(local):
            planned[device] = local[ordinal]
    for d in plan.rpc_devices:
        planned.setdefault(d.buffer_name, d)
    for i, gpu in enumerate(gpus):
        if not any(d is gpu for d in planned.values()):
            planned[f"GPU{i}"] = gpu
    rows: list[BufferComparison] = []
    for device, d in planned.items():
        predicted = predicted_by_kind(d)
        got = measured.get(device, {})
        for kind in COMPARE_KINDS:
            size, precision = got.get(kind, (0, 0))
            rows.append(BufferComparison(device, kind, predicted[kind], size, precision))
    for device, got in measured.items():  # buffers on a device the plan did not know
        if device not in planned:
            for kind in COMPARE_KINDS:
                size, precision = got.get(kind, (0, 0))
                rows.append(BufferComparison(device, kind, 0, size, precision))
    return Comparison(tuple(rows))
