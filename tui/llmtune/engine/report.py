"""What ``llmtune quantize`` and ``llmtune tune`` print: JSON objects and plain lines."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from llmtune.textsafe import inert
from llmtune.units import format_bytes

if TYPE_CHECKING:
    from llmtune.engine.quantize import QuantizeJob, QuantizePlan, QuantizeResult, QuantizeStep


def _pct(value: float, reference: float) -> str:
    return f"{(value - reference) / reference * 100:+.2f}%" if reference else "n/a"


# ---- quantize --------------------------------------------------------------------------------


def quantize_dict(result: QuantizeResult) -> dict[str, Any]:
    plan = result.plan
    job = plan.job
    return {
        "source": job.source,
        "output": result.output,
        "file_type": job.file_type.name,
        "source_file_type": job.source_file_type,
        "source_bytes": job.source_bytes,
        "file_bytes": result.file_bytes,
        "predicted_file_bytes": job.predicted_file_bytes,
        "dry_run_file_bytes": plan.dry_run_file_bytes,
        "dry_run_tensor_bytes": plan.dry_run_tensor_bytes,
        "predicted_tensor_bytes": job.predicted.tensor_bytes,
        "size_error_pct": round(result.size_error_pct, 4),
        "free_bytes": plan.free_bytes,
        "needed_bytes": plan.needed_bytes,
        "seconds": round(result.seconds, 3),
        "replaced_existing": job.replaces_existing,
        "requantized_tensors": len(job.requantized),
        "imatrix": job.imatrix,
        "imatrix_entries": plan.imatrix_entries,
        "type_mismatches": list(plan.type_mismatches),
        "warnings": list(job.warnings),
    }


def quantize_plan_lines(plan: QuantizePlan) -> list[str]:
    job = plan.job
    name = inert(os.path.basename(job.source), max_chars=60)
    lines = [
        f"{name}: {job.source_file_type}, {format_bytes(job.source_bytes)} -> {job.file_type.name}",
        f"  size  llama.cpp's dry run {format_bytes(plan.dry_run_file_bytes)}, "
        f"llmtune predicted {format_bytes(job.predicted_file_bytes)} "
        f"({_pct(job.predicted_file_bytes, plan.dry_run_file_bytes)})",
        f"  disk  {format_bytes(plan.free_bytes)} free in {inert(job.folder, max_chars=60)}",
    ]
    for mismatch in plan.type_mismatches[:3]:
        lines.append(f"  type  {inert(mismatch, max_chars=100)}")
    return lines


def quantize_step_line(step: QuantizeStep, job: QuantizeJob) -> str:
    tensor = inert(step.tensor, max_chars=40)
    return (
        f"quantizing to {job.file_type.name}: {step.fraction * 100:5.1f}% "
        f"({step.index}/{step.count} {tensor})"
    )


def quantize_result_line(result: QuantizeResult) -> str:
    job = result.plan.job
    return (
        f"wrote {inert(result.output, max_chars=200)}: {format_bytes(result.file_bytes)} "
        f"in {result.seconds:.1f} s (llmtune predicted {format_bytes(job.predicted_file_bytes)}, "
        f"{_pct(job.predicted_file_bytes, result.file_bytes)})"
    )
