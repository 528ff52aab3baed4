"""Quantizing onto a disk that is, or becomes, full: a real tmpfs of 1 MiB, not
a file-size limit (tests/engine/test_quantize.py covers that stand-in).

``llmtune quantize`` refuses before anything is written when the disk is too
small. With that check bypassed, llama.cpp's writes fail mid-file (ENOSPC): the
error is one sentence saying the disk is full, the partial file is gone, the
source is untouched, and the next quantization onto a disk with room works.
Skipped where mounting is not allowed.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from llmtune.engine import quantize as quantize_module
from llmtune.engine.quantize import QuantizeResult, QuantizeStep, prepare_quantize, run_quantize
from llmtune.errors import WorkerError
from llmtune.model import read_spec
from mounts import MountUnavailable, small_tmpfs
from synth import llama_like

DISK_BYTES = 1 << 20  # the Q8_0 file is about 2.8 MB


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A llama-shaped F16 model of 5.3 MB, its weights a sparse hole (zeros)."""
    folder = tmp_path_factory.mktemp("source")
    return llama_like(folder / "tiny-F16.gguf")[0]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    try:
        with small_tmpfs(tmp_path / "disk", DISK_BYTES) as disk:
            yield disk
    except MountUnavailable as exc:
        pytest.skip(f"cannot mount a tmpfs here: {exc}")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def workers() -> list[psutil.Process]:
    return [
        c
        for c in psutil.Process().children(recursive=True)
        if c.is_running() and c.status() != psutil.STATUS_ZOMBIE
    ]


def test_the_command_line_refuses_a_disk_too_small_before_writing(
    source: Path, small_disk: Path
) -> None:
    before = sha256(source)
    result = subprocess.run(
        [sys.executable, "-m", "llmtune.cli", "quantize", str(source), "--to", "Q8_0"]
        + ["-o", str(small_disk)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "not enough disk space" in result.stderr
    assert os.listdir(small_disk) == []
    assert sha256(source) == before


def test_a_disk_that_fills_mid_write_leaves_nothing_and_says_so(
    source: Path, small_disk: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = sha256(source)
    # As if the disk had room when checked and another program filled it since.
    monkeypatch.setattr(quantize_module, "check_disk", lambda job, file_bytes, free: file_bytes)
    job = prepare_quantize(source, "Q8_0", small_disk)
    steps = 0
    with pytest.raises(WorkerError) as raised:
        for update in run_quantize(job):
            steps += isinstance(update, QuantizeStep)

    message = raised.value.one_line()
    assert steps > 1  # llama.cpp was writing when the disk filled
    assert "could not write the file" in message and "the disk is full" in message
    assert "\n" not in message
    assert os.listdir(small_disk) == []  # no partial file
    assert sha256(source) == before
    assert not workers()

    # The same job onto a disk with room: nothing of the failure is left in the way.
    roomy = tmp_path / "roomy"
    roomy.mkdir()
    monkeypatch.undo()
    result = list(run_quantize(prepare_quantize(source, "Q8_0", roomy)))[-1]
    assert isinstance(result, QuantizeResult)
    assert read_spec(result.output).file_type_name == "Q8_0"
    assert sha256(source) == before
