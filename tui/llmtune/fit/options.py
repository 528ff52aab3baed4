"""The one table of llama.cpp options llmtune passes, and every output made from it.

Each :class:`Option` row names one field of
:class:`~llmtune.fit.settings.Settings` (what the user chose, what the plan
models) or of :class:`~llmtune.fit.settings.Extras` (what only the worker sets)
and says, once, how that option reaches each place it appears:

- ``cli``: llmtune's own flags on ``fit``, ``bench`` and ``tune`` (argparse's
  type, metavar and help; how the parsed text becomes the field's value);
- ``server``: the flag of llama-server and llama-cli and how its value is
  written, from ``common/arg.cpp`` (``common_params_parser_init``) of the
  llama.cpp vendored in llama-cpp-python 0.3.36. A flag is written only when
  its value differs from llama.cpp's default (``common_params`` in
  ``common/common.h``, which Settings' defaults follow), unless the line must
  always say it: ``-ngl`` and ``-c``, which ``--fit`` would otherwise
  re-decide, and llama-server's ``-np``, whose default is auto (4 slots);
- ``python``: the keyword of llama-cpp-python's ``Llama`` and the value it
  takes there; ``Llama``'s own defaults differ from llama-server's (n_ctx 512,
  n_batch 512, flash attention off, ``swa_full`` on in the C defaults), so
  those keywords are always passed. ``python_note`` says what ``Llama()``
  cannot express, when the value asks for it;
- ``c``: the field of ``llama_model_params`` or ``llama_context_params``
  (``include/llama.h``) the worker sets;
- ``json``: the key in ``fit --json``'s ``settings`` (a documented contract);
- ``stepper``: the offload pane's stepper label, and its key where the stepper
  shows the field inverted.

The defaults are not in the table: they are Settings' and Extras' typed
dataclass fields, written once and checked by mypy, and the table reads them
from ``Settings()`` and ``Extras()``. The table is in the order llama-server's
line writes its flags and ``Llama(...)`` its keywords; llmtune's flags and the
JSON keys follow Settings' field order.

Four fields are the planner's alone (``margin_bytes``, ``device_margins``,
``fit_ctx``, ``gpu_overhead_bytes``):
they have llmtune flags and no llama.cpp one, since llmtune always writes
``--fit off``.
"""

from __future__ import annotations

import argparse
import dataclasses
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from llmtune.fit.argtypes import (
    context_size,
    experts_on_cpu,
    int_or_max,
    mib_list,
    proportions,
    runtime_size,
    size_parser,
    whole,
)
from llmtune.fit.overflow import override_arg
from llmtune.fit.settings import (
    CACHE_TYPE_IDS,
    FLASH_ATTN_IDS,
    LOAD_MODE_IDS,
    NGL_AUTO,
    SPLIT_MODE_IDS,
    Extras,
    Settings,
)

Program = Literal["llama-server", "llama-cli"]
PROGRAMS: frozenset[Program] = frozenset(("llama-server", "llama-cli"))
SERVER: frozenset[Program] = frozenset(("llama-server",))
Struct = Literal["model", "context"]
Reader = Callable[[Settings, Extras], Any]

_SETTINGS = Settings()
_EXTRAS = Extras()


def _same(value: Any) -> Any:
    return value


# ---- how values are written ----------------------------------------------------


def gpu_layers_arg(n_gpu_layers: int) -> str:
    """``-ngl`` value: a count, ``all`` for every layer (``-1`` would mean ``auto``),
    or ``auto`` (a line written before the fit resolved it)."""
    if n_gpu_layers == NGL_AUTO:
        return "auto"
    return "all" if n_gpu_layers < 0 else str(n_gpu_layers)


def load_mode(use_mmap: bool, use_mlock: bool) -> str:
    """``-lm`` value (common/arg.cpp "--load-mode") for mmap and mlock: this llama.cpp
    has no ``--no-mmap`` or ``--mlock``."""
    if use_mmap:
        return "mmap+mlock" if use_mlock else "mmap"
    return "mlock" if use_mlock else "none"


def resolved_threads(threads: int) -> int:
    """A thread count, 0 being llama.cpp's default: the physical cores (common's
    ``cpu_get_num_math``). ``Llama`` and the C API would pick otherwise."""
    if threads:
        return threads
    from llmtune.hardware.host import physical_cores

    return physical_cores()


# ---- llmtune's own flags: argparse types (fit.argtypes) and checks ------------


# ---- the records ----------------------------------------------------------------


@dataclass(frozen=True)
class Arg:
    """One llmtune flag for an option (``fit``, ``bench``, ``tune``)."""

    flag: str
    parse: Callable[[str], Any] = str  # argparse's type
    switch: bool = False  # store_true: no value on the command line
    metavar: str | None = None
    help: str | None = None  # may name {default}: the field's default
    # What was parsed -> the field's value; may raise ConfigError.
    value: Callable[[Any], Any] = _same

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


@dataclass(frozen=True)
class Flag:
    """How llama-server and llama-cli (common/arg.cpp) take one option."""

    name: str
    text: Callable[[Any], str] | None = str  # the value as llama.cpp reads it; None: a switch
    when: Callable[[Any], bool] | None = None  # written when; None: off llama.cpp's default
    always: frozenset[Program] = frozenset()  # lines that carry it even at the default
    programs: frozenset[Program] = PROGRAMS  # the programs that have the flag
    reads: Reader | None = None  # the value, where it is not the option's field alone


@dataclass(frozen=True)
class PyArg:
    """The llama-cpp-python 0.3.36 ``Llama(...)`` keyword(s) for one option."""

    keys: tuple[str, ...]
    convert: Callable[[Any], Any] = _same
    always: bool = False  # passed at llmtune's default too: Llama's own default differs


@dataclass(frozen=True)
class CParam:
    """The llama.h parameter the worker sets for one option."""

    struct: Struct  # llama_model_params or llama_context_params
    name: str
    convert: Callable[[Any], Any] = _same
    reads: Reader | None = None  # the value, where it is not the option's field alone


@dataclass(frozen=True)
class StepperSpec:
    """The offload pane's stepper for one option."""

    label: str
    key: str = ""  # its id is ``set-<key>``; empty: the field's name
    shown: Callable[[Any], Any] = _same  # the field's value -> the stepper's (its own inverse)


@dataclass(frozen=True)
class Option:
    """One llama.cpp option as llmtune passes it everywhere; see the module docstring."""

    field: str
    cli: tuple[Arg, ...] = ()
    server: tuple[Flag, ...] = ()
    python: PyArg | None = None
    python_note: str | None = None  # Llama() cannot say it, when off the default; {value}
    c: CParam | None = None
    json: str | None = None
    json_value: Callable[[Any], Any] = _same
    stepper: StepperSpec | None = None
    extra: bool = False  # an Extras field, not a Settings one

    @property
    def default(self) -> Any:
        return getattr(_EXTRAS if self.extra else _SETTINGS, self.field)

    def value(self, s: Settings, x: Extras) -> Any:
        return getattr(x if self.extra else s, self.field)


def _switch(flag: str, help: str | None = None, value: Any = True) -> Arg:
    return Arg(flag, switch=True, help=help, value=lambda _given: value)


def _lower(text: str) -> str:
    return text.lower()


def _ids(table: Mapping[str, int]) -> Callable[[Any], int]:
    return lambda name: table[name]


def _mmap_and_mlock(s: Settings, x: Extras) -> tuple[bool, bool]:
    return s.use_mmap, x.use_mlock


# In the order llama-server's line writes them (commandline.llama_args).
OPTIONS: tuple[Option, ...] = (
    Option(
        "rpc_servers",
        # llmtune's --rpc is a machine option (hardware.machine probes the hosts);
        # the worker registers them itself (engine.ggml_rpc): Llama() has no keyword.
        server=(Flag("--rpc", ",".join),),
        extra=True,
    ),
    Option(
        "n_gpu_layers",
        cli=(
            Arg(
                "--ngl",
                int_or_max,
                help="layers on the GPU: auto (default: what llama.cpp's --fit chooses, its "
                "arguments in --json's fit_args), a count, or max (every layer)",
            ),
        ),
        # -1 is "auto" to llama.cpp (let --fit decide): every layer is "all".
        server=(Flag("-ngl", gpu_layers_arg, always=PROGRAMS),),
        python=PyArg(("n_gpu_layers",), always=True),  # Llama maps -1 to every layer
        c=CParam("model", "n_gpu_layers"),
        json="n_gpu_layers",
    ),
    Option(
        "n_ctx",
        cli=(
            Arg(
                "--ctx",
                context_size,
                help="context size (default {default}; train: the trained context; "
                "max: the largest that fits)",
            ),
        ),
        server=(Flag("-c", always=PROGRAMS),),  # --fit would shrink an unset context
        python=PyArg(("n_ctx",), always=True),
        c=CParam("context", "n_ctx"),
        json="n_ctx",
        stepper=StepperSpec("context"),
    ),
    Option(
        "n_batch",
        cli=(Arg("--batch", whole),),
        server=(Flag("-b"),),
        python=PyArg(("n_batch",), always=True),
        c=CParam("context", "n_batch"),
        json="n_batch",
        stepper=StepperSpec("batch"),
    ),
    Option(
        "n_ubatch",
        cli=(Arg("--ubatch", whole),),
        server=(Flag("-ub"),),
        python=PyArg(("n_ubatch",), always=True),
        c=CParam("context", "n_ubatch"),
        json="n_ubatch",
        stepper=StepperSpec("ubatch"),
    ),
    Option(
        "cache_type_k",
        cli=(Arg("--cache-type-k", metavar="T", value=_lower),),
        server=(Flag("-ctk"),),
        python=PyArg(("type_k",), _ids(CACHE_TYPE_IDS)),
        c=CParam("context", "type_k", _ids(CACHE_TYPE_IDS)),
        json="cache_type_k",
        stepper=StepperSpec("K cache"),
    ),
    Option(
        "cache_type_v",
        cli=(Arg("--cache-type-v", metavar="T", value=_lower),),
        server=(Flag("-ctv"),),
        python=PyArg(("type_v",), _ids(CACHE_TYPE_IDS)),
        c=CParam("context", "type_v", _ids(CACHE_TYPE_IDS)),
        json="cache_type_v",
        stepper=StepperSpec("V cache"),
    ),
    Option(
        "flash_attn",
        cli=(Arg("--flash-attn", metavar="on|off|auto", value=_lower),),
        server=(Flag("-fa"),),
        # Llama takes a bool: the hand-off passes the resolved on/off (auto is not one).
        python=PyArg(("flash_attn",), lambda mode: mode != "off", always=True),
        c=CParam("context", "flash_attn_type", _ids(FLASH_ATTN_IDS)),
        json="flash_attn",
        stepper=StepperSpec("flash attn"),
    ),
    Option(
        "n_parallel",
        cli=(Arg("--parallel", whole),),
        # llama-server's -np defaults to auto (4 slots, unified KV), llama-cli's to 1.
        server=(Flag("-np", always=SERVER),),
        python_note="llama-cpp-python: Llama() decodes one sequence; {value} parallel "
        "sequences need llama-server",
        c=CParam("context", "n_seq_max"),
        json="n_parallel",
        stepper=StepperSpec("parallel"),
    ),
    Option(
        "kv_unified",
        cli=(_switch("--kv-unified"),),
        server=(Flag("-kvu", None, programs=SERVER),),  # not a llama-cli option
        python_note="llama-cpp-python: Llama() has no unified KV cache option",
        c=CParam("context", "kv_unified"),
        json="kv_unified",
    ),
    Option(
        "swa_full",
        cli=(_switch("--swa-full"),),
        server=(Flag("--swa-full", None),),
        python=PyArg(("swa_full",), always=True),
        c=CParam("context", "swa_full"),
        json="swa_full",
    ),
    Option(
        "no_kv_offload",
        cli=(_switch("--no-kv-offload"),),
        server=(Flag("-nkvo", None),),
        python=PyArg(("offload_kqv",), operator.not_, always=True),
        c=CParam("context", "offload_kqv", operator.not_),
        json="no_kv_offload",
        stepper=StepperSpec("KV on GPU", "kv_offload", operator.not_),
    ),
    Option(
        "split_mode",
        cli=(Arg("--split-mode", metavar="layer|row|none", value=_lower),),
        server=(Flag("-sm"),),
        python=PyArg(("split_mode",), _ids(SPLIT_MODE_IDS)),
        c=CParam("model", "split_mode", _ids(SPLIT_MODE_IDS)),
        json="split_mode",
    ),
    Option(
        "main_gpu",
        cli=(Arg("--main-gpu", whole),),
        server=(Flag("-mg"),),
        python=PyArg(("main_gpu",)),
        c=CParam("model", "main_gpu"),
        json="main_gpu",
    ),
    Option(
        "tensor_split",
        cli=(Arg("--tensor-split", metavar="A,B,...", value=proportions),),
        server=(Flag("-ts", lambda split: ",".join(f"{x:g}" for x in split)),),
        python=PyArg(("tensor_split",), list),
        # The worker sets it: a float array of llama_max_devices() it must keep alive.
        json="tensor_split",
        json_value=list,
    ),
    Option(
        "layer_overflow",
        # llama.cpp's fit chooses it (fit.autofit): no llmtune flag. Before
        # --n-cpu-moe on the line: an override that comes first wins a tensor.
        server=(Flag("-ot", override_arg),),
        python_note="llama-cpp-python: Llama() cannot place tensors (tensor_buft_overrides "
        "is not exposed); use llama-server's -ot",
        # The worker sets it: tensor_buft_overrides it builds (engine.config).
        json="layer_overflow",
        json_value=lambda overflow: [list(entry) for entry in overflow],
    ),
    Option(
        "n_cpu_moe",
        # The last flag given wins: --cpu-moe over --n-cpu-moe.
        cli=(
            Arg("--n-cpu-moe", whole, metavar="N", value=experts_on_cpu),
            _switch("--cpu-moe", "all experts on the CPU", -1),
        ),
        server=(
            Flag("--cpu-moe", None, when=lambda n: n < 0),
            Flag("--n-cpu-moe", when=lambda n: n > 0),
        ),
        python_note="llama-cpp-python: Llama() cannot keep MoE experts on the CPU "
        "(tensor_buft_overrides is not exposed); use llama-server's --n-cpu-moe",
        # The worker sets it: tensor_buft_overrides it builds (engine.config).
        json="n_cpu_moe",
        stepper=StepperSpec("MoE on CPU"),
    ),
    Option(
        "use_mmap",
        cli=(_switch("--no-mmap", value=False),),
        # mmap and mlock are one llama.cpp option, -lm / llama_model_params.load_mode.
        server=(Flag("-lm", lambda both: load_mode(*both), reads=_mmap_and_mlock),),
        python=PyArg(("use_mmap",)),
        c=CParam("model", "load_mode", LOAD_MODE_IDS.__getitem__, _mmap_and_mlock),
        json="use_mmap",
    ),
    Option("use_mlock", extra=True),  # written with use_mmap: -lm, load_mode
    Option(
        "threads",
        # tune's --threads takes a list to search; fit and bench have none.
        server=(Flag("-t"),),
        python=PyArg(("n_threads", "n_threads_batch"), resolved_threads, always=True),
        c=CParam("context", "n_threads", resolved_threads),
        stepper=StepperSpec("threads"),
    ),
    Option(
        "threads_batch",
        server=(Flag("-tb"),),
        c=CParam(
            "context",
            "n_threads_batch",
            resolved_threads,
            lambda s, x: x.threads_batch or s.threads,
        ),
        extra=True,
    ),
    Option(
        "use_extra_bufts",
        server=(Flag("--no-repack", None),),
        c=CParam("model", "use_extra_bufts"),
        extra=True,
    ),
    Option(
        "op_offload",
        server=(Flag("--no-op-offload", None),),
        c=CParam("context", "op_offload"),
        extra=True,
    ),
    # The planner's own: llama.cpp's --fit-target is not passed (llmtune writes --fit off).
    Option(
        "margin_bytes",
        cli=(
            Arg(
                "--margin",
                metavar="SIZE",
                help="memory to keep free per GPU",
                value=size_parser("--margin"),
            ),
        ),
        json="margin_bytes",
    ),
    Option(
        "device_margins",
        cli=(
            Arg(
                "--fit-target",
                metavar="MiB0,MiB1,...",
                help="memory to keep free on each offload device, in MiB, as llama.cpp's "
                "--fit-target (a single value for all; default: --margin)",
                value=mib_list,
            ),
        ),
        json="device_margins",
        json_value=list,
    ),
    Option(
        "fit_ctx",
        cli=(
            Arg(
                "--fit-ctx",
                whole,
                metavar="N",
                help="the least context llama.cpp's fit shrinks a context left unset "
                "(--ctx train) to, as its --fit-ctx (default {default})",
            ),
        ),
        json="fit_ctx",
    ),
    Option(
        "gpu_runtime_bytes",
        cli=(
            Arg(
                "--overhead",
                metavar="SIZE|auto",
                help="what each GPU's runtime (CUDA context) holds before the model "
                "loads; auto (default): the backend's figure, CUDA 457 MiB",
                value=runtime_size,
            ),
        ),
    ),
)

OPTION: dict[str, Option] = {o.field: o for o in OPTIONS}
STEPPERS: dict[str, Option] = {
    (o.stepper.key or o.field): o for o in OPTIONS if o.stepper is not None
}
_SETTINGS_FIELDS = tuple(f.name for f in dataclasses.fields(Settings))


def _in_settings_order() -> list[Option]:
    return [OPTION[name] for name in _SETTINGS_FIELDS]


# ---- llmtune's command line ------------------------------------------------------


def cli_flag(field: str) -> str:
    """llmtune's flag for a field (the first, where there are several)."""
    return OPTION[field].cli[0].flag


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """llmtune's flags for every option that has one, in Settings' order.

    Their defaults are None, so :func:`given_fields` can tell what the user
    wrote; :func:`settings_from_namespace` fills in Settings' defaults.
    """
    for option in _in_settings_order():
        for arg in option.cli:
            help_text = None if arg.help is None else arg.help.format(default=option.default)
            if arg.switch:
                parser.add_argument(arg.flag, action="store_true", default=None, help=help_text)
            else:
                parser.add_argument(
                    arg.flag, type=arg.parse, default=None, metavar=arg.metavar, help=help_text
                )


def given_fields(args: argparse.Namespace) -> frozenset[str]:
    """The Settings fields the user gave a flag for (parsed by :func:`add_arguments`)."""
    return frozenset(
        o.field for o in OPTIONS for a in o.cli if getattr(args, a.dest, None) is not None
    )


def settings_from_namespace(args: argparse.Namespace) -> Settings:
    """Settings from llmtune's flags; Settings' default where none was given.

    Raises ConfigError for a value no argparse type checks (a list, a size).
    """
    values: dict[str, Any] = {}
    for option in _in_settings_order():
        for arg in option.cli:
            given = getattr(args, arg.dest, None)
            if given is not None:
                values[option.field] = arg.value(given)  # the last flag given wins
    return Settings(**values)


# ---- llama-server and llama-cli ------------------------------------------------


def server_args(s: Settings, x: Extras, program: Program = "llama-server") -> list[str]:
    """Every option's flags for ``program``, in the table's order (no ``-m``, no ``--fit``)."""
    args: list[str] = []
    for option in OPTIONS:
        for flag in option.server:
            if program not in flag.programs:
                continue
            if flag.reads is not None:
                value, default = flag.reads(s, x), flag.reads(_SETTINGS, _EXTRAS)
            else:
                value, default = option.value(s, x), option.default
            if program in flag.always:
                written = True
            elif flag.when is not None:
                written = flag.when(value)
            else:
                written = value != default
            if written:
                args += [flag.name] if flag.text is None else [flag.name, flag.text(value)]
    return args


# ---- llama-cpp-python -------------------------------------------------------------


def llama_kwargs(s: Settings) -> tuple[dict[str, Any], list[str]]:
    """``Llama(**kwargs)`` for every option (without ``model_path``), and what it cannot set.

    ``s`` is resolved: its ``flash_attn`` on or off, as the plan decided.
    """
    kwargs: dict[str, Any] = {}
    notes: list[str] = []
    for option in OPTIONS:
        if option.extra:
            continue
        value = option.value(s, _EXTRAS)
        off_default = value != option.default
        if option.python is not None and (option.python.always or off_default):
            converted = option.python.convert(value)
            for key in option.python.keys:
                kwargs[key] = converted
        if option.python_note is not None and off_default:
            notes.append(option.python_note.format(value=value))
    return kwargs, notes


# ---- the worker's llama.h parameters -------------------------------------------


def c_params(s: Settings, x: Extras, struct: Struct) -> dict[str, Any]:
    """The ``llama_model_params`` or ``llama_context_params`` fields to set, by name.

    Not here: ``tensor_split`` and ``tensor_buft_overrides``, C arrays the
    worker builds and keeps alive.
    """
    params: dict[str, Any] = {}
    for option in OPTIONS:
        c = option.c
        if c is None or c.struct != struct:
            continue
        value = c.reads(s, x) if c.reads is not None else option.value(s, x)
        params[c.name] = c.convert(value)
    return params


# ---- fit --json -------------------------------------------------------------------


def settings_json(
    s: Settings, after: Mapping[str, Mapping[str, Any]] | None = None
) -> dict[str, Any]:
    """``fit --json``'s ``settings`` object, in Settings' order; ``after`` puts the
    plan's own keys right after one of ours (``n_ctx_seq`` after ``n_ctx``)."""
    out: dict[str, Any] = {}
    for option in _in_settings_order():
        if option.json is None:
            continue
        out[option.json] = option.json_value(option.value(s, _EXTRAS))
        out.update((after or {}).get(option.json, {}))
    return out


# ---- the offload pane's steppers ------------------------------------------------


def stepper_label(key: str) -> str:
    """The label of the stepper ``set-<key>``."""
    spec = STEPPERS[key].stepper
    assert spec is not None
    return spec.label


def stepper_value(key: str, s: Settings) -> Any:
    """What the stepper ``set-<key>`` shows for ``s``."""
    option = STEPPERS[key]
    assert option.stepper is not None
    return option.stepper.shown(option.value(s, _EXTRAS))


def stepper_change(key: str, value: Any) -> dict[str, Any]:
    """The Settings change the stepper ``set-<key>`` asks for when it steps to ``value``:
    ``{"no_kv_offload": True}`` for ``kv_offload`` off. KeyError for no such stepper."""
    option = STEPPERS[key]
    assert option.stepper is not None
    return {option.field: option.stepper.shown(value)}
