"""``llmtune bench MODEL``: load the model in llama.cpp here and measure it, like llama-bench."""

from __future__ import annotations

import argparse
import sys

from llmtune.commands.common import (
    ProgressLine,
    print_json,
    refuse_what_if,
    text_width,
    warn_calibration,
)
from llmtune.errors import ConfigError
from llmtune.fit.settings import Settings
from llmtune.hardware.machine import MachineOptions, machine


def history(args: argparse.Namespace) -> int:
    """``llmtune bench --history``: this machine's runs, predicted against measured."""
    from llmtune.engine import history as runs
    from llmtune.engine.calibration import machine_key

    if args.last < 1:
        raise ConfigError("--last must be at least 1", "--last")
    entries = runs.read(machine_key())[-args.last :]
    if args.json:
        print_json({"machine": machine_key(), "entries": runs.as_json(entries)})
    else:
        sys.stdout.write(runs.table(entries, width=text_width()))
    return 0


def run(args: argparse.Namespace, settings: Settings, options: MachineOptions) -> int:
    from llmtune.engine.bench import run_bench
    from llmtune.engine.calibration import record_run
    from llmtune.engine.config import RunConfig
    from llmtune.engine.report import bench_dict, bench_text
    from llmtune.fit.commandline import pinned_settings, plan_extras
    from llmtune.fit.plan import plan
    from llmtune.model import read_spec

    refuse_what_if("bench", options, args.quant, args.list_gpus)
    if settings.n_ctx == -1:
        raise ConfigError("give bench a context size; fit --ctx max finds one", "--ctx")
    for flag, value in (("--prompt-tokens", args.prompt_tokens), ("--gen-tokens", args.gen_tokens)):
        if value < 1:
            raise ConfigError(f"{flag} must be at least 1", flag)
    if not 1 <= args.repeat <= 100:
        raise ConfigError("--repeat must be 1 to 100", "--repeat")
    m = machine(options, for_worker=True)
    warn_calibration(m)
    spec = read_spec(args.model)
    fit_plan = plan(spec, m.devices, settings, m.speed)
    # The plan's split pinned, its RPC hosts registered: the run is the plan.
    config = RunConfig.from_settings(spec.path, pinned_settings(fit_plan), plan_extras(fit_plan))
    progress = ProgressLine(sys.stderr.isatty() and not args.json)
    try:
        result = run_bench(
            config,
            fit_plan,
            prompt_tokens=args.prompt_tokens,
            gen_tokens=args.gen_tokens,
            repeat=args.repeat,
            on_progress=lambda line: progress.show(line, 0.0),
        )
    finally:
        progress.clear()
    calibrated = None
    if fit_plan.rpc_devices and not args.no_calibrate:
        # This machine's calibration describes its own devices, not a network's.
        print("llmtune: not calibrating: the run used RPC hosts", file=sys.stderr)
    elif not args.no_calibrate:
        recorded = record_run(
            fit_plan,
            result.tg.mean,
            result.pp.mean,
            host_measured=m.host.bandwidth_measured,
            speed=m.speed,
            source="bench",
            model=spec.name,
        )
        calibrated = recorded.speed
        if recorded.entry.note and not args.json:
            print(f"llmtune: {recorded.entry.note}", file=sys.stderr)
    if args.json:
        print_json(bench_dict(spec, fit_plan, result, calibrated is not None))
    else:
        sys.stdout.write(
            bench_text(spec, fit_plan, result, calibrated is not None, width=text_width())
        )
    return 0
