"""The users' headline case, checked from first principles (README, "Worked example").

Llama-2-70B and Llama-2-13B headers with their real shapes (tensor data a
sparse hole) are quantized by the what-if (byte-exact against llama.cpp's dry
run: tests/engine/test_quant_whatif.py) and planned on an RTX 3060 12GB with
64 GiB of DDR4-3200, at llama-server's defaults and a 4096 context.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from gguf import GGMLQuantizationType as Q

from llmtune.fit.plan import plan
from llmtune.fit.quant import requantize
from llmtune.fit.settings import Settings
from llmtune.hardware.host import WHAT_IF_HOST_CORES, host_device
from llmtune.hardware.profiles import host_profile, parse_gpu_spec
from llmtune.model import ModelSpec, read_spec
from llmtune.units import GIB
from synth import LLAMA2_70B_SHAPE, llama_like

DEVICES = [
    parse_gpu_spec("rtx3060-12g"),
    # As `--ram 64GiB --host ddr4-3200` plans it: another machine, a desktop's 8 cores.
    host_device(64 * GIB, host_profile("ddr4-3200").bandwidth_gbps, cores=WHAT_IF_HOST_CORES),
]


@pytest.fixture(scope="module")
def llama2_70b(tmp_path_factory: pytest.TempPathFactory) -> ModelSpec:
    path = tmp_path_factory.mktemp("headline") / "llama-2-70b.f16.gguf"
    llama_like(path, **LLAMA2_70B_SHAPE, weight_type=Q.F16)
    return read_spec(path)


@pytest.fixture(scope="module")
def llama2_13b(tmp_path_factory: pytest.TempPathFactory) -> ModelSpec:
    path = tmp_path_factory.mktemp("headline") / "llama-2-13b.f16.gguf"
    llama_like(path, n_layer=40, n_embd=5120, n_head=40, n_head_kv=40, n_ff=13824,
               n_vocab=32000, n_ctx_train=4096, weight_type=Q.F16)  # fmt: skip
    return read_spec(path)


def _best(spec: ModelSpec):  # type: ignore[no-untyped-def]
    """The default plan: --ngl auto, the choice llama.cpp's fit makes."""
    return plan(spec, DEVICES, Settings())


def test_70b_q4_k_m_file_is_what_llama_cpp_writes(llama2_70b: ModelSpec) -> None:
    q = requantize(llama2_70b, "Q4_K_M")
    # 68.98B parameters; llama.cpp's dry run: 41,422,138,900 bytes of tensors.
    assert llama2_70b.parameters == 68_976_648_192
    assert q.tensor_bytes == pytest.approx(41_422_138_900, rel=1e-4)


def test_a_12gb_gpu_holds_about_20_layers_of_the_70b_not_5_to_10(llama2_70b: Path) -> None:
    q = requantize(llama2_70b, "Q4_K_M")
    sizes = sorted(layer.nbytes for layer in q.layers)
    # Q4_K layers weigh 0.48 GB; the Q6_K-boosted ones (attn_v, ffn_down) 0.54 GB.
    assert sizes[0] < 0.5e9 < sizes[-1] < 0.55e9
    best = _best(q)
    # 20 blocks + the output layer, 1 GiB kept free, after CUDA's 457 MiB runtime
    assert best.n_gpu_layers == best.max_gpu_layers == 21
    assert best.fit is not None and best.fit.fit_args == "-c 4096 -ngl 21"
    gpu, host = best.devices
    assert gpu.verdict == "fits" and host.verdict == "fits"
    assert gpu.runtime_bytes == 457 * 2**20
    # and it runs at the 0.5-2 tokens/s the guides say
    assert 0.5 < best.predicted.tg_tokens_per_s < 2.0
    # Every layer (--ngl max) lacks 28 GiB: the plan that runs is the one shown.
    every = plan(q, DEVICES, Settings(n_gpu_layers=-1))
    assert not every.fits and 28 * GIB < every.short_bytes < 29 * GIB


@pytest.mark.parametrize(("ftype", "layers"), [("Q3_K_M", 26), ("Q2_K", 33)])
def test_smaller_quantizations_fit_more_layers(
    llama2_70b: ModelSpec, ftype: str, layers: int
) -> None:
    best = _best(requantize(llama2_70b, ftype))
    assert best.max_gpu_layers == layers
    assert best.fits


def test_70b_needs_about_44_gb_in_all_at_4k_context_not_48_to_50(llama2_70b: ModelSpec) -> None:
    best = _best(requantize(llama2_70b, "Q4_K_M"))
    total = sum(d.total_bytes for d in best.devices)
    assert 43e9 < total < 45e9
    # the guides' 48-50 GB is what a ~20k context needs (the KV cache grows 0.33 GB per 1k)
    long = plan(requantize(llama2_70b, "Q4_K_M"), DEVICES, Settings(n_gpu_layers=0, n_ctx=20480))
    assert 48e9 < sum(d.total_bytes for d in long.devices) < 51e9


def test_rule_of_thumb_beside_ours(llama2_70b: ModelSpec) -> None:
    def rule(bits: int) -> float:  # M = P x 4 bytes / (32 / Q) x 1.2
        return 70e9 * 4 / (32 / bits) * 1.2

    assert rule(16) == pytest.approx(168e9) and rule(4) == pytest.approx(42e9)
    q4 = requantize(llama2_70b, "Q4_K_M")
    f16 = requantize(llama2_70b, "F16")
    # Q4_K_M is 4.8 bits per weight, not 4: the file alone is close to the rule's 42 GB
    assert 4.7 < q4.bits_per_weight < 4.9
    assert f16.tensor_bytes == pytest.approx(137.95e9, rel=0.001)


def test_13b_q4_k_m_fits_a_12gb_gpu_entirely(llama2_13b: ModelSpec) -> None:
    q = requantize(llama2_13b, "Q4_K_M")
    best = _best(q)
    assert best.max_gpu_layers == 41 and best.n_gpu_layers == 41
    gpu = best.gpus[0]
    assert gpu.verdict == "fits"
    # 7.9 GB of weights at 80% of 360 GB/s: the guides' 10-25 tokens/s is pessimistic
    assert 25 < best.predicted.tg_tokens_per_s < 40
