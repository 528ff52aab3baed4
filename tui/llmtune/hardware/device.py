"""Device: one place memory lives and weights are read from (a GPU or the host)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

DeviceKind = Literal["gpu", "cpu"]


@dataclass(frozen=True)
class Device:
    """A GPU or the host, detected or described by a profile.

    ``free_bytes`` is what the plan may use before the safety margin: for a
    detected GPU, what NVML reports free now (other processes hold the rest);
    for a profile, the whole card.
    """

    name: str
    kind: DeviceKind
    capacity_bytes: int
    free_bytes: int
    bandwidth_gbps: float
    fp16_tflops: float = 0.0
    index: int = 0
    bandwidth_known: bool = True
    bandwidth_measured: bool = False  # probed on this machine, not a peak figure
    source: str = "detected"  # detected | profile | spec
    profile: str = ""

    @property
    def is_gpu(self) -> bool:
        return self.kind == "gpu"
