"""``llmtune quality MODEL --types ...``: each file type quantized from MODEL and
measured against it with llama.cpp's KL-divergence test; text or JSON."""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from llmtune.commands.common import ProgressLine, print_json, warn
from llmtune.units import format_bytes

if TYPE_CHECKING:
    from llmtune.engine.quality import QualityProgress, QualityReport, QualityRequest
    from llmtune.engine.quality_store import QualityRow

BAR_CELLS = 20
PHASE_WORDS = {"source": "the source's pass", "quantize": "quantizing", "measure": "measuring"}


def run(args: argparse.Namespace) -> int:
    from llmtune.engine.quality import (
        QualityCancelled,
        QualityProgress,
        QualityReport,
        parse_types,
        prepare_quality,
        run_quality,
    )
    from llmtune.engine.quality_store import QualityRow

    request = prepare_quality(
        args.model,
        parse_types(args.types),
        text=args.text,
        n_ctx=args.ctx,
        chunks=args.chunks,
        imatrix=args.imatrix,
        threads=args.threads,
        work_dir=args.work_dir,
    )
    if not args.json:
        for warning in request.warnings:
            warn(warning)
        print("\n".join(header_lines(request)), flush=True)
    progress = ProgressLine(not args.json)
    report: QualityReport | None = None
    printed_columns = False
    try:
        with contextlib.closing(run_quality(request)) as updates:
            for update in updates:
                if isinstance(update, QualityProgress):
                    progress.show(progress_line(update), update.fraction)
                elif isinstance(update, QualityRow) and not args.json:
                    progress.clear()
                    if not printed_columns:
                        print(COLUMNS)
                        printed_columns = True
                    print(row_line(update), flush=True)
                elif isinstance(update, QualityReport):
                    report = update
    except (KeyboardInterrupt, QualityCancelled):
        progress.clear()
        print("llmtune: measurement cancelled; no temporary file was left", file=sys.stderr)
        return 130
    finally:
        progress.clear()
    assert report is not None
    if args.json:
        print_json(report_dict(report))
    else:
        print(footer_line(report))
    return 0


def header_lines(request: QualityRequest) -> list[str]:
    text = "the bundled text (CC0)" if request.text.name == "bundled" else request.text.name
    chunks = f", at most {request.chunks} chunks" if request.chunks else ""
    return [
        f"Quality of {request.source} ({request.source_type}, "
        f"{format_bytes(request.source_bytes)}) by llama.cpp's KL-divergence test",
        f"on {text}, context {request.n_ctx}{chunks}; "
        f"types: {', '.join(request.types) or 'none besides the source'}"
        + (" with the importance matrix" if request.imatrix else ""),
    ]


COLUMNS = (
    f"{'type':<16}{'size':>10}  {'PPL':>18}  {'mean KLD':>20}  {'99% KLD':>9}  {'same top':>16}"
)


def row_line(row: QualityRow) -> str:
    ppl = f"{_num(row.ppl)} ± {_num(row.ppl_err)}"
    if row.is_source:
        return (
            f"{row.label:<16}{format_bytes(row.file_bytes):>10}  {ppl:>18}  {'(the reference)':>20}"
        )
    kld = f"{row.kld_mean:.5f} ± {row.kld_mean_err:.5f}"
    top = f"{row.same_top_pct:.2f} ± {row.same_top_err_pct:.2f}%"
    return (
        f"{row.label:<16}{format_bytes(row.file_bytes):>10}  {ppl:>18}  {kld:>20}  "
        f"{row.kld_p99:>9.5f}  {top:>16}"
    )


def _num(value: float) -> str:
    """Three decimals, or three significant digits where that would be too wide."""
    return f"{value:.3f}" if abs(value) < 1e5 else f"{value:.3g}"


def footer_line(report: QualityReport) -> str:
    b = report.base
    return (
        f"{b.n_chunk} chunks of {b.n_ctx} tokens: {b.tokens_used:,} tokens of the text used, "
        f"{b.tokens_scored:,} scored; {report.key.build}; {report.seconds:.1f} s. "
        "Kept for the app's quantization pane."
    )


def progress_line(p: QualityProgress) -> str:
    filled = int(round(p.fraction * BAR_CELLS))
    bar = "█" * filled + "░" * (BAR_CELLS - filled)
    what = PHASE_WORDS[p.phase]
    step = f"{p.file_type} ({p.step}/{p.steps}): {what}" if p.step else what
    left = f"{_clock(p.eta_s)} left" if p.eta_s is not None else "estimating time left"
    return f"{bar} {p.fraction * 100:3.0f}%  {step} {p.phase_fraction * 100:.0f}%  · {left}"


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return (
        f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"
    )


def report_dict(report: QualityReport) -> dict[str, Any]:
    r = report.request
    b = report.base
    return {
        "source": {
            "path": r.source,
            "file_type": r.source_type,
            "file_bytes": r.source_bytes,
            "fingerprint": report.key.source,
        },
        "llama_cpp": report.key.build,
        "text": {"name": r.text.name, "path": r.text.path, "sha256": r.text.sha256},
        "n_ctx": b.n_ctx,
        "n_chunk": b.n_chunk,
        "tokens_used": b.tokens_used,
        "tokens_scored": b.tokens_scored,
        "imatrix": r.imatrix,
        "rows": [_finite({"label": row.label, **asdict(row)}) for row in report.rows],
        "seconds": round(report.seconds, 3),
    }


def _finite(d: dict[str, Any]) -> dict[str, Any]:
    """JSON has no NaN: a statistic llama.cpp did not print is null."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}
