"""Across RPC hosts, llmtune plans what llama.cpp does: the same layers on the
same device, and per device weights within 0.5%, KV within 1%, compute within
15% of the buffers llama.cpp logs. Real servers on 127.0.0.1 (llmtune's), the
demo model and synthetic models of four families (dense MHA, GQA, MoE,
sliding window); with and without flash attention; the free-memory split and
--tensor-split; two and three hosts; every layer offloaded and some on the CPU.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from rpc_accuracy import compare_rpc

from llmtune.engine.rpc_host import RpcServerProcess
from rpc_support import real_servers
from synth_arch import FAMILIES as BUILDERS

FAMILIES = ("llama", "llama_gqa", "qwen3moe", "gemma3")
# Shapes in real models' proportions (FFN 2.75-4x the embedding, a 32k vocabulary):
# the compute buffers' rules are measured on such shapes (docs/llama-cpp-memory.md).
SHAPES: dict[str, dict[str, int]] = {
    "llama": {"n_ff": 2816},
    "llama_gqa": {"n_ff": 2816},
    "qwen3moe": {"n_ff_exp": 512},
    "gemma3": {"n_ff": 4096},
}
CASES = (
    # (flash attention, tensor split, hosts, n_gpu_layers)
    ("auto", (), 2, 99),
    ("off", (1.0, 3.0), 2, 99),
    ("auto", (1.0, 2.0, 3.0), 3, 99),
    ("auto", (), 2, 5),
)


@pytest.fixture(scope="module")
def hosts() -> Iterator[list[RpcServerProcess]]:
    with real_servers(3) as servers:
        yield servers


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("rpc-models")
    paths = {}
    for family in FAMILIES:
        path = str(folder / f"{family}.gguf")
        BUILDERS[family](path, n_layer=8, n_embd=1024, n_vocab=32000, **SHAPES[family])
        paths[family] = path
    return paths


def _check(
    path: str, hosts: list[RpcServerProcess], fa: str, split: tuple[float, ...], n: int, ngl: int
) -> None:
    endpoints = [h.endpoint for h in hosts[:n]]
    p, rows = compare_rpc(path, endpoints, flash_attn=fa, tensor_split=split, n_gpu_layers=ngl)
    assert len(rows) == n
    where = f"{os.path.basename(path)} fa={fa} split={split} ngl={ngl}"
    for row in rows:
        assert row.measured_layers == row.predicted_layers, (where, row)
        assert abs(row.error_pct("weights")) <= 0.5, (where, row)
        assert abs(row.error_pct("kv")) <= 1.0, (where, row)
        assert abs(row.error_pct("compute")) <= 15.0, (where, row)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(
    "case", CASES, ids=lambda c: f"fa-{c[0]}-ts{len(c[1])}-{c[2]}hosts-ngl{c[3]}"
)
def test_synthetic_families(
    family: str,
    case: tuple[str, tuple[float, ...], int, int],
    models: dict[str, str],
    hosts: list[RpcServerProcess],
) -> None:
    fa, split, n, ngl = case
    _check(models[family], hosts, fa, split, n, ngl)


def test_demo_model(demo_model: Path, hosts: list[RpcServerProcess]) -> None:
    _check(str(demo_model), hosts, "auto", (), 2, 99)
    _check(str(demo_model), hosts, "off", (), 3, 20)
