"""Importance matrix files, read as llama-quantize reads them.

Two formats (``common/imatrix-loader.cpp``, ``common_imatrix_load``):

- GGUF, written by current ``llama-imatrix``: tensors ``<name>.in_sum2`` (sums of
  squared activations) and ``<name>.counts`` (one count per expert), both F32,
  and the keys ``imatrix.datasets``, ``imatrix.chunk_count`` and
  ``imatrix.chunk_size``, without which llama-quantize refuses the file.
- the legacy ``.dat``: an int32 entry count, then per entry an int32 name
  length, the name, int32 ``ncall``, int32 ``nval`` and ``nval`` floats; an
  optional trailer with the chunk count and the dataset name.

The values handed to ``llama_model_quantize`` are normalised as
``tools/quantize/quantize.cpp`` ``load_imatrix`` does: GGUF sums divided by
their expert's count (1 where the count is 0), legacy sums divided by ``ncall``.
"""

from __future__ import annotations

import os
import struct
from typing import Any

from llmtune.errors import ConfigError

_GGUF_MAGIC = b"GGUF"
_KEYS = ("imatrix.datasets", "imatrix.chunk_count", "imatrix.chunk_size")


def load_imatrix(path: str | os.PathLike[str]) -> dict[str, Any]:
    """``{tensor name: float32 numpy array}`` of normalised importance values."""
    where = os.fspath(path)
    try:
        with open(where, "rb") as fh:
            magic = fh.read(4)
    except OSError as err:
        raise ConfigError(f"cannot read the importance matrix: {err.strerror}", where) from None
    try:
        data = _load_gguf(where) if magic == _GGUF_MAGIC else _load_legacy(where)
    except ConfigError:
        raise
    except Exception as err:  # a truncated or foreign file
        raise ConfigError(f"not an importance matrix file ({err})", where) from None
    if not data:
        raise ConfigError("the importance matrix has no entries", where)
    return data


def _load_gguf(path: str) -> dict[str, Any]:
    import numpy as np
    from gguf import GGUFReader

    reader = GGUFReader(path)
    missing = [k for k in _KEYS if reader.get_field(k) is None]
    if missing:
        raise ConfigError(f"imatrix metadata missing: {', '.join(missing)}", path)
    sums: dict[str, Any] = {}
    counts: dict[str, Any] = {}
    for t in reader.tensors:
        if t.name.endswith(".in_sum2"):
            sums[t.name.removesuffix(".in_sum2")] = np.asarray(t.data, dtype=np.float32).ravel()
        elif t.name.endswith(".counts"):
            counts[t.name.removesuffix(".counts")] = np.asarray(t.data, dtype=np.float32).ravel()
    out: dict[str, Any] = {}
    for name in sorted(set(sums) | set(counts)):
        if name not in sums or name not in counts:
            raise ConfigError(f"mismatched sums and counts for {name}", path)
        n = np.rint(counts[name]).astype(np.float32)
        per_expert = sums[name].reshape(len(n), -1)
        safe = np.where(n > 0, n, 1.0)[:, None]
        values = np.where(n[:, None] > 0, per_expert / safe, 1.0)
        out[name] = values.astype(np.float32).ravel()
    return out


def _load_legacy(path: str) -> dict[str, Any]:
    import numpy as np

    with open(path, "rb") as fh:
        blob = fh.read()
    pos = 0

    def take(fmt: str) -> tuple[Any, ...]:
        nonlocal pos
        size = struct.calcsize(fmt)
        if pos + size > len(blob):
            raise ValueError(f"ends early at byte {pos}")
        values = struct.unpack_from(fmt, blob, pos)
        pos += size
        return values

    (n_entries,) = take("<i")
    if n_entries < 1:
        raise ValueError("no entries")
    out: dict[str, Any] = {}
    for _ in range(n_entries):
        (length,) = take("<i")
        if length < 0 or pos + length > len(blob):
            raise ValueError(f"bad name length at byte {pos}")
        name = blob[pos : pos + length].decode("utf-8", "replace")
        pos += length
        ncall, nval = take("<ii")
        if nval < 1 or pos + 4 * nval > len(blob):
            raise ValueError(f"bad value count for {name}")
        values = np.frombuffer(blob, dtype="<f4", count=nval, offset=pos).astype(np.float32)
        pos += 4 * nval
        out[name] = values / ncall if ncall > 0 else values
    return out


def imatrix_struct(data: dict[str, Any], llama_cpp: Any) -> tuple[Any, list[Any]]:
    """A NULL-terminated ``llama_model_imatrix_data`` array for ``data``, and the
    ctypes objects that must stay alive while llama.cpp reads it."""
    import ctypes

    import numpy as np

    entries = (llama_cpp.llama_model_imatrix_data * (len(data) + 1))()
    keep: list[Any] = [entries]
    for i, (name, values) in enumerate(data.items()):
        array = np.ascontiguousarray(values, dtype=np.float32)
        encoded = name.encode()
        keep += [array, encoded]
        entries[i].name = encoded
        entries[i].data = array.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        entries[i].size = array.size
    entries[len(data)].name = None
    return ctypes.cast(entries, ctypes.POINTER(llama_cpp.llama_model_imatrix_data)), keep
