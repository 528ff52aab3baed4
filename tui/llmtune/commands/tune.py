"""``llmtune tune MODEL``: the fastest llama.cpp settings that fit here, by real runs."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Collection

from llmtune.commands.common import ProgressLine, print_json, refuse_what_if, warn_calibration
from llmtune.errors import ConfigError
from llmtune.fit.settings import Settings
from llmtune.hardware.machine import MachineOptions, machine


def thread_counts(text: str | None) -> tuple[int, ...]:
    """``--threads 1,2,4``: the counts to try, sorted, each at least 1."""
    if not text:
        return ()
    try:
        threads = tuple(sorted({int(x) for x in text.split(",") if x.strip()}))
    except ValueError:
        raise ConfigError(f"not a list of whole numbers: {text!r}", "--threads") from None
    if not threads or min(threads) < 1:
        raise ConfigError("thread counts must be 1 or more", "--threads")
    return threads


def run(
    args: argparse.Namespace, settings: Settings, options: MachineOptions, given: Collection[str]
) -> int:
    """``given``: the Settings fields the user set, which the search keeps."""
    from llmtune.engine.report import trial_row, tune_dict, tune_header_lines, tune_summary_lines
    from llmtune.engine.tune import Trial, TrialBench, Tuner, TuneSpace
    from llmtune.errors import WorkerError
    from llmtune.model import read_spec

    refuse_what_if("tune", options, args.quant, args.list_gpus)
    threads = thread_counts(args.threads)
    if len(threads) == 1:
        settings = settings.with_(threads=threads[0])
    for flag, value in (
        ("--gen-tokens", args.gen_tokens),
        ("--repeat", args.repeat),
        ("--max-trials", args.max_trials),
    ):
        if value < 1:
            raise ConfigError(f"{flag} must be at least 1", flag)
    if args.prompt_tokens is not None and args.prompt_tokens < 1:
        raise ConfigError("--prompt-tokens must be at least 1", "--prompt-tokens")
    m = machine(options, for_worker=True)
    warn_calibration(m)
    bench = TrialBench.for_objective(args.objective)
    bench = TrialBench(
        prompt_tokens=args.prompt_tokens or bench.prompt_tokens,
        gen_tokens=args.gen_tokens,
        repeat=args.repeat,
    )
    spec = read_spec(args.model)
    progress = ProgressLine(not args.json and sys.stderr.isatty())
    printed_header = [False]

    def on_trial(trial: Trial) -> None:
        progress.clear()
        if args.json:
            return
        if not printed_header[0]:
            printed_header[0] = True
            header = tune_header_lines(spec.name, spec.file_type_name, tuner.n_ctx, args.objective)
            print("\n".join(header))
        print(trial_row(trial), flush=True)

    tuner = Tuner(
        spec,
        list(m.devices),
        settings,
        objective=args.objective,
        space=TuneSpace.around(settings, given, threads),
        bench=bench,
        speed=m.speed,
        max_trials=args.max_trials,
        on_trial=on_trial,
        on_progress=lambda line: progress.show(line, 0.0),
    )
    try:
        result = tuner.run()
    finally:
        progress.clear()
    if result.best is None and not result.cancelled:
        why = next((t.reason for t in result.trials if t.reason), "no trial ran")
        raise WorkerError(f"no configuration ran here: {why}", "llmtune tune")
    if result.best is not None and result.plan is not None and not result.plan.rpc_devices:
        # The best trial is how this machine will run the model: it corrects the prediction.
        from llmtune.engine.calibration import record_run

        record_run(
            result.plan,
            result.best.tg_tokens_per_s,
            result.best.pp_tokens_per_s,
            host_measured=m.host.bandwidth_measured,
            speed=m.speed,
            source="tune",
            model=spec.name,
        )
    if args.json:
        print_json(tune_dict(result, spec))
    else:
        print()
        print("\n".join(tune_summary_lines(result)))
    if result.cancelled:
        print("llmtune: tuning cancelled; the best so far is above", file=sys.stderr)
        return 130
    return 0
