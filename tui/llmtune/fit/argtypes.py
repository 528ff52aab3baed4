"""argparse types of llmtune's own flags (``fit``, ``bench``, ``tune``, the app)."""

from __future__ import annotations

import argparse

from llmtune.fit.settings import NGL_AUTO


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
