"""The llama.cpp command line that runs exactly what a plan describes.

This is llmtune's one builder of llama.cpp arguments: ``llmtune fit`` prints it,
the hand-off (:mod:`llmtune.fit.handoff`) offers it, and
:meth:`llmtune.engine.config.RunConfig.command_line` returns it.

Flags are those of the llama.cpp vendored in llama-cpp-python 0.3.36
(``common/arg.cpp``, ``common_params_parser_init``):

- mmap and mlock are one option, ``-lm``/``--load-mode`` (``none``, ``mmap``,
  ``mlock``, ``mmap+mlock``); ``--no-mmap`` and ``--mlock`` no longer exist.
- ``-ngl`` takes a number, ``auto`` or ``all``; ``-1`` means ``auto`` (let
  ``--fit`` decide), so "every layer" is written ``all``, never ``-1``.
- ``--fit`` defaults to on and would re-decide ``-ngl`` and ``-c``: ``--fit off``
  is always spelled out, and so are ``-ngl`` and ``-c``.
- llama-server's ``-np`` defaults to auto (4 slots, unified KV); llama-cli's to
  1. The server line always says how many sequences were planned.

Every other setting is written only when it differs from llama.cpp's default
(``common/common.h``), so the line stays short.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Literal

from llmtune.fit.settings import Settings

_DEFAULTS = Settings()
Program = Literal["llama-server", "llama-cli"]


@dataclass(frozen=True)
class Extras:
    """Settings the worker can set that the estimator does not model (RunConfig has them)."""

    threads_batch: int = 0  # 0: as --threads
    use_mlock: bool = False
    use_extra_bufts: bool = True  # CPU_REPACK; False is --no-repack
    op_offload: bool = True  # False is --no-op-offload


def load_mode(use_mmap: bool, use_mlock: bool) -> str:
    """``-lm`` value (common/arg.cpp "--load-mode") for mmap and mlock."""
    if use_mmap:
        return "mmap+mlock" if use_mlock else "mmap"
    return "mlock" if use_mlock else "none"


def gpu_layers_arg(n_gpu_layers: int) -> str:
    """``-ngl`` value: a count, or ``all`` for every layer (``-1`` would mean ``auto``)."""
    return "all" if n_gpu_layers < 0 else str(n_gpu_layers)


def llama_args(
    model_path: str,
    s: Settings,
    n_gpu_layers: int,
    n_ctx: int,
    extras: Extras = Extras(),
    program: Program = "llama-server",
) -> list[str]:
    """The arguments after the program name, for ``program``."""
    args = ["-m", model_path, "-ngl", gpu_layers_arg(n_gpu_layers), "-c", str(n_ctx)]
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
    if program == "llama-server" or s.n_parallel != 1:
        args += ["-np", str(s.n_parallel)]
    if s.kv_unified and program == "llama-server":  # -kvu is not a llama-cli option
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
    mode = load_mode(s.use_mmap, extras.use_mlock)
    if mode != "mmap":
        args += ["-lm", mode]
    if s.threads:
        args += ["-t", str(s.threads)]
    if extras.threads_batch:
        args += ["-tb", str(extras.threads_batch)]
    if not extras.use_extra_bufts:
        args.append("--no-repack")
    if not extras.op_offload:
        args.append("--no-op-offload")
    args += ["--fit", "off"]
    return args


def llama_server_args(
    model_path: str, s: Settings, n_gpu_layers: int, n_ctx: int, extras: Extras = Extras()
) -> list[str]:
    return ["llama-server", *llama_args(model_path, s, n_gpu_layers, n_ctx, extras)]


def llama_server_command(
    model_path: str, s: Settings, n_gpu_layers: int, n_ctx: int, extras: Extras = Extras()
) -> str:
    return shlex.join(llama_server_args(model_path, s, n_gpu_layers, n_ctx, extras))


def llama_cli_args(
    model_path: str, s: Settings, n_gpu_layers: int, n_ctx: int, extras: Extras = Extras()
) -> list[str]:
    return ["llama-cli", *llama_args(model_path, s, n_gpu_layers, n_ctx, extras, "llama-cli")]


def llama_cli_command(
    model_path: str, s: Settings, n_gpu_layers: int, n_ctx: int, extras: Extras = Extras()
) -> str:
    return shlex.join(llama_cli_args(model_path, s, n_gpu_layers, n_ctx, extras))
