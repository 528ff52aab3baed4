"""The one table of llama.cpp options (llmtune.fit.options), option by option.

The expectations here are written independently of the table, from llama.cpp's
own documentation of its flags (``common/arg.cpp`` of the llama.cpp vendored
in llama-cpp-python 0.3.36) and ``Llama``'s keywords (``llama_cpp/llama.py``):
each llmtune flag must reach the Settings field, the llama-server line, the
``Llama(...)`` keywords and ``fit --json`` as those say.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from llmtune.cli import main
from llmtune.engine.config import RunConfig
from llmtune.fit.commandline import llama_args
from llmtune.fit.handoff import make_handoff
from llmtune.fit.options import (
    OPTIONS,
    STEPPERS,
    add_arguments,
    given_fields,
    llama_kwargs,
    settings_from_namespace,
    stepper_change,
    stepper_label,
    stepper_value,
)
from llmtune.fit.settings import Extras, Settings
from synth import llama_like

MODEL = "/models/m.gguf"
# Two what-if GPUs and a host: no probe of this machine, room for -mg 1 and -ts.
HARDWARE = ["--gpu", "rtx4090", "--gpu", "rtx4090", "--ram", "64GiB"]


@dataclasses.dataclass(frozen=True)
class Case:
    argv: tuple[str, ...]  # llmtune's flags
    field: str
    value: Any  # the Settings field's value
    server: tuple[str, ...]  # what llama-server's line must carry
    kwargs: dict[str, Any]  # Llama(...) keywords (a subset)
    note: str | None = None  # or the hand-off note saying Llama() cannot
    json: tuple[str, Any] | None = None  # fit --json settings key and value


CASES = [
    Case(("--ngl", "7"), "n_gpu_layers", 7, ("-ngl", "7"), {"n_gpu_layers": 7}, json=("n_gpu_layers", 7)),
    Case(("--ngl", "max"), "n_gpu_layers", -1, ("-ngl", "all"), {"n_gpu_layers": -1}),
    Case(("--ctx", "8192"), "n_ctx", 8192, ("-c", "8192"), {"n_ctx": 8192}, json=("n_ctx", 8192)),
    Case(("--batch", "1024"), "n_batch", 1024, ("-b", "1024"), {"n_batch": 1024}, json=("n_batch", 1024)),
    Case(("--ubatch", "256"), "n_ubatch", 256, ("-ub", "256"), {"n_ubatch": 256}, json=("n_ubatch", 256)),
    Case(("--parallel", "3"), "n_parallel", 3, ("-np", "3"), {}, "3 parallel sequences need llama-server", ("n_parallel", 3)),
    Case(("--kv-unified",), "kv_unified", True, ("-kvu",), {}, "no unified KV cache", ("kv_unified", True)),
    Case(("--cache-type-k", "Q8_0"), "cache_type_k", "q8_0", ("-ctk", "q8_0"), {"type_k": 8}, json=("cache_type_k", "q8_0")),
    Case(("--cache-type-v", "q4_0"), "cache_type_v", "q4_0", ("-ctv", "q4_0"), {"type_v": 2}, json=("cache_type_v", "q4_0")),
    Case(("--flash-attn", "off"), "flash_attn", "off", ("-fa", "off"), {"flash_attn": False}, json=("flash_attn", "off")),
    Case(("--swa-full",), "swa_full", True, ("--swa-full",), {"swa_full": True}, json=("swa_full", True)),
    Case(("--no-kv-offload",), "no_kv_offload", True, ("-nkvo",), {"offload_kqv": False}, json=("no_kv_offload", True)),
    Case(("--split-mode", "ROW"), "split_mode", "row", ("-sm", "row"), {"split_mode": 2}, json=("split_mode", "row")),
    Case(("--main-gpu", "1"), "main_gpu", 1, ("-mg", "1"), {"main_gpu": 1}, json=("main_gpu", 1)),
    Case(("--tensor-split", "3,1"), "tensor_split", (3.0, 1.0), ("-ts", "3,1"), {"tensor_split": [3.0, 1.0]}, json=("tensor_split", [3.0, 1.0])),
    Case(("--n-cpu-moe", "2"), "n_cpu_moe", 2, ("--n-cpu-moe", "2"), {}, "MoE experts on the CPU", ("n_cpu_moe", 2)),
    Case(("--cpu-moe",), "n_cpu_moe", -1, ("--cpu-moe",), {}, "MoE experts on the CPU", ("n_cpu_moe", -1)),
    Case(("--no-mmap",), "use_mmap", False, ("-lm", "none"), {"use_mmap": False}, json=("use_mmap", False)),
    Case(("--margin", "2GiB"), "margin_bytes", 2 << 30, (), {}, json=("margin_bytes", 2 << 30)),
    Case(("--overhead", "300MiB"), "gpu_runtime_bytes", 300 << 20, (), {}),
]  # fmt: skip


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def _has(args: list[str] | tuple[str, ...], *run: str) -> bool:
    """Whether ``run`` appears in ``args`` as consecutive arguments."""
    return any(tuple(args[i : i + len(run)]) == run for i in range(len(args) - len(run) + 1))


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    (path,) = llama_like(
        tmp_path_factory.mktemp("options") / "m.gguf", n_layer=8, n_ctx_train=16384
    )
    return path


def _fit_json(model: Path, capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    assert main(["fit", str(model), "--json", *HARDWARE, *argv]) == 0
    out: dict[str, Any] = json.loads(capsys.readouterr().out)
    return out


@pytest.mark.parametrize("case", CASES, ids=lambda c: " ".join(c.argv))
def test_each_flag_reaches_every_output(
    case: Case, model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = _parse(*case.argv)
    s = settings_from_namespace(args)
    assert getattr(s, case.field) == case.value
    assert s == Settings().with_(**{case.field: case.value})  # nothing else changed
    assert given_fields(args) == {case.field}

    h = make_handoff(MODEL, s, s.n_gpu_layers, s.n_ctx)
    if case.server:
        assert _has(h.llama_server_args, *case.server), h.llama_server
    assert h.llama_kwargs.items() >= case.kwargs.items(), h.llama_kwargs
    if case.note is not None:
        assert any(case.note in note for note in h.notes), h.notes
    else:
        assert not any(note.startswith("llama-cpp-python") for note in h.notes), h.notes

    planned = _fit_json(model, capsys, *case.argv)
    if case.json is not None:
        key, value = case.json
        assert planned["settings"][key] == value
    if case.server and case.field != "n_gpu_layers":  # "max" is resolved to a count
        assert _has(shlex.split(planned["command"]), *case.server), planned["command"]


def test_defaults_are_left_to_llama_cpp(model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """At llama-server's defaults the line says only what --fit would re-decide, and
    llama-server's -np (its default is auto, 4 slots); Llama() gets what it would get wrong."""
    planned = _fit_json(model, capsys)
    n = str(planned["settings"]["n_gpu_layers"])
    # Over two GPUs the line pins the planned split: each device's layers (output counted).
    split = ",".join(str(d["n_layers"] + d["has_output"]) for d in planned["devices"][:2])
    assert shlex.split(planned["command"])[3:] == ["-ngl", n, "-c", "4096", "-np", "1", "-ts", split, "--fit", "off"]  # fmt: skip
    assert given_fields(_parse()) == frozenset()
    assert settings_from_namespace(_parse()) == Settings()

    h = make_handoff(MODEL, Settings(), 9, 4096)
    assert list(h.llama_cli_args[3:]) == ["-ngl", "9", "-c", "4096", "--fit", "off"]
    assert set(h.llama_kwargs) == {
        "model_path", "n_gpu_layers", "n_ctx", "n_batch", "n_ubatch", "flash_attn",
        "swa_full", "offload_kqv", "n_threads", "n_threads_batch",
    }  # fmt: skip
    assert not [note for note in h.notes if note.startswith(("llama-cli", "llama-cpp-python"))]


def test_fit_json_settings_keys_keep_their_order(
    model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    planned = _fit_json(model, capsys, "--ctx", "2048")
    assert list(planned["settings"]) == [
        "n_gpu_layers", "n_ctx", "n_ctx_seq", "n_batch", "n_ubatch", "n_parallel",
        "kv_unified", "cache_type_k", "cache_type_v", "flash_attn", "flash_attn_resolved",
        "swa_full", "no_kv_offload", "split_mode", "main_gpu", "tensor_split", "layer_overflow",
        "n_cpu_moe", "use_mmap", "margin_bytes", "device_margins", "fit_ctx",
    ]  # fmt: skip
    assert planned["settings"]["n_ctx_seq"] == 2048
    assert isinstance(planned["settings"]["flash_attn_resolved"], bool)


def test_options_without_an_llmtune_flag() -> None:
    """Threads (tune searches them) and the worker's extras still reach llama.cpp."""
    s = Settings(threads=3)
    args = llama_args(MODEL, s, 5, 4096)
    assert _has(args, "-t", "3")
    kwargs, _ = llama_kwargs(s)
    assert (kwargs["n_threads"], kwargs["n_threads_batch"]) == (3, 3)
    x = Extras(threads_batch=2, use_mlock=True, use_extra_bufts=False, op_offload=False)
    args = llama_args(MODEL, s, 5, 4096, x)
    assert _has(args, "-tb", "2") and _has(args, "-lm", "mmap+mlock")
    assert "--no-repack" in args and "--no-op-offload" in args
    config = RunConfig(MODEL, s, x)
    model, context = config.model_params(), config.context_params()
    assert (context["n_threads"], context["n_threads_batch"]) == (3, 2)
    assert model["load_mode"] == 3 and not model["use_extra_bufts"]  # LLAMA_LOAD_MODE_MMAP_MLOCK
    assert not context["op_offload"]
    assert RunConfig(MODEL, Settings(use_mmap=False)).model_params()["load_mode"] == 0  # NONE


def test_the_last_moe_flag_wins_and_a_negative_count_is_refused() -> None:
    from llmtune.errors import ConfigError

    assert settings_from_namespace(_parse("--n-cpu-moe", "3", "--cpu-moe")).n_cpu_moe == -1
    with pytest.raises(ConfigError, match="use --cpu-moe for all"):
        settings_from_namespace(_parse("--n-cpu-moe", "-1"))
    with pytest.raises(ConfigError, match="not a list of numbers"):
        settings_from_namespace(_parse("--tensor-split", "a,b"))


def test_given_fields_sees_abbreviations_and_equals_forms() -> None:
    """What tune keeps fixed: argparse's own record, not a scan of argv for exact spellings."""
    args = _parse("--flash", "on", "--cache-type-v=q8_0", "--ngl", "0")
    assert given_fields(args) == {"flash_attn", "cache_type_v", "n_gpu_layers"}


def test_every_field_is_one_row_and_every_name_is_used_once() -> None:
    fields = Counter(o.field for o in OPTIONS)
    every = [f.name for f in dataclasses.fields(Settings)] + [
        f.name for f in dataclasses.fields(Extras)
    ]
    assert fields == Counter(every)
    for extra in dataclasses.fields(Extras):
        assert next(o for o in OPTIONS if o.field == extra.name).extra
    for names in (
        [a.flag for o in OPTIONS for a in o.cli],
        [f.name for o in OPTIONS for f in o.server],
        [k for o in OPTIONS if o.python for k in o.python.keys],
        [(o.c.struct, o.c.name) for o in OPTIONS if o.c],
        [o.json for o in OPTIONS if o.json],
        [o.stepper.label for o in OPTIONS if o.stepper],
    ):
        assert len(names) == len(set(names)), names


def test_steppers_have_the_panes_labels_and_kv_on_gpu_is_inverted() -> None:
    assert {key: stepper_label(key) for key in STEPPERS} == {
        "n_ctx": "context", "flash_attn": "flash attn", "cache_type_k": "K cache",
        "cache_type_v": "V cache", "n_batch": "batch", "n_ubatch": "ubatch",
        "threads": "threads", "n_parallel": "parallel", "kv_offload": "KV on GPU",
        "n_cpu_moe": "MoE on CPU",
    }  # fmt: skip
    assert stepper_change("kv_offload", False) == {"no_kv_offload": True}
    assert stepper_change("kv_offload", True) == {"no_kv_offload": False}
    assert stepper_value("kv_offload", Settings(no_kv_offload=True)) is False
    assert stepper_change("cache_type_k", "q8_0") == {"cache_type_k": "q8_0"}
    assert stepper_value("n_ctx", Settings(n_ctx=2048)) == 2048
    with pytest.raises(KeyError):
        stepper_change("swa_full", True)  # no stepper for it


def test_settings_errors_name_llmtunes_flags() -> None:
    from llmtune.errors import FitError

    with pytest.raises(FitError) as err:
        Settings(cache_type_v="q4_0", flash_attn="off").validate()
    assert err.value.where == "--cache-type-v" and "--flash-attn off" in err.value.what
    with pytest.raises(FitError) as err:
        Settings(n_parallel=0).validate()
    assert err.value.where == "--parallel"
