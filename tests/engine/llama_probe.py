"""Measure what llama.cpp allocates for a model and a context, in a fresh process.

A helper for tests and benches (not a test file). ``measure()`` starts a child
Python that uses llama-cpp-python's low-level C API only:

    llama_log_set(callback)                       every log chunk straight to fd 2
    llama_model_load_from_file(path, model_params)
    llama_init_from_model(model, context_params)  every field set explicitly
    llama_free(ctx); llama_model_free(model)      the destructor logs exact compute sizes

and parses its stderr with ``llmtune.engine.logparse``. The log goes to fd 2
as it is produced, so when llama.cpp aborts (a failed GGML_ASSERT kills the
child) the lines up to the abort are still there. ``GGML_NO_BACKTRACE=1``
keeps llama.cpp from attaching gdb on an abort.

llama-cpp-python 0.3.36 has no ``use_mmap``/``use_mlock`` in
``llama_model_params``: ``load_mode`` replaces them (``LLAMA_LOAD_MODE_MMAP`` =
1, ``LLAMA_LOAD_MODE_NONE`` = 0). ``no_alloc`` needs ``load_mode`` NONE
(llama.cpp asserts that mmap is off), and then:

- model buffers are logged as 0.00 MiB (dummy buffers);
- the KV buffer is logged as 0.00 MiB;
- the recurrent (RS) buffer is really allocated and logged with its size;
- compute buffers are logged with their real sizes
  (``ggml_backend_sched_reserve_size``), identical to a real allocation;
- the output buffer is really allocated and logged.

``tests/engine/test_synth_arch_load.py`` checks each of these.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from gguf import GGMLQuantizationType

from llmtune.engine.logparse import LlamaLog, parse_log

FlashAttn = Literal["auto", "on", "off"]
FLASH_ATTN_TYPES: dict[str, int] = {"auto": -1, "off": 0, "on": 1}  # enum llama_flash_attn_type
KV_CACHE_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1")

_CHILD = r"""
import ctypes, json, os, sys, time
import llama_cpp as L

def _log(level, text, user_data):
    if text:
        os.write(2, text)

_callback = L.llama_log_callback(_log)
L.llama_log_set(_callback, ctypes.c_void_p(0))
L.llama_backend_init()

cfg = json.loads(sys.argv[1])
if cfg["rpc"]:
    # As common/arg.cpp's add_rpc_devices: the RPC registry's add_server, then
    # ggml_backend_register, in the libggml copy libllama uses (.so.0).
    lib = os.path.join(os.path.dirname(L.__file__), "lib")
    ggml = ctypes.CDLL(os.path.join(lib, "libggml.so.0"))
    base = ctypes.CDLL(os.path.join(lib, "libggml-base.so.0"))
    ggml.ggml_backend_reg_by_name.restype = ctypes.c_void_p
    ggml.ggml_backend_reg_by_name.argtypes = [ctypes.c_char_p]
    ggml.ggml_backend_register.argtypes = [ctypes.c_void_p]
    base.ggml_backend_reg_get_proc_address.restype = ctypes.c_void_p
    base.ggml_backend_reg_get_proc_address.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    reg = ggml.ggml_backend_reg_by_name(b"RPC")
    add = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_char_p)(
        base.ggml_backend_reg_get_proc_address(reg, b"ggml_backend_rpc_add_server"))
    for endpoint in cfg["rpc"]:
        server = add(endpoint.encode())
        if not server:
            print(json.dumps({"model_loaded": False, "rpc_failed": endpoint}), flush=True)
            sys.exit(5)
        ggml.ggml_backend_register(server)
report = {"model_loaded": False, "context_created": False}

mp = L.llama_model_default_params()
mp.n_gpu_layers = cfg["n_gpu_layers"]
mp.split_mode = L.LLAMA_SPLIT_MODE_LAYER
mp.load_mode = cfg["load_mode"]
mp.lazy_mode = L.LLAMA_LAZY_MODE_AUTO
mp.main_gpu = 0
if cfg["tensor_split"]:
    split = (ctypes.c_float * len(cfg["tensor_split"]))(*cfg["tensor_split"])
    mp.tensor_split = split
mp.vocab_only = False
mp.check_tensors = False
mp.use_extra_bufts = cfg["use_extra_bufts"]
mp.no_host = False
mp.no_alloc = cfg["no_alloc"]
mp.load_mtp = False

t0 = time.perf_counter()
model = L.llama_model_load_from_file(cfg["path"].encode(), mp)
report["load_s"] = time.perf_counter() - t0
if not model:
    print(json.dumps(report), flush=True)
    sys.exit(3)
report["model_loaded"] = True
report["model"] = {
    "size": L.llama_model_size(model),
    "n_params": L.llama_model_n_params(model),
    "n_layer": L.llama_model_n_layer(model),
    "n_embd": L.llama_model_n_embd(model),
    "n_head": L.llama_model_n_head(model),
    "n_head_kv": L.llama_model_n_head_kv(model),
    "n_swa": L.llama_model_n_swa(model),
    "n_ctx_train": L.llama_model_n_ctx_train(model),
    "is_recurrent": bool(L.llama_model_is_recurrent(model)),
    "is_hybrid": bool(L.llama_model_is_hybrid(model)),
    "supports_gpu_offload": bool(L.llama_supports_gpu_offload()),
}

cp = L.llama_context_default_params()
cp.n_ctx = cfg["n_ctx"]
cp.n_batch = cfg["n_batch"]
cp.n_ubatch = cfg["n_ubatch"]
cp.n_seq_max = cfg["n_seq_max"]
cp.n_rs_seq = 0
cp.n_outputs_max = 0
cp.n_outputs_max_per_seq = 1
cp.n_threads = cfg["n_threads"]
cp.n_threads_batch = cfg["n_threads"]
cp.ctx_type = L.LLAMA_CONTEXT_TYPE_DEFAULT
cp.rope_scaling_type = L.LLAMA_ROPE_SCALING_TYPE_UNSPECIFIED
cp.pooling_type = L.LLAMA_POOLING_TYPE_UNSPECIFIED
cp.attention_type = L.LLAMA_ATTENTION_TYPE_UNSPECIFIED
cp.flash_attn_type = cfg["flash_attn_type"]
cp.rope_freq_base = 0.0
cp.rope_freq_scale = 0.0
cp.yarn_ext_factor = -1.0
cp.yarn_attn_factor = -1.0
cp.yarn_beta_fast = -1.0
cp.yarn_beta_slow = -1.0
cp.yarn_orig_ctx = 0
cp.defrag_thold = -1.0
cp.type_k = cfg["type_k"]
cp.type_v = cfg["type_v"]
cp.embeddings = False
cp.offload_kqv = cfg["offload_kqv"]
cp.no_perf = True
cp.op_offload = cfg["op_offload"]
cp.swa_full = cfg["swa_full"]
cp.kv_unified = cfg["kv_unified"]
report["context_params"] = {
    name: getattr(cp, name)
    for name, ctype in cp._fields_
    if isinstance(getattr(cp, name), (int, float, bool))
}

t0 = time.perf_counter()
ctx = L.llama_init_from_model(model, cp)
report["context_s"] = time.perf_counter() - t0
if ctx:
    report["context_created"] = True
    report["context"] = {
        "n_ctx": L.llama_n_ctx(ctx),
        "n_ctx_seq": L.llama_n_ctx_seq(ctx),
        "n_batch": L.llama_n_batch(ctx),
        "n_ubatch": L.llama_n_ubatch(ctx),
        "n_seq_max": L.llama_n_seq_max(ctx),
    }
    L.llama_free(ctx)
L.llama_model_free(model)
print(json.dumps(report), flush=True)
sys.exit(0 if ctx else 4)
"""


class ProbeError(RuntimeError):
    """llama.cpp did not load the model or create the context."""


@dataclass(frozen=True)
class Settings:
    """What ``measure`` asked llama.cpp for (names as in llama.cpp's C API)."""

    n_ctx: int
    n_batch: int
    n_ubatch: int
    type_k: str
    type_v: str
    flash_attn: FlashAttn
    n_seq_max: int
    kv_unified: bool
    swa_full: bool
    n_gpu_layers: int
    use_mmap: bool
    no_alloc: bool
    use_extra_bufts: bool
    offload_kqv: bool
    op_offload: bool
    n_threads: int


@dataclass(frozen=True)
class Measurement:
    """One child run: the parsed log plus what the C API returned."""

    path: Path
    settings: Settings
    log: LlamaLog
    log_text: str
    returncode: int
    model_loaded: bool
    context_created: bool
    model: dict[str, Any] = field(default_factory=dict)  # llama_model_* getters
    context: dict[str, Any] = field(default_factory=dict)  # llama_n_ctx, llama_n_ctx_seq, ...
    context_params: dict[str, Any] = field(default_factory=dict)  # the struct as passed
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and self.model_loaded and self.context_created

    def tail(self, lines: int = 20) -> str:
        """The last llama.cpp log lines, for failure messages."""
        return "\n".join(self.log_text.rstrip("\n").splitlines()[-lines:])


def _ggml_type(name: str) -> int:
    if name.lower() not in KV_CACHE_TYPES:
        raise ValueError(
            f"unknown KV cache type {name!r}; expected one of {', '.join(KV_CACHE_TYPES)}"
        )
    return int(GGMLQuantizationType[name.upper()].value)


def measure(
    model_path: str | os.PathLike[str],
    *,
    n_ctx: int,
    n_batch: int = 2048,
    n_ubatch: int = 512,
    type_k: str = "f16",
    type_v: str = "f16",
    flash_attn: FlashAttn = "auto",
    n_seq_max: int = 1,
    kv_unified: bool = False,
    swa_full: bool = False,
    n_gpu_layers: int = 0,
    use_mmap: bool = True,
    no_alloc: bool = False,
    use_extra_bufts: bool = True,
    offload_kqv: bool = True,
    op_offload: bool = True,
    n_threads: int = 2,
    rpc: tuple[str, ...] = (),
    tensor_split: tuple[float, ...] = (),
    timeout_s: float = 60.0,
    check: bool = True,
) -> Measurement:
    """Load ``model_path`` and create one context in a fresh process; parse what llama.cpp logged.

    Defaults are llama-server's (DESIGN.md, "Defaults"), not the C API's.
    With ``check`` a failed load or context raises ProbeError with the last log lines.
    """
    if flash_attn not in FLASH_ATTN_TYPES:
        raise ValueError(f"flash_attn must be auto, on or off, not {flash_attn!r}")
    if no_alloc and use_mmap:
        raise ValueError("no_alloc needs use_mmap=False (llama.cpp asserts that mmap is off)")
    settings = Settings(
        n_ctx=n_ctx,
        n_batch=n_batch,
        n_ubatch=n_ubatch,
        type_k=type_k,
        type_v=type_v,
        flash_attn=flash_attn,
        n_seq_max=n_seq_max,
        kv_unified=kv_unified,
        swa_full=swa_full,
        n_gpu_layers=n_gpu_layers,
        use_mmap=use_mmap,
        no_alloc=no_alloc,
        use_extra_bufts=use_extra_bufts,
        offload_kqv=offload_kqv,
        op_offload=op_offload,
        n_threads=n_threads,
    )
    path = Path(model_path)
    cfg = {
        "path": str(path),
        "n_ctx": n_ctx,
        "n_batch": n_batch,
        "n_ubatch": n_ubatch,
        "n_seq_max": n_seq_max,
        "n_threads": n_threads,
        "flash_attn_type": FLASH_ATTN_TYPES[flash_attn],
        "type_k": _ggml_type(type_k),
        "type_v": _ggml_type(type_v),
        "offload_kqv": offload_kqv,
        "op_offload": op_offload,
        "swa_full": swa_full,
        "kv_unified": kv_unified,
        "n_gpu_layers": n_gpu_layers,
        "load_mode": 1 if use_mmap else 0,  # LLAMA_LOAD_MODE_MMAP / LLAMA_LOAD_MODE_NONE
        "use_extra_bufts": use_extra_bufts,
        "no_alloc": no_alloc,
        "rpc": list(rpc),
        "tensor_split": list(tensor_split),
    }
    env = dict(os.environ, GGML_NO_BACKTRACE="1")
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _CHILD, json.dumps(cfg)],
            capture_output=True,
            env=env,
            timeout=timeout_s,
        )
    except subprocess.TimeoutExpired as exc:
        text = (exc.stderr or b"").decode("utf-8", "replace")
        tail = "\n".join(text.splitlines()[-20:])
        raise ProbeError(f"llama.cpp took over {timeout_s:g} s on {path}:\n{tail}") from None
    elapsed = time.perf_counter() - start
    text = proc.stderr.decode("utf-8", "replace")
    report: dict[str, Any] = {}
    stdout_lines = proc.stdout.decode("utf-8", "replace").strip().splitlines()
    if stdout_lines:
        try:
            report = json.loads(stdout_lines[-1])
        except json.JSONDecodeError:
            report = {}
    result = Measurement(
        path=path,
        settings=settings,
        log=parse_log(text),
        log_text=text,
        returncode=proc.returncode,
        model_loaded=bool(report.get("model_loaded")),
        context_created=bool(report.get("context_created")),
        model=report.get("model", {}),
        context=report.get("context", {}),
        context_params=report.get("context_params", {}),
        elapsed_s=elapsed,
    )
    if check and not result.ok:
        what = "load the model" if not result.model_loaded else "create the context"
        raise ProbeError(
            f"llama.cpp could not {what} ({path}, exit status {proc.returncode}):\n{result.tail()}"
        )
    return result
