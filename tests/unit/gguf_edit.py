"""Byte-level edits of GGUF files written by ``gguf.GGUFWriter``.

The bad-input and fuzz tests start from a valid file and break one field.
These helpers find a field by the key or tensor name before it, so a test
says which field it breaks instead of hard-coding offsets.
"""

from __future__ import annotations

import struct
from pathlib import Path

# Header layout (GGUF v2/v3): magic, version u32, tensor count u64, metadata count u64.
VERSION_AT = 4
TENSOR_COUNT_AT = 8
KV_COUNT_AT = 16


def _string_end(data: bytes, text: str) -> int:
    """Offset just past the GGUF string ``text`` (u64 length + bytes)."""
    raw = text.encode()
    needle = struct.pack("<Q", len(raw)) + raw
    at = data.find(needle)
    assert at >= 0, f"{text!r} not found"
    assert data.find(needle, at + 1) < 0, f"{text!r} found twice"
    return at + len(needle)


def key_at(data: bytes, key: str) -> int:
    """Offset of the metadata entry ``key`` (its u64 key length)."""
    return _string_end(data, key) - 8 - len(key.encode())


def value_type_at(data: bytes, key: str) -> int:
    """Offset of the u32 value type of metadata entry ``key``."""
    return _string_end(data, key)


def value_at(data: bytes, key: str) -> int:
    """Offset of the value of metadata entry ``key`` (after its type)."""
    return _string_end(data, key) + 4


def tensor_field_at(data: bytes, name: str, field: str) -> int:
    """Offset of ``field`` (n_dims, dims, type or offset) of tensor ``name``."""
    n_dims_at = _string_end(data, name)
    if field == "n_dims":
        return n_dims_at
    if field == "dims":
        return n_dims_at + 4
    (n_dims,) = struct.unpack_from("<I", data, n_dims_at)
    type_at = n_dims_at + 4 + 8 * n_dims
    if field == "type":
        return type_at
    if field == "offset":
        return type_at + 4
    raise ValueError(field)


def patch(path: Path, offset: int, fmt: str, value: int | float) -> None:
    """Overwrite one packed little-endian field of the file in place."""
    data = bytearray(path.read_bytes())
    struct.pack_into("<" + fmt, data, offset, value)
    path.write_bytes(bytes(data))


def unpack(path: Path, offset: int, fmt: str) -> int:
    return int(struct.unpack_from("<" + fmt, path.read_bytes(), offset)[0])
