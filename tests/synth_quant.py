"""Small models with real tensor data, and llama.cpp's quantizer run on them in a child process.

The quantization what-if (``llmtune.fit.quant``) is checked against what
llama.cpp really does: these builders write F16 models of a few MB whose data
is random normal values (llama.cpp validates the data it reads, so a sparse
hole of zeros would not exercise the quantizers), in the tensor names and
shapes of several architectures, with dimensions chosen so that llama.cpp's
shape fallbacks happen (``n_ff`` a multiple of 32 but not of 256, rows that are
not even a multiple of 32, an ``n_embd`` that is not a multiple of 256).

``run_quantize`` runs ``llama_model_quantize`` (llama-cpp-python's binding)
for a list of jobs in a fresh Python process, since llama.cpp aborts the whole
process on a failed assertion; each job's log is captured through
``llama_log_set`` and returned with its status. Run as a script this module is
that child.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# ---- builders -------------------------------------------------------------------------------


class _Model:
    """Metadata and tensors (ggml order shapes) of one model, written by gguf.GGUFWriter."""

    def __init__(self, arch: str, n_vocab: int, seed: int) -> None:
        self.arch = arch
        self.n_vocab = n_vocab
        self.rng = np.random.default_rng(seed)
        self.kv: list[tuple[str, Any]] = []
        self.tensors: list[tuple[str, np.ndarray[Any, Any]]] = []

    def key(self, name: str, value: Any) -> None:
        self.kv.append((f"{self.arch}.{name}", value))

    def mat(self, name: str, *shape: int, dtype: type = np.float16) -> None:
        """A weight of random normal values; ``shape`` in ggml order (row length first)."""
        values = self.rng.standard_normal(tuple(reversed(shape)), dtype=np.float32) * 0.02
        self.tensors.append((name, values.astype(dtype)))

    def vec(self, name: str, n: int) -> None:
        """An F32 norm or bias."""
        self.tensors.append((name, (1.0 + 0.01 * self.rng.standard_normal(n)).astype(np.float32)))

    def write(self, path: Path) -> Path:
        from gguf import GGUFValueType, GGUFWriter

        writer = GGUFWriter(path, self.arch)
        writer.add_name(f"synthetic {self.arch}")
        writer.add_file_type(1)  # MOSTLY_F16
        for key, value in self.kv:
            if isinstance(value, float):
                writer.add_float32(key, value)
            elif isinstance(value, int):
                writer.add_uint32(key, value)
            else:
                writer.add_key_value(key, value, GGUFValueType.STRING)
        tokens = ["<unk>", "<s>", "</s>"] + [f"t{i}" for i in range(self.n_vocab - 3)]
        writer.add_tokenizer_model("llama")
        writer.add_token_list(tokens)
        writer.add_token_scores([0.0] * self.n_vocab)
        writer.add_token_types([2, 3, 3] + [1] * (self.n_vocab - 3))
        writer.add_bos_token_id(1)
        writer.add_eos_token_id(2)
        for name, array in self.tensors:
            writer.add_tensor(name, array)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        return path


def _common(m: _Model, n_layer: int, n_embd: int, n_ff: int, n_head: int, n_head_kv: int) -> None:
    m.key("block_count", n_layer)
    m.key("context_length", 4096)
    m.key("embedding_length", n_embd)
    m.key("feed_forward_length", n_ff)
    m.key("attention.head_count", n_head)
    m.key("attention.head_count_kv", n_head_kv)
    m.key("attention.layer_norm_rms_epsilon", 1e-6)


def _attention(
    m: _Model, i: int, n_embd: int, n_head: int, n_head_kv: int, head_dim: int, *, bias: bool
) -> None:
    m.vec(f"blk.{i}.attn_norm.weight", n_embd)
    m.mat(f"blk.{i}.attn_q.weight", n_embd, n_head * head_dim)
    m.mat(f"blk.{i}.attn_k.weight", n_embd, n_head_kv * head_dim)
    m.mat(f"blk.{i}.attn_v.weight", n_embd, n_head_kv * head_dim)
    if bias:
        m.vec(f"blk.{i}.attn_q.bias", n_head * head_dim)
        m.vec(f"blk.{i}.attn_k.bias", n_head_kv * head_dim)
        m.vec(f"blk.{i}.attn_v.bias", n_head_kv * head_dim)
    m.mat(f"blk.{i}.attn_output.weight", n_head * head_dim, n_embd)


def _ffn(m: _Model, i: int, n_embd: int, n_ff: int) -> None:
    m.vec(f"blk.{i}.ffn_norm.weight", n_embd)
    m.mat(f"blk.{i}.ffn_gate.weight", n_embd, n_ff)
    m.mat(f"blk.{i}.ffn_up.weight", n_embd, n_ff)
    m.mat(f"blk.{i}.ffn_down.weight", n_ff, n_embd)


def build_llama_gqa(path: Path, *, n_layer: int = 16, seed: int = 1) -> Path:
    """Llama with 4 query heads per KV head (GQA 4 raises attn_v in the low-bit mixes).

    16 layers, so the rules for the first sixteenth apply to one layer; n_ff 96 =
    3 x 32: ffn_down rows fall back from 256-blocks to 32-blocks.
    """
    n_embd, n_head, n_head_kv, head_dim, n_ff = 256, 4, 1, 32, 96
    m = _Model("llama", 256, seed)
    _common(m, n_layer, n_embd, n_ff, n_head, n_head_kv)
    m.key("attention.key_length", head_dim)
    m.key("attention.value_length", head_dim)
    m.key("rope.dimension_count", head_dim)
    m.mat("token_embd.weight", n_embd, m.n_vocab)
    for i in range(n_layer):
        _attention(m, i, n_embd, n_head, n_head_kv, head_dim, bias=False)
        _ffn(m, i, n_embd, n_ff)
    m.vec("output_norm.weight", n_embd)
    m.mat("output.weight", n_embd, m.n_vocab)
    return m.write(path)


def build_qwen2(path: Path, *, n_layer: int = 8, seed: int = 2) -> Path:
    """Qwen2 with Q/K/V biases and GQA 2; n_ff 104 is not even a multiple of 32 (F16 fallback)."""
    n_embd, n_head, n_head_kv, head_dim, n_ff = 256, 4, 2, 32, 104
    m = _Model("qwen2", 256, seed)
    _common(m, n_layer, n_embd, n_ff, n_head, n_head_kv)
    m.key("attention.key_length", head_dim)
    m.key("attention.value_length", head_dim)
    m.mat("token_embd.weight", n_embd, m.n_vocab)
    for i in range(n_layer):
        _attention(m, i, n_embd, n_head, n_head_kv, head_dim, bias=True)
        _ffn(m, i, n_embd, n_ff)
    m.vec("output_norm.weight", n_embd)
    m.mat("output.weight", n_embd, m.n_vocab)
    return m.write(path)


def build_qwen3(path: Path, *, n_layer: int = 8, seed: int = 3) -> Path:
    """Qwen3 with Q/K norms and tied embeddings (token_embd gets the output's rule)."""
    n_embd, n_head, n_head_kv, head_dim, n_ff = 256, 4, 1, 32, 128
    m = _Model("qwen3", 256, seed)
    _common(m, n_layer, n_embd, n_ff, n_head, n_head_kv)
    m.key("attention.key_length", head_dim)
    m.key("attention.value_length", head_dim)
    m.mat("token_embd.weight", n_embd, m.n_vocab)
    for i in range(n_layer):
        _attention(m, i, n_embd, n_head, n_head_kv, head_dim, bias=False)
        m.vec(f"blk.{i}.attn_q_norm.weight", head_dim)
        m.vec(f"blk.{i}.attn_k_norm.weight", head_dim)
        _ffn(m, i, n_embd, n_ff)
    m.vec("output_norm.weight", n_embd)
    return m.write(path)


def build_qwen3moe(path: Path, *, n_layer: int = 8, n_expert: int = 8, seed: int = 4) -> Path:
    """Qwen3-MoE: router, stacked experts; 8 experts trigger llama.cpp's Mixtral rules.

    Expert rows of 32 make ffn_down_exps fall back.
    """
    n_embd, n_head, n_head_kv, head_dim, n_ff, n_ff_exp = 256, 4, 2, 32, 128, 32
    m = _Model("qwen3moe", 256, seed)
    _common(m, n_layer, n_embd, n_ff, n_head, n_head_kv)
    m.key("attention.key_length", head_dim)
    m.key("attention.value_length", head_dim)
    m.key("expert_count", n_expert)
    m.key("expert_used_count", 2)
    m.key("expert_feed_forward_length", n_ff_exp)
    m.mat("token_embd.weight", n_embd, m.n_vocab)
    for i in range(n_layer):
        _attention(m, i, n_embd, n_head, n_head_kv, head_dim, bias=False)
        m.vec(f"blk.{i}.attn_q_norm.weight", head_dim)
        m.vec(f"blk.{i}.attn_k_norm.weight", head_dim)
        m.vec(f"blk.{i}.ffn_norm.weight", n_embd)
        m.mat(f"blk.{i}.ffn_gate_inp.weight", n_embd, n_expert, dtype=np.float32)
        m.mat(f"blk.{i}.ffn_gate_exps.weight", n_embd, n_ff_exp, n_expert)
        m.mat(f"blk.{i}.ffn_up_exps.weight", n_embd, n_ff_exp, n_expert)
        m.mat(f"blk.{i}.ffn_down_exps.weight", n_ff_exp, n_embd, n_expert)
    m.vec("output_norm.weight", n_embd)
    m.mat("output.weight", n_embd, m.n_vocab)
    return m.write(path)


def build_phi3(path: Path, *, n_layer: int = 6, seed: int = 5) -> Path:
    """Phi-3: fused attn_qkv (llama.cpp counts it as attention V), gate+up fused in ffn_up."""
    n_embd, n_head, n_ff = 256, 4, 128
    head_dim = n_embd // n_head
    m = _Model("phi3", 256, seed)
    _common(m, n_layer, n_embd, n_ff, n_head, n_head)
    m.key("rope.dimension_count", head_dim)
    m.mat("token_embd.weight", n_embd, m.n_vocab)
    for i in range(n_layer):
        m.vec(f"blk.{i}.attn_norm.weight", n_embd)
        m.mat(f"blk.{i}.attn_qkv.weight", n_embd, 3 * n_embd)
        m.mat(f"blk.{i}.attn_output.weight", n_embd, n_embd)
        m.vec(f"blk.{i}.ffn_norm.weight", n_embd)
        m.mat(f"blk.{i}.ffn_up.weight", n_embd, 2 * n_ff)
        m.mat(f"blk.{i}.ffn_down.weight", n_ff, n_embd)
    m.vec("output_norm.weight", n_embd)
    m.mat("output.weight", n_embd, m.n_vocab)
    return m.write(path)


def build_gemma3(path: Path, *, n_layer: int = 6, seed: int = 6) -> Path:
    """Gemma 3: tied embeddings and n_embd 320 (not a multiple of 256): most tensors fall back."""
    n_embd, n_head, n_head_kv, head_dim, n_ff = 320, 4, 1, 32, 128
    m = _Model("gemma3", 256, seed)
    _common(m, n_layer, n_embd, n_ff, n_head, n_head_kv)
    m.key("attention.key_length", head_dim)
    m.key("attention.value_length", head_dim)
    m.key("attention.sliding_window", 512)
    m.mat("token_embd.weight", n_embd, m.n_vocab)
    for i in range(n_layer):
        _attention(m, i, n_embd, n_head, n_head_kv, head_dim, bias=False)
        m.vec(f"blk.{i}.attn_q_norm.weight", head_dim)
        m.vec(f"blk.{i}.attn_k_norm.weight", head_dim)
        m.vec(f"blk.{i}.post_attention_norm.weight", n_embd)
        _ffn(m, i, n_embd, n_ff)
        m.vec(f"blk.{i}.post_ffw_norm.weight", n_embd)
    m.vec("output_norm.weight", n_embd)
    return m.write(path)


BUILDERS: dict[str, Callable[[Path], Path]] = {
    "llama_gqa": build_llama_gqa,
    "qwen2": build_qwen2,
    "qwen3": build_qwen3,
    "qwen3moe": build_qwen3moe,
    "phi3": build_phi3,
    "gemma3": build_gemma3,
}


# ---- running llama.cpp's quantizer ------------------------------------------------------------


@dataclass(frozen=True)
class QuantJob:
    """One call of llama_model_quantize; type fields are ggml type ids, -1 for llama.cpp's default."""

    model: str
    ftype: int
    output: str = ""  # empty for a dry run
    imatrix: bool = False
    pure: bool = False
    output_tensor_type: int = -1
    token_embedding_type: int = -1
    quantize_output_tensor: bool = True
    tensor_types: tuple[tuple[str, int], ...] = ()
    allow_requantize: bool = False

    @property
    def dry_run(self) -> bool:
        return not self.output


@dataclass
class QuantResult:
    job: QuantJob
    status: int | None  # llama_model_quantize's return; None when the child died
    log: str
    seconds: float = 0.0
    crash: str = ""

    @property
    def ok(self) -> bool:
        return self.status == 0


@dataclass
class DryRun:
    """What a dry run logs: per-tensor target types and sizes, and the totals."""

    types: dict[str, str] = field(default_factory=dict)
    tensor_mib: dict[str, float] = field(default_factory=dict)
    model_mib: float | None = None
    quant_mib: float | None = None
    needs_imatrix: bool = False


_TENSOR_LINE = re.compile(
    r"\[\s*\d+/\s*\d+\]\s+(?P<name>\S+)\s+- \[[^\]]*\], type =\s*(?P<src>\S+), "
    r"size =\s*(?P<size>[\d.]+) MiB(?: ->\s*(?P<new>[\d.]+) MiB \((?P<dst>\S+)\))?"
)
_TOTAL_LINE = re.compile(r"(model|quant) size\s*=\s*([\d.]+) MiB")


def parse_dry_run(log: str) -> DryRun:
    out = DryRun()
    for m in _TENSOR_LINE.finditer(log):
        dst = m.group("dst") or m.group("src")
        out.types[m.group("name")] = dst.upper()
        out.tensor_mib[m.group("name")] = float(m.group("new") or m.group("size"))
    for m in _TOTAL_LINE.finditer(log):
        if m.group(1) == "model":
            out.model_mib = float(m.group(2))
        else:
            out.quant_mib = float(m.group(2))
    out.needs_imatrix = "will require an imatrix" in log
    return out


def imatrix_entries(path: str | os.PathLike[str]) -> list[tuple[str, int]]:
    """(name, ne0 x ne2) for every tensor of 2 or more dimensions: an all-ones importance matrix."""
    from llmtune.model.spec import read_spec

    entries = []
    for t in read_spec(path).tensors:
        if len(t.shape) >= 2:
            ne2 = t.shape[2] if len(t.shape) > 2 else 1
            entries.append((t.name, t.shape[0] * ne2))
    return entries


def run_quantize(
    jobs: Sequence[QuantJob], *, nthread: int = 1, timeout_s: float = 600.0
) -> list[QuantResult]:
    """Run the jobs one after another in one child process; a crash fails the jobs left.

    One process for many jobs, because ggml builds the IQ types' lattice tables
    once per process and that takes seconds (IQ1_M's about 7 s).
    """
    imatrix = {j.model: imatrix_entries(j.model) for j in jobs if j.imatrix}
    request = {"nthread": nthread, "imatrix": imatrix, "jobs": [asdict(j) for j in jobs]}
    env = dict(os.environ, GGML_NO_BACKTRACE="1")
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__)],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env=env,
    )
    results: list[QuantResult] = []
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            data = json.loads(line)
            job = jobs[len(results)]
            results.append(QuantResult(job, data["status"], data["log"], data["seconds"]))
    crash = f"child exited with {proc.returncode}: {proc.stderr[-2000:]}"
    for job in jobs[len(results) :]:
        results.append(QuantResult(job, None, "", crash=crash))
    return results


def run_in_parallel(
    batches: Sequence[Sequence[QuantJob]], *, timeout_s: float = 600.0
) -> list[QuantResult]:
    """Each batch in its own child process, the children at the same time."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max(1, len(batches))) as pool:
        done = pool.map(lambda batch: run_quantize(batch, timeout_s=timeout_s), batches)
        return [result for results in done for result in results]


def _child() -> None:
    """The child: quantize as told on stdin, one JSON line per job on stdout."""
    import ctypes
    import time

    import llama_cpp as L

    chunks: list[bytes] = []

    def _log(level: int, text: bytes | None, user_data: Any) -> None:
        if text:
            chunks.append(text)

    callback = L.llama_log_callback(_log)
    L.llama_log_set(callback, ctypes.c_void_p(0))
    L.llama_backend_init()
    request = json.loads(sys.stdin.read())

    keep: list[Any] = []  # ctypes buffers the params point at
    imatrix_ptrs: dict[str, Any] = {}
    for model, entries_in in request["imatrix"].items():
        entries = (L.llama_model_imatrix_data * (len(entries_in) + 1))()
        for i, (name, size) in enumerate(entries_in):
            data = (ctypes.c_float * size)(*([1.0] * size))
            keep.append(data)
            entries[i].name = name.encode()
            entries[i].data = ctypes.cast(data, ctypes.POINTER(ctypes.c_float))
            entries[i].size = size
        entries[len(entries_in)].name = None
        keep.append(entries)
        imatrix_ptrs[model] = ctypes.cast(entries, ctypes.POINTER(L.llama_model_imatrix_data))

    for job in request["jobs"]:
        params = L.llama_model_quantize_default_params()
        params.nthread = request["nthread"]
        params.ftype = job["ftype"]
        params.dry_run = not job["output"]
        params.pure = job["pure"]
        params.quantize_output_tensor = job["quantize_output_tensor"]
        params.allow_requantize = job["allow_requantize"]
        if job["output_tensor_type"] >= 0:
            params.output_tensor_type = job["output_tensor_type"]
        if job["token_embedding_type"] >= 0:
            params.token_embedding_type = job["token_embedding_type"]
        if job["imatrix"]:
            params.imatrix = imatrix_ptrs[job["model"]]
        if job["tensor_types"]:
            overrides = (L.llama_model_tensor_override * (len(job["tensor_types"]) + 1))()
            for i, (pattern, type_id) in enumerate(job["tensor_types"]):
                overrides[i].pattern = pattern.encode()
                overrides[i].type = type_id
            overrides[len(job["tensor_types"])].pattern = None
            keep.append(overrides)
            params.tt_overrides = ctypes.cast(
                overrides, ctypes.POINTER(L.llama_model_tensor_override)
            )
        chunks.clear()
        t0 = time.perf_counter()
        status = L.llama_model_quantize(
            job["model"].encode(), (job["output"] or os.devnull).encode(), ctypes.byref(params)
        )
        seconds = time.perf_counter() - t0
        log = b"".join(chunks).decode("utf-8", errors="replace")
        print(json.dumps({"status": status, "log": log, "seconds": seconds}), flush=True)


def write_imatrix_gguf(model: str | os.PathLike[str], path: str | os.PathLike[str]) -> int:
    """An importance matrix for ``model`` in llama-imatrix's GGUF format, every value 2.0
    (sums 20 over 10 tokens); returns the number of entries."""
    from gguf import GGUFWriter

    writer = GGUFWriter(os.fspath(path), "imatrix")
    writer.add_array("imatrix.datasets", ["synthetic.txt"])
    writer.add_uint32("imatrix.chunk_count", 10)
    writer.add_uint32("imatrix.chunk_size", 512)
    entries = imatrix_entries(model)
    for name, size in entries:
        writer.add_tensor(f"{name}.in_sum2", np.full(size, 20.0, dtype=np.float32))
        writer.add_tensor(f"{name}.counts", np.full(1, 10.0, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return len(entries)


def write_imatrix_dat(model: str | os.PathLike[str], path: str | os.PathLike[str]) -> int:
    """The same importance matrix in the legacy .dat format (ncall 10, sums 20)."""
    import struct

    entries = imatrix_entries(model)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<i", len(entries)))
        for name, size in entries:
            encoded = name.encode()
            fh.write(struct.pack("<i", len(encoded)) + encoded + struct.pack("<ii", 10, size))
            fh.write(np.full(size, 20.0, dtype="<f4").tobytes())
    return len(entries)


if __name__ == "__main__":
    _child()
