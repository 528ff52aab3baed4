"""What ``llmtune bench``, ``llmtune quantize`` and ``llmtune tune`` print: JSON objects and plain lines.

Text from model files and llama.cpp goes through ``inert``: no escape sequence reaches
the terminal.
"""

from __future__ import annotations

import os
import textwrap
from typing import TYPE_CHECKING, Any

from llmtune.fit.report import cut_line, plan_dict, plan_lines
from llmtune.textsafe import inert
from llmtune.units import format_bytes

if TYPE_CHECKING:
    from llmtune.engine.bench import BenchResult
    from llmtune.engine.quantize import QuantizeJob, QuantizePlan, QuantizeResult, QuantizeStep
    from llmtune.engine.tune import Trial, TuneResult
    from llmtune.fit.plan import FitPlan
    from llmtune.model import ModelSpec


def _pct(value: float, reference: float) -> str:
    return f"{(value - reference) / reference * 100:+.2f}%" if reference else "n/a"


# ---- bench -----------------------------------------------------------------------------------


def bench_dict(spec: ModelSpec, p: FitPlan, r: BenchResult, calibrated: bool) -> dict[str, Any]:
    fit = plan_dict(spec, p)
    return {
        "model": fit["model"],
        "settings": fit["settings"],
        "load_s": round(r.load_s, 4),
        "n_prompt": r.n_prompt,
        "n_gen": r.n_gen,
        "repeat": len(r.tg.runs),
        "pp_tokens_per_s": {"mean": r.pp.mean, "stdev": r.pp.stdev, "runs": list(r.pp.runs)},
        "tg_tokens_per_s": {"mean": r.tg.mean, "stdev": r.tg.stdev, "runs": list(r.tg.runs)},
        "measured": [
            {"buffer": b.name, "kind": b.kind, "bytes": b.bytes} for b in r.loaded.buffers
        ],
        "predicted": {"devices": fit["devices"], **fit["predicted"]},
        "comparison": [
            {
                "device": c.device,
                "kind": c.kind,
                "predicted_bytes": c.predicted_bytes,
                "measured_bytes": c.measured_bytes,
                "error_pct": None if c.error_pct is None else round(c.error_pct, 3),
            }
            for c in r.comparison.rows
        ],
        "peak_rss_bytes": r.peak_rss_bytes,
        "vram_delta_bytes": r.vram_delta_bytes,
        "calibrated": calibrated,
        "notes": list(r.notes),
    }


def bench_text(
    spec: ModelSpec, p: FitPlan, r: BenchResult, calibrated: bool, width: int = 80
) -> str:
    w = max(50, width)
    lines = plan_lines(spec, p, w)[:2]
    lines.append("")
    lines.append(f"  {'test':<12}{'tokens/s':>12}{'± stdev':>10}{'predicted':>12}")
    lines.append(
        f"  {'pp' + str(r.n_prompt):<12}{r.pp.mean:>12.1f}{r.pp.stdev:>10.1f}"
        f"{p.predicted.pp_tokens_per_s:>12.1f}"
    )
    lines.append(
        f"  {'tg' + str(r.n_gen):<12}{r.tg.mean:>12.1f}{r.tg.stdev:>10.1f}"
        f"{p.predicted.tg_tokens_per_s:>12.1f}"
    )
    lines.append(f"  load {r.load_s:.2f} s, {len(r.tg.runs)} runs")
    lines.append("")
    lines.append(f"  {'device':<8}{'buffer':<9}{'predicted':>12}{'llama.cpp':>12}{'error':>9}")
    # An RPC buffer is named after its server (RPC0[host:port]); the table shows
    # the client's name for the device (RPC0, RPC1) and the hosts below it.
    short = {d.buffer_name: d.name.split(" ")[0] for d in p.rpc_devices}
    for c in r.comparison.rows:
        if c.predicted_bytes == 0 and c.measured_bytes == 0:
            continue
        err = "" if c.error_pct is None else f"{c.error_pct:+.1f}%"
        device = short.get(c.device, c.device)
        lines.append(
            f"  {inert(device, max_chars=8):<8}{c.kind:<9}{format_bytes(c.predicted_bytes):>12}"
            f"{format_bytes(c.measured_bytes):>12}{err:>9}"
        )
    for d in p.rpc_devices:
        lines.append(f"  {inert(d.name.split(' ')[0])} is {inert(d.endpoint)}")
    if r.peak_rss_bytes is not None:
        lines.append(f"  peak worker RSS {format_bytes(r.peak_rss_bytes)}")
    if r.vram_delta_bytes is not None:
        lines.append(f"  VRAM taken {format_bytes(r.vram_delta_bytes)}")
    if calibrated:
        lines.append("")
        lines.extend(
            textwrap.wrap(
                "Kept as this machine's calibration: llmtune fit now predicts speed with it.", w
            )
        )
    for note in r.notes:
        lines.extend(textwrap.wrap(f"note: {inert(note)}", w, subsequent_indent="      "))
    return "\n".join(cut_line(line, w) for line in lines) + "\n"


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


# ---- tune ------------------------------------------------------------------------------------

_OBJECTIVE_WORDS = {
    "tg": "generation speed",
    "pp": "prompt speed",
    "mix": "prompt and generation together",
}


def trial_dict(trial: Trial) -> dict[str, Any]:
    s = trial.settings
    return {
        "index": trial.index,
        "stage": trial.stage,
        "status": trial.status,
        "reason": trial.reason,
        "settings": {
            "n_gpu_layers": s.n_gpu_layers,
            "n_ctx": s.n_ctx,
            "threads": s.threads,
            "flash_attn": s.flash_attn,
            "n_batch": s.n_batch,
            "n_ubatch": s.n_ubatch,
            "cache_type_k": s.cache_type_k,
            "cache_type_v": s.cache_type_v,
            "n_cpu_moe": s.n_cpu_moe,
        },
        "tg_tokens_per_s": round(trial.tg_tokens_per_s, 3),
        "pp_tokens_per_s": round(trial.pp_tokens_per_s, 3),
        "score": round(trial.score, 4),
        "predicted": {
            "tg_tokens_per_s": round(trial.predicted_tg_tokens_per_s, 3),
            "pp_tokens_per_s": round(trial.predicted_pp_tokens_per_s, 3),
        },
        "load_s": round(trial.load_s, 3),
        "peak_rss_bytes": trial.peak_rss_bytes,
        "seconds": round(trial.seconds, 3),
    }


def tune_dict(result: TuneResult, spec: ModelSpec) -> dict[str, Any]:
    best_plan = plan_dict(spec, result.plan) if result.plan is not None else None
    return {
        "model": os.path.abspath(spec.path),
        "objective": result.objective,
        "n_ctx": result.n_ctx,
        "best": trial_dict(result.best) if result.best is not None else None,
        "settings": best_plan["settings"] if best_plan is not None else None,
        "plan": best_plan,
        "handoff": result.handoff.as_dict() if result.handoff is not None else None,
        "trials": [trial_dict(t) for t in result.trials],
        "pruned": result.pruned,
        "cancelled": result.cancelled,
        "notes": list(result.notes),
    }


def tune_header_lines(model_name: str, file_type: str, n_ctx: int, objective: str) -> list[str]:
    words = _OBJECTIVE_WORDS.get(objective, objective)
    return [
        f"Tuning {inert(model_name, max_chars=40)} · {file_type} · context {n_ctx:,} · for {words}",
        f"{'#':>3}  {'stage':<10}{'ngl':>4}{'thr':>4}  {'fa':<5}{'ubatch':>6}  {'KV':<10}"
        f"{'tg t/s':>8}{'pp t/s':>9}  result",
    ]


def trial_row(trial: Trial) -> str:
    s = trial.settings
    kv = (
        s.cache_type_k if s.cache_type_k == s.cache_type_v else f"{s.cache_type_k}/{s.cache_type_v}"
    )
    if s.n_cpu_moe:
        kv += f" moe{s.n_cpu_moe}"
    result = "ok" if trial.ok else f"{trial.status}: {inert(trial.reason, max_chars=60)}"
    tg = f"{trial.tg_tokens_per_s:8.1f}" if trial.ok else f"{'-':>8}"
    pp = f"{trial.pp_tokens_per_s:9.1f}" if trial.ok else f"{'-':>9}"
    return (
        f"{trial.index:>3}  {trial.stage:<10}{s.n_gpu_layers:>4}{s.threads:>4}  "
        f"{s.flash_attn:<5}{s.n_ubatch:>6}  {kv:<10}{tg}{pp}  {result}"
    )


def tune_summary_lines(result: TuneResult) -> list[str]:
    lines: list[str] = []
    failed = sum(1 for t in result.trials if not t.ok)
    count = f"{len(result.trials)} trials" + (f", {failed} failed" if failed else "")
    if result.pruned:
        count += f"; {result.pruned} ruled out by the estimator without loading"
    lines.append(count + (" (cancelled)" if result.cancelled else ""))
    best = result.best
    if best is None or result.handoff is None:
        lines.append("No configuration ran.")
        return lines
    lines.append(
        f"Best: trial {best.index}, {best.tg_tokens_per_s:,.1f} tokens/s generating, "
        f"{best.pp_tokens_per_s:,.0f} tokens/s on prompts"
    )
    h = result.handoff
    if h.rpc_servers:
        lines += ["", "On each RPC host:"]
        lines += [f"  {inert(line, max_chars=None)}" for line in h.rpc_servers]
    lines += ["", "llama-server:", f"  {inert(h.llama_server, max_chars=None)}"]
    lines += ["llama-cli:", f"  {inert(h.llama_cli, max_chars=None)}"]
    lines += ["llama-cpp-python:"]
    lines += [f"  {inert(line, max_chars=None)}" for line in h.llama_snippet.splitlines()]
    lines += ["Ollama Modelfile:"]
    lines += [f"  {inert(line, max_chars=None)}" for line in h.ollama_modelfile.splitlines()]
    for note in (*result.notes, *h.notes):
        lines.append(f"note: {inert(note, max_chars=300)}")
    return lines
