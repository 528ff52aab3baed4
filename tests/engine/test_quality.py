"""``llmtune quality`` for real: llama.cpp's quantizer, then llama-perplexity's KL-divergence test.

On an F16 copy of the demo model (made by llama-quantize --allow-requantize)
and on a small llama with random F16 weights (tests/synth_quality.py; zeros
would quantize exactly): mean KL divergence grows F16 < Q8_0 < Q4_K_M < Q2_K;
the numbers are llama-perplexity's own when run by hand on the same text and
chunks (within its error bars); a cancelled run, from the API or by Ctrl-C on
the command line, leaves no file and no process. Small and quick: context 128,
two chunks (126 scored tokens; llama.cpp's statistics need 100), two threads.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import psutil
import pytest

from llmtune.engine import tools
from llmtune.engine.quality import (
    QualityCancelled,
    QualityProgress,
    QualityReport,
    prepare_quality,
    run_quality,
)
from llmtune.engine.quality_store import QualityRow, bundled_text_path, fingerprint, load_rows
from synth_quality import build_random_llama
from synth_quant import write_imatrix_gguf

CTX, CHUNKS, THREADS = 128, 2, 2
TYPES = ("Q8_0", "Q4_K_M", "Q2_K")


@pytest.fixture(scope="module")
def tool_dir() -> Path:
    return tools.build()


@pytest.fixture(scope="module")
def demo_f16(tool_dir: Path, demo_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "SmolLM2-135M-Instruct-F16.gguf"
    _quantize_by_hand(tool_dir, demo_model, out, "F16", "--allow-requantize")
    return out


@pytest.fixture(scope="module")
def synth_f16(demo_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_random_llama(tmp_path_factory.mktemp("synth") / "random-F16.gguf", demo_model)


def _quantize_by_hand(tool_dir: Path, src: Path, out: Path, ftype: str, *flags: str) -> None:
    cmd = [str(tool_dir / "llama-quantize"), *flags, str(src), str(out), ftype, str(THREADS)]
    env = dict(os.environ, LD_LIBRARY_PATH=str(tool_dir))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


def _perplexity_by_hand(tool_dir: Path, *args: str) -> str:
    cmd = [str(tool_dir / "llama-perplexity"), "-c", str(CTX), "-b", "512", "-t", str(THREADS),
           *args]  # fmt: skip
    env = dict(os.environ, LD_LIBRARY_PATH=str(tool_dir))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout + proc.stderr


def _measure(model: Path, types: tuple[str, ...] = TYPES, **kw: object) -> QualityReport:
    request = prepare_quality(model, types, n_ctx=CTX, chunks=CHUNKS, threads=THREADS, **kw)  # type: ignore[arg-type]
    report = None
    for update in run_quality(request):
        if isinstance(update, QualityReport):
            report = update
    assert report is not None
    return report


def _files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def _kld_ordering(report: QualityReport) -> list[float]:
    by = {r.file_type: r for r in report.rows}
    assert by["F16"].is_source and by["F16"].kld_mean == 0.0
    klds = [by[name].kld_mean for name in ("F16", *TYPES)]
    assert klds == sorted(klds) and len(set(klds)) == len(klds), klds
    return klds


def test_demo_ordering_matches_llama_perplexity_by_hand(
    demo_f16: Path, tool_dir: Path, tmp_path: Path
) -> None:
    before = _files(demo_f16.parent)
    report = _measure(demo_f16)
    _kld_ordering(report)
    assert _files(demo_f16.parent) == before  # nothing left beside the source
    assert report.base.n_chunk == CHUNKS and report.base.tokens_scored == CHUNKS * 63
    by = {r.file_type: r for r in report.rows}
    assert by["Q4_K_M"].same_top_pct > by["Q2_K"].same_top_pct
    assert by["Q8_0"].kld_p99 < by["Q4_K_M"].kld_p99 < by["Q2_K"].kld_p99

    # The same steps by hand: llama-quantize, then llama-perplexity's two passes.
    base = tmp_path / "base.kld"
    out = _perplexity_by_hand(tool_dir, "-m", str(demo_f16), "-f", bundled_text_path(),
                              "--chunks", str(CHUNKS), "--kl-divergence-base", str(base))  # fmt: skip
    ppl = re.search(r"Final estimate: PPL = ([0-9.]+) \+/- ([0-9.]+)", out)
    assert ppl is not None
    assert abs(float(ppl.group(1)) - by["F16"].ppl) <= float(ppl.group(2))
    target = tmp_path / "Q4_K_M.gguf"
    _quantize_by_hand(tool_dir, demo_f16, target, "Q4_K_M")
    out = _perplexity_by_hand(tool_dir, "-m", str(target), "--kl-divergence-base", str(base),
                              "--kl-divergence")  # fmt: skip
    kld = re.search(r"Mean\s+KLD:\s+([0-9.]+)\s+±\s+([0-9.]+)", out)
    top = re.search(r"Same top p:\s+([0-9.]+)\s+±\s+([0-9.]+) %", out)
    q_ppl = re.search(r"Mean PPL\(Q\)\s+:\s+([0-9.]+) ±\s+([0-9.]+)", out)
    assert kld is not None and top is not None and q_ppl is not None
    mine = by["Q4_K_M"]
    assert abs(float(kld.group(1)) - mine.kld_mean) <= float(kld.group(2))
    assert abs(float(top.group(1)) - mine.same_top_pct) <= float(top.group(2))
    assert abs(float(q_ppl.group(1)) - mine.ppl) <= float(q_ppl.group(2))
    assert mine.file_bytes == target.stat().st_size

    kept = load_rows(fingerprint(demo_f16))
    assert {r.row.file_type for r in kept} == {"F16", *TYPES}
    assert {r.key.n_chunk for r in kept} == {CHUNKS}


def test_synthetic_ordering_imatrix_and_json(synth_f16: Path, tmp_path: Path) -> None:
    report = _measure(synth_f16)
    _kld_ordering(report)
    imatrix = tmp_path / "imatrix.gguf"
    write_imatrix_gguf(synth_f16, imatrix)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    cmd = [sys.executable, "-m", "llmtune.cli", "quality", str(synth_f16), "--types", "Q2_K",
           "--imatrix", str(imatrix), "--ctx", str(CTX), "--chunks", str(CHUNKS),
           "--threads", str(THREADS), "--work-dir", str(tmp_path), "--json"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["n_ctx"] == CTX and data["n_chunk"] == CHUNKS and data["tokens_scored"] == 126
    assert [r["label"] for r in data["rows"]] == ["F16", "Q2_K+imatrix"]
    assert data["rows"][1]["kld_mean"] > 0 and data["imatrix"] == str(imatrix)
    assert _files(tmp_path) == {"imatrix.gguf"}
    labels = {r.row.label for r in load_rows(fingerprint(synth_f16))}
    assert {"Q2_K", "Q2_K+imatrix"} <= labels


def _tool_children() -> list[psutil.Process]:
    out = []
    for c in psutil.Process().children(recursive=True):
        try:
            if "llama-perplexity" in " ".join(c.cmdline()) or c.name().startswith("python"):
                out.append(c)
        except psutil.Error:
            pass
    return out


@pytest.mark.parametrize("phase", ["source", "quantize", "measure"])
def test_cancel_leaves_no_file(synth_f16: Path, tmp_path: Path, phase: str) -> None:
    request = prepare_quality(synth_f16, ("Q4_K_M",), n_ctx=CTX, chunks=CHUNKS, threads=THREADS,
                              work_dir=tmp_path)  # fmt: skip
    cancel = threading.Event()
    seen: list[str] = []
    with pytest.raises(QualityCancelled):
        for update in run_quality(request, cancel=cancel):
            if isinstance(update, QualityProgress):
                seen.append(update.phase)
                if update.phase == phase:
                    cancel.set()
            assert not isinstance(update, QualityReport)
    assert phase in seen
    assert _files(tmp_path) == set()
    assert not _tool_children()


@pytest.mark.parametrize("phase", ["the source's pass", "quantizing", "measuring"])
def test_ctrl_c_on_the_command_line(synth_f16: Path, tmp_path: Path, phase: str) -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    # 16 chunks: each phase lasts long enough for the signal to land inside it.
    cmd = [sys.executable, "-m", "llmtune.cli", "quality", str(synth_f16), "--types", "Q8_0",
           "--ctx", str(CTX), "--chunks", "16", "--threads", str(THREADS),
           "--work-dir", str(tmp_path)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stderr is not None
    for line in proc.stderr:  # progress lines, one per tenth off a terminal
        if phase in line:
            break
    else:
        pytest.fail(f"no progress line said {phase!r}")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "cancelled; no temporary file was left" in err
    assert "Traceback" not in err
    assert _files(tmp_path) == set()
    assert not [p for p in psutil.process_iter(["cmdline"])
                if str(tmp_path) in " ".join(p.info["cmdline"] or [])]  # fmt: skip


def test_source_row_is_the_reference(synth_f16: Path) -> None:
    """Asking for the source's own type measures nothing more: its row is the reference."""
    request = prepare_quality(synth_f16, ("F16",), n_ctx=CTX, chunks=CHUNKS, threads=THREADS)
    rows = [u for u in run_quality(request) if isinstance(u, QualityRow)]
    assert [r.file_type for r in rows] == ["F16"] and rows[0].is_source
