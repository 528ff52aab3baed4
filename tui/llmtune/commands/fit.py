"""``llmtune fit MODEL``: the plan for a model on this machine or on a what-if."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from llmtune.commands.common import (
    print_json,
    text_width,
    traffic_note,
    warn,
    warn_calibration,
)
from llmtune.errors import ConfigError
from llmtune.fit.plan import FitPlan, plan, with_max_context
from llmtune.fit.quant import requantize
from llmtune.fit.report import plan_dict, plan_text, quant_json, quant_text
from llmtune.fit.settings import NGL_AUTO, Settings
from llmtune.fit.whatif import quant_rows
from llmtune.hardware.machine import Machine, MachineOptions, machine
from llmtune.model import ModelSpec
from llmtune.model.source import open_spec
from llmtune.units import format_bytes


def list_gpus() -> int:
    from llmtune.hardware.profiles import GPU_PROFILES

    for p in GPU_PROFILES:
        print(
            f"{p.key:<17} {p.memory_mib / 1024:6.1f} GiB {p.bandwidth_gbps:7.0f} GB/s "
            f"{p.fp16_tflops:7.1f} TF  {p.device_class:<17} {p.name}"
        )
    return 0


def _kernel_rates(spec: ModelSpec, m: Machine) -> dict[str, float]:
    """{type: GB/s} of llama.cpp's CPU kernels for this model's weight types, largest
    share first, when this machine's were probed and the plan is for it."""
    from llmtune.fit.costs import model_costs
    from llmtune.hardware.cpu_kernels import nearest_rate

    if m.is_what_if or not m.host.kernel_rates:
        return {}
    rates = dict(m.host.kernel_rates)
    mix = sorted(model_costs(spec).matmul_type_bytes, key=lambda kv: -kv[1])
    return {name: nearest_rate(rates, name) for name, _bytes in mix}


def run(args: argparse.Namespace, settings: Settings, options: MachineOptions) -> int:
    if args.list_gpus:
        return list_gpus()
    m = machine(options)
    warn_calibration(m)
    if args.hf is not None and args.model is None and ":" not in args.hf:
        return _whole_repo(args, m, settings)
    opened = open_spec(args.model, args.hf)
    spec = opened.spec
    traffic_note(opened)
    if args.quant and args.quant.lower() == "all":
        return _every_file_type(args, spec, m, settings)
    if args.quant:
        spec = requantize(spec, args.quant)
    if settings.n_ctx == -1:
        settings = with_max_context(spec, m.devices, settings)
    fit_plan = plan(spec, m.devices, settings, m.plan_speed)
    machine_notes = m.plan_notes()
    notes = machine_notes + fit_plan.notes + _all_layers_note(spec, m, settings, fit_plan)
    if m.host_line:
        # The figure every CPU layer's speed is planned with, and how old it is.
        notes += (f"CPU speed planned with {m.host_line}",)
    kernels = _kernel_rates(spec, m)
    if kernels:
        shown = ", ".join(f"{name} {gbps:.1f}" for name, gbps in kernels.items())
        notes += (
            f"CPU weights planned at llama.cpp's own kernel speeds probed here: {shown} GB/s "
            f"({m.host.kernel_threads} threads)",
        )
    fit_plan = dataclasses.replace(fit_plan, notes=notes)
    if args.json:
        out = plan_dict(spec, fit_plan)
        if kernels:
            out["cpu_kernels"] = {
                "gbps": {name: round(gbps, 2) for name, gbps in kernels.items()},
                "threads": m.host.kernel_threads,
            }
        if m.host_bandwidth is not None and m.host_line:
            out["host_bandwidth"] = {
                "bandwidth_gbps": m.host_bandwidth.bandwidth_gbps,
                "measured_at": m.host_bandwidth.measured_at,
                "probes": m.host_bandwidth.probes,
            }
        print_json(out)
        return 0
    for notice in m.notices:
        if notice.kind == "gpu_build" and notice.text in machine_notes:
            warn(notice.text)  # the plan below cannot run with this build: say so first
    sys.stdout.write(plan_text(spec, fit_plan, width=text_width()))
    return 0


def _all_layers_note(
    spec: ModelSpec, m: Machine, settings: Settings, chosen: FitPlan
) -> tuple[str, ...]:
    """With ``--ngl auto`` choosing fewer than every layer: what every layer would lack."""
    if settings.n_gpu_layers != NGL_AUTO or not chosen.gpus:
        return ()
    if chosen.n_gpu_layers >= chosen.n_layer + 1:
        return ()
    every = plan(spec, m.devices, settings.with_(n_gpu_layers=-1), m.plan_speed)
    short = sum(max(0, d.total_bytes - (d.free_bytes - d.margin_bytes)) for d in every.gpus)
    if short <= 0:
        return ()
    return (
        f"every layer on the GPU (--ngl max) needs {format_bytes(short)} more than "
        f"{'it keeps' if len(every.gpus) == 1 else 'they keep'} free",
    )


def _every_file_type(
    args: argparse.Namespace, spec: ModelSpec, m: Machine, settings: Settings
) -> int:
    """``--quant all``: one row per llama.cpp file type, at one context."""
    if settings.n_ctx == -1:
        raise ConfigError(
            "--quant all plans every file type at one context; give a size, or drop "
            "--quant all for the largest context of this file",
            "--ctx max",
        )
    rows = quant_rows(spec, m.devices, settings, speed=m.plan_speed)
    if args.json:
        print_json(quant_json(spec, rows))
    else:
        sys.stdout.write(quant_text(spec, rows, width=text_width()))
    return 0


def _whole_repo(args: argparse.Namespace, m: Machine, settings: Settings) -> int:
    """``--hf OWNER/REPO`` without a quant: every GGUF in the repo, the best that fits first."""
    from llmtune.commands.repo_fit import print_repo, repo_dict
    from llmtune.fit.repo import repo_rows
    from llmtune.model.hub import list_repo, parse_ref

    if args.quant:
        raise ConfigError("--quant plans one file: name it, as --hf OWNER/REPO:QUANT", "--quant")
    repo = list_repo(parse_ref(args.hf).repo_id)
    rows = repo_rows(repo, m.devices, m.plan_speed, settings)
    if args.json:
        print_json(repo_dict(repo, rows))
    else:
        print_repo(repo, rows)
    return 0
