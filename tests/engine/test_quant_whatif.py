"""The quantization what-if (``llmtune.fit.quant``) against llama.cpp's own quantizer.

Small F16 models with real random data (``tests/synth_quant.py``) in the shapes
of six architectures are quantized by ``llama_model_quantize`` (llama-cpp-python
0.3.36) to every file type llama-quantize offers, in two child processes. For
each output file llmtune's prediction must give every tensor the very type
llama.cpp wrote, and the file size within 1% (in practice it is exact: the
header, the tensor order and the offsets are compared too). File types that
need an importance matrix get an all-ones one, as llama-quantize refuses them
without.

Dry runs (``llama_model_quantize_params.dry_run``) report per-tensor types and
the size without writing a file and without reading tensor data, so they also
check the rules that need no imatrix (IQ3_XXS, IQ4_NL, ...), llama-quantize's
options (--pure, --output-tensor-type, --tensor-type ...), and header-only
models of every family in ``tests/synth_arch.py`` plus the shapes that switch
on special rules (80 layers: llama.cpp's 70B rule; 16 experts).

Models from a quantized source are requantized too (``allow_requantize``).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import synth_arch
from llmtune.errors import FitError
from llmtune.fit.quant import (
    FILE_TYPES,
    QuantOptions,
    file_type,
    predict_tensor_types,
    requantize,
    tensors_needing_imatrix,
)
from llmtune.model.ggml_types import GGML_TYPE_BY_NAME
from llmtune.model.spec import ModelSpec, read_spec
from synth_quant import BUILDERS, DryRun, QuantJob, QuantResult, parse_dry_run, run_in_parallel

MIB = 1024 * 1024
KINDS = list(BUILDERS)
FTYPES = list(FILE_TYPES)
# ggml builds each IQ type's lattice tables once per process, in seconds: these file
# types go to the second child so that each table is built in one child only.
_SECOND_CHILD = {
    "IQ2_S", "IQ2_M", "IQ3_XXS", "IQ3_XS", "IQ3_S", "IQ3_M", "IQ4_NL", "IQ4_XS",
    "Q2_K", "Q2_K_S", "Q3_K_S", "Q3_K_M", "Q3_K_L",
}  # fmt: skip
# Header-only models for dry runs: every family of synth_arch, and shapes that switch
# on rules the small models cannot (llama.cpp's LLM_TYPE_70B; MoE with 16 experts).
SPARSE = [
    *synth_arch.FAMILIES,
    "llama_80_layers",
    "qwen2_80_layers",
    "qwen3moe_16_experts",
]


@dataclass(frozen=True)
class OptionCase:
    id: str
    kind: str
    ftype: str
    options: QuantOptions


OPTION_CASES = [
    OptionCase("pure", "llama_gqa", "Q4_K_M", QuantOptions(pure=True)),
    OptionCase(
        "output-and-embd-types",
        "llama_gqa",
        "Q4_K_M",
        QuantOptions(output_tensor_type="Q8_0", token_embedding_type="Q4_0"),
    ),
    OptionCase("tied-output-type", "qwen3", "Q3_K_M", QuantOptions(output_tensor_type="Q5_0")),
    OptionCase("leave-output", "llama_gqa", "Q5_K_M", QuantOptions(quantize_output_tensor=False)),
    OptionCase(
        "tensor-types",
        "llama_gqa",
        "Q4_K_M",
        QuantOptions(tensor_types=(("ffn_down", "Q4_K"), (r"blk\.1[0-5]\.attn_v", "IQ4_XS"))),
    ),
    *[
        OptionCase(f"imatrix-{ft}", "llama_gqa", ft, QuantOptions(imatrix=True))
        for ft in ("Q4_0", "Q5_0", "IQ4_NL", "IQ4_XS", "IQ3_XXS")
    ],
    OptionCase("imatrix-Q5_0-moe", "qwen3moe", "Q5_0", QuantOptions(imatrix=True)),
    OptionCase("no-imatrix-IQ3_XXS-phi3", "phi3", "IQ3_XXS", QuantOptions(imatrix=False)),
]

# (id, source kind, source file type written first, target file type)
REQUANT_CASES = [
    ("llama_gqa-Q6_K-to-Q4_0", "llama_gqa", "Q6_K", "Q4_0"),
    ("llama_gqa-Q6_K-to-Q3_K_M", "llama_gqa", "Q6_K", "Q3_K_M"),
    ("llama_gqa-Q6_K-to-F16", "llama_gqa", "Q6_K", "F16"),
    ("qwen3moe-Q4_K_M-to-Q2_K", "qwen3moe", "Q4_K_M", "Q2_K"),
    ("qwen3moe-Q4_K_M-to-Q8_0", "qwen3moe", "Q4_K_M", "Q8_0"),
]


@dataclass
class Outcome:
    result: QuantResult
    written: ModelSpec | None = None  # the output file, for real runs
    dry: DryRun | None = None


@dataclass
class Runs:
    sources: dict[str, ModelSpec] = field(default_factory=dict)
    real: dict[tuple[str, str], Outcome] = field(default_factory=dict)
    dry: dict[tuple[str, str], Outcome] = field(default_factory=dict)
    options: dict[str, Outcome] = field(default_factory=dict)
    requant: dict[str, Outcome] = field(default_factory=dict)
    requant_sources: dict[str, ModelSpec] = field(default_factory=dict)
    refused: Outcome | None = None


def _type_id(name: str | None) -> int:
    return -1 if name is None else GGML_TYPE_BY_NAME[name].id


def _job_for(model: Path, ftype: str, options: QuantOptions, output: str = "") -> QuantJob:
    return QuantJob(
        model=str(model),
        ftype=FILE_TYPES[ftype].ftype,
        output=output,
        imatrix=bool(options.imatrix),
        pure=options.pure,
        output_tensor_type=_type_id(options.output_tensor_type),
        token_embedding_type=_type_id(options.token_embedding_type),
        quantize_output_tensor=options.quantize_output_tensor,
        tensor_types=tuple((p, _type_id(t)) for p, t in options.tensor_types),
    )


def _build_sparse(name: str, folder: Path) -> Path:
    path = folder / f"sparse-{name}.gguf"
    if name == "llama_80_layers":
        return synth_arch.build_llama(path, n_layer=80, n_head=8, n_head_kv=1).path
    if name == "qwen2_80_layers":
        return synth_arch.build_qwen2(path, n_layer=80).path
    if name == "qwen3moe_16_experts":
        return synth_arch.build_qwen3moe(path, n_expert=16).path
    return synth_arch.FAMILIES[name](path).path


def _read_and_remove(path: str, keep: bool) -> ModelSpec:
    spec = read_spec(path)
    if not keep:
        os.remove(path)
    return spec


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    folder = tmp_path_factory.mktemp("quant")
    out = Runs()
    models = {kind: build(folder / f"{kind}.gguf") for kind, build in BUILDERS.items()}
    out.sources = {kind: read_spec(path) for kind, path in models.items()}
    sparse = {name: _build_sparse(name, folder) for name in SPARSE}
    keep = {(kind, src) for _, kind, src, _ in REQUANT_CASES}

    batches: list[list[QuantJob]] = [[], []]
    keys: list[list[tuple[str, object]]] = [[], []]

    def add(batch: int, where: str, key: object, job: QuantJob) -> None:
        batches[batch].append(job)
        keys[batch].append((where, key))

    for kind, path in models.items():
        for ftype, ft in FILE_TYPES.items():
            batch = int(ftype in _SECOND_CHILD)
            output = str(folder / f"{kind}-{ftype}.gguf")
            add(
                batch,
                "real",
                (kind, ftype),
                _job_for(path, ftype, QuantOptions(imatrix=ft.needs_imatrix), output),
            )
            add(batch, "dry", (kind, ftype), _job_for(path, ftype, QuantOptions(imatrix=False)))
    for case in OPTION_CASES:
        add(0, "options", case.id, _job_for(models[case.kind], case.ftype, case.options))
    for name, path in sparse.items():
        out.sources[f"sparse:{name}"] = read_spec(path)
        for ftype in FILE_TYPES:
            add(
                1,
                "dry",
                (f"sparse:{name}", ftype),
                _job_for(path, ftype, QuantOptions(imatrix=False)),
            )

    results = run_in_parallel(batches)
    for (where, key), result in zip([k for ks in keys for k in ks], results, strict=True):
        outcome = Outcome(result)
        if where == "real":
            if result.ok:
                outcome.written = _read_and_remove(result.job.output, key in keep)
            out.real[key] = outcome  # type: ignore[index]
        elif where == "dry":
            outcome.dry = parse_dry_run(result.log) if result.ok else None
            out.dry[key] = outcome  # type: ignore[index]
        else:
            outcome.dry = parse_dry_run(result.log) if result.ok else None
            out.options[str(key)] = outcome

    # Second round: requantize files the first round wrote.
    jobs = []
    for case_id, kind, src, target in REQUANT_CASES:
        source = folder / f"{kind}-{src}.gguf"
        out.requant_sources[case_id] = read_spec(source)
        job = _job_for(source, target, QuantOptions(), str(folder / f"{case_id}.gguf"))
        jobs.append(dataclasses.replace(job, allow_requantize=True))
    refused_source = folder / f"{REQUANT_CASES[0][1]}-{REQUANT_CASES[0][2]}.gguf"
    jobs.append(_job_for(refused_source, "Q4_0", QuantOptions(), str(folder / "refused.gguf")))
    second = run_in_parallel([jobs])
    for (case_id, *_), result in zip(REQUANT_CASES, second, strict=False):
        written = _read_and_remove(result.job.output, False) if result.ok else None
        out.requant[case_id] = Outcome(result, written)
    out.refused = Outcome(second[-1])
    return out


def _mismatches(predicted: dict[str, str], actual: dict[str, str]) -> list[str]:
    wrong = [
        f"{name}: llmtune {predicted.get(name)}, llama.cpp {t}"
        for name, t in actual.items()
        if predicted.get(name) != t
    ]
    wrong += [f"{name}: llama.cpp has no such tensor" for name in predicted if name not in actual]
    return wrong


def _error_pct(predicted: int | float, actual: int | float) -> float:
    return 100.0 * (predicted - actual) / actual


def _fallback_failure(result: QuantResult) -> bool:
    return not result.ok and "no tensor type fallback is defined" in result.log


# ---- real quantization ----------------------------------------------------------------------


@pytest.mark.parametrize("ftype", FTYPES)
@pytest.mark.parametrize("kind", KINDS)
def test_real_quantization_types_and_size(runs: Runs, kind: str, ftype: str) -> None:
    spec = runs.sources[kind]
    outcome = runs.real[(kind, ftype)]
    options = QuantOptions(imatrix=FILE_TYPES[ftype].needs_imatrix)
    if _fallback_failure(outcome.result):
        # Q1_0's 128-blocks have no fallback: llama.cpp gives up, and so does llmtune.
        with pytest.raises(FitError, match="no fallback"):
            predict_tensor_types(spec, ftype, options)
        return
    assert outcome.result.ok, outcome.result.crash or outcome.result.log[-2000:]
    assert outcome.written is not None
    actual = {t.name: t.type_name for t in outcome.written.tensors}
    predicted = predict_tensor_types(spec, ftype, options)
    assert _mismatches(predicted, actual) == []
    planned = requantize(spec, ftype, options)
    assert {t.name: t.nbytes for t in planned.tensors} == {
        t.name: t.nbytes for t in outcome.written.tensors
    }
    error = _error_pct(planned.file_bytes, outcome.written.file_bytes)
    assert abs(error) < 1.0, f"{planned.file_bytes} vs {outcome.written.file_bytes}"


def test_real_quantization_layout_is_exact(runs: Runs) -> None:
    """Beyond the 1% target: tensor order, offsets, header and file size are llama.cpp's."""
    checked = 0
    for (kind, ftype), outcome in runs.real.items():
        if outcome.written is None:
            continue
        options = QuantOptions(imatrix=FILE_TYPES[ftype].needs_imatrix)
        planned = requantize(runs.sources[kind], ftype, options)
        written = outcome.written
        where = f"{kind} {ftype}"
        assert [t.name for t in planned.tensors] == [t.name for t in written.tensors], where
        assert [t.offset for t in planned.tensors] == [t.offset for t in written.tensors], where
        assert planned.header_bytes == written.header_bytes, where
        assert planned.file_bytes == written.file_bytes, where
        assert planned.metadata["general.file_type"] == written.metadata["general.file_type"]
        assert planned.file_type_name == written.file_type_name == ftype
        checked += 1
    assert checked >= len(KINDS) * (len(FTYPES) - 1)


# ---- dry runs --------------------------------------------------------------------------------


def _check_dry_run(spec: ModelSpec, ftype: str, outcome: Outcome, options: QuantOptions) -> str:
    """'' when llama.cpp's dry run agrees with llmtune, else what differs."""
    if _fallback_failure(outcome.result):
        try:
            predict_tensor_types(spec, ftype, options)
        except FitError:
            return ""
        return f"{ftype}: llama.cpp found no fallback, llmtune did"
    if not outcome.result.ok or outcome.dry is None:
        return f"{ftype}: llama.cpp failed: {outcome.result.crash or outcome.result.log[-500:]}"
    dry = outcome.dry
    wrong = _mismatches(predict_tensor_types(spec, ftype, options), dry.types)
    if wrong:
        return f"{ftype}: {len(wrong)} tensors differ, e.g. {wrong[:3]}"
    planned = requantize(spec, ftype, options).tensor_bytes
    if dry.model_mib is None or dry.quant_mib is None:
        return f"{ftype}: no size in llama.cpp's log"
    # llama.cpp prints total_size_new / 1024 / 1024 with %.2f: the same formatting must agree.
    if f"{planned / MIB:.2f}" != f"{dry.quant_mib:.2f}" or f"{spec.tensor_bytes / MIB:.2f}" != (
        f"{dry.model_mib:.2f}"
    ):
        return f"{ftype}: llama.cpp quant size {dry.quant_mib:.2f} MiB, llmtune {planned / MIB:.2f}"
    if dry.quant_mib >= 1.0 and abs(_error_pct(planned / MIB, dry.quant_mib)) >= 1.0:
        return f"{ftype}: size off by more than 1%"
    # llama.cpp warns only when it was given no imatrix.
    needing = bool(tensors_needing_imatrix(spec, ftype, options)) and not options.imatrix
    if needing != dry.needs_imatrix:
        return f"{ftype}: llama.cpp says an imatrix is {'' if dry.needs_imatrix else 'not '}needed"
    return ""


@pytest.mark.parametrize("ftype", FTYPES)
@pytest.mark.parametrize("kind", KINDS)
def test_dry_run_without_imatrix(runs: Runs, kind: str, ftype: str) -> None:
    outcome = runs.dry[(kind, ftype)]
    spec = runs.sources[kind]
    problem = _check_dry_run(spec, ftype, outcome, QuantOptions(imatrix=False))
    assert problem == ""
    if outcome.dry is not None and outcome.dry.quant_mib is not None:
        planned = requantize(spec, ftype, QuantOptions(imatrix=False)).tensor_bytes
        print(
            f"{kind} {ftype}: llama.cpp dry run 'quant size = {outcome.dry.quant_mib:8.2f} MiB', "
            f"llmtune {planned / MIB:.4f} MiB ({_error_pct(planned / MIB, outcome.dry.quant_mib):+.3f}%)"
        )


@pytest.mark.parametrize("family", SPARSE)
def test_dry_run_header_only_models(runs: Runs, family: str) -> None:
    key = f"sparse:{family}"
    spec = runs.sources[key]
    problems = [
        _check_dry_run(spec, ftype, runs.dry[(key, ftype)], QuantOptions(imatrix=False))
        for ftype in FTYPES
    ]
    assert [p for p in problems if p] == []


@pytest.mark.parametrize("case", OPTION_CASES, ids=[c.id for c in OPTION_CASES])
def test_llama_quantize_options(runs: Runs, case: OptionCase) -> None:
    spec = runs.sources[case.kind]
    assert _check_dry_run(spec, case.ftype, runs.options[case.id], case.options) == ""


def test_options_change_the_types(runs: Runs) -> None:
    """The option cases exercise what they claim (guards the cases above from being vacuous)."""
    llama = runs.sources["llama_gqa"]
    base = predict_tensor_types(llama, "Q4_K_M")
    pure = predict_tensor_types(llama, "Q4_K_M", QuantOptions(pure=True))
    assert base["output.weight"] == "Q6_K" and pure["output.weight"] == "Q4_K"
    leave = predict_tensor_types(llama, "Q5_K_M", QuantOptions(quantize_output_tensor=False))
    assert leave["output.weight"] == "F16"
    tied = predict_tensor_types(
        runs.sources["qwen3"], "Q3_K_M", QuantOptions(output_tensor_type="Q5_0")
    )
    assert tied["token_embd.weight"] == "Q5_0"
    # ffn_down rows of 96: the manual Q4_K still falls back to Q5_0.
    manual = predict_tensor_types(
        llama, "Q4_K_M", QuantOptions(tensor_types=(("ffn_down", "Q4_K"),))
    )
    assert manual["blk.0.ffn_down.weight"] == "Q5_0" and base["blk.0.ffn_down.weight"] == "Q8_0"
    with_imatrix = predict_tensor_types(llama, "Q4_0", QuantOptions(imatrix=True))
    assert with_imatrix["blk.0.ffn_down.weight"] == "Q4_1"
    assert with_imatrix["blk.2.ffn_down.weight"] == "Q4_0"


# ---- requantizing a quantized model ---------------------------------------------------------


@pytest.mark.parametrize("case_id", [c[0] for c in REQUANT_CASES])
def test_requantize_from_quantized_source(runs: Runs, case_id: str) -> None:
    target = case_id.rsplit("-to-", 1)[1]
    source = runs.requant_sources[case_id]
    outcome = runs.requant[case_id]
    assert outcome.result.ok, outcome.result.crash or outcome.result.log[-2000:]
    assert outcome.written is not None
    actual = {t.name: t.type_name for t in outcome.written.tensors}
    assert _mismatches(predict_tensor_types(source, target), actual) == []
    planned = requantize(source, target)
    assert planned.file_bytes == outcome.written.file_bytes
    # Norms stay F32 whatever the target: they are never quantized.
    assert actual["output_norm.weight"] == "F32"


def test_split_source_is_written_as_one_file(tmp_path: Path) -> None:
    """A model in three gguf-split shards: llama.cpp writes one file without the split keys."""
    from synth import llama_like
    from synth_quant import run_quantize

    shards = llama_like(
        tmp_path / "split.gguf", n_layer=4, n_embd=256, n_head=4, n_head_kv=1, n_ff=512,
        n_vocab=300, split_max_tensors=15, fill=b"\x00\x3c",  # F16 ones; F32 norms tiny
    )  # fmt: skip
    spec = read_spec(shards[0])
    assert len(spec.shard_paths) == 3
    output = tmp_path / "one.gguf"
    (result,) = run_quantize([QuantJob(str(shards[0]), FILE_TYPES["Q8_0"].ftype, str(output))])
    assert result.ok, result.crash or result.log[-2000:]
    written = read_spec(output)
    planned = requantize(spec, "Q8_0")
    assert "split.count" not in written.metadata and "split.count" not in planned.metadata
    assert planned.header_bytes == written.header_bytes
    assert [t.offset for t in planned.tensors] == [t.offset for t in written.tensors]
    assert planned.file_bytes == written.file_bytes


def test_requantize_needs_permission_in_llama_cpp(runs: Runs) -> None:
    assert runs.refused is not None
    assert runs.refused.result.status == 1
    assert "requantizing from type q6_K is disabled" in runs.refused.result.log


# ---- the rules the models above must exercise -------------------------------------------------


def _types(runs: Runs, kind: str, ftype: str, **options: object) -> dict[str, str]:
    return predict_tensor_types(runs.sources[kind], ftype, QuantOptions(**options))  # type: ignore[arg-type]


def test_the_models_exercise_llama_cpp_rules(runs: Runs) -> None:
    # Rows of 96 (llama ffn_down): 256-block types fall back to 32-block ones.
    llama = _types(runs, "llama_gqa", "Q4_K_M")
    assert {llama[f"blk.{i}.ffn_down.weight"] for i in range(16)} == {"Q5_0", "Q8_0"}
    # Rows of 104 (qwen2 ffn_down) fit no block at all: F16.
    assert _types(runs, "qwen2", "Q4_K_M")["blk.0.ffn_down.weight"] == "F16"
    # GQA 4 raises attn_v in Q2_K; GQA 2 does not as far.
    assert _types(runs, "llama_gqa", "Q2_K")["blk.5.attn_v.weight"] == "Q4_K"
    assert _types(runs, "qwen2", "Q2_K")["blk.5.attn_v.weight"] == "Q3_K"
    # Q3_K_M: the first sixteenth of 16 layers gets Q5_K ffn_down.
    q3 = _types(runs, "llama_gqa", "Q3_K_M")
    assert q3["blk.0.ffn_down.weight"] == "Q5_1" and q3["blk.1.ffn_down.weight"] == "Q5_0"
    # Tied embeddings take the output's rule: Q6_K, or Q8_0 when n_embd is not a multiple of 256.
    assert _types(runs, "qwen3", "Q4_K_M")["token_embd.weight"] == "Q6_K"
    assert _types(runs, "gemma3", "Q4_K_M")["token_embd.weight"] == "Q8_0"
    # Eight experts: llama.cpp's Mixtral rules put attention K and V at Q8_0.
    moe = _types(runs, "qwen3moe", "Q4_K_M")
    assert moe["blk.3.attn_v.weight"] == moe["blk.3.attn_k.weight"] == "Q8_0"
    assert moe["blk.3.ffn_gate_inp.weight"] == "F32"
    # Fused QKV counts as attention V.
    phi = _types(runs, "phi3", "Q4_K_M")
    # (6 layers: use_more_bits picks the third and the last.)
    assert phi["blk.2.attn_qkv.weight"] == "Q6_K" and phi["blk.1.attn_qkv.weight"] == "Q4_K"
    # 80 layers: LLM_TYPE_70B raises attn_v from Q3_K to Q5_K.
    assert _types(runs, "sparse:llama_80_layers", "Q3_K_S")["blk.0.attn_v.weight"] == "Q5_K"
    assert _types(runs, "sparse:llama", "Q3_K_S")["blk.0.attn_v.weight"] == "Q3_K"
    # MLA split as newer converters write it: attn_v_b is no attention V (Q4_K, fallen back
    # to Q5_0 for rows of 128); MoE FFN layers come from the names, shared experts included.
    ds = _types(runs, "sparse:deepseek2", "Q4_K_M")
    assert ds["blk.1.attn_v_b.weight"] == "Q5_0"
    assert ds["blk.2.ffn_down_exps.weight"] == ds["blk.2.ffn_down_shexp.weight"] == "Q8_0"
    assert ds["blk.1.ffn_down_exps.weight"] == "Q5_0"


def test_needs_imatrix_flag_matches_llama_cpp(runs: Runs) -> None:
    """On a model whose rows fill 256-blocks, the flag is what llama.cpp demands."""
    spec = runs.sources["llama_gqa"]
    for ftype, ft in FILE_TYPES.items():
        if ft.name == "Q1_0":
            continue
        needs = bool(tensors_needing_imatrix(spec, ftype, QuantOptions(imatrix=False)))
        assert needs == ft.needs_imatrix, ftype
        dry = runs.dry[("llama_gqa", ftype)].dry
        assert dry is not None and dry.needs_imatrix == ft.needs_imatrix, ftype


# ---- names ------------------------------------------------------------------------------------


def test_file_type_names() -> None:
    assert file_type("q4_k_m").name == "Q4_K_M"
    assert file_type("Q4_K").name == "Q4_K_M"  # llama-quantize's alias
    assert file_type("15").name == "Q4_K_M"
    assert file_type("iq2-xxs").name == "IQ2_XXS"
    with pytest.raises(FitError) as info:
        file_type("Q4_K_X")
    assert "Q4_K_M" in info.value.what and "Q4_K_S" in info.value.what


def test_unknown_file_type_is_a_fit_error(runs: Runs) -> None:
    with pytest.raises(FitError, match="did you mean"):
        requantize(runs.sources["qwen2"], "Q5_K_L")
    with pytest.raises(FitError, match="ggml type"):
        predict_tensor_types(runs.sources["qwen2"], "Q4_0", QuantOptions(output_tensor_type="Q9"))


def _all_outcomes(runs: Runs) -> Iterator[Outcome]:
    yield from runs.real.values()
    yield from runs.dry.values()
    yield from runs.options.values()


def test_no_child_crashed(runs: Runs) -> None:
    crashed = [o.result.crash for o in _all_outcomes(runs) if o.result.crash]
    assert crashed == []
