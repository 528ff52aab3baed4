"""The app's planning state, without Textual: which hardware, which quantization.

``Planner`` holds one model and caches it as requantized to each file type
(requantizing an 80-layer model costs ~15 ms, planning it well under 1 ms), so
every keypress plans from cache. ``Hardware`` is what plans are made for: this
machine, or GPU profiles chosen as what-if targets with this machine's host.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from llmtune.fit.plan import FitPlan, plan
from llmtune.fit.quant import FILE_TYPES, requantize
from llmtune.fit.settings import Settings
from llmtune.fit.speed import DEFAULT_SPEED_MODEL, SpeedModel
from llmtune.fit.whatif import TABLE_TYPES, QuantRow, quant_rows
from llmtune.hardware.device import Device
from llmtune.model import ModelSpec


@dataclass(frozen=True)
class Hardware:
    """Devices to plan on (GPUs, then the host) and what the user should know about them.

    ``machine`` is this machine's own devices, which the worker really runs
    on; ``what_if`` the GPU profiles chosen instead of this machine's GPUs
    (empty: plan for this machine).
    """

    machine: tuple[Device, ...]
    what_if: tuple[Device, ...] = ()
    notice: str | None = None  # one line: CPU-only mode, a CPU-only llama.cpp build
    speed: SpeedModel = DEFAULT_SPEED_MODEL  # this machine's calibrated model
    supports_offload: bool | None = None

    @property
    def host(self) -> Device:
        return self.machine[-1]

    @property
    def machine_gpus(self) -> tuple[Device, ...]:
        return tuple(d for d in self.machine if d.is_gpu)

    @property
    def devices(self) -> tuple[Device, ...]:
        """What plans are made for."""
        if self.what_if:
            return (*self.what_if, self.host)
        return self.machine

    @property
    def plan_speed(self) -> SpeedModel:
        """This machine's calibration does not describe another machine's GPU."""
        return DEFAULT_SPEED_MODEL if self.what_if else self.speed

    @property
    def gpus(self) -> tuple[Device, ...]:
        return tuple(d for d in self.devices if d.is_gpu)

    def with_what_if(self, gpus: Sequence[Device]) -> Hardware:
        return Hardware(self.machine, tuple(gpus), self.notice, self.speed, self.supports_offload)

    def describe(self) -> str:
        """One line: what the plan is for."""
        if self.what_if:
            names = ", ".join(d.name for d in self.what_if)
            return f"planning for {names} (what-if) with this machine's RAM"
        gpus = self.machine_gpus
        if not gpus:
            return "planning for this machine: CPU only (g: plan for a GPU)"
        return "planning for this machine: " + ", ".join(d.name for d in gpus)


class Planner:
    """Plans for one model, as it is or as any llama.cpp file type."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self._specs: dict[str, ModelSpec] = {}

    @property
    def file_type(self) -> str:
        return self.spec.file_type_name

    def quant_choices(self) -> list[str]:
        """The file types the quantization table offers for this model."""
        names = [t for t in TABLE_TYPES if t in FILE_TYPES]
        if self.file_type in FILE_TYPES and self.file_type not in names:
            names.append(self.file_type)
        return names

    def spec_for(self, quant: str | None) -> ModelSpec:
        """The model as quantized to ``quant`` (``None`` or its own type: as it is)."""
        if quant is None or quant == self.file_type:
            return self.spec
        cached = self._specs.get(quant)
        if cached is None:
            cached = self._specs[quant] = requantize(self.spec, quant)
        return cached

    def warm(self) -> None:
        """Requantize to every table type now (a thread does this at model open)."""
        for name in self.quant_choices():
            self.spec_for(name)

    def plan(self, hardware: Hardware, settings: Settings, quant: str | None = None) -> FitPlan:
        return plan(self.spec_for(quant), hardware.devices, settings, hardware.plan_speed)

    def machine_plan(self, hardware: Hardware, settings: Settings) -> FitPlan:
        """The plan for what the worker really loads: the file, on this machine."""
        return plan(self.spec, hardware.machine, settings, hardware.speed)

    def quant_rows(self, hardware: Hardware, settings: Settings) -> list[QuantRow]:
        return quant_rows(
            self.spec,
            hardware.devices,
            settings,
            file_types=self.quant_choices(),
            speed=hardware.plan_speed,
            spec_for=self.spec_for,
        )
