"""The llama.cpp command line that runs exactly what a plan describes.

Flags are those of the llama.cpp vendored in llama-cpp-python 0.3.36
(common/arg.cpp): mmap is chosen with ``-lm`` (``--no-mmap`` no longer exists).
Every setting that differs from llama-server's default is spelled out, and
``-ngl``, ``-c`` and ``--fit off`` always are: llama-server's ``--fit`` would
otherwise re-decide them.
"""

from __future__ import annotations

import shlex

from llmtune.fit.settings import Settings

_DEFAULTS = Settings()


def llama_server_args(model_path: str, s: Settings, n_gpu_layers: int, n_ctx: int) -> list[str]:
    args = ["llama-server", "-m", model_path, "-ngl", str(n_gpu_layers), "-c", str(n_ctx)]
    if s.n_batch != _DEFAULTS.n_batch:
        args += ["-b", str(s.n_batch)]
    if s.n_ubatch != _DEFAULTS.n_ubatch:
        args += ["-ub", str(s.n_ubatch)]
    if s.cache_type_k != "f16":
        args += ["-ctk", s.cache_type_k]
    if s.cache_type_v != "f16":
        args += ["-ctv", s.cache_type_v]
    if s.flash_attn != "auto":
        args += ["-fa", s.flash_attn]
    # llama-server's own default is 4 unified slots; say what was planned.
    args += ["-np", str(s.n_parallel)]
    if s.kv_unified:
        args.append("-kvu")
    if s.swa_full:
        args.append("--swa-full")
    if s.no_kv_offload:
        args.append("-nkvo")
    if s.split_mode != "layer":
        args += ["-sm", s.split_mode]
    if s.main_gpu:
        args += ["-mg", str(s.main_gpu)]
    if s.tensor_split:
        args += ["-ts", ",".join(f"{x:g}" for x in s.tensor_split)]
    if s.n_cpu_moe < 0:
        args.append("--cpu-moe")
    elif s.n_cpu_moe:
        args += ["--n-cpu-moe", str(s.n_cpu_moe)]
    if not s.use_mmap:
        args += ["-lm", "none"]
    if s.threads:
        args += ["-t", str(s.threads)]
    args += ["--fit", "off"]
    return args


def llama_server_command(model_path: str, s: Settings, n_gpu_layers: int, n_ctx: int) -> str:
    return shlex.join(llama_server_args(model_path, s, n_gpu_layers, n_ctx))
