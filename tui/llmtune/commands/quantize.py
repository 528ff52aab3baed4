"""``llmtune quantize MODEL --to FTYPE``: llama.cpp's quantizer, a dry run first, then a
temporary file that gets its name only when complete."""

from __future__ import annotations

import argparse
import contextlib
import sys

from llmtune.commands.common import ProgressLine, print_json, warn


def run(args: argparse.Namespace) -> int:
    from llmtune.engine.quantize import (
        QuantizePlan,
        QuantizeResult,
        QuantizeStep,
        prepare_quantize,
        run_quantize,
    )
    from llmtune.engine.report import (
        quantize_dict,
        quantize_plan_lines,
        quantize_result_line,
        quantize_step_line,
    )

    job = prepare_quantize(
        args.model,
        args.to,
        args.output,
        allow_requantize=args.allow_requantize,
        imatrix=args.imatrix,
        force=args.force,
        threads=args.threads,
    )
    if not args.json:
        for warning in job.warnings:
            warn(warning)
    progress = ProgressLine(not args.json)
    result = None
    try:
        with contextlib.closing(run_quantize(job)) as updates:
            for update in updates:
                if isinstance(update, QuantizePlan) and not args.json:
                    print("\n".join(quantize_plan_lines(update)), flush=True)
                elif isinstance(update, QuantizeStep):
                    progress.show(quantize_step_line(update, job), update.fraction)
                elif isinstance(update, QuantizeResult):
                    result = update
    except KeyboardInterrupt:
        progress.clear()
        print("llmtune: quantization cancelled; nothing was written", file=sys.stderr)
        return 130
    finally:
        progress.clear()
    assert result is not None
    if args.json:
        print_json(quantize_dict(result))
    else:
        print(quantize_result_line(result))
    return 0
