"""Synthetic GGUF files written by the real ``gguf.GGUFWriter``.

``write_gguf`` writes any metadata and tensor table. Tensor data is left as a
sparse hole (the file is extended with ``truncate``), so a file that claims a
70B model's 40 GB takes no disk and is written in milliseconds; llama.cpp
loads such files with mmap on the CPU and reports its real buffer sizes.
``llama_like`` builds a llama-shaped model with realistic tensor names.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType, GGUFWriter


@dataclass
class Tensor:
    name: str
    shape: tuple[int, ...]  # ggml order: ne0 (row length) first
    type: GGMLQuantizationType = GGMLQuantizationType.F32

    @property
    def nbytes(self) -> int:
        block, size = GGML_QUANT_SIZES[self.type]
        n = 1
        for d in self.shape:
            n *= d
        return n // block * size


# (key, value) pairs; a value may be (value, GGUFValueType) to force a type,
# or (list, GGUFValueType.ARRAY, item GGUFValueType) for a typed array.
KV = Sequence[tuple[str, Any]]


def write_gguf(
    path: str | os.PathLike[str],
    kv: KV,
    tensors: Sequence[Tensor] = (),
    arch: str = "llama",
    version: int = 3,
    split_max_tensors: int = 0,
    fill: bytes | None = None,
) -> list[Path]:
    """Write a GGUF file (or shards) and return the paths written.

    ``fill``: None leaves tensor data a sparse hole; bytes repeat as data.
    """
    path = Path(path)
    writer = GGUFWriter(path, arch, split_max_tensors=split_max_tensors)
    for key, value in kv:
        if key == "general.architecture":
            continue
        _add(writer, key, value)
    for t in tensors:
        writer.add_tensor_info(
            t.name, tuple(reversed(t.shape)), np.dtype(np.float32), t.nbytes, raw_dtype=t.type
        )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    assert writer.fout is not None
    paths = writer.format_shard_names(path)
    for fout, shard_tensors in zip(writer.fout, writer.tensors, strict=True):
        pos = fout.tell()
        start = GGUFWriter.ggml_pad(pos, writer.data_alignment)
        total = sum(
            GGUFWriter.ggml_pad(ti.nbytes, writer.data_alignment) for ti in shard_tensors.values()
        )
        if fill is None:
            fout.truncate(start + total)
        else:
            fout.write(b"\0" * (start - pos))
            remaining = total
            while remaining > 0:
                chunk = (fill * (1 + min(remaining, 1 << 20) // max(1, len(fill))))[
                    : min(remaining, 1 << 20)
                ]
                fout.write(chunk)
                remaining -= len(chunk)
    writer.close()
    if version != 3:
        for p in paths:
            with open(p, "r+b") as fh:
                fh.seek(4)
                fh.write(int(version).to_bytes(4, "little"))
    return paths


def _add(writer: GGUFWriter, key: str, value: Any) -> None:
    if isinstance(value, tuple) and len(value) == 3 and value[1] == GGUFValueType.ARRAY:
        writer.add_key_value(key, list(value[0]), GGUFValueType.ARRAY, sub_type=value[2])
        return
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], GGUFValueType):
        writer.add_key_value(key, value[0], value[1])
        return
    if isinstance(value, bool):
        writer.add_bool(key, value)
    elif isinstance(value, int):
        writer.add_uint32(key, value) if value >= 0 else writer.add_int32(key, value)
    elif isinstance(value, float):
        writer.add_float32(key, value)
    elif isinstance(value, (str, bytes)):
        writer.add_key_value(key, value, GGUFValueType.STRING)
    elif isinstance(value, (list, np.ndarray)):
        writer.add_array(key, list(value))
    else:
        raise TypeError(f"cannot write {key}={value!r}")


def llama_like(
    path: str | os.PathLike[str],
    *,
    arch: str = "llama",
    n_layer: int = 4,
    n_embd: int = 256,
    n_head: int = 8,
    n_head_kv: int = 4,
    n_ff: int = 512,
    n_vocab: int = 512,
    n_ctx_train: int = 4096,
    weight_type: GGMLQuantizationType = GGMLQuantizationType.F16,
    embd_type: GGMLQuantizationType | None = None,
    output_type: GGMLQuantizationType | None = None,
    file_type: int | None = 1,
    tied_output: bool = False,
    name: str = "synthetic llama",
    extra_kv: KV = (),
    split_max_tensors: int = 0,
    fill: bytes | None = None,
    version: int = 3,
    byte_tokens: bool = False,
) -> list[Path]:
    """A llama-architecture model with the tensor names llama.cpp expects.

    Without ``byte_tokens`` (<0x00>..<0xFF>) llama.cpp aborts on any prompt
    with a character outside the vocabulary; with them, every prompt tokenizes.
    """
    head_dim = n_embd // n_head
    kv_dim = head_dim * n_head_kv
    tokens = ["<unk>", "<s>", "</s>"]
    token_types = [1, 1, 1]
    if byte_tokens:
        tokens += [f"<0x{b:02X}>" for b in range(256)]
        token_types = [2, 3, 3] + [6] * 256  # unknown, control, byte (llama_token_type)
    tokens += [f"t{i}" for i in range(n_vocab - len(tokens))]
    token_types += [1] * (n_vocab - len(token_types))
    kv: list[tuple[str, Any]] = [
        ("general.name", name),
        (f"{arch}.block_count", n_layer),
        (f"{arch}.context_length", n_ctx_train),
        (f"{arch}.embedding_length", n_embd),
        (f"{arch}.feed_forward_length", n_ff),
        (f"{arch}.attention.head_count", n_head),
        (f"{arch}.attention.head_count_kv", n_head_kv),
        (f"{arch}.attention.layer_norm_rms_epsilon", 1e-5),
        (f"{arch}.rope.dimension_count", head_dim),
        ("tokenizer.ggml.model", "llama"),
        ("tokenizer.ggml.tokens", tokens),
        ("tokenizer.ggml.scores", ([0.0] * n_vocab, GGUFValueType.ARRAY, GGUFValueType.FLOAT32)),
        ("tokenizer.ggml.token_type", (token_types, GGUFValueType.ARRAY, GGUFValueType.INT32)),
        ("tokenizer.ggml.bos_token_id", 1),
        ("tokenizer.ggml.eos_token_id", 2),
    ]
    if file_type is not None:
        kv.append(("general.file_type", file_type))
    kv.extend(extra_kv)
    wt = weight_type
    tensors = [Tensor("token_embd.weight", (n_embd, n_vocab), embd_type or wt)]
    for i in range(n_layer):
        tensors += [
            Tensor(f"blk.{i}.attn_norm.weight", (n_embd,)),
            Tensor(f"blk.{i}.attn_q.weight", (n_embd, n_embd), wt),
            Tensor(f"blk.{i}.attn_k.weight", (n_embd, kv_dim), wt),
            Tensor(f"blk.{i}.attn_v.weight", (n_embd, kv_dim), wt),
            Tensor(f"blk.{i}.attn_output.weight", (n_embd, n_embd), wt),
            Tensor(f"blk.{i}.ffn_norm.weight", (n_embd,)),
            Tensor(f"blk.{i}.ffn_gate.weight", (n_embd, n_ff), wt),
            Tensor(f"blk.{i}.ffn_up.weight", (n_embd, n_ff), wt),
            Tensor(f"blk.{i}.ffn_down.weight", (n_ff, n_embd), wt),
        ]
    tensors.append(Tensor("output_norm.weight", (n_embd,)))
    if not tied_output:
        tensors.append(Tensor("output.weight", (n_embd, n_vocab), output_type or wt))
    return write_gguf(
        path,
        kv,
        tensors,
        arch=arch,
        split_max_tensors=split_max_tensors,
        fill=fill,
        version=version,
    )


# Llama-2-70B's shape (80 layers, GQA 64:8 heads, FFN 28672, vocabulary 32000).
LLAMA2_70B_SHAPE: dict[str, Any] = dict(
    n_layer=80, n_embd=8192, n_head=64, n_head_kv=8, n_ff=28672, n_vocab=32000, n_ctx_train=4096
)


def llama2_70b_q4_k_m(path: str | os.PathLike[str]) -> Path:
    """A header in Llama-2-70B's shape at about Q4_K_M (Q4_K weights, Q6_K output): the
    80-layer model the speed and memory benchmarks plan."""
    (written,) = llama_like(
        path,
        **LLAMA2_70B_SHAPE,
        weight_type=GGMLQuantizationType.Q4_K,
        output_type=GGMLQuantizationType.Q6_K,
        file_type=15,
    )
    return written


def write_bad_shapes(path: str | os.PathLike[str]) -> None:
    """A model llama.cpp refuses to load: the metadata says 128 wide, token_embd is
    64 wide (a contradiction between header and tensors)."""
    n_vocab = 64
    kv = [
        ("general.name", "contradiction"),
        ("llama.block_count", 1),
        ("llama.context_length", 512),
        ("llama.embedding_length", 128),
        ("llama.feed_forward_length", 256),
        ("llama.attention.head_count", 4),
        ("llama.attention.head_count_kv", 4),
        ("llama.attention.layer_norm_rms_epsilon", 1e-5),
        ("tokenizer.ggml.model", "llama"),
        ("tokenizer.ggml.tokens", [f"t{i}" for i in range(n_vocab)]),
    ]
    tensors = [Tensor("token_embd.weight", (64, n_vocab)), Tensor("output_norm.weight", (64,))]
    write_gguf(path, kv, tensors)


def write_phantom_layer(path: str | os.PathLike[str]) -> Path:
    """A one-layer MoE model with a tensor named for layer 3, which does not exist.
    Reading and planning it as it is work; llama.cpp's quantizer refuses the tensor
    (``llmtune fit --quant`` says why), and so does llmtune's quantization what-if."""
    t = GGMLQuantizationType
    kv = [
        ("general.architecture", "llama"),
        ("general.name", "crafted"),
        ("llama.block_count", 1),
        ("llama.embedding_length", 64),
        ("llama.attention.head_count", 4),
        ("llama.attention.head_count_kv", 4),
        ("llama.feed_forward_length", 128),
        ("llama.context_length", 2048),
        ("llama.expert_count", 4),
        ("llama.expert_used_count", 2),
    ]
    tensors = [
        Tensor("token_embd.weight", (64, 256), t.F16),
        Tensor("blk.0.attn_q.weight", (64, 64), t.F16),
        Tensor("blk.3.ffn_down_exps.weight", (128, 64, 4), t.F16),
    ]
    (written,) = write_gguf(path, kv, tensors)
    return written
