"""Formatting and parsing of sizes and counts for people."""

from __future__ import annotations

import re

from llmtune.errors import ConfigError

KIB = 1024
MIB = 1024**2
GIB = 1024**3

_SIZE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_FACTORS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "kib": KIB, "ki": KIB,
    "m": 1000**2, "mb": 1000**2, "mib": MIB, "mi": MIB,
    "g": 1000**3, "gb": 1000**3, "gib": GIB, "gi": GIB,
    "t": 1000**4, "tb": 1000**4, "tib": 1024**4, "ti": 1024**4,
}  # fmt: skip


def format_bytes(n: int | float) -> str:
    """Binary units, as llama.cpp reports them: 512 B, 93.8 MiB, 38.6 GiB."""
    value = float(n)
    sign = "-" if value < 0 else ""
    value = abs(value)
    if value < KIB:
        return f"{sign}{int(value)} B"
    for unit, factor in (("KiB", KIB), ("MiB", MIB), ("GiB", GIB), ("TiB", 1024**4)):
        if value < factor * 1024 or unit == "TiB":
            scaled = value / factor
            digits = 2 if scaled < 10 else 1 if scaled < 100 else 0
            return f"{sign}{scaled:.{digits}f} {unit}"
    raise AssertionError("unreachable")


def format_count(n: int) -> str:
    """Parameter counts as people say them: 134.5M, 6.7B, 70.6B."""
    value = float(n)
    for unit, factor in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if value >= factor:
            scaled = value / factor
            digits = 2 if scaled < 10 else 1
            return f"{scaled:.{digits}f}{unit}"
    return str(int(value))


def parse_size(text: str, where: str = "") -> int:
    """Parse ``12GiB``, ``24GB``, ``512MiB``, ``1.5T`` into bytes; ``where`` (the
    option it came from) goes into the error."""
    m = _SIZE_RE.match(text)
    if not m:
        raise ConfigError(f"not a size: {text!r} (try 12GiB or 24GB)", where)
    number = float(m.group(1))
    unit = (m.group(2) or "").lower()
    if unit not in _FACTORS:
        raise ConfigError(
            f"unknown size unit in {text!r} (use B, KB, MB, GB, KiB, MiB, GiB)", where
        )
    return int(number * _FACTORS[unit])
