"""The tuner's decisions that need no load: which KV cache types a context needs,
how the layer count is confirmed after failed loads, the objective, the threads."""

from __future__ import annotations

from pathlib import Path

import pytest
from gguf import GGMLQuantizationType as Q

from llmtune.engine.tune import (
    Trial,
    TrialBench,
    Tuner,
    TuneSpace,
    confirm_layers,
    score_of,
    thread_candidates,
)
from llmtune.fit.settings import Settings
from llmtune.hardware.host import host_device
from llmtune.hardware.profiles import parse_gpu_spec
from llmtune.model import ModelSpec, read_spec
from synth import llama_like

GIB = 1 << 30


@pytest.fixture(scope="module")
def model_8b(tmp_path_factory: pytest.TempPathFactory) -> ModelSpec:
    """A Llama-3-8B-shaped header at Q4_K (sparse: no data on disk)."""
    path = Path(tmp_path_factory.mktemp("tune")) / "llama8b-Q4_K_M.gguf"
    llama_like(path, n_layer=32, n_embd=4096, n_head=32, n_head_kv=8, n_ff=14336,
               n_vocab=128256, weight_type=Q.Q4_K, embd_type=Q.Q4_K, output_type=Q.Q6_K,
               file_type=15)  # fmt: skip
    return read_spec(path)


def _kv_types(tuner: Tuner, s: Settings) -> list[tuple[str, int]]:
    return [(c.cache_type_k, ngl) for c, ngl in tuner.cache_candidates(s)]


def test_a_short_context_keeps_the_f16_cache(model_8b: ModelSpec) -> None:
    devices = [parse_gpu_spec("12GiB"), host_device(ram_bytes=64 * GIB)]
    s = Settings(n_ctx=4096, threads=4)
    # Everything fits on the GPU with f16: smaller types would only cost quality.
    assert _kv_types(Tuner(model_8b, devices, s), s) == [("f16", 33)]


def test_a_long_context_tries_smaller_cache_types_that_place_more_layers(
    model_8b: ModelSpec,
) -> None:
    devices = [parse_gpu_spec("12GiB"), host_device(ram_bytes=64 * GIB)]
    s = Settings(n_ctx=65536, threads=4)
    found = _kv_types(Tuner(model_8b, devices, s), s)
    kinds = [k for k, _ in found]
    layers = [n for _, n in found]
    assert kinds[0] == "f16" and len(kinds) >= 2 and set(kinds) <= {"f16", "q8_0", "q4_0"}
    assert layers == sorted(layers) and len(set(layers)) == len(layers)  # each adds layers
    for c, _ in Tuner(model_8b, devices, s).cache_candidates(s):
        if c.cache_type_v != "f16":
            assert c.flash_attn == "on"  # llama.cpp needs it for a quantized V cache


def test_a_cpu_without_room_for_f16_gets_a_smaller_cache(model_8b: ModelSpec) -> None:
    s = Settings(n_ctx=131072, threads=4)
    # f16 KV at 128k is 16 GiB; 8-bit is half: 8.5 GiB plus 4.6 GiB of weights fits 16 GiB.
    host = host_device(ram_bytes=16 * GIB)
    assert _kv_types(Tuner(model_8b, [host], s), s) == [("q8_0", 0)]
    fixed = Tuner(model_8b, [host], s, space=TuneSpace(cache_types=()))
    assert fixed.cache_candidates(s) == []  # the user's f16 does not fit: nothing to load


@pytest.mark.parametrize(
    ("most", "limit", "expected_tries"),
    [
        (33, 33, [33]),  # the estimate loads
        (33, 30, [33, 32, 30, 31]),  # down 1, 2, then bisect back up
        (33, 20, [33, 32, 30, 26, 18, 22, 20, 21]),
        (3, -1, [3, 2, 0]),  # nothing loads
    ],
)
def test_layers_step_down_then_bisect(most: int, limit: int, expected_tries: list[int]) -> None:
    tried: list[int] = []

    def loads(n: int) -> bool:
        tried.append(n)
        return n <= limit

    assert confirm_layers(most, loads) == (limit if limit >= 0 else None)
    assert tried == expected_tries


def test_objectives() -> None:
    bench = TrialBench(prompt_tokens=512, gen_tokens=128)
    assert score_of("tg", 50.0, 400.0, bench) == 50.0
    assert score_of("pp", 50.0, 400.0, bench) == 400.0
    # mix: requests per second for a 512-token prompt and 128 generated tokens
    assert score_of("mix", 50.0, 400.0, bench) == pytest.approx(1 / (512 / 400 + 128 / 50))
    assert score_of("mix", 0.0, 400.0, bench) == 0.0


def test_thread_candidates() -> None:
    assert thread_candidates(logical=16, physical=8) == (1, 2, 4, 8, 16)
    assert thread_candidates(logical=12, physical=6) == (1, 2, 4, 6, 8, 12)
    assert thread_candidates(logical=2, physical=2) == (1, 2)
    assert thread_candidates(logical=1, physical=1) == (1,)


class _Scripted(Tuner):
    """The search order on a known speed landscape: trials are scored by ``landscape``
    (by thread count, or by ubatch for prompt speed) instead of being run; the real
    runs are tests/engine/test_tune.py's."""

    def __init__(self, spec: ModelSpec, landscape: dict[int, float], **kw: object) -> None:
        devices = [host_device(ram_bytes=64 * GIB)]
        super().__init__(spec, devices, Settings(n_ctx=4096), **kw)  # type: ignore[arg-type]
        self.landscape = landscape
        self.visited: list[tuple[str, int]] = []

    def run_trial(self, settings: Settings, stage: str, *, again: bool = False) -> Trial | None:  # type: ignore[override]
        resolved = self.plan_for(settings).settings
        if resolved in self._cache and not again:
            return self._cache[resolved]
        value = settings.n_ubatch if self.objective == "pp" else settings.threads
        self.visited.append((stage, value))
        score = self.landscape.get(value, 1.0)
        trial = Trial(len(self.trials) + 1, stage, resolved, "ok", score, score, score)  # type: ignore[arg-type]
        self.trials.append(trial)
        self._cache[resolved] = trial
        return trial


def test_the_climb_walks_down_to_the_fastest_ubatch_and_stops(model_8b: ModelSpec) -> None:
    space = TuneSpace(threads=(4,), flash_attn=("on",), cache_types=("f16",))
    # Prompt speed peaks at ubatch 128 in this landscape; 512 stands for 1024 and 2048,
    # which run a 512-token prompt the same way.
    landscape = {512: 100.0, 256: 110.0, 128: 120.0, 64: 90.0}
    tuner = _Scripted(model_8b, landscape, objective="pp", space=space,
                      bench=TrialBench(prompt_tokens=512))  # fmt: skip
    result = tuner.run()
    assert tuner.visited == [
        ("layers", 512), ("ubatch", 256), ("ubatch", 128), ("ubatch", 64),
        ("confirm", 128), ("confirm", 256),  # the two best, once more
    ]  # fmt: skip
    assert result.best is not None and result.best.settings.n_ubatch == 128
    assert result.best.settings.n_batch == 2048  # batch stays at least the ubatch


def test_the_climb_ignores_gains_within_the_tolerance(model_8b: ModelSpec) -> None:
    space = TuneSpace(threads=(1, 2, 4, 8), flash_attn=("on",), cache_types=("f16",))
    tuner = _Scripted(model_8b, {4: 100.0, 2: 101.0, 8: 101.5}, space=space)
    tuner.base = tuner.base.with_(threads=4)
    result = tuner.run()
    # Both neighbours of 4 were tried; neither beat it by 2%, so the climb stopped there.
    assert tuner.visited[:3] == [("layers", 4), ("threads", 2), ("threads", 8)]
    assert tuner.visited[3:] == [("confirm", 8), ("confirm", 2)]
    assert result.best is not None and result.best.settings.threads == 8  # the best measured
