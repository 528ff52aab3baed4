"""The hand-off: one configuration as the four things users paste.

For one :class:`~llmtune.fit.settings.Settings` with its resolved
``n_gpu_layers`` and ``n_ctx`` (a plan's, a tune's best):

- the ``llama-server`` and ``llama-cli`` command lines (built by
  :mod:`llmtune.fit.commandline`, llmtune's one builder of llama.cpp flags);
- ``Llama(...)`` keyword arguments for llama-cpp-python 0.3.36, as a dict and
  as a Python snippet. ``Llama``'s own defaults differ from llama-server's
  (``n_ctx`` 512, ``n_batch`` 512, flash attention off, ``swa_full`` on in the C
  defaults, ``n_threads`` half the logical CPUs), so every setting is passed;
- an Ollama Modelfile: ``FROM`` the file and the ``PARAMETER`` lines Ollama
  has for loading a model (``api.Runner`` in ollama's ``api/types.go``:
  ``num_ctx``, ``num_batch``, ``num_gpu``, ``main_gpu``, ``use_mmap``,
  ``num_thread``). Flash attention, the KV cache type and parallel requests
  are server-wide environment variables in Ollama (``OLLAMA_FLASH_ATTENTION``,
  ``OLLAMA_KV_CACHE_TYPE``, ``OLLAMA_NUM_PARALLEL``), written as comments.

Over llama.cpp RPC hosts the hand-off also gives one ``ggml-rpc-server`` line
per host (``rpc_servers``), and the llama.cpp lines carry ``--rpc`` and the
planned split (``-ts``).

Whatever a target cannot express is said in ``notes``, one sentence each, so
nobody pastes a line believing it runs the plan when it does not.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from llmtune.fit.commandline import (
    llama_cli_args,
    llama_server_args,
    pinned_settings,
    plan_extras,
    rpc_server_commands,
)
from llmtune.fit.options import OPTION, cli_flag, llama_kwargs, resolved_threads
from llmtune.fit.settings import CACHE_TYPE_IDS, Extras, Settings

if TYPE_CHECKING:
    from llmtune.fit.plan import FitPlan


@dataclass(frozen=True)
class Handoff:
    """One configuration for llama-server, llama-cli, llama-cpp-python and Ollama."""

    llama_server_args: tuple[str, ...]
    llama_cli_args: tuple[str, ...]
    llama_kwargs: dict[str, Any]
    llama_snippet: str
    ollama_modelfile: str
    notes: tuple[str, ...] = ()
    rpc_servers: tuple[str, ...] = ()  # one ggml-rpc-server line per RPC host

    @property
    def llama_server(self) -> str:
        return shlex.join(self.llama_server_args)

    @property
    def llama_cli(self) -> str:
        return shlex.join(self.llama_cli_args)

    def as_dict(self) -> dict[str, Any]:
        return {
            "llama_server": self.llama_server,
            "llama_cli": self.llama_cli,
            "llama_cpp_python": dict(self.llama_kwargs),
            "llama_cpp_python_snippet": self.llama_snippet,
            "ollama_modelfile": self.ollama_modelfile,
            "rpc_servers": list(self.rpc_servers),
            "notes": list(self.notes),
        }

    def texts(self) -> dict[str, str]:
        """Each target's text as a user would copy it, by a short label."""
        hosts = {"RPC hosts (one line on each)": "\n".join(self.rpc_servers)}
        return {
            **(hosts if self.rpc_servers else {}),
            "llama-server": self.llama_server,
            "llama-cli": self.llama_cli,
            "llama-cpp-python": self.llama_snippet,
            "Ollama Modelfile": self.ollama_modelfile,
        }


def llama_cpp_kwargs(
    model_path: str, s: Settings, n_gpu_layers: int, n_ctx: int, flash_attn: bool
) -> tuple[dict[str, Any], list[str]]:
    """``Llama(**kwargs)`` for llama-cpp-python 0.3.36, and what it cannot set
    (each option's keyword and note come from :mod:`llmtune.fit.options`).

    ``flash_attn`` is the resolved value: ``Llama`` takes a bool, not ``auto``.
    """
    resolved = s.with_(
        n_gpu_layers=n_gpu_layers, n_ctx=n_ctx, flash_attn="on" if flash_attn else "off"
    )
    kwargs, notes = llama_kwargs(resolved)
    return {"model_path": model_path, **kwargs}, notes


def llama_cpp_snippet(kwargs: dict[str, Any]) -> str:
    """Python source that builds ``Llama(**kwargs)``."""
    names = {v: k for k, v in CACHE_TYPE_IDS.items()}
    lines = ["from llama_cpp import Llama", "", "llm = Llama("]
    for key, value in kwargs.items():
        comment = f"  # {names[value]}" if key in ("type_k", "type_v") else ""
        lines.append(f"    {key}={value!r},{comment}")
    lines.append(")")
    return "\n".join(lines) + "\n"


def _modelfile_value(text: str) -> str:
    """A Modelfile value as Ollama's own writer quotes it (parser/parser.go ``quote``):
    the parser trims the value, so leading or trailing spaces and newlines need quotes."""
    if "\n" in text or text.startswith(" ") or text.endswith(" "):
        return f'"""{text}"""' if '"' in text else f'"{text}"'
    return text


def ollama_modelfile(
    model_path: str, s: Settings, n_gpu_layers: int, n_ctx: int, flash_attn: bool
) -> tuple[str, list[str]]:
    """An Ollama Modelfile for the same load, and what Ollama cannot express."""
    n_seq = max(1, s.n_parallel)
    # Ollama starts llama-server with -c num_ctx x OLLAMA_NUM_PARALLEL: num_ctx is per sequence.
    per_sequence = n_ctx if s.kv_unified else n_ctx // n_seq
    lines = [f"FROM {_modelfile_value(model_path)}"]
    lines.append(f"PARAMETER num_ctx {per_sequence}")
    lines.append(f"PARAMETER num_gpu {n_gpu_layers if n_gpu_layers >= 0 else 999}")
    # Ollama passes num_batch as both -b and -ub (llm/llama_server.go appendBatchArgs).
    lines.append(f"PARAMETER num_batch {s.n_ubatch}")
    lines.append(f"PARAMETER num_thread {resolved_threads(s.threads)}")
    if s.main_gpu:
        lines.append(f"PARAMETER main_gpu {s.main_gpu}")
    if not s.use_mmap:
        lines.append("PARAMETER use_mmap false")
    env = [f"OLLAMA_FLASH_ATTENTION={1 if flash_attn else 0}"]
    notes: list[str] = []
    if s.cache_type_k == s.cache_type_v:
        if s.cache_type_k != "f16":
            env.append(f"OLLAMA_KV_CACHE_TYPE={s.cache_type_k}")
    else:
        notes.append(
            f"Ollama: one KV cache type for K and V (OLLAMA_KV_CACHE_TYPE), "
            f"not {s.cache_type_k}/{s.cache_type_v}"
        )
    if n_seq > 1:
        env.append(f"OLLAMA_NUM_PARALLEL={n_seq}")
    lines.append("# Ollama takes these from the server's environment, for every model:")
    lines.append("#   " + " ".join(env))
    if s.n_batch != s.n_ubatch:
        notes.append(
            f"Ollama: num_batch sets batch and ubatch together; {s.n_ubatch} (the ubatch) "
            f"is used, not batch {s.n_batch}"
        )
    unsupported = [
        (s.n_cpu_moe != 0, f"MoE experts on the CPU ({cli_flag('n_cpu_moe')})"),
        (bool(s.layer_overflow), "tensors placed off their layer's device (-ot)"),
        (bool(s.tensor_split), "a tensor split"),
        (s.split_mode != "layer", f"split mode {s.split_mode}"),
        (s.no_kv_offload, f"the KV cache kept on the host ({cli_flag('no_kv_offload')})"),
        (s.swa_full, f"a full-size sliding-window cache ({cli_flag('swa_full')})"),
    ]
    for missing, what in unsupported:
        if missing:
            notes.append(f"Ollama: a Modelfile cannot ask for {what}")
    return "\n".join(lines) + "\n", notes


def make_handoff(
    model_path: str,
    settings: Settings,
    n_gpu_layers: int,
    n_ctx: int,
    flash_attn: bool | None = None,
    extras: Extras | None = None,
    rpc_servers: tuple[str, ...] = (),
) -> Handoff:
    """Every hand-off for one configuration.

    ``flash_attn``: the resolved flash attention (``FitPlan.flash_attn``); None
    takes the settings' on/off, and ``auto`` as on (what llama.cpp picks when
    the backend supports it).
    """
    s = settings
    fa = flash_attn if flash_attn is not None else s.flash_attn != "off"
    kwargs, notes = llama_cpp_kwargs(model_path, s, n_gpu_layers, n_ctx, fa)
    modelfile, ollama_notes = ollama_modelfile(model_path, s, n_gpu_layers, n_ctx, fa)
    if s.kv_unified:
        kvu = OPTION["kv_unified"].server[0].name
        notes.insert(0, f"llama-cli: no unified KV cache option ({kvu} is llama-server's)")
    x = extras if extras is not None else Extras()
    if x.rpc_servers:
        notes.append(
            "llama-cpp-python: Llama() takes no RPC hosts; register them first with "
            "llama.cpp's ggml_backend_rpc_add_server, as llmtune's worker does"
        )
        ollama_notes.append("Ollama: a Modelfile cannot place layers on RPC hosts")
    return Handoff(
        llama_server_args=tuple(llama_server_args(model_path, s, n_gpu_layers, n_ctx, x)),
        llama_cli_args=tuple(llama_cli_args(model_path, s, n_gpu_layers, n_ctx, x)),
        llama_kwargs=kwargs,
        llama_snippet=llama_cpp_snippet(kwargs),
        ollama_modelfile=modelfile,
        notes=tuple(notes + ollama_notes),
        rpc_servers=rpc_servers,
    )


def plan_handoff(model_path: str, plan: FitPlan) -> Handoff:
    """The hand-off for a plan: its resolved layers, context and flash attention,
    its split pinned and its RPC hosts."""
    return make_handoff(
        model_path,
        pinned_settings(plan),
        plan.n_gpu_layers,
        plan.n_ctx,
        plan.flash_attn,
        plan_extras(plan),
        rpc_server_commands(plan),
    )
