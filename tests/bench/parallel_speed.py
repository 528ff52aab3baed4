"""Predicted against measured generation with N parallel sequences, on this CPU.

Baseline: llama.cpp itself (llama-cpp-python 0.3.36's C API: one context with
``n_seq_max`` N, each decoding step a batch of one token for each of N
sequences, as llama-server's slots and llama-batched-bench do), on a synthetic
sparse Llama-shaped model (the kernel hands llama.cpp zero pages, so every step
still reads every weight) and on the demo model. Printed per N: llmtune's
per-stream and aggregate prediction (``fit --parallel N``), llama.cpp's, and
their ratio. Batched decoding reads the weights once per step for every
stream, so the aggregate should grow with N while each stream slows a little.

Target (llmtune's own): the aggregate speed at every N within 25% of
llama.cpp's, which is what a user running N slots sees. On the CPU the step of N
streams comes from llama.cpp's own kernels timed at N columns
(hardware.cpu_kernels): the repacked Q4_0 kernel takes four columns per pass, so
four streams step as fast as one. The gain, aggregate at N over one stream's
speed, is printed beside it; reported, not asserted.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gguf import GGMLQuantizationType  # noqa: E402

from llmtune.fit.plan import plan  # noqa: E402
from llmtune.fit.settings import Settings  # noqa: E402
from llmtune.hardware.host import host_device_measured, physical_cores  # noqa: E402
from llmtune.model import ModelSpec, read_spec  # noqa: E402
from llmtune.model.demo import fetch_demo_model  # noqa: E402
from synth import llama_like  # noqa: E402

CTX_PER_SEQ = 256
PROMPT = 8  # tokens per sequence before timing
TARGET = 0.25
_QUIET: object = None


def _quiet(_level: int, _text: bytes, _data: ctypes.c_void_p) -> None:
    return None


def measure(path: Path, n_seq: int, steps: int) -> float:
    """llama.cpp's aggregate tokens/s decoding one token per sequence per step."""
    import llama_cpp as lc

    global _QUIET
    if _QUIET is None:
        _QUIET = lc.llama_log_callback(_quiet)  # kept alive: llama.cpp holds the pointer
    lc.llama_log_set(_QUIET, ctypes.c_void_p(0))
    lc.llama_backend_init()
    mparams = lc.llama_model_default_params()
    mparams.n_gpu_layers = 0
    model = lc.llama_model_load_from_file(str(path).encode(), mparams)
    cparams = lc.llama_context_default_params()
    cparams.n_ctx = CTX_PER_SEQ * n_seq
    cparams.n_batch = cparams.n_ubatch = max(512, n_seq * PROMPT)
    cparams.n_seq_max = n_seq
    cparams.n_threads = cparams.n_threads_batch = physical_cores()
    cparams.flash_attn_type = 1  # on, as fit's default (auto) resolves on the CPU
    ctx = lc.llama_init_from_model(model, cparams)
    batch = lc.llama_batch_init(max(n_seq * PROMPT, n_seq), 0, n_seq)
    try:

        def decode(tokens_per_seq: int, start: int) -> None:
            batch.n_tokens = n_seq * tokens_per_seq
            i = 0
            for seq in range(n_seq):
                for k in range(tokens_per_seq):
                    batch.token[i] = 300 + (seq * 7 + start + k) % 1000
                    batch.pos[i] = start + k
                    batch.n_seq_id[i] = 1
                    batch.seq_id[i][0] = seq
                    batch.logits[i] = k == tokens_per_seq - 1
                    i += 1
            if lc.llama_decode(ctx, batch) != 0:
                raise RuntimeError("llama_decode failed")

        decode(PROMPT, 0)
        decode(1, PROMPT)  # warm-up step
        t0 = time.perf_counter()
        for step in range(steps):
            decode(1, PROMPT + 1 + step)
        elapsed = time.perf_counter() - t0
    finally:
        lc.llama_batch_free(batch)
        lc.llama_free(ctx)
        lc.llama_model_free(model)
    return n_seq * steps / elapsed


def predict(spec: ModelSpec, n_seq: int) -> tuple[float, float]:
    s = Settings(n_ctx=CTX_PER_SEQ * n_seq, n_parallel=n_seq, n_gpu_layers=0, flash_attn="on")
    p = plan(spec, [host_device_measured()], s).predicted
    return p.tg_stream_tokens_per_s, p.tg_aggregate_tokens_per_s


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--streams", default="1,2,4,8")
    ap.add_argument("--steps", type=int, default=24)
    args = ap.parse_args()
    host = host_device_measured(probe=True)
    print(f"machine: {os.cpu_count()} cores, host bandwidth {host.bandwidth_gbps:.1f} GB/s "
          f"(probe); {physical_cores()} threads, {args.steps} steps per N")  # fmt: skip
    worst = worst_gain = 0.0
    with tempfile.TemporaryDirectory(dir=os.environ.get("LLMTUNE_BENCH_DIR")) as tmp:
        (synthetic,) = llama_like(
            Path(tmp) / "qwen2-1.5b-like.Q4_0.gguf", n_layer=28, n_embd=1536, n_head=12,
            n_head_kv=2, n_ff=8960, n_vocab=32000, weight_type=GGMLQuantizationType.Q4_0,
            output_type=GGMLQuantizationType.Q6_K, file_type=2, byte_tokens=True,
        )  # fmt: skip
        for label, path in (("demo 135M", fetch_demo_model()), ("1.4B Q4_0", synthetic)):
            spec = read_spec(path)
            alone = predict(spec, 1)[1], measure(path, 1, args.steps)
            for n in (int(x) for x in args.streams.split(",")):
                stream, aggregate = predict(spec, n)
                measured = measure(path, n, args.steps) if n > 1 else alone[1]
                gain, measured_gain = aggregate / alone[0], measured / alone[1]
                worst = max(worst, abs(measured / aggregate - 1))
                worst_gain = max(worst_gain, abs(gain / measured_gain - 1))
                print(f"  {label:<10} N={n:<2} predicted {stream:7.1f} per stream, "
                      f"{aggregate:7.1f} in all (x{gain:.2f}); measured {measured / n:7.1f} "
                      f"per stream, {measured:7.1f} in all (x{measured_gain:.2f}); "
                      f"measured/predicted {measured / aggregate:.2f}", flush=True)  # fmt: skip
    verdict = "PASS" if worst <= TARGET else "MISS"
    print(f"parallel generation: worst aggregate off by {worst:.0%} (target {TARGET:.0%}) "
          f"{verdict}; worst gain over one stream off by {worst_gain:.0%}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
