"""The demo model (SmolLM2-135M-Instruct, Q4_1) as ``llmtune inspect`` shows it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from llmtune.model import ModelSpec, read_spec
from llmtune.model.describe import inspect_lines

TIMEOUT_S = 60
MIB = 1024**2

# DESIGN.md, "Command line and JSON contracts".
INSPECT_KEYS = {
    "path", "file_bytes", "gguf_version", "architecture", "name", "file_type", "parameters",
    "n_layer", "n_embd", "n_head", "n_head_kv", "n_ctx_train", "n_vocab", "n_expert",
    "n_expert_used", "tensor_count", "tensor_bytes", "types", "layers", "metadata",
}  # fmt: skip


@pytest.fixture(scope="module")
def spec(demo_model: Path) -> ModelSpec:
    return read_spec(demo_model)


def run_inspect(path: Path, *args: str, columns: int = 80) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "llmtune.cli", "inspect", str(path), *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        env={**os.environ, "COLUMNS": str(columns)},
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return result


@pytest.fixture(scope="module")
def report(demo_model: Path) -> dict[str, Any]:
    return json.loads(run_inspect(demo_model, "--json").stdout)  # type: ignore[no-any-return]


def test_shape(spec: ModelSpec) -> None:
    assert spec.architecture == "llama"
    assert spec.n_layer == 30
    assert spec.n_embd == 576
    assert spec.n_head == 9
    assert spec.n_head_kv == 3
    assert spec.n_embd_head_k == spec.n_embd_head_v == 64
    assert spec.n_vocab == 49152
    assert spec.n_ctx_train == 8192
    assert spec.file_type_name == "Q4_1"


def test_tensors_and_type_mix(spec: ModelSpec) -> None:
    assert len(spec.tensors) == 272
    mix = {name: stats.tensors for name, stats in spec.type_stats().items()}
    assert mix == {"Q4_1": 210, "F32": 61, "Q8_0": 1}
    assert [t.name for t in spec.input_tensors] == ["token_embd.weight"]
    assert spec.input_tensors[0].type_name == "Q8_0"
    assert len(spec.layers) == 30
    assert all(len(layer.tensors) == 9 for layer in spec.layers)
    assert len({layer.nbytes for layer in spec.layers}) == 1
    grouped = (
        sum(t.nbytes for t in spec.input_tensors)
        + sum(layer.nbytes for layer in spec.layers)
        + sum(t.nbytes for t in spec.output_tensors)
        + sum(t.nbytes for t in spec.other_tensors)
    )
    assert grouped == spec.tensor_bytes


def test_sizes_agree_with_llama_cpp(spec: ModelSpec, demo_model: Path) -> None:
    # llama.cpp loading this file prints "file size = 92.10 MiB (5.74 BPW)"
    # (print_info; the sum of ggml_nbytes over its tensors).
    assert f"{spec.tensor_bytes / MIB:.2f}" == "92.10"
    assert f"{spec.bits_per_weight:.2f}" == "5.74"
    assert spec.file_bytes == demo_model.stat().st_size == 98_362_432
    assert spec.warnings == ()  # the file is complete: the last tensor ends at its end


def test_json_has_the_keys_in_design(report: dict[str, Any], demo_model: Path) -> None:
    assert INSPECT_KEYS <= set(report)
    assert report["path"] == str(demo_model.resolve())
    assert report["file_bytes"] == 98_362_432
    assert report["gguf_version"] == 3
    assert report["file_type"] == "Q4_1"
    assert (report["n_layer"], report["n_embd"]) == (30, 576)
    assert (report["n_head"], report["n_head_kv"]) == (9, 3)
    assert report["n_vocab"] == 49152
    assert (report["n_expert"], report["n_expert_used"]) == (0, 0)
    assert report["tensor_count"] == 272
    assert report["parameters"] == sum(t["parameters"] for t in report["types"].values())
    assert report["tensor_bytes"] == sum(t["bytes"] for t in report["types"].values())
    assert {name: t["tensors"] for name, t in report["types"].items()} == {
        "Q4_1": 210,
        "F32": 61,
        "Q8_0": 1,
    }
    assert set(report["types"]["Q4_1"]) == {"tensors", "parameters", "bytes"}
    assert [layer["index"] for layer in report["layers"]] == list(range(30))
    assert all(set(layer) == {"index", "bytes"} for layer in report["layers"])
    tokens = report["metadata"]["tokenizer.ggml.tokens"]
    assert tokens == {"type": "STRING", "length": 49152}
    assert report["metadata"]["tokenizer.ggml.merges"]["length"] == 48900
    assert report["metadata"]["general.architecture"] == "llama"


def test_human_summary_fits_80_columns(demo_model: Path) -> None:
    out = run_inspect(demo_model, columns=80).stdout
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert lines[0] == "Smollm2 135M 8k Lc100K Mix1 Ep2"
    assert "llama · Q4_1 · 134.5M parameters · 5.74 bits/weight" in lines[2]
    assert "layers 30" in out and "embedding 576" in out
    assert "heads 9 (KV 3, GQA 3:1)" in out
    assert "vocab 49,152" in out
    assert "272 tensors" in out
    mix = {
        line.split()[0]: line.split()[1]
        for line in lines
        if line.startswith("  Q") or line.startswith("  F32")
    }
    assert mix == {"Q4_1": "210", "Q8_0": "1", "F32": "61"}
    assert "blk 0-29" in out and "each" in out


@pytest.mark.parametrize("width", [40, 50, 57, 58, 64, 80, 100])
def test_summary_fits_any_width(spec: ModelSpec, width: int) -> None:
    lines = inspect_lines(spec, width=width)
    assert max(len(line) for line in lines) <= width
    text = "\n".join(lines)
    # Narrow layouts drop columns and wrap; they do not lose the essentials.
    for needed in ("Q4_1", "Q8_0", "F32", "layers 30", "vocab 49,152", "272 tensors", "Q4_1 ·"):
        assert needed in text, (width, needed)
    assert lines[1].endswith(".gguf")  # the path line stays second


def test_narrow_summary_through_the_command_line(demo_model: Path) -> None:
    out = run_inspect(demo_model, columns=50).stdout
    assert max(len(line) for line in out.splitlines()) <= 50
    assert "Quantization mix" in out
