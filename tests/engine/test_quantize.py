"""``llmtune quantize`` for real: llama.cpp's quantizer in the worker.

A synthetic F16 llama (16 layers, 5 MB of random weights, shapes that trigger
llama.cpp's fallbacks; tests/synth_quant.py) is quantized to Q8_0, Q4_K_M and
Q2_K; each file matches the quantization what-if, and llama.cpp loads it and
generates. Cancelling, a killed worker and a full disk (a file-size limit on
the worker, so its writes fail as on a full disk) leave the folder exactly as
it was; an existing file is not replaced without --force; an already
quantized model is not requantized without --allow-requantize.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from llmtune.engine.config import RunConfig
from llmtune.engine.protocol import (
    Exited,
    Failed,
    Generate,
    Loaded,
    Quantize,
    QuantizeProgress,
    Stats,
)
from llmtune.engine.quantize import (
    QuantizeCancelled,
    QuantizePlan,
    QuantizeResult,
    QuantizeStep,
    prepare_quantize,
    run_quantize,
)
from llmtune.engine.supervisor import Supervisor
from llmtune.errors import ConfigError, WorkerError
from llmtune.fit.quant import file_type, requantize
from llmtune.model import read_spec
from synth_quant import build_llama_gqa, write_imatrix_gguf

TIMEOUT_S = 60.0


@pytest.fixture(scope="module")
def f16_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_llama_gqa(tmp_path_factory.mktemp("synth") / "tiny-llama-F16.gguf")


@pytest.fixture
def folder(tmp_path: Path, f16_model: Path) -> Path:
    """A folder holding only a copy of the F16 model."""
    shutil.copy(f16_model, tmp_path / f16_model.name)
    return tmp_path


def snapshot(folder: Path) -> dict[str, tuple[int, int, str]]:
    """Every file's size, modification time and content hash."""
    out = {}
    for p in sorted(folder.iterdir()):
        st = p.stat()
        out[p.name] = (st.st_size, st.st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
    return out


def no_worker_left() -> bool:
    me = psutil.Process()
    return not [
        c
        for c in me.children(recursive=True)
        if c.is_running() and c.status() != psutil.STATUS_ZOMBIE
    ]


def generate_with(path: Path, n: int = 4) -> Stats:
    """Load ``path`` in a fresh worker and generate ``n`` tokens after the BOS text."""
    sup = Supervisor()
    try:
        sup.start()
        sup.load(RunConfig.of(str(path), n_ctx=256, threads=2))
        event = _until(sup, Loaded, Failed)
        assert isinstance(event, Loaded), event
        # The synthetic vocabulary has no byte tokens: "<s>" is parsed as a special token.
        sup.send(Generate("<s>", max_tokens=n, ignore_eos=True))
        stats = _until(sup, Stats, Failed)
        assert isinstance(stats, Stats), stats
        return stats
    finally:
        sup.shutdown()


def _until(sup: Supervisor, *kinds: type) -> object:
    while True:
        event = sup.next_event(TIMEOUT_S)
        assert event is not None, f"no {kinds} within {TIMEOUT_S} s"
        if isinstance(event, kinds) or isinstance(event, Exited):
            return event


@pytest.mark.parametrize("ftype", ["Q8_0", "Q4_K_M", "Q2_K"])
def test_quantize_matches_the_whatif_and_generates(folder: Path, ftype: str) -> None:
    source = folder / "tiny-llama-F16.gguf"
    source_hash = hashlib.sha256(source.read_bytes()).hexdigest()
    job = prepare_quantize(source, ftype)
    assert job.output == str(folder / f"tiny-llama-{ftype}.gguf")  # the tag replaced
    updates = list(run_quantize(job))

    plan, steps, result = updates[0], updates[1:-1], updates[-1]
    assert isinstance(plan, QuantizePlan) and isinstance(result, QuantizeResult)
    assert all(isinstance(s, QuantizeStep) for s in steps)
    predicted = requantize(read_spec(source), ftype).file_bytes
    written = os.path.getsize(result.output)
    assert result.file_bytes == written
    assert abs(written - predicted) <= 0.01 * written, (written, predicted)
    assert abs(plan.dry_run_file_bytes - written) <= 0.01 * written
    assert plan.type_mismatches == ()
    # Progress: every tensor once, in order, the fraction never going back.
    n_tensors = len(read_spec(source).tensors)
    assert [s.index for s in steps] == list(range(1, n_tensors + 1))  # type: ignore[union-attr]
    fractions = [s.fraction for s in steps]  # type: ignore[union-attr]
    assert fractions == sorted(fractions) and 0 <= fractions[0] < fractions[-1] < 1
    # Nothing else in the folder, the source untouched, the file is what was asked for.
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [source.name, f"tiny-llama-{ftype}.gguf"]
    )
    assert hashlib.sha256(source.read_bytes()).hexdigest() == source_hash
    assert read_spec(result.output).file_type_name == ftype
    stats = generate_with(Path(result.output))
    assert stats.n_gen == 4


def _run_until_first_step(job: object, on_first_step: object) -> BaseException:
    """Run a quantization, call ``on_first_step()`` when llama.cpp starts writing,
    and return what the run raised."""
    assert callable(on_first_step)
    with pytest.raises((QuantizeCancelled, WorkerError)) as raised:
        for update in run_quantize(job):  # type: ignore[arg-type]
            if isinstance(update, QuantizeStep) and update.index == 1:
                on_first_step()
    return raised.value


def test_cancel_leaves_the_folder_as_it_was(folder: Path) -> None:
    before = snapshot(folder)
    cancel = threading.Event()
    job = prepare_quantize(folder / "tiny-llama-F16.gguf", "Q4_K_M")
    with pytest.raises(QuantizeCancelled):
        for update in run_quantize(job, cancel=cancel):
            if isinstance(update, QuantizeStep):
                cancel.set()  # as the app's Stop button does, from any thread
    assert snapshot(folder) == before
    assert no_worker_left()


def test_a_killed_worker_leaves_the_folder_as_it_was(folder: Path) -> None:
    """The worker dies mid-write (the OOM killer, a crash): no partial file stays."""
    before = snapshot(folder)
    job = prepare_quantize(folder / "tiny-llama-F16.gguf", "Q8_0")

    def kill_worker() -> None:
        for child in psutil.Process().children():
            if "llmtune.engine.worker" in " ".join(child.cmdline()):
                os.kill(child.pid, signal.SIGKILL)

    error = _run_until_first_step(job, kill_worker)
    assert isinstance(error, WorkerError) and "SIGKILL" in str(error), error
    assert snapshot(folder) == before
    assert no_worker_left()


def test_a_full_disk_leaves_the_folder_as_it_was(folder: Path) -> None:
    """Writes fail after 256 KiB (RLIMIT_FSIZE in the worker: EFBIG, as a full disk's ENOSPC)."""
    before = snapshot(folder)
    job = prepare_quantize(folder / "tiny-llama-F16.gguf", "Q8_0")
    with pytest.raises(WorkerError) as raised:
        for _ in run_quantize(job, file_size_limit_bytes=256 << 10):
            pass
    assert "could not write the file" in str(raised.value)
    assert snapshot(folder) == before


def test_stop_command_makes_the_worker_delete_its_file(folder: Path) -> None:
    """Through the protocol: Stop during llama_model_quantize ends the worker at the
    next tensor, and the file it was writing is gone."""
    out = folder / "out.partial"
    sup = Supervisor()
    try:
        sup.start()
        sup.quantize(Quantize(str(folder / "tiny-llama-F16.gguf"), str(out), ftype=15))
        first = _until(sup, QuantizeProgress, Failed)
        assert isinstance(first, QuantizeProgress) and first.index == 1, first
        sup.stop()
        failed = _until(sup, Failed)
        assert isinstance(failed, Failed) and "cancelled" in failed.reason and failed.fatal
        assert isinstance(_until(sup, Exited), Exited)
    finally:
        sup.shutdown()
    assert not out.exists()


def _llmtune(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llmtune.cli", *args], capture_output=True, text=True, timeout=120
    )


def test_cli_refuses_to_overwrite_without_force(folder: Path) -> None:
    source = folder / "tiny-llama-F16.gguf"
    existing = folder / "mine.gguf"
    existing.write_text("my notes, not a model\n")
    before = snapshot(folder)
    refused = _llmtune("quantize", str(source), "--to", "Q8_0", "-o", str(existing))
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr.count("\n") == 1 and refused.stderr.startswith("llmtune: error: ")
    assert "--force" in refused.stderr and str(existing) in refused.stderr
    assert snapshot(folder) == before

    forced = _llmtune("quantize", str(source), "--to", "Q8_0", "-o", str(existing), "--force")
    assert forced.returncode == 0, forced.stderr
    assert read_spec(existing).file_type_name == "Q8_0"
    assert "quantizing to Q8_0" in forced.stderr  # the progress line
    assert f"wrote {existing}" in forced.stdout
    assert sorted(p.name for p in folder.iterdir()) == sorted([source.name, existing.name])


def test_cli_requantize_needs_the_flag_and_json_is_one_object(folder: Path) -> None:
    source = folder / "tiny-llama-F16.gguf"
    first = _llmtune("quantize", str(source), "--to", "Q8_0", "--json")
    assert first.returncode == 0 and first.stderr == "", first.stderr
    data = json.loads(first.stdout)  # one object and nothing else
    q8 = Path(data["output"])
    assert data["file_bytes"] == q8.stat().st_size and data["file_type"] == "Q8_0"
    assert abs(data["size_error_pct"]) <= 1.0 and data["requantized_tensors"] == 0

    before = snapshot(folder)
    refused = _llmtune("quantize", str(q8), "--to", "Q4_K_M")
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    assert "already quantized" in refused.stderr and "--allow-requantize" in refused.stderr
    assert snapshot(folder) == before

    allowed = _llmtune("quantize", str(q8), "--to", "Q4_K_M", "--allow-requantize")
    assert allowed.returncode == 0, allowed.stderr
    assert "llmtune: warning: requantizing Q8_0 to Q4_K_M loses" in allowed.stderr
    assert read_spec(folder / "tiny-llama-Q4_K_M.gguf").file_type_name == "Q4_K_M"


def test_ctrl_c_leaves_the_folder_as_it_was(folder: Path) -> None:
    """Ctrl-C in a terminal (SIGINT to llmtune) while llama.cpp writes: exit 130, one line,
    no file. IQ2_XS with an importance matrix is slow enough to be caught mid-way."""
    source = folder / "tiny-llama-F16.gguf"
    write_imatrix_gguf(source, folder / "m.gguf")
    before = snapshot(folder)
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmtune.cli", "quantize", str(source), "--to", "IQ2_XS",
         "--imatrix", str(folder / "m.gguf")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    assert proc.stderr is not None
    first = proc.stderr.readline()  # the first progress line: llama.cpp is writing
    assert first.startswith("quantizing to IQ2_XS"), first
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=TIMEOUT_S)
    assert proc.returncode == 130, (out, err)
    assert err.splitlines()[-1] == "llmtune: quantization cancelled; nothing was written"
    assert "wrote" not in out
    assert snapshot(folder) == before


def test_imatrix_reaches_llama_cpp(folder: Path) -> None:
    source = folder / "tiny-llama-F16.gguf"
    matrix = folder / "tiny.imatrix.gguf"
    entries = write_imatrix_gguf(source, matrix)
    job = prepare_quantize(source, "Q4_K_M", folder / "with-imatrix.gguf", imatrix=matrix)
    updates = list(run_quantize(job))
    plan, result = updates[0], updates[-1]
    assert isinstance(plan, QuantizePlan) and plan.imatrix_entries == entries
    assert isinstance(result, QuantizeResult)
    assert read_spec(result.output).file_type_name == "Q4_K_M"


def test_a_bad_imatrix_file_is_one_line(folder: Path) -> None:
    source = folder / "tiny-llama-F16.gguf"
    bogus = folder / "bogus.dat"
    bogus.write_bytes(b"\x05\x00\x00\x00" + b"\xff" * 10)
    result = _llmtune("quantize", str(source), "--to", "Q8_0", "--imatrix", str(bogus))
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "not an importance matrix" in result.stderr and str(bogus) in result.stderr
    assert sorted(p.name for p in folder.iterdir()) == sorted([source.name, bogus.name])


def test_unknown_or_missing_file_type_is_one_line(folder: Path) -> None:
    source = folder / "tiny-llama-F16.gguf"
    for args, words in (
        (["--to", "Q4_K_Z"], "did you mean"),
        ([], "--to"),
        (["--to", "Q4_K_M", "--threads", "-1"], "--threads"),
    ):
        result = _llmtune("quantize", str(source), *args)
        assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
        assert words in result.stderr
    with pytest.raises(ConfigError, match="overwrite the model"):
        prepare_quantize(source, "F16", source, force=True)
    assert file_type("q4_k").name == "Q4_K_M"


@pytest.fixture(autouse=True)
def _no_leftover_workers() -> Iterator[None]:
    yield
    assert no_worker_left()
