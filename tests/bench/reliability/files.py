"""Malformed model files: 30,000 broken headers through what ``llmtune inspect``
and ``llmtune fit`` do.

Inputs, all made deterministically from two real headers:

- the demo model's header (SmolLM2-135M Q4_1, 1,785,664 bytes) cut at every
  offset of its first 8 KiB (magic, counts, every scalar key, the start of the
  49,152 tokens) and of its last 8 KiB (the last 130 entries of the 272-entry
  tensor table), at every 4th offset of the 9.6 KiB before those (the end of the
  merges, the last keys, the rest of the table), at every 1,009th offset between
  and at every offset within 32 bytes of where its big arrays start; cut 64
  times in the tensor data (the data is a sparse hole: the reader never reads it);
- the synthetic header of tests/unit/test_fuzz.py (every kind of value: nested
  arrays, string arrays, 64-bit numbers) cut at every offset, and 64 times in
  its tensor data;
- both headers with 1-8 bit flips, with 1-3 of their count, length, type and
  offset fields set to huge values, with each key's value replaced by values of
  every type (and each key's type field changed to every type id), and the
  demo's with nested arrays in place of hyper-parameters and tokenizer arrays;
- headers at and just past the reader's limits on entries and tensors;
- split sets: a three-shard model opened at each shard, with a shard missing,
  from another model, a directory, a FIFO, empty, renamed, with its split keys
  changed, cut or bit-flipped.

Each input goes through ``read_spec`` (as the command line reads it), then the
inspect report (JSON and text) and a fit plan on a 12 GB GPU and 64 GiB of RAM
(JSON and text), in child processes two at a time. Outcomes: refused (an
``LlmtuneError`` whose message is one line with no control characters), read (a
model that inspect shows and fit plans), crash (any other exception, or a
message on more than one line). Each input is timed; a child silent for
``HANG_KILL_S`` is killed and its input counted as a hang. Memory: the Python
allocations of every ``TRACE_EVERY``-th input (tracemalloc slows parsing five
times) and of every input of the small families, and each child's resident
set high-water mark over its size before the first input, both against the
bytes the file holds (a sparse hole holds none). A sample of inputs then goes
through the real command line, ``python -m llmtune.cli inspect`` and ``fit``.

``python tests/bench/reliability/files.py`` runs this section alone.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import logging
import os
import pickle
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import tracemalloc
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
TESTS = HERE.parents[1]
for _path in (TESTS / "bench", TESTS, TESTS / "unit"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from gguf import GGUFValueType as V  # noqa: E402
from gguf_edit import (  # noqa: E402
    entry_spans,
    header_fields,
    value_at,
    value_type_at,
    with_value,
)

from reliability import Section  # noqa: E402

HANG_S = 2.0  # the target: no input takes longer
HANG_KILL_S = 30.0  # a child silent this long is stuck (generous: the CPU is shared)
PARALLEL = 2
CHUNK = 1500  # inputs per child
TRACE_EVERY = 25
MEMORY_SLACK_BYTES = 32 << 20  # what "a small constant" allows beyond the file
CLI_SAMPLE = 160  # inputs through the real command line (each: inspect and fit)
SEED = "llmtune-files-1"
# Inputs are written to memory, not the disk, where there is a tmpfs.
WORK_DIR = "/dev/shm" if os.path.isdir("/dev/shm") else None

HEAD_EVERY = 8192  # demo header: every offset below this
TAIL_EVERY = 8192  # ... and in the last this many bytes (most of the tensor table)
TAIL_BYTES = 17_800  # before those, every TAIL_STRIDE-th offset back to here from the end
TAIL_STRIDE = 4
MIDDLE_STRIDE = 1009
BOUNDARY = 32
DATA_CUTS = 64

HUGE = [0, 1, 2**31, 2**32 - 1, 2**32, 2**40, 2**62, 2**63 - 1, 2**63, 2**64 - 8, 2**64 - 1]
TYPE_IDS = [*range(13), 13, 255, 2**31, 2**32 - 1]

# Values of every type, in the shapes a crafted file might give any key.
WRONG_VALUES: list[tuple[int, Any]] = [
    (V.UINT8, 0),
    (V.UINT8, 255),
    (V.INT8, -128),
    (V.UINT16, 65535),
    (V.INT16, -32768),
    (V.UINT32, 0),
    (V.UINT32, 1),
    (V.UINT32, 2**32 - 1),
    (V.INT32, -1),
    (V.INT32, -(2**31)),
    (V.UINT64, 2**63),
    (V.UINT64, 2**64 - 1),
    (V.INT64, -(2**63)),
    (V.FLOAT32, float("nan")),
    (V.FLOAT32, float("inf")),
    (V.FLOAT32, -1.5),
    (V.FLOAT32, 3.4e38),
    (V.FLOAT64, 1e308),
    (V.FLOAT64, -1e308),
    (V.FLOAT64, 5e-324),
    (V.BOOL, True),
    (V.STRING, ""),
    (V.STRING, "4096"),
    (V.STRING, b"\xff\xfe\x00\x1b[2J"),
    (V.STRING, "x" * 100_000),
    (V.ARRAY, (V.UINT32, [])),
    (V.ARRAY, (V.UINT32, [0] * 30)),
    (V.ARRAY, (V.UINT32, [2**32 - 1] * 30)),
    (V.ARRAY, (V.INT32, [-1] * 30)),
    (V.ARRAY, (V.UINT64, [2**64 - 1] * 3)),
    (V.ARRAY, (V.FLOAT32, [float("nan")] * 30)),
    (V.ARRAY, (V.FLOAT64, [1e308] * 30)),
    (V.ARRAY, (V.BOOL, [True] * 30)),
    (V.ARRAY, (V.UINT8, [7] * 5000)),
    (V.ARRAY, (V.STRING, ["a", "", "8"])),
    (V.ARRAY, (V.STRING, ["t"] * 70)),
    (V.ARRAY, (V.ARRAY, [])),
    (V.ARRAY, (V.ARRAY, [(V.UINT32, [4]), (V.UINT32, [])])),
    (V.ARRAY, (V.ARRAY, [(V.ARRAY, [(V.ARRAY, [])])])),
]


def _nest(depth: int, leaf: tuple[int, Any]) -> tuple[int, Any]:
    value = leaf
    for _ in range(depth):
        value = (V.ARRAY, (value[0], [value[1]]))
    return value


# Nested arrays: deep, wide, wider than the eager limit, memory-heavy, hostile inside.
NESTED_VALUES: list[tuple[int, Any]] = [
    *[_nest(depth, (V.UINT32, 7)) for depth in range(1, 11)],
    _nest(9, (V.STRING, "deep")),
    (V.ARRAY, (V.ARRAY, [(V.UINT32, [])] * 4096)),
    (V.ARRAY, (V.ARRAY, [(V.UINT32, [])] * 4097)),
    (V.ARRAY, (V.ARRAY, [(V.FLOAT32, [1.0] * 4096)] * 64)),
    (V.ARRAY, (V.ARRAY, [(V.FLOAT32, [2.0] * 256)] * 4096)),
    (V.ARRAY, (V.ARRAY, [(V.STRING, ["s"] * 64)] * 512)),
    (V.ARRAY, (V.ARRAY, [(V.ARRAY, [(V.UINT8, [1] * 16)] * 16)] * 256)),
]
NESTED_KEYS = (
    "llama.block_count",
    "llama.embedding_length",
    "llama.attention.head_count",
    "llama.attention.head_count_kv",
    "llama.feed_forward_length",
    "general.name",
    "general.languages",
    "tokenizer.ggml.tokens",
    "tokenizer.chat_template",
)


# ---- the bases ------------------------------------------------------------------


@dataclass
class Header:
    """One valid header, and where its fields and entries are."""

    header: bytes  # the header's bytes (what a mutation may change)
    data: bytes  # the tensor data that follows ("" when it is left a sparse hole)
    data_bytes: int  # the size of the tensor data (with the padding before it)
    fields: list[tuple[int, str]]
    spans: dict[str, tuple[int, int]]
    keys: list[str]
    first_tensor: str
    starts: dict[str, int] = field(default_factory=dict)  # array keys: where they start


@dataclass
class Bases:
    demo: Header
    synth: Header
    split: list[bytes]  # a three-shard model
    split_other: list[bytes]  # another model's three shards (different tensors)
    split_two: list[bytes]  # a two-shard model
    dense: list[bytes]  # headers at and past the limits on entries and tensors


def _header(path: Path, keep_data: bool) -> Header:
    from llmtune.model import read_gguf

    gf = read_gguf(path)
    raw = path.read_bytes() if keep_data else path.read_bytes()[: gf.header_bytes]
    header = raw[: gf.header_bytes]
    first_tensor = gf.tensors[0].name
    starts = {
        key: value_type_at(header, key)
        for key, type_id in gf.metadata_types.items()
        if type_id == int(V.ARRAY)
    }
    return Header(
        header=header,
        data=raw[gf.data_offset :] if keep_data else b"",
        data_bytes=gf.file_bytes - gf.header_bytes,
        fields=header_fields(header, gf),
        spans=entry_spans(header, list(gf.metadata), first_tensor),
        keys=list(gf.metadata),
        first_tensor=first_tensor,
        starts=starts,
    )


def _dense(n_kv: int, n_tensors: int, layered: bool) -> bytes:
    def s(raw: bytes) -> bytes:
        return struct.pack("<Q", len(raw)) + raw

    kv = b"".join(s(b"k%06d" % i) + struct.pack("<IB", 0, 1) for i in range(n_kv))
    tensors = b"".join(
        s((b"blk.%d." % (i % 500) if layered else b"t") + b"%06d" % i)
        + struct.pack("<IQIQ", 1, 32, 0, i * 128)
        for i in range(n_tensors)
    )
    data = b"GGUF" + struct.pack("<IQQ", 3, n_tensors, n_kv) + kv + tensors
    return data + b"\0" * (-len(data) % 32)  # the data (n_tensors x 128 bytes) is a hole


def build_bases(folder: Path) -> Bases:
    from llmtune.model.demo import fetch_demo_model
    from llmtune.model.gguf_file import MAX_METADATA_ENTRIES, MAX_TENSORS
    from synth import llama_like

    demo = _header(fetch_demo_model(), keep_data=False)
    extra: list[tuple[str, Any]] = [  # as tests/unit/test_fuzz.py's base
        ("test.nested", [[1, 2], [3]]),
        ("test.strings", (["a", "bc", ""], V.ARRAY, V.STRING)),
        ("test.flags", ([True, False], V.ARRAY, V.BOOL)),
        ("test.big", (2**63 + 5, V.UINT64)),
        ("test.real", (2.5, V.FLOAT64)),
        ("llama.attention.head_count", ([4, 2], V.ARRAY, V.UINT32)),
    ]
    shape = dict(n_layer=2, n_embd=32, n_head=4, n_head_kv=2, n_ff=64, n_vocab=80)
    logging.getLogger("gguf").setLevel(logging.ERROR)  # the override of head_count is meant
    for sub in ("s", "o", "t"):
        (folder / sub).mkdir()
    synth_path = llama_like(folder / "base.gguf", **shape, extra_kv=extra, fill=b"\x11")[0]
    synth = _header(synth_path, keep_data=True)
    split = llama_like(folder / "s" / "m.gguf", **shape, split_max_tensors=8, fill=b"\x22")
    other = llama_like(
        folder / "o" / "m.gguf", **{**shape, "n_ff": 96}, split_max_tensors=8, fill=b"\x33"
    )
    two = llama_like(folder / "t" / "m.gguf", **shape, split_max_tensors=12, fill=b"\x44")
    assert len(split) == 3 and len(other) == 3 and len(two) == 2
    dense = [
        _dense(MAX_METADATA_ENTRIES, 0, False),
        _dense(0, MAX_TENSORS, False),
        _dense(0, MAX_TENSORS, True),
        _dense(MAX_METADATA_ENTRIES, MAX_TENSORS, True),
        _dense(MAX_METADATA_ENTRIES + 1, 0, False),
        _dense(0, MAX_TENSORS + 1, True),
    ]
    return Bases(
        demo=demo,
        synth=synth,
        split=[p.read_bytes() for p in split],
        split_other=[p.read_bytes() for p in other],
        split_two=[p.read_bytes() for p in two],
        dense=dense,
    )


# ---- the inputs -----------------------------------------------------------------


@dataclass(frozen=True)
class Made:
    """An input on disk: the path to open, and the bytes its files hold."""

    path: str
    file_bytes: int  # sizes on disk, every shard
    held_bytes: int  # bytes written (a sparse hole holds none)
    truncated: bool = False  # a cut header: it must be refused


def _write(folder: Path, name: str, header: bytes, data: bytes, size: int | None = None) -> Made:
    path = folder / name
    with open(path, "wb") as fh:
        fh.write(header)
        fh.write(b"\0" * (-len(header) % 32) if data or size else b"")
        fh.write(data)
        if size is not None and fh.tell() < size:
            fh.truncate(size)  # the rest is a hole
        total = max(size or 0, fh.tell())
    held = len(header) + len(data)
    return Made(str(path), total, held)


def _full(h: Header, folder: Path, header: bytes) -> Made:
    """``header`` followed by the base's tensor data, at the new header's alignment."""
    if h.data:
        return _write(folder, "m.gguf", header, h.data)
    size = len(header) + (-len(header) % 32) + h.data_bytes
    return _write(folder, "m.gguf", header, b"", size)


def _cut(h: Header, folder: Path, cut: int) -> Made:
    whole = h.header + (b"\0" * (-len(h.header) % 32) if h.data else b"") + h.data
    if cut <= len(whole):
        made = _write(folder, "m.gguf", whole[:cut], b"")
    else:  # in the hole
        made = _write(folder, "m.gguf", h.header, b"", cut)
    return Made(made.path, made.file_bytes, made.held_bytes, truncated=True)


def _flip(h: Header, rng: random.Random, spots: list[tuple[int, int]]) -> bytes:
    mutant = bytearray(h.header)
    for _ in range(rng.randint(1, 8)):
        lo, hi = rng.choice(spots)
        mutant[rng.randrange(lo, hi)] ^= 1 << rng.randrange(8)
    return bytes(mutant)


def _huge(h: Header, rng: random.Random) -> bytes:
    mutant = bytearray(h.header)
    for _ in range(rng.randint(1, 3)):
        offset, fmt = rng.choice(h.fields)
        limit = 2**64 - 1 if fmt == "Q" else 2**32 - 1
        pool = [v for v in HUGE if v <= limit]
        value = rng.choice(pool) if rng.random() < 0.7 else rng.randrange(limit + 1)
        struct.pack_into("<" + fmt, mutant, offset, value)
    return bytes(mutant)


def _retyped(h: Header, index: int) -> bytes:
    """Input ``index`` of the wrong-type family: a key's value, or its type field."""
    n_values = len(h.keys) * len(WRONG_VALUES)
    if index < n_values:
        key = h.keys[index // len(WRONG_VALUES)]
        type_id, value = WRONG_VALUES[index % len(WRONG_VALUES)]
        return with_value(h.header, h.spans[key], key, int(type_id), value)
    index -= n_values
    key = h.keys[index // len(TYPE_IDS)]
    mutant = bytearray(h.header)
    struct.pack_into("<I", mutant, value_type_at(h.header, key), TYPE_IDS[index % len(TYPE_IDS)])
    return bytes(mutant)


def _nested(h: Header, index: int) -> bytes:
    key = NESTED_KEYS[index // len(NESTED_VALUES)]
    type_id, value = NESTED_VALUES[index % len(NESTED_VALUES)]
    return with_value(h.header, h.spans[key], key, int(type_id), value)


SPLIT_NAMES = ["m-00001-of-00003.gguf", "m-00002-of-00003.gguf", "m-00003-of-00003.gguf"]
RENAMES = [
    "m-00001-of-00004.gguf",
    "m-00000-of-00003.gguf",
    "m-00004-of-00003.gguf",
    "m.gguf",
    "m-1-of-3.gguf",
]


def _split_variants(b: Bases) -> list[Callable[[Path], Made]]:
    """Every split-set input: a function that lays it out in a folder."""
    variants: list[Callable[[Path], Made]] = []

    def layout(
        folder: Path,
        shards: list[bytes | None | str],
        open_at: int,
        names: list[str] = SPLIT_NAMES,
        truncated: bool = False,
    ) -> Made:
        total = held = 0
        for name, content in zip(names, shards, strict=True):
            path = folder / name
            if content is None:
                continue
            if content == "dir":
                path.mkdir()
            elif content == "fifo":
                os.mkfifo(path)
            elif isinstance(content, bytes):
                path.write_bytes(content)
                total += len(content)
                held += len(content)
        return Made(str(folder / names[open_at]), total, held, truncated)

    def patched(content: bytes, key: str, fmt: str, value: int) -> bytes:
        mutant = bytearray(content)
        struct.pack_into("<" + fmt, mutant, value_at(content, key), value)
        return bytes(mutant)

    base: list[bytes | None | str] = list(b.split)
    for open_at in range(3):
        variants.append(lambda f, o=open_at: layout(f, list(base), o))
        for j in range(3):
            if j == open_at:
                continue
            for replacement in (None, "dir", "fifo", b"", b.split_other[j], b.split_two[min(j, 1)]):
                shards = list(base)
                shards[j] = replacement
                variants.append(lambda f, s=shards, o=open_at: layout(f, s, o))
        for j in range(3):
            for key, fmt, values in (
                ("split.count", "H", [0, 1, 2, 4, 65535]),
                ("split.no", "H", [0, 1, 2, 3, 65535]),
                ("split.tensors.count", "i", [0, 1, 29, -1, 2**31 - 1]),
            ):
                for value in values:
                    shards = list(base)
                    shards[j] = patched(b.split[j], key, fmt, value)
                    variants.append(lambda f, s=shards, o=open_at: layout(f, s, o))
        for name in RENAMES:
            names = list(SPLIT_NAMES)
            names[open_at] = name
            variants.append(lambda f, n=names, o=open_at: layout(f, list(base), o, n))
    rng = random.Random(SEED + "split")
    for _ in range(360):
        open_at, j = rng.randrange(3), rng.randrange(3)
        cut = rng.randrange(len(b.split[j]))
        shards = list(base)
        shards[j] = b.split[j][:cut]
        variants.append(lambda f, s=shards, o=open_at: layout(f, s, o, truncated=True))
    for _ in range(180):
        open_at, j = rng.randrange(3), rng.randrange(3)
        mutant = bytearray(b.split[j])
        for _ in range(rng.randint(1, 8)):
            mutant[rng.randrange(min(len(mutant), 4096))] ^= 1 << rng.randrange(8)
        shards = list(base)
        shards[j] = bytes(mutant)
        variants.append(lambda f, s=shards, o=open_at: layout(f, s, o))
    return variants


@dataclass(frozen=True)
class Family:
    name: str
    count: int
    make: Callable[[int, Path], Made]
    trace_every: int = TRACE_EVERY


def families(b: Bases) -> list[Family]:
    demo, synth = b.demo, b.synth
    end = len(demo.header)
    tail = end - TAIL_BYTES
    tail_sampled = list(range(tail, end - TAIL_EVERY, TAIL_STRIDE))
    middle = sorted(
        set(range(HEAD_EVERY, tail, MIDDLE_STRIDE))
        | {
            at + d
            for at in demo.starts.values()
            for d in range(-BOUNDARY, BOUNDARY)
            if HEAD_EVERY <= at + d < tail
        }
    )
    data_cuts = [end + k * (demo.data_bytes // DATA_CUTS) for k in range(DATA_CUTS)]
    synth_cuts = list(range(len(synth.header) + 1)) + [
        len(synth.header) + 1 + k * (len(synth.data) // DATA_CUTS) for k in range(DATA_CUTS)
    ]
    demo_structure = [(0, min(end, HEAD_EVERY)), (tail, end)]
    demo_anywhere = [(0, end)]
    splits = _split_variants(b)

    def rng(name: str, i: int) -> random.Random:
        return random.Random(f"{SEED}:{name}:{i}")

    def flip_demo(i: int, f: Path) -> Made:
        spots = demo_structure if i % 2 else demo_anywhere
        return _full(demo, f, _flip(demo, rng("flip demo", i), spots))

    return [
        Family("cut: demo header, first 8 KiB", HEAD_EVERY, lambda i, f: _cut(demo, f, i)),
        Family(
            "cut: demo header, last 8 KiB",
            TAIL_EVERY,
            lambda i, f: _cut(demo, f, end - TAIL_EVERY + i),
        ),
        Family(
            "cut: demo header, every 4th offset of the 9.6 KiB before",
            len(tail_sampled),
            lambda i, f: _cut(demo, f, tail_sampled[i]),
        ),
        Family("cut: demo header, between", len(middle), lambda i, f: _cut(demo, f, middle[i])),
        Family("cut: demo tensor data", DATA_CUTS, lambda i, f: _cut(demo, f, data_cuts[i]), 1),
        Family("cut: synthetic file", len(synth_cuts), lambda i, f: _cut(synth, f, synth_cuts[i])),
        Family("bit flips: demo", 1500, flip_demo),
        Family(
            "bit flips: synthetic",
            1000,
            lambda i, f: _full(
                synth, f, _flip(synth, rng("flip synth", i), [(0, len(synth.header))])
            ),
        ),
        Family("huge fields: demo", 1500, lambda i, f: _full(demo, f, _huge(demo, rng("hd", i)))),
        Family(
            "huge fields: synthetic",
            1000,
            lambda i, f: _full(synth, f, _huge(synth, rng("hs", i))),
        ),
        Family(
            "wrong types: demo",
            len(demo.keys) * (len(WRONG_VALUES) + len(TYPE_IDS)),
            lambda i, f: _full(demo, f, _retyped(demo, i)),
            5,
        ),
        Family(
            "wrong types: synthetic",
            len(synth.keys) * (len(WRONG_VALUES) + len(TYPE_IDS)),
            lambda i, f: _full(synth, f, _retyped(synth, i)),
            5,
        ),
        Family(
            "nested arrays: demo",
            len(NESTED_KEYS) * len(NESTED_VALUES),
            lambda i, f: _full(demo, f, _nested(demo, i)),
            1,
        ),
        Family(
            "dense headers at and past the limits",
            len(b.dense),
            lambda i, f: _write(f, "m.gguf", b.dense[i], b"", len(b.dense[i]) + (1 << 23)),
            1,
        ),
        Family("split sets", len(splits), lambda i, f: splits[i](f), 1),
    ]


# ---- one input ------------------------------------------------------------------

_DEVICES: list[Any] = []


def _devices() -> list[Any]:
    if not _DEVICES:
        from llmtune.hardware.host import host_device
        from llmtune.hardware.profiles import parse_gpu_spec

        _DEVICES.extend(
            [parse_gpu_spec("rtx3060-12g"), host_device(ram_bytes=64 << 30, bandwidth_gbps=50.0)]
        )
    return _DEVICES


def _hidden(text: str) -> bool:
    import unicodedata

    return any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") for ch in text)


def check(path: str) -> tuple[str, str]:
    """What inspect and fit make of ``path``: (refused | read | crash, detail)."""
    from llmtune.errors import LlmtuneError
    from llmtune.fit.plan import plan
    from llmtune.fit.report import plan_dict, plan_text
    from llmtune.model import read_spec
    from llmtune.model.describe import inspect_dict, inspect_text

    try:
        spec = read_spec(path)
        json.dumps(inspect_dict(spec), allow_nan=False)
        inspect_text(spec, width=80)
        fit_plan = plan(spec, _devices())
        json.dumps(plan_dict(spec, fit_plan), allow_nan=False)
        plan_text(spec, fit_plan, width=80)
    except LlmtuneError as exc:
        line = exc.one_line()
        if not line or _hidden(line):
            return "crash", f"an error message that is not one clean line: {line!r}"
        return "refused", line
    except Exception as exc:
        where = traceback.extract_tb(exc.__traceback__)[-1]
        return "crash", f"{type(exc).__name__}: {exc} ({Path(where.filename).name}:{where.lineno})"
    return "read", ""


def _status_bytes(field_name: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _reset_peak_rss() -> bool:
    """Start the resident set's high-water mark (VmHWM) again from now (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def child(bases_path: str, family_index: int, start: int, stop: int) -> None:
    """Run inputs ``start..stop`` of one family; one JSON line per input."""
    with open(bases_path, "rb") as fh:
        bases: Bases = pickle.load(fh)
    family = families(bases)[family_index]
    work = Path(tempfile.mkdtemp(prefix="llmtune-files-", dir=WORK_DIR))
    try:
        warm = family.make(0, work)  # imports and first-use caches, before measuring
        check(warm.path)
        _clear(work)
        for i in range(start, stop):
            made = family.make(i, work)
            # The high-water mark of this input alone (ru_maxrss cannot be reset, and
            # counts the parent's pages at fork).
            rss_before = _status_bytes("VmRSS") if _reset_peak_rss() else None
            t0 = time.perf_counter()
            outcome, detail = check(made.path)
            wall_s = time.perf_counter() - t0
            rss_peak = None if rss_before is None else _status_bytes("VmHWM") - rss_before
            peak = None
            if i % family.trace_every == 0:
                tracemalloc.start()
                check(made.path)
                peak = tracemalloc.get_traced_memory()[1]
                tracemalloc.stop()
            print(
                json.dumps(
                    {
                        "i": i,
                        "outcome": outcome,
                        "detail": detail[:300],
                        "wall_s": wall_s,
                        "file_bytes": made.file_bytes,
                        "held_bytes": made.held_bytes,
                        "truncated": made.truncated,
                        "peak": peak,
                        "rss_peak": rss_peak,
                    }
                ),
                flush=True,
            )
            _clear(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _clear(folder: Path) -> None:
    for entry in folder.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


# ---- the parent -----------------------------------------------------------------


@dataclass
class Result:
    family: str
    i: int
    outcome: str  # refused | read | crash | hang
    detail: str = ""
    wall_s: float = 0.0
    file_bytes: int = 0
    held_bytes: int = 0
    truncated: bool = False
    peak: int | None = None
    rss_peak: int | None = None  # the parsing process's resident set: its peak over its start


def run_chunk(bases_path: str, family: Family, index: int, start: int, stop: int) -> list[Result]:
    results: list[Result] = []
    while start < stop:
        errors = tempfile.TemporaryFile("w+")  # a pipe could fill while stdout is read
        proc = subprocess.Popen(
            [sys.executable, __file__, "--child", bases_path, str(index), str(start), str(stop)],
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
        )
        last = [time.monotonic()]
        killed = threading.Event()

        def watchdog(
            p: subprocess.Popen[str] = proc,
            last: list[float] = last,
            killed: threading.Event = killed,
        ) -> None:
            while p.poll() is None:
                if time.monotonic() - last[0] > HANG_KILL_S:
                    killed.set()
                    p.kill()
                    return
                time.sleep(0.5)

        guard = threading.Thread(target=watchdog, daemon=True)
        guard.start()
        assert proc.stdout is not None
        for line in proc.stdout:
            last[0] = time.monotonic()
            row = json.loads(line)
            results.append(
                Result(
                    family.name,
                    row["i"],
                    row["outcome"],
                    row["detail"],
                    row["wall_s"],
                    row["file_bytes"],
                    row["held_bytes"],
                    row["truncated"],
                    row["peak"],
                    row["rss_peak"],
                )
            )
            start = row["i"] + 1
        proc.wait()
        guard.join()
        errors.seek(0)
        stderr = errors.read()
        errors.close()
        if start >= stop:
            break
        # The child stopped before its last input: that input hung or killed it.
        if killed.is_set():
            results.append(Result(family.name, start, "hang", f"silent for {HANG_KILL_S:.0f} s"))
        else:
            tail = stderr.strip().splitlines()[-1:] or [""]
            what = f"the child died (exit {proc.returncode}): {tail[0][:200]}"
            results.append(Result(family.name, start, "crash", what))
        start += 1
    return results


def run_all(bases_path: str, fams: list[Family], limit: int | None = None) -> list[Result]:
    chunks = [
        (index, start, min(start + CHUNK, family.count, limit or family.count))
        for index, family in enumerate(fams)
        for start in range(0, min(family.count, limit or family.count), CHUNK)
    ]
    results: list[Result] = []
    with concurrent.futures.ThreadPoolExecutor(PARALLEL) as pool:
        futures = [
            pool.submit(run_chunk, bases_path, fams[index], index, start, stop)
            for index, start, stop in chunks
        ]
        for future in futures:
            results.extend(future.result())
    return results


def _cli(args: list[str], config: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "80", "LLMTUNE_CONFIG_DIR": config}
    return subprocess.run(
        [sys.executable, "-m", "llmtune.cli", *args],
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="backslashreplace",
        timeout=60,
        env=env,
    )


def cli_sample(fams: list[Family], results: list[Result]) -> tuple[int, int, list[str]]:
    """Inputs through the real command line: (runs, runs as expected, what went wrong)."""
    by_key = {(r.family, r.i): r for r in results}
    per_family = max(4, CLI_SAMPLE // len(fams))
    picks = [
        (family, i)
        for family in fams
        for i in sorted({k * family.count // per_family for k in range(per_family)})
    ]

    def one(pick: tuple[Family, int]) -> tuple[int, int, list[str]]:
        family, i = pick
        expected = by_key.get((family.name, i))
        if expected is None or expected.outcome not in ("refused", "read"):
            return 0, 0, []
        runs = good = 0
        problems: list[str] = []
        with tempfile.TemporaryDirectory(dir=WORK_DIR) as folder:
            model_dir, config_dir = Path(folder) / "model", Path(folder) / "config"
            model_dir.mkdir()
            made = family.make(i, model_dir)
            for args in (
                ["inspect", made.path],
                ["fit", made.path, "--gpu", "rtx3060-12g", "--ram", "64GiB"],
            ):
                runs += 1
                try:
                    done = _cli(args, str(config_dir))
                except subprocess.TimeoutExpired:
                    problems.append(f"{family.name} #{i} {args[0]}: no answer in 60 s")
                    continue
                lines = done.stderr.splitlines()
                if expected.outcome == "refused":
                    ok = (
                        done.returncode == 2
                        and done.stdout == ""
                        and len(lines) == 1
                        and lines[0].startswith("llmtune: error: ")
                        and "internal error" not in lines[0]
                    )
                else:
                    ok = (
                        done.returncode == 0
                        and bool(done.stdout)
                        and all(line.startswith("llmtune: warning: ") for line in lines)
                    )
                if ok:
                    good += 1
                else:
                    problems.append(
                        f"{family.name} #{i} {args[0]}: exit {done.returncode}, "
                        f"stderr {done.stderr[:200]!r} (in-process: {expected.outcome})"
                    )
        return runs, good, problems

    runs = good = 0
    problems: list[str] = []
    with concurrent.futures.ThreadPoolExecutor(PARALLEL) as pool:
        for r, g, p in pool.map(one, picks):
            runs, good, problems = runs + r, good + g, problems + p
    return runs, good, problems


def _mib(n: float) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def summarize(section: Section, fams: list[Family], results: list[Result]) -> None:
    counts = Counter(r.outcome for r in results)
    total = len(results)
    cuts = [r for r in results if r.truncated]
    cut_refused = sum(r.outcome == "refused" for r in cuts)
    section.add(
        "inputs through inspect + fit (in-process, children 2 at a time)",
        f"{total:,}: {counts['refused']:,} refused in one line, "
        f"{counts['read']:,} read as a model inspect shows and fit plans",
        ">= 10,000; each a clean error or a usable model",
        total >= 10_000 and counts["refused"] + counts["read"] == total,
    )
    section.add(
        "truncated files (cut headers, cut shards, cut data)",
        f"{cut_refused:,} of {len(cuts):,} refused",
        "all refused",
        cut_refused == len(cuts),
    )
    crashes = [r for r in results if r.outcome == "crash"]
    section.add(
        "crashes (another exception, a message not one line, a dead child)",
        str(len(crashes)),
        "0",
        not crashes,
    )
    slow = [r for r in results if r.wall_s > HANG_S or r.outcome == "hang"]
    worst = max(results, key=lambda r: r.wall_s)
    section.add(
        f"inputs over {HANG_S:.0f} s (hangs: a child silent {HANG_KILL_S:.0f} s is killed)",
        f"{len(slow)} ({counts['hang']} hangs); slowest {worst.wall_s * 1000:.0f} ms "
        f"({worst.family} #{worst.i})",
        "0",
        not slow,
    )
    traced = [r for r in results if r.peak is not None]
    over_py = max(traced, key=lambda r: r.peak - r.held_bytes)  # type: ignore[operator]
    assert over_py.peak is not None
    section.add(
        f"Python allocations per input (tracemalloc, {len(traced):,} inputs)",
        f"worst {_mib(over_py.peak)} for a file holding {_mib(over_py.held_bytes)} "
        f"({over_py.family} #{over_py.i})",
        f"<= the file + {_mib(MEMORY_SLACK_BYTES)}",
        all(r.peak <= r.held_bytes + MEMORY_SLACK_BYTES for r in traced),  # type: ignore[operator]
    )
    grown = [r for r in results if r.rss_peak is not None]
    if grown:
        over_rss = max(grown, key=lambda r: r.rss_peak - r.held_bytes)  # type: ignore[operator]
        assert over_rss.rss_peak is not None
        section.add(
            f"resident set of the parsing process, peak over its start (VmHWM, {len(grown):,} "
            "inputs)",
            f"worst {_mib(over_rss.rss_peak)} for a file holding {_mib(over_rss.held_bytes)} "
            f"({over_rss.family} #{over_rss.i})",
            f"<= the file + {_mib(MEMORY_SLACK_BYTES)}",
            all(r.rss_peak <= r.held_bytes + MEMORY_SLACK_BYTES for r in grown),  # type: ignore[operator]
        )
    else:
        section.add("resident set while parsing", "not measurable here (no clear_refs)", "", False)
    for family in fams:
        mine = [r for r in results if r.family == family.name]
        c = Counter(r.outcome for r in mine)
        slowest = max((r.wall_s for r in mine), default=0.0)
        section.notes.append(
            f"{family.name}: {len(mine):,} inputs, {c['refused']:,} refused, {c['read']:,} read, "
            f"{c['crash']} crashes, {c['hang']} hangs, slowest {slowest * 1000:.0f} ms"
        )
    for r in crashes[:8]:
        section.notes.append(f"crash: {r.family} #{r.i}: {r.detail}")


def run(limit: int | None = None) -> Section:
    """The section; ``limit`` takes only the first inputs of each family (a quick look)."""
    section = Section("Malformed model files")
    with tempfile.TemporaryDirectory(prefix="llmtune-files-") as folder:
        bases = build_bases(Path(folder))
        bases_path = os.path.join(folder, "bases.pickle")
        with open(bases_path, "wb") as fh:
            pickle.dump(bases, fh)
        fams = families(bases)
        t0 = time.monotonic()
        results = run_all(bases_path, fams, limit)
        section.notes.append(f"{len(results):,} inputs in {time.monotonic() - t0:.0f} s")
        summarize(section, fams, results)
        runs, good, problems = cli_sample(fams, results)
        section.add(
            "through the command line (python -m llmtune.cli inspect / fit)",
            f"{good} of {runs} runs as expected: a refused input exits 2 with one line "
            "'llmtune: error: ...', a read one exits 0",
            "all",
            runs > 0 and good == runs,
        )
        section.notes.extend(problems[:8])
    return section


def _iter_lines(section: Section) -> Iterator[str]:
    for row in section.rows:
        yield f"{row.what}: {row.measured} [target {row.target}] {'PASS' if row.met else 'MISS'}"
    for note in section.notes:
        yield f"note: {note}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", nargs=4, metavar=("BASES", "FAMILY", "START", "STOP"))
    parser.add_argument("--limit", type=int, help="only the first N inputs of each family")
    args = parser.parse_args(argv)
    if args.child:
        bases_path, family_index, start, stop = args.child
        child(bases_path, int(family_index), int(start), int(stop))
        return 0
    for line in _iter_lines(run(args.limit)):
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
