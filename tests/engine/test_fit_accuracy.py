"""fit.plan against llama.cpp's own buffer sizes, on eight-plus architecture families.

Targets (issue 3): weights within 0.5%, KV cache within 1%, compute buffer
within 15%, total host memory within 3%.
"""

from __future__ import annotations

import pytest
from accuracy import CONFIGS, build, compare

from synth_arch import FAMILIES


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
