"""What ``llmtune fit`` prints: the plan as JSON and as an 80-column table."""

from __future__ import annotations

import textwrap
from typing import Any

from llmtune.fit.commandline import plan_server_command, rpc_server_commands
from llmtune.fit.options import settings_json
from llmtune.fit.plan import FitPlan
from llmtune.fit.whatif import QuantRow
from llmtune.model import ModelSpec
from llmtune.model.spec import location
from llmtune.textsafe import inert
from llmtune.units import format_bytes

_VERDICT_WORDS = {"fits": "fits", "tight": "tight", "over": "DOES NOT FIT"}


def plan_dict(spec: ModelSpec, p: FitPlan) -> dict[str, Any]:
    s = p.settings
    return {
        "model": location(spec.path),
        # The settings as planned: layers and context resolved, the plan's own keys beside them.
        "settings": settings_json(
            s.with_(n_gpu_layers=p.n_gpu_layers, n_ctx=p.n_ctx),
            after={
                "n_ctx": {"n_ctx_seq": p.n_ctx_seq},
                "flash_attn": {"flash_attn_resolved": p.flash_attn},
            },
        ),
        "kv_cells": p.kv_cells,
        "swa_cells": p.swa_cells,
        "devices": [
            {
                "name": d.name,
                "label": d.label,
                "kind": d.kind,
                "backend": d.backend,
                "capacity_bytes": d.capacity_bytes,
                "free_bytes": d.free_bytes,
                "weights_bytes": d.weights_bytes,
                "kv_bytes": d.kv_bytes,
                "compute_bytes": d.compute_bytes,
                "other_bytes": d.other_bytes,
                "runtime_bytes": d.runtime_bytes,
                "total_bytes": d.total_bytes,
                "n_layers": d.n_layers,
                "has_output": d.has_output,
                "verdict": d.verdict,
                **({"endpoint": d.endpoint} if d.kind == "rpc" else {}),
            }
            for d in p.devices
        ],
        "fits": p.fits,
        "verdict": p.verdict,
        "max_gpu_layers": p.max_gpu_layers,
        "n_layer": p.n_layer,
        # A plan that does not fit runs at no speed: null, and what it lacks instead.
        "predicted": {
            "tg_tokens_per_s": round(p.predicted.tg_tokens_per_s, 3) if p.fits else None,
            "pp_tokens_per_s": round(p.predicted.pp_tokens_per_s, 3) if p.fits else None,
            "tg_network_s": round(p.predicted.tg_network_s, 6) if p.fits else None,
            # With --parallel N: each stream's speed while all N generate, and their sum.
            "n_parallel": p.predicted.n_parallel,
            "tg_stream_tokens_per_s": (
                round(p.predicted.tg_stream_tokens_per_s, 3) if p.fits else None
            ),
            "tg_aggregate_tokens_per_s": (
                round(p.predicted.tg_aggregate_tokens_per_s, 3) if p.fits else None
            ),
        },
        "short_bytes": p.short_bytes,
        "command": plan_server_command(spec.path, p),
        # What llama-fit-params would print for this machine (--ngl auto), else null.
        "fit_args": p.fit.fit_args if p.fit is not None and p.fit.status == "success" else None,
        "rpc_servers": list(rpc_server_commands(p)),
        "notes": list(p.notes),
    }


def _mib(n: int) -> str:
    return format_bytes(n)


def plan_lines(spec: ModelSpec, p: FitPlan, width: int = 80) -> list[str]:
    w = max(50, width)
    lines: list[str] = []
    s = p.settings
    lines.append(
        cut_line(
            f"{inert(spec.name, max_chars=w)} · {spec.file_type_name} · {format_bytes(spec.file_bytes)}",
            w,
        )
    )
    fa = "on" if p.flash_attn else "off"
    lines.append(
        cut_line(
            f"  ngl {p.n_gpu_layers}/{p.n_layer + 1} · ctx {p.n_ctx:,} · batch {s.n_batch}/{s.n_ubatch}"
            f" · KV {s.cache_type_k}/{s.cache_type_v} · flash-attn {fa}"
            + (f" · {s.n_parallel} seqs" if s.n_parallel > 1 else ""),
            w,
        )
    )
    lines.append("")
    wide = w >= 78
    if wide:
        lines.append(
            f"  {'device':<19}{'weights':>10}{'KV':>10}{'compute':>10}{'other':>9}{'total':>10}{'free':>10}"
        )
    for d in p.devices:
        # An RPC device's endpoint goes on its verdict line: the name column is narrow.
        shown = d.label.removesuffix(f" {d.endpoint}") if d.kind == "rpc" else d.label
        name = inert(shown, max_chars=None)
        room = 19 if wide else w - 2
        name = name if len(name) <= room else name[: room - 1] + "…"
        # The runtime (a CUDA context) is its own part: in "other" here, named on
        # the verdict line.
        other = d.other_bytes + d.runtime_bytes
        if wide:
            lines.append(
                f"  {name:<19}{_mib(d.weights_bytes):>10}{_mib(d.kv_bytes):>10}"
                f"{_mib(d.compute_bytes):>10}{_mib(other):>9}{_mib(d.total_bytes):>10}"
                f"{_mib(d.free_bytes):>10}"
            )
        else:
            lines.append(f"  {name}")
            lines.append(
                cut_line(
                    f"    weights {_mib(d.weights_bytes)}, KV {_mib(d.kv_bytes)}, "
                    f"compute {_mib(d.compute_bytes)}, other {_mib(other)}",
                    w,
                )
            )
            lines.append(f"    total {_mib(d.total_bytes)} of {_mib(d.free_bytes)}")
        layers = f"{d.n_layers} layer{'s' if d.n_layers != 1 else ''}" + (
            " + output" if d.has_output else ""
        )
        # "free" is what the plan may use; a device's capacity differs when others hold part of it.
        capacity = (
            f", capacity {format_bytes(d.capacity_bytes)}"
            if d.capacity_bytes != d.free_bytes
            else ""
        )
        where = f" · {inert(d.endpoint)}" if d.kind == "rpc" else ""
        lines.append(
            cut_line(
                f"    {_VERDICT_WORDS[d.verdict]}: {layers}, {_headroom(d.headroom_bytes)}{capacity}{where}",
                w,
            )
        )
    runtimes = sorted({(d.backend, d.runtime_bytes) for d in p.devices if d.runtime_bytes})
    if runtimes:
        held = ", ".join(f"{backend} {_mib(b).strip()}" for backend, b in runtimes)
        lines.append(cut_line(f"  other includes each GPU's runtime: {held} (--overhead)", w))
    lines.append("")
    if p.gpus:
        lines.append(
            f"Most layers that fit: {p.max_gpu_layers} of {p.n_layer + 1} "
            + (
                f"(keeping {format_bytes(s.margin_bytes)} free per GPU)"
                if not s.device_margins
                else "(keeping "
                + ", ".join(format_bytes(s.margin_of(i)) for i in range(len(p.gpus)))
                + " free)"
            )
        )
    if p.fits:
        lines.append(
            f"Predicted: {p.predicted.tg_tokens_per_s:,.1f} tokens/s generating, "
            f"{p.predicted.pp_tokens_per_s:,.0f} tokens/s on prompts"
        )
        if p.predicted.n_parallel > 1:
            lines.append(
                f"  {p.predicted.n_parallel} streams at once: "
                f"{p.predicted.tg_stream_tokens_per_s:,.1f} tokens/s each, "
                f"{p.predicted.tg_aggregate_tokens_per_s:,.1f} in all"
            )
    else:
        lines.append(f"Predicted: no speed, it does not run: {format_bytes(p.short_bytes)} short")
    if p.fit is not None and p.fit.status == "success":
        lines.append(f"llama.cpp's fit chooses: {p.fit.fit_args}")
    if p.fits and p.predicted.tg_network_s > 0:
        lines.append(
            f"  network {_ms(p.predicted.tg_network_s)} of {_ms(p.predicted.tg_token_s)} per token"
        )
    for note in p.notes:
        lines.extend(textwrap.wrap(f"note: {inert(note)}", w, subsequent_indent="      "))
    lines.append("")
    servers = rpc_server_commands(p)
    if servers:
        lines.append("On each RPC host (trusted networks only: RPC has no authentication):")
        for server in servers:
            lines.extend(_wrap_command(inert(server, max_chars=None), w))
        lines.append("Then here:")
    else:
        lines.append("llama.cpp:")
    command = plan_server_command(inert(spec.path, max_chars=None), p)
    lines.extend(_wrap_command(command, w))
    return lines


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms" if seconds < 0.01 else f"{seconds * 1e3:.1f} ms"


def _headroom(n: int) -> str:
    return f"{format_bytes(n)} to spare" if n >= 0 else f"{format_bytes(-n)} short"


def cut_line(line: str, width: int) -> str:
    return line if len(line) <= width else line[: width - 1] + "…"


def _wrap_command(command: str, width: int) -> list[str]:
    """Wrap a shell command at word boundaries with trailing backslashes."""
    words = command.split(" ")
    lines: list[str] = []
    current = " "
    for word in words:
        if len(current) + 1 + len(word) > width - 2 and current.strip():
            lines.append(current + " \\")
            current = "   "
        current += " " + word
    lines.append(current)
    return lines


def plan_text(spec: ModelSpec, p: FitPlan, width: int = 80) -> str:
    return "\n".join(plan_lines(spec, p, width)) + "\n"


def quant_json(spec: ModelSpec, rows: list[QuantRow]) -> dict[str, Any]:
    return {
        "model": location(spec.path),
        "file_type": spec.file_type_name,
        "parameters": spec.parameters,
        "rows": [
            {
                "file_type": r.file_type,
                "file_bytes": r.file_bytes,
                "bits_per_weight": round(r.bits_per_weight, 4),
                "fits": r.plan.fits,
                "verdict": r.plan.verdict,
                "max_gpu_layers": r.plan.max_gpu_layers,
                "n_gpu_layers": r.plan.n_gpu_layers,
                "host_bytes": r.plan.host.total_bytes,
                "tg_tokens_per_s": round(r.plan.predicted.tg_tokens_per_s, 3),
                "quality": r.quality,
                "current": r.is_current,
            }
            for r in rows
        ],
    }


def quant_text(spec: ModelSpec, rows: list[QuantRow], width: int = 80) -> str:
    w = max(50, width)
    lines = [
        cut_line(
            f"{inert(spec.name, max_chars=w)}: {format_bytes(spec.file_bytes)} as {spec.file_type_name}",
            w,
        )
    ]
    has_gpu = bool(rows and rows[0].plan.gpus)
    lines.append("")
    head = f"  {'type':<8}{'size':>10}{'bits/w':>7}  {'verdict':<13}"
    head += f"{'layers':>7}" if has_gpu else ""
    head += f"{'tok/s':>7}"
    wide = w >= 78
    if wide:
        head += "  quality"
    lines.append(head)
    for r in rows:
        mark = "*" if r.is_current else " "
        verdict = _VERDICT_WORDS[r.plan.verdict]
        line = f"{mark} {r.file_type:<8}{format_bytes(r.file_bytes):>10}{r.bits_per_weight:>7.2f}  {verdict:<13}"
        if has_gpu:
            line += f"{r.plan.max_gpu_layers:>4}/{r.plan.n_layer + 1:<2}"
        line += f"{r.plan.predicted.tg_tokens_per_s:>7.1f}"
        if wide:
            line += f"  {r.quality}"
        lines.append(cut_line(line, w))
    lines.append("")
    lines.append("* the file's own type. Sizes follow llama-quantize's per-tensor rules;")
    lines.append("  speed is with the most layers that fit on the GPU.")
    if spec.file_type_name not in ("F32", "F16", "BF16"):
        lines.extend(
            textwrap.wrap(
                f"Requantizing from {spec.file_type_name} cannot bring back what it lost: "
                "quantize from the F16/BF16 original where you can.",
                w,
            )
        )
    return "\n".join(lines) + "\n"
