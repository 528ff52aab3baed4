"""A running llama-server's settings, read back from its command line.

The reverse of :func:`llmtune.fit.options.server_args`: each flag is found in
the one table of options (:data:`llmtune.fit.options.OPTIONS`), so a flag
llmtune writes is a flag it reads. llama.cpp also takes each flag under longer
names (``common/arg.cpp``, ``common_params_parser_init``); :data:`ALIASES`
lists them by the table's name. A value is read as llama.cpp's parser reads
it, through the table's llmtune flag where its text is the same.

Flags that do not change the plan (``--port``, ``--metrics``, sampling) are
kept only where attach needs them; the rest is skipped, with its value.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from llmtune.errors import ConfigError
from llmtune.fit.options import OPTION, OPTIONS, Flag, Option
from llmtune.fit.settings import NGL_AUTO, Settings

# common/arg.cpp: the other names of each flag the options table writes.
ALIASES: dict[str, tuple[str, ...]] = {
    "-ngl": ("--gpu-layers", "--n-gpu-layers"),
    "-c": ("--ctx-size",),
    "-b": ("--batch-size",),
    "-ub": ("--ubatch-size",),
    "-ctk": ("--cache-type-k",),
    "-ctv": ("--cache-type-v",),
    "-fa": ("--flash-attn",),
    "-np": ("--parallel",),
    "-kvu": ("--kv-unified",),
    "-nkvo": ("--no-kv-offload",),
    "-sm": ("--split-mode",),
    "-mg": ("--main-gpu",),
    "-ts": ("--tensor-split",),
    "-ot": ("--override-tensor",),
    "--cpu-moe": ("-cmoe",),
    "--n-cpu-moe": ("-ncmoe",),
    "-lm": ("--load-mode",),
    "-t": ("--threads",),
    "-tb": ("--threads-batch",),
    "--no-repack": ("-nr",),
}
# Flags outside the table that attach reads (common/arg.cpp), by what they say.
MODEL_FLAGS = ("-m", "--model")
MODEL_URL_FLAGS = ("-mu", "--model-url")
HF_FLAGS = ("-hf", "-hfr", "--hf-repo")
SWITCHES = frozenset(
    ("--metrics", "--slots", "--no-slots", "--props", "--jinja", "--no-jinja", "--verbose", "-v",
     "--no-webui", "--webui", "--cont-batching", "-cb", "--no-cont-batching", "-nocb",
     "--repack", "--no-mmap", "--mlock", "--embedding", "--embeddings", "--reranking",
     "--no-warmup", "--log-disable", "--log-colors", "-fit")
)  # fmt: skip
DEFAULT_HOST = "127.0.0.1"  # common/common.h: common_params::hostname
DEFAULT_PORT = 8080  # common/common.h: common_params::port
AUTO_PARALLEL = 4  # tools/server/server.cpp main: -np auto is 4 slots with a unified KV cache


@dataclass(frozen=True)
class ServerLine:
    """What a llama-server command line says about the server it started."""

    model: str | None  # -m, -mu or -hf as written (None: not on the line)
    model_kind: str  # "path", "url", "hf" or "" with no model
    settings: Settings
    rpc: tuple[str, ...]
    host: str
    port: int
    metrics: bool
    slots: bool
    api_key: bool  # --api-key or --api-key-file given (its value is never kept)
    skipped: tuple[str, ...]  # table flags read but not planned (-ot: a pattern)


def _flag_table() -> dict[str, tuple[Option, Flag]]:
    table: dict[str, tuple[Option, Flag]] = {}
    for option in OPTIONS:
        for flag in option.server:
            for name in (flag.name, *ALIASES.get(flag.name, ())):
                table[name] = (option, flag)
    return table


_FLAGS = _flag_table()
_SETTINGS_FIELDS = frozenset(f.name for f in dataclasses.fields(Settings))


def _cli_value(field: str, text: str) -> Any:
    """``text`` read as llmtune's own flag for ``field`` reads it (the same text)."""
    arg = OPTION[field].cli[0]
    try:
        return arg.value(arg.parse(text))
    except argparse.ArgumentTypeError as exc:
        raise ValueError(str(exc)) from None


def _gpu_layers(text: str) -> int:
    # common/arg.cpp "-ngl": auto, all or a count.
    if text == "auto":
        return NGL_AUTO
    if text == "all":
        return -1
    return int(text)


def _flash_attn(text: str) -> str:
    # common/arg.cpp "-fa": on|off|auto, or a truthy or falsy word.
    lowered = text.lower()
    if lowered in ("on", "enabled", "true", "1"):
        return "on"
    if lowered in ("off", "disabled", "false", "0"):
        return "off"
    return "auto"


def _load_mode(text: str) -> tuple[bool, bool]:
    # common/arg.cpp "--load-mode": none, mmap, mlock or mmap+mlock.
    return "mmap" in text, "mlock" in text


def _split(text: str) -> tuple[float, ...]:
    # common/arg.cpp "-ts" splits on , and /.
    return tuple(float(x) for x in re.split(r"[,/]+", text) if x.strip())


def parse_server_args(argv: Sequence[str]) -> ServerLine:
    """Read ``argv`` (the program first, as ``/proc/PID/cmdline`` holds it).

    Raises ConfigError for a value llama.cpp itself would have refused.
    """
    values: dict[str, Any] = {}
    rpc: tuple[str, ...] = ()
    model: str | None = None
    kind = ""
    host, port = DEFAULT_HOST, DEFAULT_PORT
    metrics = api_key = False
    slots = True
    skipped: list[str] = []
    parallel_given = False
    cursor = _Cursor(argv[1:])
    while not cursor.done:
        name = cursor.next_flag()
        value = cursor.value

        if name in _FLAGS:
            option, flag = _FLAGS[name]
            field = option.field
            if flag.text is None:  # a switch: -kvu, --swa-full, -nkvo, --cpu-moe
                if field == "n_cpu_moe":
                    values[field] = -1
                elif field in _SETTINGS_FIELDS:
                    values[field] = True
                continue
            text = value()
            try:
                if field == "n_gpu_layers":
                    values[field] = _gpu_layers(text)
                elif field == "flash_attn":
                    values[field] = _flash_attn(text)
                elif field == "tensor_split":
                    values[field] = _split(text)
                elif field == "rpc_servers":
                    rpc = tuple(e.strip() for e in text.split(",") if e.strip())
                elif field == "use_mmap":
                    values["use_mmap"] = _load_mode(text)[0]
                elif field in ("n_cpu_moe", "threads"):
                    values[field] = int(text)
                elif field == "n_parallel":
                    parallel_given = int(text) > 0
                    if parallel_given:
                        values[field] = int(text)
                elif field == "layer_overflow":
                    skipped.append(f"{name} {text}")  # a pattern, not a layer count
                elif field in _SETTINGS_FIELDS and OPTION[field].cli:
                    values[field] = _cli_value(field, text)
            except ValueError:
                raise ConfigError(
                    f"llama-server's {name} {text!r} is not a value llama.cpp takes",
                    "its command line",
                ) from None
        elif name in MODEL_FLAGS + MODEL_URL_FLAGS + HF_FLAGS:
            model = value()
            kind = "path" if name in MODEL_FLAGS else "url" if name in MODEL_URL_FLAGS else "hf"
        elif name == "--host":
            host = value()
        elif name == "--port":
            text = value()
            try:
                port = int(text)
            except ValueError:
                raise ConfigError(f"llama-server's --port {text!r} is not a number") from None
        elif name in ("--api-key", "--api-key-file"):
            value()  # a secret: never kept
            api_key = True
        elif name == "--metrics":
            metrics = True
        elif name == "--no-slots":
            slots = False
        elif name in SWITCHES or not name.startswith("-"):
            continue
        else:
            cursor.skip_value()  # an option we do not plan for, and its value
    if not parallel_given:
        # -np auto: four slots sharing one KV cache of -c cells.
        values["n_parallel"] = AUTO_PARALLEL
        values["kv_unified"] = True
    if "n_ctx" not in values:
        values["n_ctx"] = 0  # -c 0: the trained context, which --fit may shrink
    return ServerLine(
        model=model,
        model_kind=kind,
        settings=Settings(**values),
        rpc=rpc,
        host=host,
        port=port,
        metrics=metrics,
        slots=slots,
        api_key=api_key,
        skipped=tuple(skipped),
    )


class _Cursor:
    """The arguments, one flag at a time; ``--name=value`` or ``name value``."""

    def __init__(self, args: Sequence[str]) -> None:
        self.args = list(args)
        self.i = 0
        self.name = ""
        self.inline: str | None = None

    @property
    def done(self) -> bool:
        return self.i >= len(self.args)

    def next_flag(self) -> str:
        text = self.args[self.i]
        self.i += 1
        self.inline = None
        if text.startswith("--") and "=" in text:
            text, _, self.inline = text.partition("=")
        self.name = text
        return text

    def value(self) -> str:
        if self.inline is not None:
            return self.inline
        if self.done:
            raise ConfigError(f"llama-server's {self.name} has no value", "its command line")
        self.i += 1
        return self.args[self.i - 1]

    def skip_value(self) -> None:
        if self.inline is None and not self.done and not _looks_like_flag(self.args[self.i]):
            self.i += 1


def _looks_like_flag(text: str) -> bool:
    """A flag, not a value: ``-1`` and ``-0.5`` are values."""
    return text.startswith("-") and not re.fullmatch(r"-\d+(\.\d*)?", text)


def is_llama_server(argv: Sequence[str]) -> bool:
    """Whether a process's command line is llama-server's (by its program name)."""
    if not argv:
        return False
    program = argv[0].replace("\\", "/").rsplit("/", 1)[-1]
    return program in ("llama-server", "llama-server.exe")
