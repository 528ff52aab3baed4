"""A fast, defensive reader of GGUF headers.

The header is read straight from a read-only memory map with ``struct``; the
tensor data is never touched. Large arrays (a tokenizer's 128k tokens and 280k
merges) are skipped, not decoded: only their type, length and file offset are
kept (:class:`GGUFArray`), and they are decoded on demand. That is why this is
two orders of magnitude faster than ``gguf.GGUFReader``, which decodes every
token.

Every length and count is checked against the bytes that are left before it
is used, so a truncated or crafted file ends in a :class:`GGUFError` naming
the offset or key, never in an exception from deep inside, a hang, or an
allocation larger than the file. The layout follows ggml's ``gguf.cpp``
(``gguf_init_from_file_impl``) in the llama.cpp vendored by llama-cpp-python.
"""

from __future__ import annotations

import bisect
import mmap
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TypeAlias

from llmtune.errors import GGUFError
from llmtune.model.foreign import describe_foreign as _describe_foreign
from llmtune.model.ggml_types import GGML_TYPES, VALUE_TYPE_NAMES
from llmtune.model.mapped import MappedFile

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
GGML_MAX_DIMS = 4  # ggml.h

# GGUF value types (gguf.constants.GGUFValueType).
T_UINT8, T_INT8, T_UINT16, T_INT16, T_UINT32, T_INT32, T_FLOAT32, T_BOOL = range(8)
T_STRING, T_ARRAY, T_UINT64, T_INT64, T_FLOAT64 = range(8, 13)

_SCALAR_FORMATS: dict[int, str] = {
    T_UINT8: "<B",
    T_INT8: "<b",
    T_UINT16: "<H",
    T_INT16: "<h",
    T_UINT32: "<I",
    T_INT32: "<i",
    T_FLOAT32: "<f",
    T_BOOL: "<?",
    T_UINT64: "<Q",
    T_INT64: "<q",
    T_FLOAT64: "<d",
}
_SCALARS: dict[int, struct.Struct] = {k: struct.Struct(v) for k, v in _SCALAR_FORMATS.items()}
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_I64 = struct.Struct("<q")

# Arrays up to these lengths are decoded while reading (per-layer hyper-parameter
# arrays, tags); longer ones stay lazy.
EAGER_NUMERIC_ITEMS = 4096
EAGER_STRING_ITEMS = 64
# A decoded item is a Python object up to 16 times the bytes it takes in the file
# (a float32 becomes 32 bytes; an empty nested array, 64). Past this many items in
# one header, arrays stay lazy, so nested arrays cannot multiply a file's size in
# memory; real headers decode a few thousand.
MAX_EAGER_ITEMS = 1 << 15
# A decoded string takes up to four times its bytes (one astral character makes
# every character four bytes; bad UTF-8 decodes to U+FFFD, two). Longer strings,
# and any past a header's budget, stay lazy: a bit flip in a string's length must
# not decode gigabytes of tensor data. Real ones are chat templates of a few KB;
# tokenizer.huggingface.json copies of several MB are never used.
MAX_EAGER_STRING_BYTES = 1 << 20
MAX_EAGER_TEXT_BYTES = 4 << 20
# Walking variable-size array items (strings, nested arrays) costs time per item;
# this caps it for a whole file so a crafted header cannot make us spin for
# minutes. Real files hold under a million (262k tokens + 500k merges).
MAX_WALKED_ITEMS = 1 << 24
MAX_NESTING = 8
MAX_KEY_BYTES = 1 << 16
# Every entry and tensor becomes Python objects of a few hundred bytes, so a header
# packed with tiny ones would take many times its size; real files hold under 200
# entries and, even with one tensor per MoE expert, under 20,000 tensors.
MAX_METADATA_ENTRIES = 1 << 14
MAX_TENSORS = 1 << 16
# A crafted file can hold a million badly encoded strings; report a few.
MAX_UTF8_WARNINGS = 5

Scalar: TypeAlias = "int | float | bool | str"
Value: TypeAlias = "Scalar | list[Value] | GGUFArray | GGUFString"


class HeaderIncomplete(Exception):
    """The bytes given end before the header does, in a file that is longer: the
    reader of a remote file fetches up to ``end`` (an estimate of where the header
    ends, at least the next byte it needs) and parses again."""

    def __init__(self, end: int) -> None:
        super().__init__(f"the header needs the file's first {end:,} bytes")
        self.end = end


def value_type_name(type_id: int) -> str:
    return VALUE_TYPE_NAMES.get(type_id, f"type {type_id}")


@dataclass(frozen=True, slots=True)
class GGUFArray:
    """An array left undecoded in the file: its item type, length and offset."""

    path: str
    item_type: int
    length: int
    offset: int  # file offset of the first item
    nbytes: int  # bytes the items take in the file

    @property
    def type_name(self) -> str:
        return value_type_name(self.item_type)

    def values(self, limit: int | None = None) -> list[Value]:
        """Decode the items (the first ``limit`` of them) from the file."""
        count = self.length if limit is None else min(limit, self.length)
        with MappedFile(self.path) as mf:
            cursor = _Cursor(mf.buf, self.offset, mf.size, self.path)
            return [cursor.value(self.item_type, f"[{i}]", depth=1) for i in range(count)]


@dataclass(frozen=True, slots=True)
class GGUFString:
    """A string value left undecoded in the file: its offset and length in bytes."""

    path: str
    offset: int
    nbytes: int

    def text(self, max_bytes: int | None = None) -> str:
        """The string (its first ``max_bytes`` bytes), bad UTF-8 shown as U+FFFD."""
        n = self.nbytes if max_bytes is None else min(max_bytes, self.nbytes)
        with MappedFile(self.path) as mf:
            if self.offset + n > mf.size:
                raise GGUFError("the file is shorter than when it was read", self.path)
            with memoryview(mf.buf) as whole, whole[self.offset : self.offset + n] as raw:
                return str(raw, "utf-8", errors="replace")

    def __str__(self) -> str:
        return f"[{self.nbytes:,}-byte string, not loaded]"


@dataclass(frozen=True, slots=True)
class TensorInfo:
    """One tensor's header entry. ``offset`` is absolute within its file."""

    name: str
    shape: tuple[int, ...]
    ggml_type: int
    offset: int
    nbytes: int
    n_elements: int
    shard: int = 0

    @property
    def type_name(self) -> str:
        t = GGML_TYPES.get(self.ggml_type)
        return t.name if t is not None else f"type {self.ggml_type}"

    @property
    def known_type(self) -> bool:
        return self.ggml_type in GGML_TYPES


@dataclass(frozen=True)
class GGUFFile:
    """What one GGUF file's header says."""

    path: str
    file_bytes: int
    version: int
    alignment: int
    metadata: dict[str, Value]
    metadata_types: dict[str, int]
    tensors: tuple[TensorInfo, ...]
    data_offset: int
    header_bytes: int
    warnings: tuple[str, ...] = field(default=())

    @property
    def data_end(self) -> int:
        """Where the last tensor's data ends (what a complete file holds)."""
        if not self.tensors:
            # gguf.cpp aligns the data section only when there are tensors.
            return self.header_bytes
        end = self.data_offset
        for t in self.tensors:
            end = max(end, t.offset + t.nbytes)
        return end

    @property
    def missing_bytes(self) -> int:
        return max(0, self.data_end - self.file_bytes)


class _Cursor:
    """Reads GGUF values at a position, checking each against the file's end."""

    def __init__(
        self, buf: bytes | mmap.mmap, pos: int, size: int, path: str, store: str | None = None
    ) -> None:
        self.buf = buf
        self.pos = pos
        self.size = size
        # A remote file's header arrives as a prefix of the file: past it is "need more", not "truncated".
        self.avail = min(size, len(buf))
        self.path = path
        self.store = path if store is None else store
        self.walked = 0
        self.eager_items = 0
        self.text_bytes = 0
        self.warnings: list[str] = []
        self.bad_utf8 = 0
        # Tensor entries not read yet, once the count is known (a remote read's estimate).
        self.tensors_left: int | None = None

    def where(self, what: str = "", at: int | None = None) -> str:
        offset = self.pos if at is None else at
        place = f"offset {offset:#x}"
        return f"{self.path}, {what} at {place}" if what else f"{self.path}, {place}"

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            left = self.size - self.pos
            raise GGUFError(
                f"file ends inside the header: {what} needs {n:,} bytes, {max(left, 0):,} left",
                self.where(what),
            )
        self.have(n)

    def have(self, n: int) -> None:
        """The next ``n`` bytes are in the file; ask for them when not yet at hand."""
        if self.pos + n > self.avail:
            raise HeaderIncomplete(self.pos + n)

    def scalar(self, type_id: int, what: str) -> int | float | bool:
        fmt = _SCALARS[type_id]
        self.need(fmt.size, what)
        (value,) = fmt.unpack_from(self.buf, self.pos)
        self.pos += fmt.size
        return value  # type: ignore[no-any-return]

    def u32(self, what: str) -> int:
        self.need(4, what)
        (value,) = _U32.unpack_from(self.buf, self.pos)
        self.pos += 4
        return int(value)

    def u64(self, what: str) -> int:
        self.need(8, what)
        (value,) = _U64.unpack_from(self.buf, self.pos)
        self.pos += 8
        return int(value)

    def string(self, what: str, limit: int | None = None) -> str:
        start = self.pos
        n = self.u64(f"{what} length")
        if self.pos + n > self.size:
            raise GGUFError(
                f"{what} length {n:,} runs past the end of the file",
                self.where(what, start),
            )
        if limit is not None and n > limit:
            raise GGUFError(
                f"{what} is {n:,} bytes long (at most {limit:,})", self.where(what, start)
            )
        self.have(n)
        # Decoded from a view of the map: a long string is not also copied as bytes.
        with memoryview(self.buf) as whole, whole[self.pos : self.pos + n] as raw:
            self.pos += n
            try:
                return str(raw, "utf-8")
            except UnicodeDecodeError:
                self.bad_utf8 += 1
                if self.bad_utf8 <= MAX_UTF8_WARNINGS:
                    self.warnings.append(
                        f"{what} at offset {start:#x} is not valid UTF-8 (shown with \ufffd)"
                    )
                return str(raw, "utf-8", errors="replace")

    def text(self, what: str) -> str | GGUFString:
        """A string value: decoded, or lazy when long or past the header's budget."""
        start = self.pos
        n = self.u64(f"{what} length")
        if self.pos + n > self.size:
            raise GGUFError(
                f"{what} length {n:,} runs past the end of the file", self.where(what, start)
            )
        if n > MAX_EAGER_STRING_BYTES or self.text_bytes + n > MAX_EAGER_TEXT_BYTES:
            lazy = GGUFString(self.store, self.pos, n)
            self.pos += n
            return lazy
        self.text_bytes += n
        self.pos = start
        return self.string(what)

    def value(self, type_id: int, what: str, depth: int) -> Value:
        if type_id in _SCALARS:
            return self.scalar(type_id, what)
        if type_id == T_STRING:
            return self.text(what)
        if type_id == T_ARRAY:
            items = self.array(what, depth + 1)
            assert items is not None
            return items
        raise GGUFError(f"unknown value type {type_id} for {what}", self.where(what))

    def _eager(self, length: int) -> bool:
        """Whether ``length`` more items may still be decoded now (else: lazy)."""
        if self.eager_items + length > MAX_EAGER_ITEMS:
            return False
        self.eager_items += length
        return True

    def array(self, what: str, depth: int, decode: bool = True) -> list[Value] | GGUFArray | None:
        """An array's items (short arrays) or a lazy :class:`GGUFArray`; with
        ``decode`` False, only checked and stepped over (None)."""
        if depth > MAX_NESTING:
            raise GGUFError(f"arrays nested deeper than {MAX_NESTING} levels", self.where(what))
        start = self.pos
        item_type = self.u32(f"{what} item type")
        length = self.u64(f"{what} length")
        left = self.size - self.pos
        if item_type in _SCALARS:
            item_size = _SCALARS[item_type].size
            nbytes = length * item_size
            if nbytes > left:
                raise GGUFError(
                    f"{what} claims {length:,} items of {value_type_name(item_type)} "
                    f"({nbytes:,} bytes) but only {left:,} bytes are left",
                    self.where(what, start),
                )
            first = self.pos
            if not decode:
                self.pos += nbytes
                return None
            if length <= EAGER_NUMERIC_ITEMS and self._eager(length):
                self.have(nbytes)
                fmt = struct.Struct(f"<{length}{_SCALAR_FORMATS[item_type][1]}")
                items: list[Value] = list(fmt.unpack_from(self.buf, self.pos))
                self.pos += nbytes
                return items
            self.pos += nbytes
            return GGUFArray(self.store, item_type, length, first, nbytes)
        if item_type not in (T_STRING, T_ARRAY):
            raise GGUFError(
                f"unknown item type {item_type} in array {what}", self.where(what, start)
            )
        min_item = 8 if item_type == T_STRING else 12
        if length * min_item > left:
            raise GGUFError(
                f"{what} claims {length:,} items but only {left:,} bytes are left",
                self.where(what, start),
            )
        self.walked += length
        if self.walked > MAX_WALKED_ITEMS:
            raise GGUFError(
                f"{what} holds {length:,} items; more than {MAX_WALKED_ITEMS:,} in one header "
                "is not a real model",
                self.where(what, start),
            )
        first = self.pos
        short = (
            length <= EAGER_STRING_ITEMS or item_type == T_ARRAY and length <= EAGER_NUMERIC_ITEMS
        )
        if decode and short and self._eager(length):
            items = [self.value(item_type, f"{what}[{i}]", depth) for i in range(length)]
            return items
        if item_type == T_STRING:
            self.skip_strings(length, what)
        else:
            for i in range(length):
                self.array(f"{what}[{i}]", depth + 1, decode=False)
        if not decode:
            return None
        return GGUFArray(self.store, item_type, length, first, self.pos - first)

    def skip_strings(self, count: int, what: str) -> None:
        """Step over ``count`` strings without decoding them (the hot loop)."""
        unpack = _U64.unpack_from
        buf = self.buf
        start = pos = self.pos
        end = self.size
        walked = 0
        try:
            for walked in range(count):  # noqa: B007 (read after the loop)
                pos += unpack(buf, pos)[0] + 8
            walked = count
        except (struct.error, OverflowError):
            if pos < end and self.avail < end:
                # Past the bytes at hand but not the file's: the strings walked so far
                # estimate where the rest end.
                rest = (pos - start) // max(walked, 1) * (count - walked)
                raise HeaderIncomplete(min(end, max(pos + 8, pos + rest))) from None
            # Read past the end, or a length so large the offset overflows.
            pos = end + 1
        if pos > self.avail and pos <= end:
            raise HeaderIncomplete(pos)
        if pos > end:
            raise GGUFError(
                f"{what}: its {count:,} strings run past the end of the file",
                self.where(what),
            )
        self.pos = pos


def _tensor_nbytes(
    name: str, shape: tuple[int, ...], type_id: int, where: str
) -> tuple[int, int | None]:
    n_elements = 1
    for dim in shape:
        n_elements *= dim
    if n_elements >= 1 << 63:
        raise GGUFError(
            f"tensor '{name}' has {n_elements:,} elements, more than ggml can hold", where
        )
    ggml_type = GGML_TYPES.get(type_id)
    if ggml_type is None:
        return n_elements, None
    if shape and shape[0] % ggml_type.block_size:
        raise GGUFError(
            f"tensor '{name}' row of {shape[0]} is not a multiple of {ggml_type.name}'s "
            f"block of {ggml_type.block_size}",
            where,
        )
    return n_elements, n_elements // ggml_type.block_size * ggml_type.type_size


def read_gguf(path: str | os.PathLike[str], shard: int = 0) -> GGUFFile:
    """Read one GGUF file's header. Raises :class:`GGUFError` on anything wrong."""
    path = os.fspath(path)
    with MappedFile(path) as mf:
        try:
            return parse_header(mf.buf, mf.size, path, shard)
        except HeaderIncomplete:
            # Only a file system that cannot map and a header past the first GiB get here.
            raise GGUFError("the header is larger than llmtune reads (1 GiB)", path) from None


# A tensor's entry in the header: its name (~30 bytes), dims, type and offset.
TENSOR_INFO_GUESS_BYTES = 64


def parse_header(
    buf: bytes | mmap.mmap, size: int, path: str, shard: int = 0, store: str | None = None
) -> GGUFFile:
    """Parse a header from ``buf``, the whole file of ``size`` bytes or a prefix of it.

    A prefix that ends before the header does raises :class:`HeaderIncomplete` with
    an estimate of where the header ends. Lazy values (long arrays and strings) read
    from ``store`` later, a local copy of at least the header (default: ``path``).
    """
    cur = _Cursor(buf, 0, size, path, store)
    try:
        return _parse(cur, buf, size, path, shard)
    except HeaderIncomplete as more:
        if cur.tensors_left is None:
            raise
        # The tensor table is still ahead: its entries are roughly known in size.
        raise HeaderIncomplete(
            min(size, more.end + cur.tensors_left * TENSOR_INFO_GUESS_BYTES)
        ) from None


def _parse(cur: _Cursor, buf: bytes | mmap.mmap, size: int, path: str, shard: int) -> GGUFFile:
    if size < 4 or bytes(buf[:4]) != GGUF_MAGIC:
        head = bytes(buf[:64])
        if size < 4 and GGUF_MAGIC.startswith(head):
            raise GGUFError(
                f"file ends inside the header: only {size} byte{'s' if size != 1 else ''}", path
            )
        raise GGUFError(_describe_foreign(head), path)
    cur.pos = 4
    version = cur.u32("version")
    if version not in SUPPORTED_VERSIONS:
        if version == 1:
            raise GGUFError("GGUF version 1 is not supported (llama.cpp reads v2 and v3)", path)
        if version & 0xFFFF == 0 and (version >> 24) in SUPPORTED_VERSIONS:
            raise GGUFError("a big-endian GGUF file, which llama.cpp cannot load here", path)
        raise GGUFError(f"unsupported GGUF version {version} (llama.cpp reads v2 and v3)", path)
    tensor_count = cur.u64("tensor count")
    kv_count = cur.u64("metadata count")
    # Each entry takes a fixed minimum number of bytes, so a count the file
    # cannot hold is caught here instead of after a long loop.
    if kv_count * 13 > size - cur.pos:
        raise GGUFError(
            f"metadata count {kv_count:,} is more than the file's {size:,} bytes can hold "
            "(truncated or corrupt)",
            cur.where("metadata count", 16),
        )
    if tensor_count * 24 > size - cur.pos:
        raise GGUFError(
            f"tensor count {tensor_count:,} is more than the file's {size:,} bytes can hold "
            "(truncated or corrupt)",
            cur.where("tensor count", 8),
        )
    if kv_count > MAX_METADATA_ENTRIES:
        raise GGUFError(
            f"metadata count {kv_count:,} is more than any model holds "
            f"(llmtune reads up to {MAX_METADATA_ENTRIES:,})",
            cur.where("metadata count", 16),
        )
    if tensor_count > MAX_TENSORS:
        raise GGUFError(
            f"tensor count {tensor_count:,} is more than any model holds "
            f"(llmtune reads up to {MAX_TENSORS:,})",
            cur.where("tensor count", 8),
        )

    metadata: dict[str, Value] = {}
    metadata_types: dict[str, int] = {}
    cur.tensors_left = tensor_count
    for i in range(kv_count):
        key_at = cur.pos
        key = cur.string(f"key of metadata entry {i}", limit=MAX_KEY_BYTES)
        type_id = cur.u32(f"type of '{key}'")
        if type_id not in _SCALARS and type_id not in (T_STRING, T_ARRAY):
            raise GGUFError(
                f"unknown value type {type_id} for key '{key}'", cur.where(f"key '{key}'", key_at)
            )
        value = cur.value(type_id, f"'{key}'", depth=0)
        if key in metadata:
            raise GGUFError(f"duplicate key '{key}'", cur.where("key", key_at))
        metadata[key] = value
        metadata_types[key] = type_id

    alignment = DEFAULT_ALIGNMENT
    if "general.alignment" in metadata:
        # gguf.cpp refuses any type but UINT32, and any value but a power of two.
        raw_alignment = metadata["general.alignment"]
        alignment_type = metadata_types["general.alignment"]
        if alignment_type != T_UINT32:
            raise GGUFError(
                f"general.alignment is a {value_type_name(alignment_type)}; it must be a UINT32",
                f"{path}, key 'general.alignment'",
            )
        if (
            not isinstance(raw_alignment, int)
            or raw_alignment <= 0
            or raw_alignment & (raw_alignment - 1)
        ):
            raise GGUFError(
                f"general.alignment is {raw_alignment}; it must be a power of two",
                f"{path}, key 'general.alignment'",
            )
        alignment = raw_alignment

    infos: list[tuple[str, tuple[int, ...], int, int, int, int | None, int]] = []
    names: set[str] = set()
    # gguf.cpp requires each tensor to start where the previous one's padded
    # data ends; after a tensor of unknown type that end is unknown.
    expected_offset: int | None = 0
    for i in range(tensor_count):
        cur.tensors_left = tensor_count - i
        info_at = cur.pos
        name = cur.string(f"name of tensor {i}", limit=MAX_KEY_BYTES)
        n_dims = cur.u32(f"dimension count of tensor '{name}'")
        if n_dims > GGML_MAX_DIMS:
            raise GGUFError(
                f"tensor '{name}' has {n_dims:,} dimensions (ggml allows {GGML_MAX_DIMS})",
                cur.where("tensor info", info_at),
            )
        shape_list = []
        for d in range(n_dims):
            dim_at = cur.pos
            self_dim = cur.u64(f"dimension {d} of tensor '{name}'")
            if self_dim >= 1 << 63:
                raise GGUFError(
                    f"tensor '{name}' dimension {d} is negative", cur.where("dim", dim_at)
                )
            shape_list.append(self_dim)
        shape = tuple(shape_list)
        type_id = cur.u32(f"type of tensor '{name}'")
        rel_offset = cur.u64(f"offset of tensor '{name}'")
        if name in names:
            raise GGUFError(f"duplicate tensor '{name}'", cur.where("tensor info", info_at))
        names.add(name)
        where = cur.where(f"tensor '{name}'", info_at)
        n_elements, nbytes = _tensor_nbytes(name, shape, type_id, where)
        if rel_offset % alignment:
            raise GGUFError(
                f"tensor '{name}' data offset {rel_offset:#x} is not aligned to {alignment}", where
            )
        if expected_offset is not None and rel_offset != expected_offset:
            raise GGUFError(
                f"tensor '{name}' data offset is {rel_offset:#x}, expected {expected_offset:#x} "
                "(tensors overlap or leave gaps)",
                where,
            )
        if nbytes is None:
            expected_offset = None
        elif expected_offset is not None:
            expected_offset += (nbytes + alignment - 1) // alignment * alignment
        infos.append((name, shape, type_id, rel_offset, n_elements, nbytes, info_at))

    cur.tensors_left = None
    header_end = cur.pos
    data_offset = (header_end + alignment - 1) // alignment * alignment
    warnings = list(cur.warnings)
    if cur.bad_utf8 > MAX_UTF8_WARNINGS:
        warnings.append(
            f"{cur.bad_utf8 - MAX_UTF8_WARNINGS:,} more strings are not valid UTF-8 "
            "(shown with \ufffd)"
        )

    # Unknown tensor types: report, and size them by the gap to the next tensor.
    offsets = sorted(rel for _, _, _, rel, _, _, _ in infos)
    tensors: list[TensorInfo] = []
    unknown: dict[int, int] = {}
    for name, shape, type_id, rel_offset, n_elements, nbytes, _info_at in infos:
        if nbytes is None:
            unknown[type_id] = unknown.get(type_id, 0) + 1
            following = bisect.bisect_right(offsets, rel_offset)
            end = offsets[following] if following < len(offsets) else max(0, size - data_offset)
            nbytes = max(0, end - rel_offset)
        tensors.append(
            TensorInfo(name, shape, type_id, data_offset + rel_offset, nbytes, n_elements, shard)
        )
    for type_id, count in sorted(unknown.items()):
        warnings.append(
            f"{count} tensor{'s' if count != 1 else ''} of unknown ggml type {type_id} "
            "(newer than this llmtune?); their sizes are taken from the gaps between tensors"
        )
    return GGUFFile(
        path=path,
        file_bytes=size,
        version=version,
        alignment=alignment,
        metadata=metadata,
        metadata_types=metadata_types,
        tensors=tuple(tensors),
        data_offset=data_offset,
        header_bytes=header_end,
        warnings=tuple(warnings),
    )


def iter_metadata(gf: GGUFFile) -> Iterator[tuple[str, int, Value]]:
    for key, value in gf.metadata.items():
        yield key, gf.metadata_types[key], value
