"""The llama.cpp command line that runs exactly what a plan describes.

This is llmtune's one builder of llama.cpp arguments: ``llmtune fit`` prints it,
the hand-off (:mod:`llmtune.fit.handoff`) offers it, and
:meth:`llmtune.engine.config.RunConfig.command_line` returns it. Each option's
flag, and when it is written, comes from the table in :mod:`llmtune.fit.options`
(flags of the llama.cpp vendored in llama-cpp-python 0.3.36, ``common/arg.cpp``);
``-ngl`` and ``-c`` are always written, and so is ``--fit off``: ``--fit``
defaults to on and would re-decide both.
"""

from __future__ import annotations

import shlex

from llmtune.fit.options import Program, server_args
from llmtune.fit.settings import Extras, Settings

_EXTRAS = Extras()  # llama.cpp's defaults: none of them written


def llama_args(
    model_path: str,
    s: Settings,
    n_gpu_layers: int,
    n_ctx: int,
    extras: Extras = _EXTRAS,
    program: Program = "llama-server",
) -> list[str]:
    """The arguments after the program name, for ``program``."""
    resolved = s.with_(n_gpu_layers=n_gpu_layers, n_ctx=n_ctx)
    return ["-m", model_path, *server_args(resolved, extras, program), "--fit", "off"]


def llama_server_args(
    model_path: str, s: Settings, n_gpu_layers: int, n_ctx: int, extras: Extras = _EXTRAS
) -> list[str]:
    return ["llama-server", *llama_args(model_path, s, n_gpu_layers, n_ctx, extras)]


def llama_server_command(
    model_path: str, s: Settings, n_gpu_layers: int, n_ctx: int, extras: Extras = _EXTRAS
) -> str:
    return shlex.join(llama_server_args(model_path, s, n_gpu_layers, n_ctx, extras))


def llama_cli_args(
    model_path: str, s: Settings, n_gpu_layers: int, n_ctx: int, extras: Extras = _EXTRAS
) -> list[str]:
    return ["llama-cli", *llama_args(model_path, s, n_gpu_layers, n_ctx, extras, "llama-cli")]


def llama_cli_command(
    model_path: str, s: Settings, n_gpu_layers: int, n_ctx: int, extras: Extras = _EXTRAS
) -> str:
    return shlex.join(llama_cli_args(model_path, s, n_gpu_layers, n_ctx, extras))
