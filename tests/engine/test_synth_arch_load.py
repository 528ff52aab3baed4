"""Real llama.cpp loads every synthetic family of ``tests/synth_arch.py`` and reports its buffers.

Each family is built once (a sparse file, tensor data a hole) and loaded by
``llama_probe.measure`` in a fresh process on the CPU, with mmap and
llama-server's defaults, at n_ctx 512 and 4096. The checks show that the files
are what llama.cpp expects (it loads them and creates a context) and that the
harness measures what it claims: the model buffer is the tensor data, the KV
buffer of the plain llama is n_layer x n_ctx x (K row + V row) exactly, and
``no_alloc`` reports the compute buffer of a real allocation.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

sys.path.insert(0, os.path.dirname(__file__))

from llama_probe import Measurement, ProbeError, measure  # noqa: E402

from synth_arch import FAMILIES, SynthModel, build_llama  # noqa: E402

RECURRENT_ONLY = {"mamba", "mamba2"}
HYBRID = {"granitehybrid", "qwen3next"}
N_CTX = (512, 4096)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, SynthModel]:
    root = tmp_path_factory.mktemp("synth_arch")
    return {name: build(root / f"{name}.gguf") for name, build in FAMILIES.items()}


@pytest.fixture(scope="module")
def measured(models: dict[str, SynthModel]) -> dict[tuple[str, int], Measurement]:
    return {
        (name, n_ctx): measure(m.path, n_ctx=n_ctx) for name, m in models.items() for n_ctx in N_CTX
    }


def _row_bytes(type_name: str, n: int) -> int:
    block, size = GGML_QUANT_SIZES[GGMLQuantizationType[type_name.upper()]]
    assert n % block == 0
    return n // block * size


def _close(measured_bytes: int, expected: int, precision: int) -> bool:
    return abs(measured_bytes - expected) <= precision


@pytest.mark.parametrize("n_ctx", N_CTX)
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_loads_and_reports_buffers(
    family: str,
    n_ctx: int,
    models: dict[str, SynthModel],
    measured: dict[tuple[str, int], Measurement],
) -> None:
    model = models[family]
    m = measured[family, n_ctx]
    log = m.log
    assert m.ok, m.tail()
    assert m.model["size"] == model.tensor_bytes  # llama_model_size: the sum of ggml_nbytes
    assert _close(
        log.file.file_size_bytes or 0, model.tensor_bytes, log.file.file_size_precision_bytes or 0
    )
    assert log.load_mode == "mmap"

    # F16 weights are not repacked: every tensor lies in one mapped span, padded to 32 bytes.
    assert log.by_name("model").keys() == {"CPU_Mapped"}
    padding = 32 * len(model.tensors)
    assert model.tensor_bytes - log.precision("model") <= log.total("model")
    assert log.total("model") <= model.tensor_bytes + padding + log.precision("model")

    assert log.context.n_ctx == n_ctx and log.context.n_ctx_seq == n_ctx
    assert (log.context.n_batch, log.context.n_ubatch) == (min(2048, n_ctx), 512)
    assert log.flash_attn_resolved is True  # AUTO resolves to enabled on the CPU

    if family in RECURRENT_ONLY:
        assert log.of_kind("kv") == ()
        assert m.model["is_recurrent"]
    else:
        assert log.of_kind("kv"), "no KV buffer logged"
        assert log.total("kv") > 0
    if family in RECURRENT_ONLY | HYBRID:
        assert log.of_kind("rs") and log.total("rs") > 0
    else:
        assert log.of_kind("rs") == ()
    assert m.model["is_hybrid"] == (family in HYBRID)

    (compute,) = log.of_kind("compute")
    assert compute.name == "CPU" and compute.bytes > 0
    (exact,) = log.compute_exact
    assert exact.matches and _close(exact.bytes, compute.bytes, compute.precision_bytes)

    (output,) = log.of_kind("output")  # n_vocab floats of logits for the one sequence
    assert _close(output.bytes, model.n_vocab * 4, output.precision_bytes)


@pytest.mark.parametrize("n_ctx", N_CTX)
def test_kv_of_every_family_follows_its_formula(
    n_ctx: int, models: dict[str, SynthModel], measured: dict[tuple[str, int], Measurement]
) -> None:
    """Per layer, per cell: K and V rows of n_head_kv x head size, f16 (docs/llama-cpp-memory.md 3.3-3.9)."""
    for family, model in models.items():
        log = measured[family, n_ctx].log
        hp = model.hparams
        if family in RECURRENT_ONLY:
            continue
        if hp.get("is_mla"):  # K only, kv_lora_rank + rope wide, no V cache
            expected = model.n_layer * n_ctx * 2 * hp["head_dim_k"]
        elif "swa_layers" in hp:
            size_swa = min(n_ctx, hp["n_swa"] + 512)
            size_swa = -(-size_swa // 256) * 256
            per_cell = 2 * hp["n_head_kv"] * (hp["head_dim_k"] + hp["head_dim_v"])
            n_swa_layers = len(hp["swa_layers"])
            expected = per_cell * ((model.n_layer - n_swa_layers) * n_ctx + n_swa_layers * size_swa)
            assert (log.non_swa_cells, log.swa_cells) == (n_ctx, size_swa), family
        else:
            n_kv_layers = len(hp.get("attention_layers", range(model.n_layer)))
            expected = (
                n_kv_layers * n_ctx * 2 * hp["n_head_kv"] * (hp["head_dim_k"] + hp["head_dim_v"])
            )
        assert _close(log.total("kv"), expected, log.precision("kv")), family


def test_recurrent_state_follows_its_formula(
    models: dict[str, SynthModel], measured: dict[tuple[str, int], Measurement]
) -> None:
    """4 bytes x (conv state + SSM state) per recurrent layer and sequence, whatever n_ctx (3.8)."""
    for family in sorted(RECURRENT_ONLY | HYBRID):
        hp = models[family].hparams
        n_embd_r = (hp["d_conv"] - 1) * (hp["d_inner"] + 2 * hp["n_group"] * hp["d_state"])
        n_embd_s = hp["d_state"] * hp["d_inner"]
        expected = 4 * (n_embd_r + n_embd_s) * len(hp["recurrent_layers"])
        for n_ctx in N_CTX:
            log = measured[family, n_ctx].log
            assert _close(log.total("rs"), expected, log.precision("rs")), family


@pytest.mark.parametrize(
    ("n_ctx", "type_k", "type_v"),
    [(512, "f16", "f16"), (4096, "f16", "f16"), (3000, "f16", "f16"), (4096, "q8_0", "q8_0"),
     (4096, "f32", "q4_0"), (2048, "bf16", "iq4_nl")],
)  # fmt: skip
def test_plain_llama_kv_is_the_simple_formula(
    tmp_path: Path, n_ctx: int, type_k: str, type_v: str
) -> None:
    """KV = n_layer x n_ctx (padded to 256) x (K row + V row) for a llama without GQA."""
    model = build_llama(tmp_path / "llama.gguf", n_layer=6, n_embd=512, n_head=8, n_head_kv=8)
    log = measure(model.path, n_ctx=n_ctx, type_k=type_k, type_v=type_v).log
    cells = -(-n_ctx // 256) * 256
    kv_dim = model.hparams["head_dim_k"] * model.hparams["n_head_kv"]
    k_bytes = model.n_layer * cells * _row_bytes(type_k, kv_dim)
    v_bytes = model.n_layer * cells * _row_bytes(type_v, kv_dim)
    assert log.context.n_ctx == cells and log.kv_cells == cells
    (kv,) = log.of_kind("kv")
    assert _close(kv.bytes, k_bytes + v_bytes, kv.precision_bytes)
    summary = log.kv_caches[0]
    assert (summary.type_k, summary.type_v, summary.layers) == (type_k, type_v, model.n_layer)
    assert _close(summary.k_bytes, k_bytes, summary.precision_bytes)
    assert _close(summary.v_bytes, v_bytes, summary.precision_bytes)


def test_no_alloc_still_logs_compute_output_and_state(tmp_path: Path) -> None:
    """With no_alloc (load_mode NONE) model and KV print 0.00; compute, output and RS are real."""
    for family in ("llama", "granitehybrid"):
        model = FAMILIES[family](tmp_path / f"{family}.gguf", n_vocab=32000)
        real = measure(model.path, n_ctx=4096, use_mmap=False)
        dry = measure(model.path, n_ctx=4096, use_mmap=False, no_alloc=True)
        assert real.log.load_mode == dry.log.load_mode == "none"
        assert real.log.total("model") > 0 and dry.log.total("model") == 0
        assert real.log.total("kv") > 0 and dry.log.total("kv") == 0
        assert dry.log.kv_caches[0].bytes == real.log.total("kv")  # the summary line keeps the size
        assert dry.log.total("compute") == real.log.total("compute") > 0
        assert dry.log.total("output") == real.log.total("output")
        assert _close(real.log.total("output"), 32000 * 4, real.log.precision("output"))
        assert dry.log.total("rs") == real.log.total("rs")
        assert dry.log.compute_exact == ()


def test_failure_reports_llama_cpp_reason(tmp_path: Path) -> None:
    model = build_llama(tmp_path / "llama.gguf")
    with pytest.raises(ProbeError, match="quantized V cache requires flash_attn"):
        measure(model.path, n_ctx=512, type_v="q8_0", flash_attn="off")
    failed = measure(model.path, n_ctx=512, type_v="q8_0", flash_attn="off", check=False)
    assert failed.model_loaded and not failed.context_created and not failed.ok
    assert failed.log.total("model") > 0 and failed.log.of_kind("kv") == ()


def _info_value(text: str) -> int | tuple[int, ...]:
    """A print_info number, or a per-layer array llama.cpp prints as ``[0, 0, 2]``."""
    if text.startswith("["):
        return tuple(int(v) for v in text.strip("[]").split(","))
    return int(text)


def _per_layer(values: tuple[int, ...]) -> int | tuple[int, ...]:
    """How llama.cpp's print_arr shows a per-layer value: one number when all agree."""
    return values[0] if len(set(values)) == 1 else values


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_model_spec_reads_the_hyper_parameters_llama_cpp_reads(
    family: str, models: dict[str, SynthModel], measured: dict[tuple[str, int], Measurement]
) -> None:
    """ModelSpec against llama.cpp's print_info (llama_model::print_info) for the same file:
    shape, per-layer head counts, sliding window, experts, MLA ranks, recurrent state."""
    from llmtune.model import read_spec

    spec = read_spec(models[family].path)
    info = dict(measured[family, 512].log.print_info)
    ours: dict[str, int | tuple[int, ...]] = {
        "n_layer": spec.n_layer,
        "n_embd": spec.n_embd,
        "n_ctx_train": spec.n_ctx_train,
        "n_head": _per_layer(spec.n_head_per_layer),
        "n_head_kv": _per_layer(spec.n_head_kv_per_layer),
        "n_ff": _per_layer(spec.n_ff_per_layer),
        "n_swa": spec.swa_window if any(spec.swa_layers) else 0,
        "is_swa_any": int(any(spec.swa_layers)),
        "n_expert": spec.n_expert,
        "n_expert_used": spec.n_expert_used,
    }
    optional = {  # printed only for the architectures that have them
        "n_ff_exp": spec.n_ff_exp,
        "n_lora_q": spec.q_lora_rank,
        "n_lora_kv": spec.kv_lora_rank,
        "ssm_d_conv": spec.ssm_conv_kernel,
        "ssm_d_inner": spec.ssm_inner_size,
        "ssm_d_state": spec.ssm_state_size,
    }
    ours.update({key: value for key, value in optional.items() if key in info})
    assert {key: _info_value(info[key]) for key in ours} == ours
    if family == "deepseek2":
        assert {"n_lora_q", "n_lora_kv", "n_ff_exp"} <= ours.keys()
    if family in RECURRENT_ONLY | HYBRID:
        assert {"ssm_d_conv", "ssm_d_inner", "ssm_d_state"} <= ours.keys()
