"""The plan of a server being watched: its settings rebuilt, planned with :func:`llmtune.fit.plan.plan`.

A local server's settings come from its command line
(:func:`llmtune.fit.serverline.parse_server_args`); a remote one's from
``/props``, which says the model's path, the slots and each slot's context and
nothing of ``-ngl``, cache types or flash attention: those are llama-server's
defaults unless the user gives them (``llmtune attach URL --ngl 99``). Either
way the context the server really allocated (``/props``' slot ``n_ctx``)
replaces an unset ``-c``, which llama.cpp's fit may have shrunk.

The machine is this one, with the server's own GPU memory counted as free
(it holds what the plan predicts); for a remote server it is the machine the
user describes (``--gpu``, ``--ram``), or this one as a stand-in, with a note.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from llmtune.engine.attach import ServerSample
from llmtune.engine.attach_local import LocalServer
from llmtune.errors import LlmtuneError
from llmtune.fit.plan import FitPlan, plan
from llmtune.fit.serverline import AUTO_PARALLEL
from llmtune.fit.settings import Settings
from llmtune.hardware.machine import MachineOptions, machine
from llmtune.model.spec import is_url
from llmtune.textsafe import inert


@dataclass(frozen=True)
class ServerPlan:
    """What llmtune predicts for the server, or why it cannot."""

    model: str | None
    settings: Settings
    source: str  # where the settings came from, in words
    plan: FitPlan | None = None
    problem: str | None = None
    notes: tuple[str, ...] = ()

    @property
    def gpu_bytes(self) -> tuple[int, ...]:
        """Predicted memory per local GPU, in NVML's order."""
        return tuple(d.total_bytes for d in self.plan.local_gpus) if self.plan else ()

    @property
    def host_bytes(self) -> int | None:
        return self.plan.host.total_bytes if self.plan else None

    @property
    def tg_tokens_per_s(self) -> float | None:
        return self.plan.predicted.tg_tokens_per_s if self.plan else None

    @property
    def pp_tokens_per_s(self) -> float | None:
        return self.plan.predicted.pp_tokens_per_s if self.plan else None

    @property
    def verdict(self) -> str:
        if self.plan is None:
            return "no plan"
        return self.plan.verdict

    def to_json(self) -> dict[str, Any]:
        p = self.plan
        return {
            "model": self.model,
            "source": self.source,
            "problem": self.problem,
            "notes": list(self.notes),
            "verdict": self.verdict,
            "n_gpu_layers": p.n_gpu_layers if p else None,
            "n_ctx": p.n_ctx if p else None,
            "n_parallel": self.settings.n_parallel,
            "gpu_bytes": list(self.gpu_bytes),
            "host_bytes": self.host_bytes,
            "tg_tokens_per_s": self.tg_tokens_per_s,
            "pp_tokens_per_s": self.pp_tokens_per_s,
        }


def _with_props(settings: Settings, sample: ServerSample) -> Settings:
    """The context the server allocated, where its line left it to llama.cpp."""
    slots = sample.total_slots or settings.n_parallel
    if sample.n_ctx_slot is None or settings.n_ctx > 0:
        return settings.with_(n_parallel=slots)
    cells = sample.n_ctx_slot if settings.kv_unified else sample.n_ctx_slot * slots
    return settings.with_(n_parallel=slots, n_ctx=cells)


def _remote_settings(sample: ServerSample, given: Mapping[str, Any]) -> Settings:
    """llama-server's defaults, the slots /props reports, and what the user gave."""
    slots = sample.total_slots or 1
    # -np auto (4 slots, one unified cache) is the default; other counts split -c.
    unified = slots == AUTO_PARALLEL
    base = Settings(n_parallel=slots, kv_unified=unified)
    if sample.n_ctx_slot:
        base = base.with_(n_ctx=sample.n_ctx_slot if unified else sample.n_ctx_slot * slots)
    return base.with_(**given)


def plan_server(
    sample: ServerSample,
    local: LocalServer | None,
    *,
    model: str | None = None,
    given: Mapping[str, Any] | None = None,
    options: MachineOptions | None = None,
) -> ServerPlan:
    """Plan the server ``sample`` came from. ``model`` replaces the model it names
    (a path or URL llmtune can read); ``given`` are settings the user gave."""
    from llmtune.model.source import open_spec

    given = dict(given or {})
    options = options or MachineOptions()
    notes: list[str] = []
    hf = None
    if local is not None and local.line is not None:
        settings = _with_props(local.line.settings.with_(**given), sample)
        source = f"its command line (pid {local.pid})"
        path = model or local.model_path
        if local.line.model_kind == "hf" and model is None:
            hf, path = local.line.model, None
        rpc = local.line.rpc
        if local.line.skipped:
            notes.append("not planned: " + ", ".join(local.line.skipped))
    else:
        settings = _remote_settings(sample, given)
        source = "/props and llama-server's defaults"
        path = model or sample.model
        rpc = ()
        notes.append(
            "-ngl, cache types and flash attention are not in /props: planned at "
            "llama-server's defaults (give --ngl, --cache-type-k, ... to change them)"
        )
    shown = path or hf
    if path is not None and not is_url(path) and not os.path.isfile(path):
        return ServerPlan(
            shown,
            settings,
            source,
            problem=f"the model file {inert(path, max_chars=200)} is not on this machine "
            "(give --model PATH or URL)",
            notes=tuple(notes),
        )
    if path is None and hf is None:
        return ServerPlan(None, settings, source, problem="the server names no model",
                          notes=tuple(notes))  # fmt: skip
    try:
        spec = open_spec(path, hf).spec
        options = replace(options, rpc=tuple(options.rpc) or ((",".join(rpc),) if rpc else ()))
        pids = (local.pid,) if local is not None else ()
        m = machine(options, exclude_pids=pids)
        result = plan(spec, m.devices, settings, m.plan_speed)
    except LlmtuneError as exc:
        return ServerPlan(shown, settings, source, problem=exc.one_line(), notes=tuple(notes))
    if local is None and not options.what_if:
        notes.append("planned on this machine's hardware (give --gpu and --ram for the server's)")
    return ServerPlan(shown, settings, source, plan=result, notes=(*notes, *result.notes))
