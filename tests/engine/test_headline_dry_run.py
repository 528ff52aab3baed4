"""The README's worked example, checked against llama.cpp's own quantizer.

``tests/unit/test_headline.py`` plans Llama-2-70B and 13B as llmtune's what-if
quantizes them. Here llama.cpp's quantizer, in a dry run on the same
header-only files (``llama_model_quantize_params.dry_run``: no data read, no
file written), says which type each tensor gets and how big the tensor data
is: the models the worked example plans must be the ones llama.cpp would write.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from gguf import GGMLQuantizationType as Q

from llmtune.fit.plan import plan
from llmtune.fit.quant import FILE_TYPES, QuantOptions, predict_tensor_types, requantize
from llmtune.fit.settings import Settings
from llmtune.hardware.host import host_device
from llmtune.hardware.profiles import host_profile, parse_gpu_spec
from llmtune.model import ModelSpec, read_spec
from llmtune.units import GIB
from synth import llama_like
from synth_quant import DryRun, QuantJob, parse_dry_run, run_quantize

MIB = 1024 * 1024
# (model, file type, layers on an RTX 3060 12GB as the README's table says)
CASES = [
    ("llama-2-70b", "Q4_K_M", 21),
    ("llama-2-70b", "Q3_K_M", 26),
    ("llama-2-70b", "Q2_K", 33),
    ("llama-2-13b", "Q4_K_M", 41),
]
SHAPES = {  # Llama-2: layers, n_embd, heads, KV heads, n_ff
    "llama-2-70b": (80, 8192, 64, 8, 28672),
    "llama-2-13b": (40, 5120, 40, 40, 13824),
}


@dataclass(frozen=True)
class Headline:
    sources: dict[str, ModelSpec]  # the F16 headers
    dry: dict[tuple[str, str], DryRun]  # what llama.cpp's dry run said, by (model, file type)


@pytest.fixture(scope="module")
def headline(tmp_path_factory: pytest.TempPathFactory) -> Headline:
    folder = tmp_path_factory.mktemp("headline")
    paths = {}
    for name, (n_layer, n_embd, n_head, n_head_kv, n_ff) in SHAPES.items():
        (paths[name],) = llama_like(folder / f"{name}.f16.gguf", n_layer=n_layer, n_embd=n_embd,
                                    n_head=n_head, n_head_kv=n_head_kv, n_ff=n_ff, n_vocab=32000,
                                    weight_type=Q.F16)  # fmt: skip
    jobs = [QuantJob(str(paths[name]), FILE_TYPES[ftype].ftype) for name, ftype, _ in CASES]
    dry = {}
    for (name, ftype, _), result in zip(CASES, run_quantize(jobs), strict=True):
        assert result.ok, f"llama.cpp's dry run of {name} {ftype} failed: {result.crash}"
        dry[(name, ftype)] = parse_dry_run(result.log)
    return Headline({name: read_spec(path) for name, path in paths.items()}, dry)


@pytest.mark.parametrize(("name", "ftype", "layers"), CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_the_worked_example_plans_what_llama_cpp_would_write(
    headline: Headline, name: str, ftype: str, layers: int
) -> None:
    source = headline.sources[name]
    dry = headline.dry[(name, ftype)]
    options = QuantOptions(imatrix=False)
    assert len(dry.types) == len(source.tensors)
    # Every tensor gets the type llama.cpp gives it (Q6_K attention V and FFN down
    # in some layers of a Q4_K_M 70B, Q5_K in some of a Q3_K_M, ...).
    predicted = predict_tensor_types(source, ftype, options)
    assert {n: t for n, t in predicted.items() if t != dry.types[n]} == {}
    # and the tensor data is the size llama.cpp prints ("quant size", 0.01 MiB).
    quantized = requantize(source, ftype, options)
    assert dry.quant_mib is not None
    assert f"{quantized.tensor_bytes / MIB:.2f}" == f"{dry.quant_mib:.2f}"
    # That model is the one whose layers the README counts on a 12 GB card.
    host = host_device(64 * GIB, host_profile("ddr4-3200").bandwidth_gbps)
    devices = [parse_gpu_spec("rtx3060-12g"), host]
    assert plan(quantized, devices, Settings()).max_gpu_layers == layers
