"""fit.plan against llama.cpp's own buffer sizes, on eight-plus architecture families.

Targets (issue 3): weights within 0.5%, KV cache within 1%, compute buffer
within 15%, total host memory within 3%.
"""

from __future__ import annotations

import pytest
from accuracy import CONFIGS, Row, build, compare

from llmtune.fit.settings import CACHE_TYPES
from synth_arch import FAMILIES

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("accuracy"))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_plan_matches_llama_cpp(family: str, folder: str) -> None:
    path = build(family, folder)
    for n_ctx, cache, flash_attn in CONFIGS:
        row = compare(family, path, n_ctx, cache, flash_attn)
        where = f"{family} ctx {n_ctx} {cache} fa {flash_attn}: {row.predicted} vs {row.measured}"
        assert abs(row.error_pct("weights")) <= 0.5, where
        assert abs(row.error_pct("kv")) <= 1.0, where
        assert abs(row.error_pct("compute")) <= 15.0, where
        assert abs(row.error_pct("total")) <= 3.0, where


@pytest.mark.parametrize("weight_type", ["Q4_0", "Q4_K", "Q8_0", "Q6_K"])
def test_cpu_repack_is_predicted(weight_type: str, folder: str) -> None:
    """On x86 with AVX2 llama.cpp repacks Q4_0/Q4_K weights into CPU_REPACK on
    top of the mapped file; Q8_0 and Q6_K are not repacked there."""
    import os

    from gguf import GGMLQuantizationType

    from synth_arch import build_llama_gqa

    path = os.path.join(folder, f"llama-{weight_type}.gguf")
    build_llama_gqa(path, n_layer=8, n_embd=1024, n_vocab=8000,
                    weight_type=GGMLQuantizationType[weight_type])  # fmt: skip
    row = compare("llama_gqa", path, 4096, "f16", "auto")
    assert abs(row.error_pct("weights")) <= 0.5, row
    assert abs(row.error_pct("total")) <= 3.0, row


def _assert_within_targets(row: Row, where: str, total: bool = True) -> None:
    assert abs(row.error_pct("weights")) <= 0.5, (where, row)
    assert abs(row.error_pct("kv")) <= 1.0, (where, row)
    assert abs(row.error_pct("compute")) <= 15.0, (where, row)
    # the logits buffer: llama.cpp prints it to 0.01 MiB
    assert row.predicted["output"] == pytest.approx(row.measured["output"], abs=0.005 * MIB)
    if total:
        assert abs(row.error_pct("total")) <= 3.0, (where, row)


@pytest.mark.parametrize("cache", sorted(CACHE_TYPES))
def test_every_kv_cache_type(cache: str, folder: str) -> None:
    """K and V of every type llama.cpp accepts (a quantized V turns flash attention on)."""
    path = build("llama_gqa", folder)
    row = compare("llama_gqa", path, 4096, cache, "auto")
    _assert_within_targets(row, cache)
    assert row.predicted["kv"] == pytest.approx(row.measured["kv"], abs=0.01 * MIB)


@pytest.mark.parametrize(
    ("family", "n_parallel", "kv_unified", "swa_full"),
    [
        ("llama_gqa", 3, False, False),  # three streams of pad(4096 / 3, 256) cells
        ("llama_gqa", 3, True, False),  # one unified cache of 4096 cells
        ("gemma2", 4, False, False),  # sliding-window layers: window + ubatch per stream
        ("gemma2", 1, False, True),  # --swa-full: full-size cache on every layer
        ("granitehybrid", 2, False, False),  # recurrent state per sequence
    ],
)
def test_parallel_sequences_and_sliding_windows(
    family: str, n_parallel: int, kv_unified: bool, swa_full: bool, folder: str
) -> None:
    path = build(family, folder)
    row = compare(family, path, 4096, "f16", "auto", n_parallel=n_parallel,
                  kv_unified=kv_unified, swa_full=swa_full)  # fmt: skip
    _assert_within_targets(row, f"{family} -np {n_parallel}")


@pytest.mark.parametrize(("n_batch", "n_ubatch"), [(2048, 128), (2048, 2048), (256, 256)])
def test_compute_buffer_follows_the_ubatch(n_batch: int, n_ubatch: int, folder: str) -> None:
    """The compute buffer grows with the ubatch. At -ub 2048 it outweighs this small
    model's weights, so its 15% band is not held to the 3% total target here."""
    path = build("llama_gqa", folder)
    for flash_attn in ("auto", "off"):
        row = compare("llama_gqa", path, 8192, "f16", flash_attn, n_batch=n_batch,
                      n_ubatch=n_ubatch)  # fmt: skip
        where = f"-b {n_batch} -ub {n_ubatch} -fa {flash_attn}"
        _assert_within_targets(row, where, total=n_ubatch <= 512)
