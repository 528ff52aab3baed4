"""The malformed-file corpus through the app's open path, in one pilot session.

A sample of the inputs of tests/bench/reliability/files.py (500, spread over
every family of cut, flipped, oversized, retyped, nested and split files; the
headers at the reader's limits take 10-15 s each and are left to the report)
is opened with ``app.open_model`` one after another, after the crafted file
whose quantization warm-up once ended the app, each followed by
the threads the open starts. None may end the app or reach Textual as an
exception, and each must either open or be refused with a one-line notice.
``tests/bench/reliability_report.py --only app`` runs 5,000 the same way.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from reliability.app import HEAVY, PHANTOM, SUITE_INPUTS, run_app  # noqa: E402


async def test_malformed_files_never_end_the_app(demo_model: Path) -> None:
    result = await run_app(SUITE_INPUTS, skip=HEAVY)
    assert result.inputs >= SUITE_INPUTS
    assert result.app_exits == 0 and not result.tracebacks, result.tracebacks
    assert not result.silent and not result.multi_line, (result.silent, result.multi_line)
    assert not result.hangs, result.hangs
    assert result.opened + result.refused == result.inputs
    assert result.opened >= 50 and result.refused >= 250  # both paths, many times over
    assert not result.foreign, result.foreign  # only llmtune's own errors in the background
    # The crafted file opened, and its warm-up's refusal was a sentence.
    assert result.background[0].startswith(f"{PHANTOM}: Sizing every file type failed: ")
