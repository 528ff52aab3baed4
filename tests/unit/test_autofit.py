"""``--ngl auto``: llama.cpp's fit (common/fit.cpp) reproduced on llmtune's plan.

Each test asks a question the fit answers and checks it against the plan that
is its memory measure, as llama.cpp checks each candidate by loading it
without allocating: the layers chosen fit each device's target (free less the
margin) and one more does not; the context left unset shrinks only as far as
needed; llama-fit-params' own output format. Parity with llama.cpp itself is
tests/engine/test_fit_parity.py and tests/bench/fit_parity.py.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from gguf import GGMLQuantizationType as Q

from llmtune.fit.autofit import fit_params
from llmtune.fit.overflow import overflow_pattern
from llmtune.fit.plan import plan
from llmtune.fit.settings import NGL_AUTO, Settings
from llmtune.hardware.host import host_device
from llmtune.hardware.profiles import parse_gpu_spec
from llmtune.model import read_spec
from synth import llama_like
from synth_arch import build_qwen3moe

MIB = 1 << 20
GIB = 1 << 30
HOST = host_device(ram_bytes=64 * GIB, bandwidth_gbps=51.2)


@pytest.fixture(scope="module")
def dense(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    path = tmp_path_factory.mktemp("fit") / "dense.gguf"
    llama_like(path, n_layer=24, n_embd=2048, n_head=16, n_head_kv=4, n_ff=5632,
               n_vocab=32000, n_ctx_train=32768, weight_type=Q.Q4_K)  # fmt: skip
    return read_spec(path)


@pytest.fixture(scope="module")
def moe(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    path = tmp_path_factory.mktemp("fit") / "moe.gguf"
    build_qwen3moe(path, n_layer=12, n_embd=1024, n_vocab=8000)
    return read_spec(path)


def gpu(size: str, index: int = 0):  # type: ignore[no-untyped-def]
    # A card whose free memory is read with its runtime already there, as
    # llama.cpp's fit reads it (and an RPC server reports it).
    return replace(parse_gpu_spec(size, index=index), runtime_bytes=0)


def _gpu_total(spec, devices, s):  # type: ignore[no-untyped-def]
    return [d.total_bytes for d in plan(spec, devices, s).gpus]


def test_one_device_gets_the_most_layers_that_keep_the_margin(dense) -> None:  # type: ignore[no-untyped-def]
    devices = [gpu("1536MiB"), HOST]
    s = Settings(n_ctx=4096)
    r = fit_params(dense, devices, s, n_ctx_auto=False)
    assert r.status == "success" and 0 < r.n_gpu_layers < dense.n_layer + 1
    assert r.fit_args == f"-c 4096 -ngl {r.n_gpu_layers}"
    target = 1536 * MIB - GIB  # free less --fit-target's 1024 MiB
    assert _gpu_total(dense, devices, s.with_(n_gpu_layers=r.n_gpu_layers))[0] <= target
    assert _gpu_total(dense, devices, s.with_(n_gpu_layers=r.n_gpu_layers + 1))[0] > target


def test_nothing_changes_when_everything_fits(dense) -> None:  # type: ignore[no-untyped-def]
    r = fit_params(dense, [gpu("24GiB"), HOST], Settings(n_ctx=4096), n_ctx_auto=False)
    assert r.fit_args == "-c 4096 -ngl -1"  # llama.cpp's default, all layers, untouched


def test_an_unset_context_shrinks_before_layers_move(dense) -> None:  # type: ignore[no-untyped-def]
    # Every layer fits at 4096 tokens, not at the trained 32768.
    devices = [gpu("2GiB"), HOST]
    at_train = _gpu_total(dense, devices, Settings(n_ctx=32768, n_gpu_layers=-1))[0]
    at_min = _gpu_total(dense, devices, Settings(n_ctx=4096, n_gpu_layers=-1))[0]
    assert at_min <= GIB < at_train
    r = fit_params(dense, devices, Settings(n_ctx=0), n_ctx_auto=True)
    assert r.n_gpu_layers == -1 and 4096 <= r.n_ctx < 32768 and r.n_ctx % 256 == 0
    assert _gpu_total(dense, devices, Settings(n_ctx=r.n_ctx, n_gpu_layers=-1))[0] <= GIB
    given = fit_params(dense, devices, Settings(n_ctx=32768), n_ctx_auto=False)
    assert (
        given.n_ctx == 32768 and 0 < given.n_gpu_layers < dense.n_layer + 1
    )  # a given context stays


def test_two_devices_are_filled_back_to_front_with_a_split(dense) -> None:  # type: ignore[no-untyped-def]
    devices = [gpu("1200MiB", 0), gpu("1600MiB", 1), HOST]
    r = fit_params(dense, devices, Settings(n_ctx=4096), n_ctx_auto=False)
    assert len(r.tensor_split) == 2 and sum(r.tensor_split) == r.n_gpu_layers
    assert (
        r.fit_args == f"-c 4096 -ngl {r.n_gpu_layers} -ts {r.tensor_split[0]},{r.tensor_split[1]}"
    )
    totals = _gpu_total(dense, devices, r.settings(Settings(n_ctx=4096)))
    assert totals[0] <= 1200 * MIB - GIB and totals[1] <= 1600 * MIB - GIB
    # the last device (it holds the output) is filled first: it cannot take one more
    more = r.settings(Settings(n_ctx=4096)).with_(
        n_gpu_layers=r.n_gpu_layers + 1,
        tensor_split=(float(r.tensor_split[0]), float(r.tensor_split[1] + 1)),
    )
    assert _gpu_total(dense, devices, more)[1] > 1600 * MIB - GIB


def test_moe_experts_go_to_the_cpu_as_llama_cpp_writes_them(moe) -> None:  # type: ignore[no-untyped-def]
    everything = _gpu_total(moe, [gpu("64GiB"), HOST], Settings(n_ctx=4096))[0]
    dense_only = _gpu_total(moe, [gpu("64GiB"), HOST], Settings(n_ctx=4096, n_cpu_moe=-1))[0]
    size = GIB + (dense_only + everything) // 2  # the dense part fits, not every expert
    devices = [gpu(f"{size // MIB}MiB"), HOST]
    r = fit_params(moe, devices, Settings(n_ctx=4096), n_ctx_auto=False)
    assert r.status == "success" and r.n_gpu_layers == moe.n_layer + 1
    assert r.overrides and all(b == "CPU" for _p, b in r.overrides)
    kept = [int(p.split("\\.")[1]) for p, _b in r.overrides]
    # fit.cpp set_ngl_tensor_split_tbo: a device's full layers come first, then its
    # dense-only ones (the pattern of the output's index matches no tensor)
    assert kept == list(range(kept[0], moe.n_layer + 1)) and kept[0] > 0
    # the first dense-only layer keeps part of its FFN when that still fits
    # (fit.cpp "try to fit at least part of one more layer"), the rest whole
    first = {overflow_pattern(kept[0], f) for f in ("MOE", "UP", "GATE", "ATTN")}
    assert r.overrides[0][0] in first
    assert all(
        p == overflow_pattern(il, "MOE")
        for (p, _b), il in zip(r.overrides[1:], kept[1:], strict=True)
    )
    assert f'-ot "{r.overrides[0][0]}=CPU' in r.fit_args
    chosen = r.settings(Settings())
    assert chosen.layer_overflow == r.overflow and chosen.n_cpu_moe == 0
    assert _gpu_total(moe, devices, r.settings(Settings(n_ctx=4096)))[0] <= size - GIB


def test_moe_on_two_devices_brings_experts_back_front_to_back(moe) -> None:  # type: ignore[no-untyped-def]
    """fit.cpp step 4 over several devices: the dense-only layers become full
    layers on the first device, and its first dense-only layer overflows what it
    cannot hold to the next device's buffer type, not to the CPU."""
    everything = _gpu_total(moe, [gpu("64GiB"), HOST], Settings(n_ctx=4096))[0]
    size = GIB + everything // 2  # the dense part fits twice over, not every expert
    devices = [gpu(f"{size // MIB}MiB", 0), gpu(f"{size // MIB}MiB", 1), HOST]
    r = fit_params(moe, devices, Settings(n_ctx=4096), n_ctx_auto=False)
    assert r.status == "success" and r.n_gpu_layers == moe.n_layer + 1
    first, *rest = r.overflow
    # device 0's layers are full but its last, whose FFN partly goes to device 1
    assert first[0] == r.tensor_split[0] - 1 and first[1] != "MOE" and first[2] == "CUDA1"
    assert f"={devices[1].buffer_name}," in r.fit_args
    # device 1: full layers first, then its dense-only ones, experts on the CPU
    assert rest and all(b == "CPU" for _il, _f, b in rest)
    assert [il for il, _f, _b in rest] == list(range(rest[0][0], moe.n_layer + 1))
    assert rest[0][0] > r.tensor_split[0]
    chosen = plan(moe, devices, r.settings(Settings(n_ctx=4096)))
    assert all(d.total_bytes < size - GIB for d in chosen.gpus)
    assert chosen.pipeline_copies == 1  # tensor overrides turn pipeline parallelism off


def test_layer_overflow_moves_exactly_the_tensors_its_pattern_matches(moe) -> None:  # type: ignore[no-untyped-def]
    import re

    devices = [gpu("8GiB", 0), gpu("8GiB", 1), HOST]
    base = Settings(n_ctx=4096, n_gpu_layers=-1, tensor_split=(1.0, 1.0))
    before = plan(moe, devices, base)
    for fraction in ("ATTN", "UP", "GATE", "MOE"):
        pattern = re.compile(overflow_pattern(2, fraction))
        moved = sum((t.nbytes + 31) // 32 * 32 for t in moe.tensors if pattern.search(t.name))
        assert moved > 0
        after = plan(moe, devices, base.with_(layer_overflow=((2, fraction, "CUDA1"),)))
        assert before.gpus[0].weights_bytes - after.gpus[0].weights_bytes == moved
        assert after.gpus[1].weights_bytes - before.gpus[1].weights_bytes == moved
    # the experts of layer 0 to the CPU: what --n-cpu-moe 1 does
    to_cpu = plan(moe, devices, base.with_(layer_overflow=((0, "MOE", "CPU"),)))
    first_one = plan(moe, devices, base.with_(n_cpu_moe=1))
    assert [d.weights_bytes for d in to_cpu.devices] == [d.weights_bytes for d in first_one.devices]


def test_ngl_auto_plans_the_fits_choice(dense, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    devices = [gpu("900MiB"), HOST]
    p = plan(dense, devices, Settings(n_ctx=4096, n_gpu_layers=NGL_AUTO))
    assert p.fit is not None and p.fit.status == "success"
    assert p.n_gpu_layers == p.fit.n_gpu_layers and p.fits
    cannot = plan(dense, [gpu("64MiB"), HOST], Settings(n_ctx=4096, n_gpu_layers=NGL_AUTO))
    assert cannot.fit is not None
    assert cannot.n_gpu_layers < dense.n_layer + 1 or cannot.fit.status == "failure"


def test_fit_target_keeps_a_margin_per_device(dense) -> None:  # type: ignore[no-untyped-def]
    """--fit-target MiB0,MiB1 (llama.cpp's flag): a margin per device, the last for the rest."""
    from llmtune.cli import _fit_parser
    from llmtune.fit.options import settings_from_namespace

    args = _fit_parser().parse_args(["m.gguf", "--fit-target", "512,2048"])
    s = settings_from_namespace(args)
    assert s.device_margins == (512 * MIB, 2048 * MIB)
    assert (s.margin_of(0), s.margin_of(1), s.margin_of(5)) == (512 * MIB, 2048 * MIB, 2048 * MIB)
    devices = [gpu("1536MiB", 0), gpu("1536MiB", 1), HOST]
    p = plan(dense, devices, s.with_(n_ctx=4096))
    assert [d.margin_bytes for d in p.gpus] == [512 * MIB, 2048 * MIB]
    # the second device's target is below zero: the fit leaves it empty, the first takes layers
    assert p.fit is not None and p.fit.tensor_split[1] == 0 and p.fit.tensor_split[0] > 0


def test_fit_ctx_is_where_an_unset_context_stops_shrinking(dense) -> None:  # type: ignore[no-untyped-def]
    """--fit-ctx (llama.cpp's flag): an unset context shrinks no further than it."""
    devices = [gpu("1536MiB"), HOST]
    down_to_4096 = plan(dense, devices, Settings(n_ctx=0))
    down_to_8192 = plan(dense, devices, Settings(n_ctx=0, fit_ctx=8192))
    assert down_to_4096.fit is not None and down_to_8192.fit is not None
    assert down_to_4096.n_ctx == 4096  # the card is small: the least context, then layers move
    assert down_to_8192.n_ctx == 8192
    assert down_to_8192.n_gpu_layers <= down_to_4096.n_gpu_layers
