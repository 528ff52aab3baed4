"""The llama.cpp worker on the demo model: load, stream tokens, stop, compare with the plan.

Real llama.cpp in a child process started by ``Supervisor``; each test owns
its worker and shuts it down.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from llmtune.engine.compare import compare
from llmtune.engine.config import RunConfig
from llmtune.engine.protocol import (
    Event,
    Exited,
    Failed,
    Loaded,
    Progress,
    Started,
    Stats,
    Token,
)
from llmtune.engine.supervisor import Supervisor
from llmtune.fit.plan import plan
from llmtune.fit.settings import Settings
from llmtune.hardware.host import host_device
from llmtune.model import read_spec
from worker_events import until as wait_for_events

TIMEOUT_S = 30.0
PROMPT = "<|im_start|>user\nName three colours.<|im_end|>\n<|im_start|>assistant\n"


def until(sup: Supervisor, *kinds: type) -> list[Event]:
    return wait_for_events(sup, *kinds, timeout_s=TIMEOUT_S)


def config(demo_model: Path, **changes: object) -> RunConfig:
    return RunConfig.of(demo_model, **{"n_ctx": 2048, "threads": 2, **changes})


def test_load_generate_streams_tokens_and_stats(sup: Supervisor, demo_model: Path) -> None:
    sup.start()
    # --cpu-moe on a dense model: the override array reaches llama.cpp and matches nothing.
    sup.load(config(demo_model, n_cpu_moe=-1))
    events = until(sup, Loaded, Failed)
    assert isinstance(events[0], Started)
    loaded = events[-1]
    assert isinstance(loaded, Loaded), events[-1]
    progress = [e.fraction for e in events if isinstance(e, Progress)]
    assert progress and progress[-1] == 1.0 and progress == sorted(progress)
    assert loaded.load_s > 0 and loaded.n_ctx == 2048
    kinds = {b.kind for b in loaded.buffers}
    assert {"model", "kv", "compute", "output"} <= kinds
    assert set(loaded.by_device()) == {"CPU"}
    assert any("experts" in note for note in loaded.notes), loaded.notes

    sup.generate(PROMPT, max_tokens=8, ignore_eos=True)
    events = until(sup, Stats, Failed)
    tokens = [e for e in events if isinstance(e, Token)]
    stats = events[-1]
    assert isinstance(stats, Stats), stats
    assert len(tokens) == stats.n_gen == 8
    assert stats.finish == "length"
    assert stats.n_prompt > 5
    assert stats.pp_tokens_per_s > 0 and stats.tg_tokens_per_s > 0
    times = [t.t for t in tokens]
    assert times == sorted(times) and times[-1] > times[0]
    assert "".join(t.text for t in tokens).strip()

    sup.shutdown()
    exited = sup.next_event(TIMEOUT_S)
    assert isinstance(exited, Exited) and exited.returncode == 0


def test_stop_ends_generation_promptly(sup: Supervisor, demo_model: Path) -> None:
    sup.start()
    sup.load(config(demo_model))
    assert isinstance(until(sup, Loaded, Failed)[-1], Loaded)
    sup.generate(PROMPT, max_tokens=1500, ignore_eos=True)
    before = [e for e in until(sup, Token) if isinstance(e, Token)]
    while len(before) < 5:
        before += [e for e in until(sup, Token) if isinstance(e, Token)]
    assert sup.stop()
    after = until(sup, Stats, Failed)
    stats = after[-1]
    assert isinstance(stats, Stats), stats
    assert stats.finish == "stop"
    late = [e for e in after if isinstance(e, Token)]
    # Tokens already on their way plus at most the one being decoded.
    assert len(late) <= 3, late
    assert stats.n_gen == len(before) + len(late)

    # The worker keeps its model and generates again.
    sup.generate("Hello", max_tokens=3, ignore_eos=True)
    again = until(sup, Stats, Failed)[-1]
    assert isinstance(again, Stats) and again.n_gen == 3 and again.finish == "length"


def test_stop_cancels_a_long_prompt_decode(sup: Supervisor, demo_model: Path) -> None:
    sup.start()
    sup.load(config(demo_model, n_ctx=4096, n_ubatch=256))
    assert isinstance(until(sup, Loaded, Failed)[-1], Loaded)
    sup.generate("the cat sat on the mat " * 500, max_tokens=50)  # ~3000 tokens: 12 ubatches
    sup.stop()
    events = until(sup, Stats, Failed)
    stats = events[-1]
    assert isinstance(stats, Stats), stats
    assert stats.finish == "stop" and stats.n_gen == 0
    assert not any(isinstance(e, Token) for e in events)


def test_compare_weights_with_the_plan(sup: Supervisor, demo_model: Path) -> None:
    settings = Settings(n_ctx=2048, threads=2)
    sup.start()
    sup.load(RunConfig.from_settings(demo_model, settings))
    loaded = until(sup, Loaded, Failed)[-1]
    assert isinstance(loaded, Loaded), loaded
    predicted = plan(read_spec(demo_model), [host_device()], settings)
    result = compare(loaded, predicted)
    assert result.devices() == ("CPU",)
    weights = result.row("CPU", "weights")
    assert weights.measured_bytes > 90 << 20
    assert weights.error_pct is not None and abs(weights.error_pct) <= 0.5, weights
    kv = result.row("CPU", "kv")
    assert kv.error_pct is not None and abs(kv.error_pct) <= 1.0, kv
    output = result.row("CPU", "output")
    assert abs(output.error_bytes) <= output.precision_bytes, output


def test_from_settings_matches_the_plan_settings(demo_model: Path) -> None:
    s = Settings(
        n_gpu_layers=7,
        n_ctx=8192,
        n_batch=1024,
        n_ubatch=256,
        n_parallel=4,
        kv_unified=True,
        cache_type_k="q8_0",
        cache_type_v="q8_0",
        flash_attn="on",
        swa_full=True,
        no_kv_offload=True,
        split_mode="row",
        main_gpu=1,
        tensor_split=(3.0, 1.0),
        n_cpu_moe=5,
        use_mmap=False,
        threads=3,
    )
    c = RunConfig.from_settings(demo_model, s)
    assert c.settings == s
    # What the worker sets in llama_model_params and llama_context_params.
    model, context = c.model_params(), c.context_params()
    assert (model["n_gpu_layers"], context["n_ctx"], context["n_batch"]) == (7, 8192, 1024)
    assert (context["n_ubatch"], context["n_seq_max"]) == (256, 4)
    assert (context["type_k"], context["type_v"], context["flash_attn_type"]) == (8, 8, 1)
    assert context["kv_unified"] and context["swa_full"] and not context["offload_kqv"]
    assert (model["split_mode"], model["main_gpu"]) == (2, 1)  # LLAMA_SPLIT_MODE_ROW
    assert (context["n_threads"], context["n_threads_batch"], model["load_mode"]) == (3, 3, 0)
    # llama.cpp 0.3.36 has no --no-mmap: mmap off is "-lm none" (common/arg.cpp --load-mode).
    args = c.command_line()
    assert "--n-cpu-moe" in args and args[args.index("-lm") + 1] == "none"
    assert "--no-mmap" not in args
    c.validate()


def test_moe_experts_stay_on_the_cpu(tmp_path: Path) -> None:
    """--n-cpu-moe 2 reaches llama.cpp as tensor_buft_overrides: it logs each override."""
    from synth_arch import FAMILIES

    path = tmp_path / "moe.gguf"
    FAMILIES["qwen3moe"](str(path), n_layer=4, n_embd=256, n_vocab=1000)
    sup = Supervisor(log_lines=5000)
    try:
        sup.start()
        sup.load(RunConfig.of(str(path), n_ctx=256, threads=1, n_cpu_moe=2))
        assert isinstance(until(sup, Loaded, Failed)[-1], Loaded)
        sup.shutdown()  # joins the log reader: every line is in
        overridden = [
            line for line in sup.log_tail(5000) if "buffer type overridden to CPU" in line
        ]
    finally:
        sup.shutdown()
    layers = {line.split("blk.")[1].split(".")[0] for line in overridden}
    assert layers == {"0", "1"}, overridden


def test_the_fits_layer_overflow_reaches_llama_cpp(tmp_path: Path) -> None:
    """Settings.layer_overflow (llama.cpp's fit's -ot) reaches llama.cpp as
    tensor_buft_overrides, buffer types found by name; an unknown name is refused."""
    from synth_arch import FAMILIES

    path = tmp_path / "moe.gguf"
    FAMILIES["qwen3moe"](str(path), n_layer=4, n_embd=256, n_vocab=1000)
    overflow = ((1, "ATTN", "CPU"), (2, "MOE", "CPU"))
    sup = Supervisor(log_lines=5000)
    try:
        sup.start()
        sup.load(RunConfig.of(str(path), n_ctx=256, threads=1, layer_overflow=overflow))
        assert isinstance(until(sup, Loaded, Failed)[-1], Loaded)
        sup.load(
            RunConfig.of(str(path), n_ctx=256, threads=1, layer_overflow=((1, "UP", "NOPE0"),))
        )
        refused = until(sup, Loaded, Failed)[-1]
        sup.shutdown()  # joins the log reader: every line is in
        overridden = [
            line.split("tensor ")[1].split(" ")[0]
            for line in sup.log_tail(5000)
            if "buffer type overridden to CPU" in line
        ]
    finally:
        sup.shutdown()
    assert isinstance(refused, Failed) and "NOPE0" in refused.reason
    # ATTN: every FFN tensor of layer 1 (the router too); MOE: layer 2's experts only
    assert {t for t in overridden if t.startswith("blk.1.")} == {
        "blk.1.ffn_gate_inp.weight", "blk.1.ffn_gate_exps.weight",
        "blk.1.ffn_up_exps.weight", "blk.1.ffn_down_exps.weight",
    }  # fmt: skip
    assert {t for t in overridden if t.startswith("blk.2.")} == {
        "blk.2.ffn_gate_exps.weight", "blk.2.ffn_up_exps.weight", "blk.2.ffn_down_exps.weight",
    }  # fmt: skip
    assert not [t for t in overridden if t.startswith(("blk.0.", "blk.3."))]


def test_unload_frees_the_model_and_the_worker_stays(sup: Supervisor, demo_model: Path) -> None:
    from llmtune.engine.protocol import Unloaded
    from llmtune.hardware.detect import process_rss_bytes

    pid = sup.start()
    sup.load(config(demo_model, use_mmap=False))  # weights in the worker's own memory
    assert isinstance(until(sup, Loaded, Failed)[-1], Loaded)
    loaded_rss = process_rss_bytes(pid)
    sup.unload()
    assert isinstance(until(sup, Unloaded, Failed)[-1], Unloaded)
    unloaded_rss = process_rss_bytes(pid)
    assert loaded_rss is not None and unloaded_rss is not None
    # the 92 MiB of weights and the 45 MiB KV cache are given back
    assert loaded_rss - unloaded_rss > 100 << 20, (loaded_rss, unloaded_rss)

    sup.generate("Hello", max_tokens=3)
    failed = until(sup, Failed, Stats)[-1]
    assert isinstance(failed, Failed) and not failed.fatal and "no model" in failed.reason
    assert sup.alive and sup.pid == pid
    sup.load(config(demo_model))
    assert isinstance(until(sup, Loaded, Failed)[-1], Loaded)
    sup.generate("Hello", max_tokens=3, ignore_eos=True)
    stats = until(sup, Stats, Failed)[-1]
    assert isinstance(stats, Stats) and stats.n_gen == 3


@pytest.mark.parametrize(
    "settings",
    [
        Settings(n_ctx=3000, n_batch=1024, n_ubatch=256, n_parallel=2, kv_unified=True,
                 cache_type_k="q8_0", cache_type_v="q4_0", flash_attn="on", threads=1,
                 use_mmap=False),
        Settings(n_ctx=1024, n_batch=64, n_ubatch=32, n_parallel=4, cache_type_k="f32",
                 cache_type_v="f16", flash_attn="off", threads=2),
    ],
    ids=["quantized-unified", "four-streams-no-fa"],
)  # fmt: skip
def test_every_setting_reaches_llama_cpp(
    sup: Supervisor, demo_model: Path, settings: Settings
) -> None:
    """The worker passes each setting explicitly: llama.cpp's own log says what it built,
    and the plan of the same settings predicts the same context."""
    sup.start()
    sup.load(RunConfig.from_settings(demo_model, settings))
    loaded = until(sup, Loaded, Failed)[-1]
    assert isinstance(loaded, Loaded), loaded
    log = loaded.log
    predicted = plan(read_spec(demo_model), [host_device()], settings)
    assert (log.context.n_ctx, log.context.n_ctx_seq) == (predicted.n_ctx, predicted.n_ctx_seq)
    assert (log.context.n_batch, log.context.n_ubatch) == (settings.n_batch, settings.n_ubatch)
    assert log.context.n_seq_max == loaded.n_seq_max == settings.n_parallel
    assert log.context.kv_unified == settings.kv_unified
    assert log.flash_attn_resolved == (settings.flash_attn == "on")
    assert loaded.n_threads == settings.threads
    assert log.load_mode == ("mmap" if settings.use_mmap else "none")
    (cache,) = log.kv_caches
    assert (cache.type_k, cache.type_v) == (settings.cache_type_k, settings.cache_type_v)
    assert cache.cells * cache.n_stream == predicted.kv_cells
    kv = compare(loaded, predicted).row("CPU", "kv")
    assert abs(kv.error_bytes) <= kv.precision_bytes, kv
