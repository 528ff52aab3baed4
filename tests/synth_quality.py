"""A small llama with random F16 weights and the demo model's tokenizer, for ``llmtune quality``.

tests/synth.py's models are sparse holes of zeros: every quantization of zero
is exact, so every file type would measure a KL divergence of 0. These weights
are random normal values instead, the output projection scaled up so that the
next-token distributions are peaked as a trained model's are (a near-uniform
distribution hides the quantization noise). The demo's BPE tokenizer (copied
from its header with the gguf package) lets llama-perplexity read plain prose.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGUFReader, GGUFValueType, GGUFWriter


def build_random_llama(
    path: Path,
    tokenizer_from: Path,
    *,
    n_layer: int = 4,
    n_embd: int = 256,
    n_ff: int = 512,
    n_head: int = 4,
    n_head_kv: int = 2,
    seed: int = 19,
) -> Path:
    reader = GGUFReader(tokenizer_from)
    rng = np.random.default_rng(seed)
    n_vocab = len(reader.fields["tokenizer.ggml.tokens"].data)
    head_dim = n_embd // n_head
    writer = GGUFWriter(path, "llama")
    writer.add_name("synthetic random llama")
    writer.add_file_type(1)  # MOSTLY_F16
    for key, value in (
        ("block_count", n_layer),
        ("context_length", 2048),
        ("embedding_length", n_embd),
        ("feed_forward_length", n_ff),
        ("attention.head_count", n_head),
        ("attention.head_count_kv", n_head_kv),
        ("rope.dimension_count", head_dim),
    ):
        writer.add_uint32(f"llama.{key}", value)
    writer.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-5)
    writer.add_float32("llama.rope.freq_base", 10000.0)
    for key, field in reader.fields.items():
        if key.startswith("tokenizer."):
            _copy(writer, key, field)

    def mat(name: str, rows: int, cols: int, scale: float = 0.05) -> None:
        values = rng.standard_normal((rows, cols), dtype=np.float32) * scale
        writer.add_tensor(name, values.astype(np.float16))

    def vec(name: str, n: int) -> None:
        writer.add_tensor(name, (1.0 + 0.05 * rng.standard_normal(n)).astype(np.float32))

    mat("token_embd.weight", n_vocab, n_embd, 1.0)
    for i in range(n_layer):
        vec(f"blk.{i}.attn_norm.weight", n_embd)
        mat(f"blk.{i}.attn_q.weight", n_embd, n_embd)
        mat(f"blk.{i}.attn_k.weight", n_head_kv * head_dim, n_embd)
        mat(f"blk.{i}.attn_v.weight", n_head_kv * head_dim, n_embd)
        mat(f"blk.{i}.attn_output.weight", n_embd, n_embd)
        vec(f"blk.{i}.ffn_norm.weight", n_embd)
        mat(f"blk.{i}.ffn_gate.weight", n_ff, n_embd)
        mat(f"blk.{i}.ffn_up.weight", n_ff, n_embd)
        mat(f"blk.{i}.ffn_down.weight", n_embd, n_ff)
    vec("output_norm.weight", n_embd)
    # Logits with a spread of a few units: peaked distributions, as a trained model's.
    mat("output.weight", n_vocab, n_embd, 0.25)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _copy(writer: GGUFWriter, key: str, field: Any) -> None:
    main = field.types[0]
    if main == GGUFValueType.ARRAY:
        writer.add_key_value(key, list(field.contents()), main, field.types[-1])
    else:
        writer.add_key_value(key, field.contents(), main)
