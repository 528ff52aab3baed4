"""`llmtune [MODEL]`: bad options and files are one line before any screen opens."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def llmtune(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llmtune.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--interval", "0"], "the interval must be a positive number of seconds, not 0.0"),
        (["--interval", "nan"], "(--interval)"),
        (["--interval", "soon"], "invalid float value"),
        (["--theme", "nord-ish"], "unknown theme 'nord-ish'; did you mean nord"),
        (["--gpu", "rtx9999"], "unknown GPU"),
        (["missing.gguf"], "missing.gguf"),
    ],
)
def test_bad_app_options_are_one_line(args: list[str], says: str, tmp_path: Path) -> None:
    done = llmtune(*args)
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("llmtune: error: ")
    assert says in lines[0]
    assert "Traceback" not in done.stderr


def test_a_directory_is_refused_before_the_screen_opens(tmp_path: Path) -> None:
    done = llmtune(str(tmp_path))
    assert done.returncode == 2
    assert "directory" in done.stderr and len(done.stderr.strip().splitlines()) == 1
