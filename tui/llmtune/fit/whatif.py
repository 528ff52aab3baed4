"""The quantization table: every llama.cpp file type planned on the same hardware.

For each file type the model is requantized as llama-quantize would do it
(fit.quant) and planned with the same settings: file size, bits per weight,
verdict, the most layers that fit and predicted speed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from llmtune.fit.plan import FitPlan, plan
from llmtune.fit.quant import FILE_TYPES, requantize
from llmtune.fit.settings import Settings
from llmtune.fit.speed import DEFAULT_SPEED_MODEL, SpeedModel
from llmtune.hardware.device import Device
from llmtune.model import ModelSpec

# The file types people choose between, best first (llama-quantize's list,
# without the experimental and imatrix-only ones).
TABLE_TYPES = (
    "F16", "Q8_0", "Q6_K", "Q5_K_M", "Q5_K_S", "Q5_0", "Q4_K_M", "Q4_K_S", "Q4_0",
    "IQ4_XS", "Q3_K_L", "Q3_K_M", "Q3_K_S", "IQ3_M", "Q2_K",
)  # fmt: skip

QUALITY_NOTES = {
    "F16": "the original weights",
    "Q8_0": "practically lossless",
    "Q6_K": "near lossless",
    "Q5_K_M": "near lossless",
    "Q5_K_S": "near lossless",
    "Q5_1": "near lossless, legacy",
    "Q5_0": "near lossless, legacy",
    "Q4_1": "legacy, between Q4_0 and Q5_0",
    "Q4_K_M": "the usual balance",
    "Q4_K_S": "a little below Q4_K_M",
    "Q4_0": "legacy, fast on CPUs",
    "IQ4_XS": "Q4_K_S quality, smaller",
    "Q3_K_L": "noticeable loss",
    "Q3_K_M": "noticeable loss",
    "Q3_K_S": "noticeable loss",
    "IQ3_M": "noticeable loss",
    "Q2_K": "large loss",
}


@dataclass(frozen=True)
class QuantRow:
    file_type: str
    file_bytes: int
    bits_per_weight: float
    plan: FitPlan
    quality: str
    is_current: bool


def quant_rows(
    spec: ModelSpec,
    devices: Sequence[Device],
    settings: Settings | None = None,
    file_types: Sequence[str] = TABLE_TYPES,
    speed: SpeedModel = DEFAULT_SPEED_MODEL,
    spec_for: Callable[[str], ModelSpec] | None = None,
) -> list[QuantRow]:
    """One row per file type (and the file's own); each plan puts as many
    layers on the GPU as fit.

    ``spec_for(ftype)`` gives the model as quantized to ``ftype``; a caller that
    plans often (the app, on every change) passes a cache of them, since
    requantizing costs far more than planning."""
    s = settings or Settings()
    requantized = spec_for or (lambda name: requantize(spec, name))
    current = spec.file_type_name
    rows: list[QuantRow] = []
    names = list(file_types)
    if current in FILE_TYPES and current not in names:
        names.append(current)
    for name in names:
        if name not in FILE_TYPES:
            continue
        quantized = requantized(name)
        probe = plan(quantized, devices, s, speed)
        p = (
            plan(quantized, devices, s.with_(n_gpu_layers=probe.max_gpu_layers), speed)
            if probe.gpus
            else probe
        )
        rows.append(
            QuantRow(
                file_type=name,
                file_bytes=quantized.file_bytes,
                bits_per_weight=quantized.bits_per_weight,
                plan=p,
                quality=QUALITY_NOTES.get(name, ""),
                is_current=name == current,
            )
        )
    # Largest first: the order of quality, give or take a legacy type.
    rows.sort(key=lambda r: -r.file_bytes)
    return rows
