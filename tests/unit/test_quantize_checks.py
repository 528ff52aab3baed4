"""What ``llmtune quantize`` checks before llama.cpp runs, and how it reads
llama.cpp's quantizer log and importance matrices. No worker: these refusals
happen before anything is started or written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from llmtune import cli
from llmtune.engine import quantize as q
from llmtune.engine.imatrix import load_imatrix
from llmtune.engine.logparse import parse_quantize_log
from llmtune.errors import ConfigError
from synth_quant import build_llama_gqa, write_imatrix_dat, write_imatrix_gguf


@pytest.fixture(scope="module")
def f16_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_llama_gqa(tmp_path_factory.mktemp("synth") / "tiny-llama-F16.gguf", n_layer=4)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Llama-3-8B-Instruct-Q8_0.gguf", "Llama-3-8B-Instruct-Q4_K_M.gguf"),
        ("mistral-7b.F16.gguf", "mistral-7b.Q4_K_M.gguf"),
        ("qwen2.5-7b-instruct-q8_0.gguf", "qwen2.5-7b-instruct-Q4_K_M.gguf"),
        ("model.gguf", "model-Q4_K_M.gguf"),
        ("big-model-BF16-00001-of-00004.gguf", "big-model-Q4_K_M.gguf"),
    ],
)
def test_default_output_replaces_the_quant_tag(name: str, expected: str) -> None:
    assert q.default_output(f"/models/{name}", "q4_k_m") == f"/models/{expected}"


def test_too_small_a_disk_is_refused_before_anything_runs(
    f16_model: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(q, "disk_free_bytes", lambda folder: 1 << 20)  # 1 MiB free
    out = tmp_path / "out.gguf"
    with pytest.raises(ConfigError) as raised:
        q.prepare_quantize(f16_model, "Q8_0", out)
    assert "not enough disk space" in raised.value.what and raised.value.where == str(tmp_path)
    with pytest.raises(SystemExit) as exited:
        cli.main(["quantize", str(f16_model), "--to", "Q8_0", "-o", str(out)])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("llmtune: error: not enough disk space") and err.count("\n") == 1
    assert "1.00 MiB are free" in err
    assert list(tmp_path.iterdir()) == []


def test_the_output_never_overwrites_the_source(f16_model: Path) -> None:
    for force in (False, True):
        with pytest.raises(ConfigError, match="overwrite the model"):
            q.prepare_quantize(f16_model, "F16", f16_model, force=force)


def test_an_existing_output_needs_force(f16_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "x.gguf"
    out.write_bytes(b"keep me")
    with pytest.raises(ConfigError, match="--force"):
        q.prepare_quantize(f16_model, "Q8_0", out)
    job = q.prepare_quantize(f16_model, "Q8_0", out, force=True)
    assert job.replaces_existing and out.read_bytes() == b"keep me"  # nothing ran yet
    # A folder as -o: the default name inside it.
    assert q.prepare_quantize(f16_model, "Q8_0", tmp_path).output == str(
        tmp_path / "tiny-llama-Q8_0.gguf"
    )


def test_low_bit_types_need_an_importance_matrix(f16_model: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="importance matrix"):
        q.prepare_quantize(f16_model, "IQ2_XS", tmp_path / "x.gguf")
    with pytest.raises(ConfigError, match="no such importance matrix"):
        q.prepare_quantize(f16_model, "IQ2_XS", tmp_path / "x.gguf", imatrix=tmp_path / "none")
    matrix = tmp_path / "m.gguf"
    write_imatrix_gguf(f16_model, matrix)
    job = q.prepare_quantize(f16_model, "IQ2_XS", tmp_path / "x.gguf", imatrix=matrix)
    assert job.imatrix == str(matrix)


def test_requantizing_is_refused_then_allowed_with_a_warning(tmp_path: Path) -> None:
    from gguf import GGMLQuantizationType as Q

    from synth import llama_like

    path = tmp_path / "quantized-Q8_0.gguf"
    llama_like(path, n_layer=2, n_embd=256, n_head=4, n_head_kv=2, n_ff=512, n_vocab=256,
               weight_type=Q.Q8_0, embd_type=Q.Q8_0, output_type=Q.Q8_0, file_type=7)  # fmt: skip
    with pytest.raises(ConfigError, match="already quantized.*--allow-requantize"):
        q.prepare_quantize(path, "Q4_K_M")
    job = q.prepare_quantize(path, "Q4_K_M", allow_requantize=True)
    assert job.requantized and "loses more quality" in job.warnings[0]
    # The same file type again changes no tensor: nothing is requantized.
    same = q.prepare_quantize(path, "Q8_0", tmp_path / "copy.gguf")
    assert same.requantized == () and same.warnings == ()


def test_stale_partial_files_of_dead_runs_are_removed(tmp_path: Path) -> None:
    out = str(tmp_path / "m-Q8_0.gguf")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()  # fmt: skip
    stale = Path(q.partial_path(out, int(dead)))
    live = Path(q.partial_path(out))  # this process: still running
    other = tmp_path / "unrelated.12.partial"
    for p in (stale, live, other):
        p.write_bytes(b"x")
    assert q.remove_stale_partials(out) == [stale.name]
    assert not stale.exists() and live.exists() and other.exists()


_DRY_LOG = """\
llama_model_quantize_impl: model size  =     5.04 MiB (16.00 BPW)
[   1/ 147]                        output.weight - [  256,   256,     1,     1], type =    f16, size =    0.125 MiB ->    0.07 MiB (q8_0)
[   2/ 147]                   output_norm.weight - [  256,     1,     1,     1], type =    f32, size =    0.001 MiB
llama_model_quantize_impl: quant size  =     2.69 MiB (8.53 BPW)
llama_model_quantize_impl: WARNING: dry run completed successfully, but actually completing this quantization will require an imatrix!
"""
_REAL_LOG = """\
have importance matrix data with 114 entries
[   1/ 147]                        output.weight - [  256,   256,     1,     1], type =    f16, converting to q6_K .. size =     0.12 MiB ->     0.05 MiB
[   2/ 147]                   output_norm.weight - [  256,     1,     1,     1], type =    f32, size =    0.001 MiB
llama_model_quantize: failed to quantize: basic_ios::clear: iostream error
"""


def test_quantize_log_is_read_as_llama_cpp_writes_it() -> None:
    dry = parse_quantize_log(_DRY_LOG)
    assert dry.tensor_types == (("output.weight", "Q8_0"), ("output_norm.weight", "F32"))
    assert dry.n_tensors == 147 and dry.needs_imatrix
    assert dry.source_tensor_bytes == round(5.04 * 2**20)
    assert dry.quant_tensor_bytes == round(2.69 * 2**20)
    real = parse_quantize_log(_REAL_LOG)
    assert real.tensor_types == (("output.weight", "Q6_K"), ("output_norm.weight", "F32"))
    assert real.imatrix_entries == 114 and real.error == "basic_ios::clear: iostream error"


def test_both_imatrix_formats_give_llama_quantize_values(f16_model: Path, tmp_path: Path) -> None:
    n = write_imatrix_gguf(f16_model, tmp_path / "m.gguf")
    assert write_imatrix_dat(f16_model, tmp_path / "m.dat") == n
    new, legacy = load_imatrix(tmp_path / "m.gguf"), load_imatrix(tmp_path / "m.dat")
    assert new.keys() == legacy.keys() and len(new) == n
    for name in new:
        # sums 20 over 10 tokens (GGUF counts) or 10 calls (legacy): 2.0 everywhere
        assert np.allclose(new[name], 2.0) and np.allclose(legacy[name], 2.0)
    truncated = tmp_path / "cut.dat"
    truncated.write_bytes((tmp_path / "m.dat").read_bytes()[:100])
    with pytest.raises(ConfigError, match="not an importance matrix") as raised:
        load_imatrix(truncated)
    assert raised.value.where == os.fspath(truncated)
