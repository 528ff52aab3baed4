"""argparse types of llmtune's own flags (``fit``, ``bench``, ``tune``, the app), and
the parsers that turn what they read into Settings' values (fit.options uses both)."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from llmtune.errors import ConfigError
from llmtune.fit.settings import NGL_AUTO, RUNTIME_AUTO


def whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None


def int_or_max(text: str) -> int:
    """A layer count; ``max``/``all``/``-1`` (-1): every layer; ``auto``: llama.cpp's fit."""
    if text.strip().lower() in ("max", "all", "-1"):
        return -1
    if text.strip().lower() == "auto":
        return NGL_AUTO
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number, 'max' or 'auto': {text!r}") from None


def context_size(text: str) -> int:
    """A context size; ``max`` (-1): the largest that fits; ``train`` (0): the trained one."""
    word = text.strip().lower()
    if word == "max":
        return -1
    if word in ("train", "trained"):
        return 0
    value = whole(text)
    if value < 1:
        raise argparse.ArgumentTypeError(
            f"context must be at least 1 token, not {value} (or 'max', or 'train')"
        )
    return value


def proportions(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"not a list of numbers: {text!r}", "--tensor-split") from None


def experts_on_cpu(n: int) -> int:
    if n < 0:
        raise ConfigError("--n-cpu-moe must be 0 or more (use --cpu-moe for all)", "--n-cpu-moe")
    return n


def mib_list(text: str) -> tuple[int, ...]:
    """``--fit-target``: MiB per device, split by ',' or '/' as common/arg.cpp does."""
    parts = [p for p in text.replace("/", ",").split(",") if p.strip()]
    try:
        values = tuple(int(p) * 1024 * 1024 for p in parts)
    except ValueError:
        raise ConfigError(f"not a list of MiB: {text!r}", "--fit-target") from None
    if not values or any(v < 0 for v in values):
        raise ConfigError(f"not a list of MiB: {text!r}", "--fit-target")
    return values


def size_parser(flag: str) -> Callable[[str], int]:
    """A size (``1GiB``, ``512MiB``) in bytes, errors naming ``flag``."""

    def parse(text: str) -> int:
        from llmtune.units import parse_size

        return parse_size(text, flag)

    return parse


def runtime_size(text: str) -> int:
    """``--overhead``: a size, or ``auto`` for each GPU's backend figure."""
    if text.strip().lower() == "auto":
        return RUNTIME_AUTO
    return size_parser("--overhead")(text)
