"""How fast llmtune reads a GGUF header, against gguf.GGUFReader in the same run.

Run by ``make bench`` (``.venv/bin/python tests/bench/inspect_speed.py``). Two
files: (a) the demo model, (b) a synthetic llama-3-8B-shaped header with a
128,256-token vocabulary and 280,000 merges, written with ``gguf.GGUFWriter``
into a temporary directory (tensor data is a sparse hole, so it takes no disk).
Each reader runs a few times after one untimed warm-up; the table shows medians.

Targets (issue 2): llmtune at least 100x faster than GGUFReader on both files,
and under 50 ms on (b). A missed target prints MISS; the script only fails when
something crashes.
"""

from __future__ import annotations

import datetime
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from importlib.metadata import version
from pathlib import Path
from typing import Any

import gguf
from gguf import GGMLQuantizationType, GGUFValueType

from llmtune.model import read_spec
from llmtune.model.demo import fetch_demo_model

TESTS_DIR = Path(__file__).resolve().parent.parent

LLMTUNE_REPEATS = 9
GGUF_READER_REPEATS = 3
TARGET_RATIO = 100.0
TARGET_SYNTHETIC_MS = 50.0

# Llama 3 8B Instruct's tokenizer and shape.
N_VOCAB = 128_256
N_MERGES = 280_000
N_SPECIAL = 256  # <|begin_of_text|> ... <|reserved_special_token_247|>
N_LAYER = 32
N_EMBD = 4096
N_FF = 14_336
N_HEAD = 32
N_HEAD_KV = 8


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def byte_level_tokens(rng: random.Random) -> list[str]:
    """Strings shaped like a GPT-2 byte-level BPE vocabulary (Ġ for a space)."""
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.,'-"
    tokens = [chr(0x100 + b) if b < 0x21 else chr(b) for b in range(256)]
    seen = set(tokens)
    while len(tokens) < N_VOCAB - N_SPECIAL:
        body = "".join(rng.choices(alphabet, k=rng.randint(2, 11)))
        token = ("Ġ" + body) if rng.random() < 0.6 else body
        if token not in seen:
            seen.add(token)
            tokens.append(token)
    tokens += ["<|begin_of_text|>", "<|end_of_text|>"]
    tokens += [f"<|reserved_special_token_{i}|>" for i in range(N_SPECIAL - 2)]
    return tokens


def write_llama3_header(path: Path) -> None:
    if str(TESTS_DIR) not in sys.path:
        sys.path.insert(0, str(TESTS_DIR))
    from synth import Tensor, write_gguf

    rng = random.Random(3)
    tokens = byte_level_tokens(rng)
    normal = tokens[: N_VOCAB - N_SPECIAL]
    merges = [f"{rng.choice(normal)} {rng.choice(normal)}" for _ in range(N_MERGES)]
    token_types = [1] * (N_VOCAB - N_SPECIAL) + [3] * N_SPECIAL
    scores = [0.0] * N_VOCAB
    template = (
        "{% set loop_messages = messages %}{% for message in loop_messages %}"
        "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
        " + message['content'] | trim + '<|eot_id|>' %}{{ content }}{% endfor %}"
    )
    kv: list[tuple[str, Any]] = [
        ("general.name", "Meta Llama 3 8B Instruct (synthetic header)"),
        ("general.file_type", 15),  # Q4_K_M
        ("general.quantization_version", 2),
        ("llama.block_count", N_LAYER),
        ("llama.context_length", 8192),
        ("llama.embedding_length", N_EMBD),
        ("llama.feed_forward_length", N_FF),
        ("llama.attention.head_count", N_HEAD),
        ("llama.attention.head_count_kv", N_HEAD_KV),
        ("llama.rope.freq_base", 500000.0),
        ("llama.attention.layer_norm_rms_epsilon", 1e-5),
        ("llama.vocab_size", N_VOCAB),
        ("llama.rope.dimension_count", N_EMBD // N_HEAD),
        ("tokenizer.ggml.model", "gpt2"),
        ("tokenizer.ggml.pre", "llama-bpe"),
        ("tokenizer.ggml.tokens", tokens),
        ("tokenizer.ggml.token_type", (token_types, GGUFValueType.ARRAY, GGUFValueType.INT32)),
        ("tokenizer.ggml.scores", (scores, GGUFValueType.ARRAY, GGUFValueType.FLOAT32)),
        ("tokenizer.ggml.merges", merges),
        ("tokenizer.ggml.bos_token_id", 128_000),
        ("tokenizer.ggml.eos_token_id", 128_009),
        ("tokenizer.chat_template", template),
    ]
    q4k, q6k, f32 = GGMLQuantizationType.Q4_K, GGMLQuantizationType.Q6_K, GGMLQuantizationType.F32
    kv_dim = N_EMBD // N_HEAD * N_HEAD_KV
    tensors = [Tensor("rope_freqs.weight", (N_EMBD // N_HEAD // 2,), f32)]
    tensors.append(Tensor("token_embd.weight", (N_EMBD, N_VOCAB), q4k))
    for i in range(N_LAYER):
        tensors += [
            Tensor(f"blk.{i}.attn_norm.weight", (N_EMBD,), f32),
            Tensor(f"blk.{i}.attn_q.weight", (N_EMBD, N_EMBD), q4k),
            Tensor(f"blk.{i}.attn_k.weight", (N_EMBD, kv_dim), q4k),
            Tensor(f"blk.{i}.attn_v.weight", (N_EMBD, kv_dim), q6k),
            Tensor(f"blk.{i}.attn_output.weight", (N_EMBD, N_EMBD), q4k),
            Tensor(f"blk.{i}.ffn_norm.weight", (N_EMBD,), f32),
            Tensor(f"blk.{i}.ffn_gate.weight", (N_EMBD, N_FF), q4k),
            Tensor(f"blk.{i}.ffn_up.weight", (N_EMBD, N_FF), q4k),
            Tensor(f"blk.{i}.ffn_down.weight", (N_FF, N_EMBD), q6k),
        ]
    tensors += [
        Tensor("output_norm.weight", (N_EMBD,), f32),
        Tensor("output.weight", (N_EMBD, N_VOCAB), q6k),
    ]
    write_gguf(path, kv, tensors)


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up: page cache, imports, first-call costs
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def mark(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def main() -> int:
    gguf_version = version("gguf")
    print("llmtune inspect_speed: llmtune.model.read_spec vs gguf.GGUFReader")
    print(f"date:     {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(f"machine:  {cpu_model()}, {os.cpu_count()} logical cores, {platform.machine()}")
    print(f"python:   {platform.python_version()} ({sys.executable})")
    print(f"baseline: gguf.GGUFReader from gguf=={gguf_version}")
    print(
        f"method:   median of {LLMTUNE_REPEATS} runs (llmtune) and {GGUF_READER_REPEATS} runs "
        "(GGUFReader), each after one untimed warm-up\n"
    )

    demo = fetch_demo_model()
    with tempfile.TemporaryDirectory(prefix="llmtune-bench-") as tmp:
        synthetic = Path(tmp) / "llama3-8b-header.gguf"
        start = time.perf_counter()
        write_llama3_header(synthetic)
        spec = read_spec(synthetic)
        print(
            f"(b) written in {time.perf_counter() - start:.1f} s: {spec.header_bytes:,} header "
            f"bytes, {spec.n_vocab:,} tokens, {len(spec.tensors)} tensors, "
            f"{spec.file_bytes / 2**30:.1f} GiB apparent (sparse)\n"
        )
        cases = [
            ("(a) demo SmolLM2-135M Q4_1", demo, None),
            ("(b) llama-3 8B header, 128k vocab", synthetic, TARGET_SYNTHETIC_MS),
        ]
        rows = []
        for label, path, ms_target in cases:
            ours = median_ms(partial(read_spec, path), LLMTUNE_REPEATS)
            theirs = median_ms(partial(gguf.GGUFReader, path), GGUF_READER_REPEATS)
            rows.append((label, ours, theirs, ms_target))

    lines = [f"{'file':<36}{'llmtune ms':>11}{'GGUFReader ms':>15}{'ratio':>9}  targets"]
    for label, ours, theirs, ms_target in rows:
        ratio = theirs / ours if ours > 0 else float("inf")
        targets = f"ratio >= {TARGET_RATIO:.0f}x {mark(ratio >= TARGET_RATIO)}"
        if ms_target is not None:
            targets += f", < {ms_target:.0f} ms {mark(ours < ms_target)}"
        lines.append(f"{label:<36}{ours:>11.2f}{theirs:>15.1f}{ratio:>8.0f}x  {targets}")
    lines.insert(1, "-" * max(len(line) for line in lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
