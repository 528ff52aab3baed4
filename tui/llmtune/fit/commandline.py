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
from dataclasses import replace
from typing import TYPE_CHECKING

from llmtune.fit.options import Program, server_args
from llmtune.fit.settings import Extras, Settings
from llmtune.model.spec import is_url

if TYPE_CHECKING:
    from llmtune.fit.plan import FitPlan

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
    # A model read over HTTP is handed over as llama.cpp's --model-url (it downloads it).
    flag = "-mu" if is_url(model_path) else "-m"
    return [flag, model_path, *server_args(resolved, extras, program), "--fit", "off"]


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


def plan_endpoints(plan: FitPlan) -> tuple[str, ...]:
    """The RPC hosts a plan places layers on, in llama.cpp's order (``--rpc``)."""
    seen: list[str] = []
    for d in plan.devices:
        if d.kind == "rpc" and d.endpoint and d.endpoint not in seen:
            seen.append(d.endpoint)
    return tuple(seen)


def pinned_settings(plan: FitPlan) -> Settings:
    """The plan's settings with its layer split written out: over several devices
    llama.cpp splits by free memory at load time (llama-model.cpp
    ``load_tensors``), which may have moved since the plan; ``-ts`` with each
    device's layer count (the output layer counting as one) places them exactly
    as planned."""
    s = plan.settings
    devices = plan.gpus
    if len(devices) < 2 or any(s.tensor_split) or s.split_mode == "none":
        return s
    counts = tuple(float(d.n_layers + d.has_output) for d in devices)
    return s.with_(tensor_split=counts) if any(counts) else s


def plan_extras(plan: FitPlan, extras: Extras = _EXTRAS) -> Extras:
    """``extras`` with the plan's RPC hosts."""
    return replace(extras, rpc_servers=plan_endpoints(plan))


def rpc_server_commands(plan: FitPlan) -> tuple[str, ...]:
    """One ``ggml-rpc-server`` line per RPC host, run on that host
    (tools/rpc/rpc-server.cpp: ``-H`` the address to listen on, ``-p`` the port)."""
    lines: list[str] = []
    for endpoint in plan_endpoints(plan):
        host, _, port = endpoint.rpartition(":")
        lines.append(shlex.join(["ggml-rpc-server", "-H", host, "-p", port]))
    return tuple(lines)


def plan_server_command(model_path: str, plan: FitPlan, extras: Extras = _EXTRAS) -> str:
    """The llama-server line that runs exactly ``plan``."""
    return llama_server_command(
        model_path, pinned_settings(plan), plan.n_gpu_layers, plan.n_ctx, plan_extras(plan, extras)
    )
