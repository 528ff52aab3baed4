"""The app's planning state, without Textual: which hardware, which quantization.

``Planner`` holds one model and caches it as requantized to each file type
(requantizing an 80-layer model costs ~15 ms, planning it well under 1 ms), so
every keypress plans from cache. What it plans for is a
:class:`~llmtune.hardware.machine.Machine`: this machine, or GPU profiles
chosen as what-if targets with this machine's host.
"""

from __future__ import annotations

from llmtune.fit.plan import FitPlan, plan
from llmtune.fit.quant import FILE_TYPES, requantize
from llmtune.fit.settings import Settings
from llmtune.fit.whatif import TABLE_TYPES, QuantRow, quant_rows
from llmtune.hardware.machine import Machine
from llmtune.model import ModelSpec


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

    def plan(self, hardware: Machine, settings: Settings, quant: str | None = None) -> FitPlan:
        return plan(self.spec_for(quant), hardware.devices, settings, hardware.plan_speed)

    def machine_plan(self, hardware: Machine, settings: Settings) -> FitPlan:
        """The plan for what the worker really loads: the file, on this machine and
        the RPC hosts it registers (their devices first, as llama.cpp places them)."""
        return plan(self.spec, (*hardware.rpc, *hardware.local), settings, hardware.speed)

    def quant_rows(self, hardware: Machine, settings: Settings) -> list[QuantRow]:
        return quant_rows(
            self.spec,
            hardware.devices,
            settings,
            file_types=self.quant_choices(),
            speed=hardware.plan_speed,
            spec_for=self.spec_for,
        )
