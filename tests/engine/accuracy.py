"""Predicted (fit.plan) beside measured (llama.cpp's own buffer log lines).

Shared by tests/engine/test_fit_accuracy.py and tests/bench/fit_accuracy.py.
Every model is a synthetic sparse GGUF from tests/synth_arch.py, loaded by real
llama.cpp on the CPU with n_gpu_layers=0 and mmap.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from llama_probe import measure

from llmtune.fit.plan import plan
from llmtune.fit.settings import Settings
from llmtune.hardware.host import host_device
from llmtune.model import read_spec
from synth_arch import FAMILIES

HOST = host_device(ram_bytes=64 << 30, bandwidth_gbps=51.2)

# (n_ctx, cache type for K and V, flash attention): flash attention on by
# default (auto on the CPU), off at a long context where KQ dominates, and a
# quantized cache.
CONFIGS: tuple[tuple[int, str, str], ...] = (
    (4096, "f16", "auto"),
    (16384, "f16", "off"),
    (32768, "q8_0", "auto"),
)
# Big enough that no buffer is a rounding error, small enough to load in a blink.
SHAPE = {"n_layer": 8, "n_embd": 1024, "n_vocab": 8000}


@dataclass(frozen=True)
class Row:
    family: str
    n_ctx: int
    cache: str
    flash_attn: str
    predicted: dict[str, int]
    measured: dict[str, int]

    def error_pct(self, kind: str) -> float:
        m = self.measured[kind]
        return 100.0 * (self.predicted[kind] - m) / m if m else 0.0


def build(family: str, folder: str) -> str:
    path = os.path.join(folder, f"{family}.gguf")
    try:
        FAMILIES[family](path, **SHAPE)
    except TypeError:  # a builder whose shape is fixed by its family
        FAMILIES[family](path)
    return path


def compare(
    family: str,
    path: str,
    n_ctx: int,
    cache: str,
    flash_attn: str,
    *,
    cache_v: str | None = None,
    n_parallel: int = 1,
    kv_unified: bool = False,
    swa_full: bool = False,
    n_batch: int = 2048,
    n_ubatch: int = 512,
) -> Row:
    """One model and one context: the plan's host buffers beside llama.cpp's, same settings."""
    spec = read_spec(path)
    type_v = cache_v or cache
    settings = Settings(
        n_ctx=n_ctx,
        cache_type_k=cache,
        cache_type_v=type_v,
        flash_attn=flash_attn,  # type: ignore[arg-type]
        n_parallel=n_parallel,
        kv_unified=kv_unified,
        swa_full=swa_full,
        n_batch=n_batch,
        n_ubatch=n_ubatch,
    )
    host = plan(spec, [HOST], settings).host
    result = measure(
        path,
        n_ctx=n_ctx,
        type_k=cache,
        type_v=type_v,
        flash_attn=flash_attn,  # type: ignore[arg-type]
        n_seq_max=n_parallel,
        kv_unified=kv_unified,
        swa_full=swa_full,
        n_batch=n_batch,
        n_ubatch=n_ubatch,
    )
    log = result.log
    measured = {
        # CPU_Mapped spans the tensor data; CPU_REPACK holds repacked copies.
        "mapped": log.total("model", "CPU_Mapped"),
        "repack": log.total("model", "CPU_REPACK"),
        "weights": log.total("model"),
        "kv": log.total("kv") + log.total("rs"),
        "compute": log.total("compute"),
        "output": log.total("output"),
    }
    predicted = {
        "mapped": host.mapped_bytes,
        "repack": host.repack_bytes,
        "weights": host.mapped_bytes + host.repack_bytes,
        "kv": host.kv_bytes,
        "compute": host.compute_bytes,
        "output": host.other_bytes - host.repack_bytes,  # the logits buffer
    }
    # Totals as llama.cpp logs them: the mapped span counts in place of the
    # weights' own bytes on both sides.
    for side in (measured, predicted):
        side["total"] = sum(side[k] for k in ("weights", "kv", "compute", "output"))
    return Row(family, n_ctx, cache, flash_attn, predicted, measured)
