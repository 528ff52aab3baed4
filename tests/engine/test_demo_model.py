"""ModelSpec agrees with what llama.cpp itself reports when it loads a model.

llama.cpp runs in a child process (an abort there fails one test, not the run)
with a ``llama_log_set`` callback that collects its log. The relations, from
the llama.cpp vendored by llama-cpp-python 0.3.36:

- ``print_info: file size = X MiB (Y BPW)`` (``llama_model_loader::print_info``)
  formats ``n_bytes``, the sum of ``ggml_nbytes`` over every tensor in the
  file(s), and ``n_bytes * 8 / n_elements``; ``model params = Z M``
  (``llama_model::print_info``) formats ``n_elements``, the sum of
  ``ggml_nelements``. ``llama_model_size`` and ``llama_model_n_params`` return
  the same two numbers unrounded. So ModelSpec.tensor_bytes and .parameters
  must equal them exactly, and format to the very strings in the log.
- ``load_tensors: CPU_Mapped model buffer size`` is ``last - first`` from
  ``llama_model_loader::get_mapping_range``: from the lowest tensor offset to
  the highest ``offset + nbytes`` among the tensors in that buffer, so it is
  the tensor bytes plus the alignment padding *between* tensors (not the
  padding after the last one, nor the header). With ``n_gpu_layers=0`` and the
  repack buffer off (``use_extra_bufts=False``; on some CPUs ``CPU_REPACK``
  takes Q4_0/Q8_0 matmul weights out of the mapping) every tensor is in it.

The log prints sizes with two decimals, so the log-line checks compare the
same ``%.2f`` formatting of ModelSpec's exact numbers (a tolerance of half a
unit in the last place, +-5,243 bytes); the API values are compared exactly.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFValueType, GGUFWriter

from llmtune.model import ModelSpec, TensorInfo, read_spec
from synth import Tensor

_CHILD = r"""
import ctypes, json, sys
import llama_cpp as L

chunks = []

@L.llama_log_callback
def _collect(level, text, user_data):
    chunks.append(text.decode("utf-8", "replace"))

L.llama_log_set(_collect, ctypes.c_void_p(0))
L.llama_backend_init()
params = L.llama_model_default_params()
params.n_gpu_layers = 0
params.load_mode = L.LLAMA_LOAD_MODE_MMAP
params.use_extra_bufts = False
model = L.llama_model_load_from_file(sys.argv[1].encode(), params)
if not model:
    sys.stderr.write("".join(chunks))
    raise SystemExit(3)
vocab = L.llama_model_get_vocab(model)
api = {
    "size": L.llama_model_size(model),
    "n_params": L.llama_model_n_params(model),
    "n_layer": L.llama_model_n_layer(model),
    "n_embd": L.llama_model_n_embd(model),
    "n_head": L.llama_model_n_head(model),
    "n_head_kv": L.llama_model_n_head_kv(model),
    "n_ctx_train": L.llama_model_n_ctx_train(model),
    "n_vocab": L.llama_vocab_n_tokens(vocab),
}
L.llama_model_free(model)
print(json.dumps({"api": api, "log": "".join(chunks)}))
"""

_PRINT_INFO = re.compile(r"^print_info: (?P<key>\S[^=]*?)\s*= (?P<value>.*?)\s*$")
_TYPE_COUNT = re.compile(r"^llama_model_loader: - type\s+(?P<type>\w+):\s+(?P<count>\d+) tensors$")
_LOADED = re.compile(
    r"^llama_model_loader: loaded meta data with (?P<kv>\d+) key-value pairs "
    r"and (?P<tensors>\d+) tensors"
)
_MODEL_BUFFER = re.compile(
    r"^load_tensors:\s+(?P<name>\S+) model buffer size =\s+(?P<mib>[\d.]+) MiB$"
)


@dataclass(frozen=True)
class LlamaLoad:
    """What llama.cpp said while loading a model."""

    api: dict[str, int]
    log: str

    def info(self) -> dict[str, str]:
        """``print_info`` lines as key -> value (the first of repeated keys)."""
        found: dict[str, str] = {}
        for line in self.log.splitlines():
            m = _PRINT_INFO.match(line)
            if m:
                found.setdefault(m.group("key"), m.group("value"))
        return found

    def type_counts(self) -> dict[str, int]:
        return {
            m.group("type"): int(m.group("count"))
            for m in map(_TYPE_COUNT.match, self.log.splitlines())
            if m
        }

    def loaded(self) -> tuple[int, int]:
        m = next(filter(None, map(_LOADED.match, self.log.splitlines())))
        return int(m.group("kv")), int(m.group("tensors"))

    def model_buffers(self) -> dict[str, str]:
        return {
            m.group("name"): m.group("mib")
            for m in map(_MODEL_BUFFER.match, self.log.splitlines())
            if m
        }


def load_with_llama_cpp(path: Path) -> LlamaLoad:
    env = dict(os.environ, GGML_NO_BACKTRACE="1")
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, (
        f"llama.cpp failed to load {path} (exit {proc.returncode}):\n{proc.stderr[-4000:]}"
    )
    result: dict[str, Any] = json.loads(proc.stdout.splitlines()[-1])
    return LlamaLoad(api=result["api"], log=result["log"])


# ---- llama.cpp's formatting, to compare against its log lines exactly ----------
def llama_file_size(n_bytes: int, n_elements: int) -> str:
    """``llama_model_loader::print_info``'s 'file size' value."""
    bpw = n_bytes * 8.0 / n_elements
    if n_bytes < 1 << 30:
        return f"{n_bytes / 1024.0 / 1024.0:.2f} MiB ({bpw:.2f} BPW)"
    return f"{n_bytes / 1024.0 / 1024.0 / 1024.0:.2f} GiB ({bpw:.2f} BPW)"


def llama_params(n_elements: int) -> str:
    """``llama_model::print_info``'s 'model params' value."""
    if n_elements >= 1e12:
        return f"{n_elements * 1e-12:.2f} T"
    if n_elements >= 1e9:
        return f"{n_elements * 1e-9:.2f} B"
    if n_elements >= 1e6:
        return f"{n_elements * 1e-6:.2f} M"
    return f"{n_elements * 1e-3:.2f} K"


def mapped_span(tensors: tuple[TensorInfo, ...]) -> tuple[int, int]:
    """(first tensor offset to last tensor end, padding between tensors)."""
    ordered = sorted(tensors, key=lambda t: t.offset)
    padding = sum(b.offset - (a.offset + a.nbytes) for a, b in pairwise(ordered))
    span = max(t.offset + t.nbytes for t in ordered) - ordered[0].offset
    return span, padding


# ---- the demo model -------------------------------------------------------------
@pytest.fixture(scope="module")
def demo_spec(demo_model: Path) -> ModelSpec:
    return read_spec(demo_model)


@pytest.fixture(scope="module")
def demo_load(demo_model: Path) -> LlamaLoad:
    return load_with_llama_cpp(demo_model)


def test_tensor_bytes_and_parameters_equal_llama_cpps(
    demo_spec: ModelSpec, demo_load: LlamaLoad
) -> None:
    assert demo_spec.tensor_bytes == demo_load.api["size"] == 96_576_768
    assert demo_spec.parameters == demo_load.api["n_params"] == 134_515_008
    info = demo_load.info()
    assert info["file size"] == llama_file_size(demo_spec.tensor_bytes, demo_spec.parameters)
    assert info["file size"] == "92.10 MiB (5.74 BPW)"
    assert info["model params"] == llama_params(demo_spec.parameters) == "134.52 M"
    assert info["file type"] == demo_spec.file_type_name == "Q4_1"


def test_mapped_buffer_is_the_tensor_data_span(demo_spec: ModelSpec, demo_load: LlamaLoad) -> None:
    span, padding = mapped_span(demo_spec.tensors)
    assert span == demo_spec.tensor_bytes + padding
    # Every Q4_1/Q8_0/F32 tensor of this model is a multiple of 32 bytes long:
    # no padding, so the mapping is exactly the tensor bytes (and the file's tail).
    assert padding == 0
    assert demo_spec.file_bytes - demo_spec.header_bytes >= span
    buffers = demo_load.model_buffers()
    assert list(buffers) == ["CPU_Mapped"], buffers
    assert buffers["CPU_Mapped"] == f"{span / 1024.0 / 1024.0:.2f}" == "92.10"


def test_hyperparameters_match_llama_cpps(demo_spec: ModelSpec, demo_load: LlamaLoad) -> None:
    ours = {
        "n_layer": demo_spec.n_layer,
        "n_embd": demo_spec.n_embd,
        "n_head": demo_spec.n_head,
        "n_head_kv": demo_spec.n_head_kv,
        "n_vocab": demo_spec.n_vocab,
        "n_ctx_train": demo_spec.n_ctx_train,
    }
    assert ours == {
        "n_layer": 30,
        "n_embd": 576,
        "n_head": 9,
        "n_head_kv": 3,
        "n_vocab": 49152,
        "n_ctx_train": 8192,
    }
    info = demo_load.info()
    assert {key: int(info[key]) for key in ours} == ours
    assert {key: demo_load.api[key] for key in ours} == ours
    assert int(info["n_ff"]) == demo_spec.n_ff_per_layer[0] == 1536
    assert int(info["n_embd_head_k"]) == demo_spec.n_embd_head_k == 64
    assert int(info["n_embd_head_v"]) == demo_spec.n_embd_head_v == 64


def test_tensor_and_key_counts_and_type_mix_match(
    demo_spec: ModelSpec, demo_load: LlamaLoad
) -> None:
    assert demo_load.loaded() == (len(demo_spec.metadata), len(demo_spec.tensors)) == (33, 272)
    ours = {name.lower(): stats.tensors for name, stats in demo_spec.type_stats().items()}
    assert demo_load.type_counts() == ours == {"q4_1": 210, "f32": 61, "q8_0": 1}


# ---- padding between tensors ---------------------------------------------------
def write_padded_llama(path: Path, alignment: int = 1 << 16) -> None:
    """A tiny llama whose tensors sit ``alignment`` bytes apart (data a sparse hole)."""
    n_embd, n_head, n_head_kv, n_ff, n_vocab, n_layer = 64, 4, 2, 128, 256, 2
    f16 = GGMLQuantizationType.F16
    writer = GGUFWriter(path, "llama")
    writer.add_custom_alignment(alignment)
    writer.add_block_count(n_layer)
    writer.add_context_length(512)
    writer.add_embedding_length(n_embd)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head_kv)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(["<unk>", "<s>", "</s>"] + [f"t{i}" for i in range(n_vocab - 3)])
    writer.add_key_value(
        "tokenizer.ggml.scores", [0.0] * n_vocab, GGUFValueType.ARRAY, GGUFValueType.FLOAT32
    )
    writer.add_key_value(
        "tokenizer.ggml.token_type", [1] * n_vocab, GGUFValueType.ARRAY, GGUFValueType.INT32
    )
    kv_dim = n_embd // n_head * n_head_kv
    tensors = [Tensor("token_embd.weight", (n_embd, n_vocab), f16)]
    for i in range(n_layer):
        tensors += [
            Tensor(f"blk.{i}.attn_norm.weight", (n_embd,)),
            Tensor(f"blk.{i}.attn_q.weight", (n_embd, n_embd), f16),
            Tensor(f"blk.{i}.attn_k.weight", (n_embd, kv_dim), f16),
            Tensor(f"blk.{i}.attn_v.weight", (n_embd, kv_dim), f16),
            Tensor(f"blk.{i}.attn_output.weight", (n_embd, n_embd), f16),
            Tensor(f"blk.{i}.ffn_norm.weight", (n_embd,)),
            Tensor(f"blk.{i}.ffn_gate.weight", (n_embd, n_ff), f16),
            Tensor(f"blk.{i}.ffn_up.weight", (n_embd, n_ff), f16),
            Tensor(f"blk.{i}.ffn_down.weight", (n_ff, n_embd), f16),
        ]
    tensors += [
        Tensor("output_norm.weight", (n_embd,)),
        Tensor("output.weight", (n_embd, n_vocab), f16),
    ]
    for t in tensors:
        writer.add_tensor_info(
            t.name, tuple(reversed(t.shape)), np.dtype(np.float32), t.nbytes, raw_dtype=t.type
        )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    assert writer.fout is not None
    fout = writer.fout[0]
    start = GGUFWriter.ggml_pad(fout.tell(), alignment)
    fout.truncate(start + sum(GGUFWriter.ggml_pad(t.nbytes, alignment) for t in tensors))
    writer.close()


def test_mapped_buffer_includes_padding_between_tensors(tmp_path: Path) -> None:
    path = tmp_path / "padded.gguf"
    write_padded_llama(path)
    spec = read_spec(path)
    load = load_with_llama_cpp(path)
    span, padding = mapped_span(spec.tensors)
    assert spec.tensor_bytes == load.api["size"] == 214_272
    assert spec.parameters == load.api["n_params"]
    assert load.info()["file size"] == llama_file_size(spec.tensor_bytes, spec.parameters)
    # 21 tensors each padded to 64 KiB: the span stops at the last tensor's end.
    assert span == spec.tensor_bytes + padding == 20 * (1 << 16) + 32_768
    assert load.model_buffers() == {"CPU_Mapped": f"{span / 1024.0 / 1024.0:.2f}"}
    assert load.model_buffers()["CPU_Mapped"] != f"{spec.tensor_bytes / 1024.0 / 1024.0:.2f}"
