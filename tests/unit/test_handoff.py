"""The hand-off: llama-server/llama-cli lines, Llama(...) arguments, an Ollama
Modelfile, and the OSC 52 sequence that copies one of them.

The llama.cpp flags are those of common/arg.cpp in the llama.cpp vendored by
llama-cpp-python 0.3.36: ``-lm none`` turns mmap off (``--no-mmap`` is gone),
``-ngl all`` means every layer (``-1`` means auto) and ``--fit off`` stops
llama-server from re-deciding ``-ngl`` and ``-c``.
"""

from __future__ import annotations

import base64
import re
import shlex

import pytest

from llmtune.clipboard import osc52, tmux_passthrough
from llmtune.engine.config import RunConfig
from llmtune.fit.commandline import llama_args, llama_server_command
from llmtune.fit.handoff import make_handoff
from llmtune.fit.settings import Settings

MODEL = "/models/My Model Q4_K_M.gguf"


def _flag(args: list[str] | tuple[str, ...], name: str) -> str:
    return args[args.index(name) + 1]


def test_default_settings_give_a_short_exact_server_line() -> None:
    h = make_handoff(MODEL, Settings(), 31, 4096, flash_attn=True)
    args = list(h.llama_server_args)
    assert args[0] == "llama-server"
    assert (_flag(args, "-m"), _flag(args, "-ngl"), _flag(args, "-c")) == (MODEL, "31", "4096")
    assert _flag(args, "--fit") == "off"
    # llama-server's defaults are not repeated; mmap is its default.
    for flag in ("-b", "-ub", "-ctk", "-ctv", "-fa", "-lm", "--no-mmap"):
        assert flag not in args
    # The path with spaces survives the shell.
    assert shlex.split(h.llama_server) == args


def test_every_layer_is_all_and_no_mmap_is_load_mode_none() -> None:
    s = Settings(use_mmap=False, n_batch=1024, n_ubatch=256, flash_attn="on", threads=3)
    args = llama_args(MODEL, s, -1, 8192)
    assert _flag(args, "-ngl") == "all"  # -1 would be "auto" for llama.cpp
    assert _flag(args, "-lm") == "none" and "--no-mmap" not in args
    assert (_flag(args, "-b"), _flag(args, "-ub"), _flag(args, "-fa")) == ("1024", "256", "on")
    assert _flag(args, "-t") == "3"


def test_run_config_uses_the_same_builder() -> None:
    """The worker's configuration and the plan's settings print the same line."""
    s = Settings(
        n_gpu_layers=12,
        n_ctx=8192,
        n_ubatch=256,
        cache_type_k="q8_0",
        cache_type_v="q8_0",
        flash_attn="on",
        n_parallel=2,
        n_cpu_moe=3,
        use_mmap=False,
        threads=4,
    )
    config = RunConfig.from_settings(MODEL, s)
    assert config.command_line() == llama_args(MODEL, s, 12, 8192)
    assert ["llama-server", *config.command_line()] == shlex.split(
        llama_server_command(MODEL, s, 12, 8192)
    )
    locked = RunConfig.of(MODEL, use_mlock=True, use_extra_bufts=False, threads_batch=2)
    args = locked.command_line()
    assert _flag(args, "-lm") == "mmap+mlock" and "--mlock" not in args
    assert "--no-repack" in args and _flag(args, "-tb") == "2"


def test_cli_line_has_no_server_only_flags() -> None:
    s = Settings(kv_unified=True, n_parallel=1)
    h = make_handoff(MODEL, s, 5, 4096)
    assert h.llama_cli_args[0] == "llama-cli"
    assert "-kvu" in h.llama_server_args and "-kvu" not in h.llama_cli_args
    assert "-np" not in h.llama_cli_args  # llama-cli's default is one sequence
    assert any("llama-cli" in note and "unified" in note for note in h.notes)


def test_llama_kwargs_spell_out_what_llama_would_get_wrong() -> None:
    s = Settings(cache_type_k="q8_0", cache_type_v="q4_0", flash_attn="auto", threads=6)
    h = make_handoff(MODEL, s, 20, 4096, flash_attn=True)
    kw = h.llama_kwargs
    # Llama's defaults are n_ctx 512, n_batch 512, no flash attention, swa_full on.
    assert (kw["n_ctx"], kw["n_batch"], kw["n_ubatch"]) == (4096, 2048, 512)
    assert kw["flash_attn"] is True and kw["swa_full"] is False
    assert (kw["type_k"], kw["type_v"]) == (8, 2)  # GGML_TYPE_Q8_0, GGML_TYPE_Q4_0
    assert (kw["n_threads"], kw["n_threads_batch"], kw["n_gpu_layers"]) == (6, 6, 20)
    namespace: dict[str, object] = {}
    body = h.llama_snippet.replace("from llama_cpp import Llama", "")
    exec(body, {"Llama": lambda **k: namespace.update(k)})  # the snippet is Python
    assert namespace == kw
    assert "# q8_0" in h.llama_snippet


def test_ollama_modelfile_lines_and_what_it_cannot_say() -> None:
    s = Settings(
        n_parallel=2,
        n_batch=2048,
        n_ubatch=512,
        cache_type_k="q8_0",
        cache_type_v="q8_0",
        n_cpu_moe=4,
        use_mmap=False,
        threads=8,
    )
    h = make_handoff(MODEL, s, 33, 8192, flash_attn=True)
    lines = h.ollama_modelfile.splitlines()
    assert lines[0] == f"FROM {MODEL}"
    params = dict(
        line.split()[1:3] for line in lines if line.startswith("PARAMETER")
    )  # name -> value
    assert params == {
        "num_ctx": "4096",  # per sequence: Ollama multiplies by OLLAMA_NUM_PARALLEL
        "num_gpu": "33",
        "num_batch": "512",
        "num_thread": "8",
        "use_mmap": "false",
    }
    env = [line for line in lines if line.startswith("#   ")][0]
    assert "OLLAMA_FLASH_ATTENTION=1" in env and "OLLAMA_KV_CACHE_TYPE=q8_0" in env
    assert "OLLAMA_NUM_PARALLEL=2" in env
    notes = " ".join(h.notes)
    assert "num_batch sets batch and ubatch together" in notes
    assert "MoE experts on the CPU" in notes
    # Different K and V types cannot be said to Ollama.
    mixed = make_handoff(MODEL, s.with_(cache_type_v="q4_0"), 33, 8192, flash_attn=True)
    assert any("one KV cache type" in n for n in mixed.notes)
    assert "OLLAMA_KV_CACHE_TYPE" not in mixed.ollama_modelfile


def test_handoff_as_json_is_plain_data() -> None:
    import json

    d = make_handoff(MODEL, Settings(), 0, 4096).as_dict()
    assert json.loads(json.dumps(d)) == d
    assert set(d) >= {"llama_server", "llama_cli", "llama_cpp_python", "ollama_modelfile"}


# ---- OSC 52 ---------------------------------------------------------------------------------

_OSC52 = re.compile(r"\x1b\]52;c;(?P<b64>[A-Za-z0-9+/=]*)\x1b\\")


def test_osc52_carries_the_text_in_base64() -> None:
    text = "llama-server -m 'mödel ☃.gguf' -ngl all\n"
    seq = osc52(text, tmux=False)
    m = _OSC52.fullmatch(seq)
    assert m is not None
    assert base64.b64decode(m.group("b64")).decode("utf-8") == text


def test_osc52_inside_tmux_is_wrapped_for_passthrough() -> None:
    seq = osc52("hi", env={"TMUX": "/tmp/tmux-0/default,123,0"})
    assert seq.startswith("\x1bPtmux;") and seq.endswith("\x1b\\")
    inner = seq[len("\x1bPtmux;") : -2]
    # Every ESC of the wrapped sequence is doubled; undoubling gives it back.
    assert _OSC52.fullmatch(inner.replace("\x1b\x1b", "\x1b"))
    assert "\x1b]" not in inner.replace("\x1b\x1b", "")
    assert osc52("hi", env={}) == osc52("hi", tmux=False)
    assert tmux_passthrough("\x1b]52;c;aGk=\x1b\\") == seq


@pytest.mark.parametrize("text", ["", "x" * 10_000])
def test_osc52_any_length(text: str) -> None:
    m = _OSC52.fullmatch(osc52(text, tmux=False))
    assert m is not None and base64.b64decode(m.group("b64")).decode() == text
