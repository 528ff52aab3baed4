"""Byte-level edits of GGUF files written by ``gguf.GGUFWriter``.

The bad-input and fuzz tests start from a valid file and break one field.
These helpers find a field by the key or tensor name before it, so a test
says which field it breaks instead of hard-coding offsets.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

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


# ---- whole values ---------------------------------------------------------

_SCALAR_FORMATS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?"}
_SCALAR_FORMATS.update({10: "Q", 11: "q", 12: "d"})
STRING, ARRAY = 8, 9


def encode_value(type_id: int, value: object) -> bytes:
    """A GGUF value with its u32 type: a scalar, a string (str or bytes), or for
    ARRAY a pair ``(item type, [items])`` whose items may be arrays in turn."""
    return struct.pack("<I", type_id) + _encode_body(type_id, value)


def _encode_body(type_id: int, value: object) -> bytes:
    if type_id in _SCALAR_FORMATS:
        return struct.pack("<" + _SCALAR_FORMATS[type_id], value)
    if type_id == STRING:
        raw = value.encode() if isinstance(value, str) else bytes(value)  # type: ignore[arg-type]
        return struct.pack("<Q", len(raw)) + raw
    if type_id == ARRAY:
        item_type, items = value  # type: ignore[misc]
        body = b"".join(_encode_body(item_type, item) for item in items)
        return struct.pack("<IQ", item_type, len(items)) + body
    raise ValueError(f"no GGUF value type {type_id}")


def entry_spans(
    data: bytes, keys: list[str], first_tensor: str | None
) -> dict[str, tuple[int, int]]:
    """Where each metadata entry (key, type and value) starts and ends.

    ``keys`` in file order; an entry ends where the next begins, the last where
    the tensor table begins (``first_tensor``'s name) or at the end of ``data``.
    """
    starts = [key_at(data, key) for key in keys]
    if first_tensor is not None:
        table = _string_end(data, first_tensor) - 8 - len(first_tensor.encode())
    else:
        table = len(data)
    return dict(zip(keys, zip(starts, starts[1:] + [table], strict=True), strict=True))


def with_value(
    header: bytes, span: tuple[int, int], key: str, type_id: int, value: object
) -> bytes:
    """``header`` with the entry at ``span`` holding ``value`` of ``type_id`` instead.

    The header changes length, so the tensor data must follow at the next
    alignment boundary of the new header (:func:`with_data`); tensor offsets are
    relative to it and stay valid.
    """
    start, end = span
    raw_key = key.encode()
    entry = struct.pack("<Q", len(raw_key)) + raw_key + encode_value(type_id, value)
    return header[:start] + entry + header[end:]


def with_data(header: bytes, data: bytes, alignment: int = 32) -> bytes:
    """A whole file: ``header``, zeros to the alignment, then the tensor ``data``."""
    return header + b"\0" * (-len(header) % alignment) + data


def header_fields(data: bytes, gf: Any) -> list[tuple[int, str]]:
    """Every length, count, type and offset field of a header as (offset, struct
    format), for ``gf`` = ``llmtune.model.read_gguf`` of ``data``: the fields a
    crafted file would lie in."""
    fields: list[tuple[int, str]] = [(VERSION_AT, "I"), (TENSOR_COUNT_AT, "Q"), (KV_COUNT_AT, "Q")]
    for key in gf.metadata:
        fields += [(key_at(data, key), "Q"), (value_type_at(data, key), "I")]
        if gf.metadata_types[key] == STRING:
            fields.append((value_at(data, key), "Q"))
        elif gf.metadata_types[key] == ARRAY:
            fields += [(value_at(data, key), "I"), (value_at(data, key) + 4, "Q")]
    for t in gf.tensors:
        n_dims_at = tensor_field_at(data, t.name, "n_dims")
        fields += [(n_dims_at - 8 - len(t.name.encode()), "Q"), (n_dims_at, "I")]
        fields += [(n_dims_at + 4 + 8 * d, "Q") for d in range(len(t.shape))]
        fields += [(tensor_field_at(data, t.name, "type"), "I")]
        fields.append((tensor_field_at(data, t.name, "offset"), "Q"))
    return fields
