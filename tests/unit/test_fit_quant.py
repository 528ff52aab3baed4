"""`llmtune fit --quant`: the plan as if the model were quantized to another file type."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest
from gguf import GGMLQuantizationType as Q

from llmtune.fit.quant import requantize
from llmtune.fit.whatif import TABLE_TYPES
from llmtune.model import ModelSpec, read_spec
from synth import llama_like

# A 1.6 GB F16 model on a 1 GiB GPU with no margin: the smaller the file, the more layers fit.
GPU = ["--gpu", "1GiB:300GB/s", "--ram", "32GiB", "--margin", "0"]


@pytest.fixture(scope="module")
def f16(tmp_path_factory: pytest.TempPathFactory) -> ModelSpec:
    path = tmp_path_factory.mktemp("quant") / "m-f16.gguf"
    llama_like(path, n_layer=16, n_embd=2048, n_head=16, n_head_kv=4, n_ff=5632,
               n_vocab=32000, weight_type=Q.F16, file_type=1)  # fmt: skip
    return read_spec(path)


def fit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llmtune.cli", "fit", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "80"},
    )


def as_json(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_quant_plans_the_quantized_file(f16: ModelSpec) -> None:
    q4 = requantize(f16, "Q4_K_M")
    original = as_json(fit(f16.path, *GPU, "--json"))
    planned = as_json(fit(f16.path, *GPU, "--quant", "q4_k_m", "--json"))  # any case
    weights = sum(d["weights_bytes"] for d in planned["devices"])
    assert weights == pytest.approx(q4.tensor_bytes, rel=0.001)
    assert weights < sum(d["weights_bytes"] for d in original["devices"]) / 3
    assert planned["max_gpu_layers"] > original["max_gpu_layers"]
    assert planned["predicted"]["tg_tokens_per_s"] > original["predicted"]["tg_tokens_per_s"]


def test_quant_all_is_a_table_of_every_file_type(f16: ModelSpec) -> None:
    table = as_json(fit(f16.path, *GPU, "--quant", "all", "--json"))
    rows = table["rows"]
    assert [r["file_type"] for r in rows if r["current"]] == ["F16"]
    assert {r["file_type"] for r in rows} == set(TABLE_TYPES)
    sizes = [r["file_bytes"] for r in rows]
    assert sizes == sorted(sizes, reverse=True)  # largest (best) first
    for row in rows:
        assert row["file_bytes"] == requantize(f16, row["file_type"]).file_bytes, row
    layers = [r["max_gpu_layers"] for r in rows]
    assert layers[0] < layers[-1]  # smaller files put more layers on the GPU
    assert all(a <= b for a, b in zip(layers, layers[1:], strict=False))

    human = fit(f16.path, *GPU, "--quant", "all")
    assert human.returncode == 0, human.stderr
    lines = human.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert any(line.startswith("* F16 ") for line in lines)
    assert any(line.split()[:1] == ["Q4_K_M"] and "the usual balance" in line for line in lines)


def test_unknown_file_type_is_one_line_with_close_names(f16: ModelSpec) -> None:
    result = fit(f16.path, "--quant", "Q4_K_X")
    assert result.returncode == 2 and result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith("llmtune: error: unknown quantization type 'Q4_K_X'; did you mean")
    assert "Q4_K_M" in line and line.endswith("(--quant)")
