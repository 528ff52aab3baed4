"""Truncated and mutated headers: the reader raises GGUFError or reads a model
that ``llmtune inspect`` can show and ``llmtune fit`` can plan; nothing else
ever comes out.

The base file is a small llama-like model whose header holds every kind of
value (lazy string arrays, eager numeric arrays, nested arrays, 64-bit
numbers). Mutations aim at random bytes and, more often, at the length,
count, type and offset fields themselves, and replace whole values with
values of the wrong type. The 10,000-input run on the demo model is the
reliability report's (tests/bench/reliability/files.py).
"""

from __future__ import annotations

import json
import struct
import unicodedata
from pathlib import Path
from typing import Any

import pytest
from gguf import GGUFValueType as V
from gguf_edit import entry_spans, header_fields, with_data, with_value
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmtune.errors import GGUFError
from llmtune.fit.plan import plan
from llmtune.fit.report import plan_dict, plan_lines
from llmtune.hardware.host import host_device
from llmtune.hardware.profiles import parse_gpu_spec
from llmtune.model import GGUFArray, read_gguf, read_spec
from llmtune.model.describe import inspect_dict, inspect_lines
from synth import llama_like

FUZZ = settings(
    deadline=None,
    max_examples=250,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
HUGE = [0, 1, 2**31, 2**32 - 1, 2**32, 2**40, 2**62, 2**63 - 1, 2**63, 2**64 - 8, 2**64 - 1]


class Base:
    """The valid file and where its length, count, type and offset fields are."""

    def __init__(self, data: bytes, header_bytes: int, path: Path) -> None:
        self.data = data
        self.header_bytes = header_bytes
        gf = read_gguf(path)
        self.fields = tuple(header_fields(data, gf))  # (offset, struct format)
        first_tensor = gf.tensors[0].name if gf.tensors else None
        self.spans = entry_spans(data[:header_bytes], list(gf.metadata), first_tensor)
        self.tensor_data = data[gf.data_offset :]
        self.path = path.with_name("mutant.gguf")

    def __repr__(self) -> str:  # hypothesis prints it with every failing example
        return f"Base({self.path.name}, {len(self.data):,} bytes)"


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Base:
    folder = tmp_path_factory.mktemp("fuzz")
    extra: list[tuple[str, Any]] = [
        ("test.nested", [[1, 2], [3]]),
        ("test.strings", (["a", "bc", ""], V.ARRAY, V.STRING)),
        ("test.flags", ([True, False], V.ARRAY, V.BOOL)),
        ("test.big", (2**63 + 5, V.UINT64)),
        ("test.real", (2.5, V.FLOAT64)),
        ("llama.attention.head_count", ([4, 2], V.ARRAY, V.UINT32)),
    ]
    source = llama_like(
        folder / "base.gguf",
        n_layer=2,
        n_embd=32,
        n_head=4,
        n_head_kv=2,
        n_ff=64,
        n_vocab=80,
        extra_kv=extra,
        fill=b"\x11",
    )[0]
    return Base(source.read_bytes(), read_gguf(source).header_bytes, source)


# A 12 GB GPU and 64 GiB of host RAM: plans exercise the GPU and the host.
DEVICES = (parse_gpu_spec("rtx3060-12g"), host_device(ram_bytes=64 << 30, bandwidth_gbps=50.0))


def _hidden(line: str) -> list[str]:
    return [ch for ch in line if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp")]


def read_or_refuse(base: Base, data: bytes) -> bool:
    """Read ``data`` as a model; True if read, False if refused with a GGUFError.

    A model that is read must be one ``llmtune inspect`` can show.
    """
    base.path.write_bytes(data)
    try:
        spec = read_spec(base.path)
    except GGUFError as exc:
        message = exc.one_line()
        assert message and "\n" not in message and not _hidden(message)
        return False
    json.dumps(inspect_dict(spec), allow_nan=False)
    for width in (80, 50):
        lines = inspect_lines(spec, width=width)
        assert all(len(line) <= width and not _hidden(line) for line in lines)
    # What `llmtune fit` does with it: a plan, its JSON and its text.
    fit_plan = plan(spec, DEVICES)
    json.dumps(plan_dict(spec, fit_plan), allow_nan=False)
    assert not [line for line in plan_lines(spec, fit_plan, width=80) if _hidden(line)]
    for value in spec.metadata.values():
        if isinstance(value, GGUFArray):
            value.values(limit=3)
    return True


def test_the_base_file_reads(base: Base) -> None:
    assert read_or_refuse(base, base.data)


def test_every_cut_in_the_header_is_refused(base: Base) -> None:
    for cut in range(base.header_bytes + 1):
        assert not read_or_refuse(base, base.data[:cut]), cut


@FUZZ
@given(st.data())
def test_cut_anywhere_is_refused(base: Base, data: st.DataObject) -> None:
    cut = data.draw(st.integers(0, len(base.data) - 1))
    assert not read_or_refuse(base, base.data[:cut])


@FUZZ
@given(st.data())
def test_bit_flips(base: Base, data: st.DataObject) -> None:
    flips = data.draw(
        st.lists(st.tuples(st.integers(0, base.header_bytes - 1), st.integers(0, 7)), max_size=8)
    )
    mutant = bytearray(base.data)
    for offset, bit in flips:
        mutant[offset] ^= 1 << bit
    read_or_refuse(base, bytes(mutant))


@FUZZ
@given(st.data())
def test_huge_counts_lengths_and_types(base: Base, data: st.DataObject) -> None:
    mutant = bytearray(base.data)
    for _ in range(data.draw(st.integers(1, 3))):
        offset, fmt = data.draw(st.sampled_from(base.fields))
        limit = 2**64 - 1 if fmt == "Q" else 2**32 - 1
        value = data.draw(st.sampled_from([v for v in HUGE if v <= limit]) | st.integers(0, limit))
        struct.pack_into("<" + fmt, mutant, offset, value)
    read_or_refuse(base, bytes(mutant))


@FUZZ
@given(st.data())
def test_overwritten_bytes(base: Base, data: st.DataObject) -> None:
    offset = data.draw(st.integers(0, base.header_bytes - 1))
    patch = data.draw(st.binary(min_size=1, max_size=24))
    mutant = bytearray(base.data)
    mutant[offset : offset + len(patch)] = patch
    read_or_refuse(base, bytes(mutant[: len(base.data)]))


# Values of every type, in the shapes a crafted file might give a hyper-parameter.
WRONG_VALUES: list[tuple[int, Any]] = [
    (V.UINT8, 255),
    (V.INT8, -128),
    (V.INT32, -1),
    (V.INT32, -(2**31)),
    (V.UINT32, 2**32 - 1),
    (V.UINT64, 2**64 - 1),
    (V.INT64, -(2**63)),
    (V.FLOAT32, float("nan")),
    (V.FLOAT32, float("-inf")),
    (V.FLOAT32, 3.4e38),
    (V.FLOAT64, 1e308),
    (V.FLOAT64, -1e308),
    (V.BOOL, True),
    (V.STRING, ""),
    (V.STRING, "4096"),
    (V.ARRAY, (V.UINT32, [])),
    (V.ARRAY, (V.UINT32, [2**32 - 1] * 5)),
    (V.ARRAY, (V.FLOAT64, [1e308, float("nan")])),
    (V.ARRAY, (V.INT64, [-1, 0, 1])),
    (V.ARRAY, (V.STRING, ["a", "8"])),
    (V.ARRAY, (V.ARRAY, [(V.UINT32, [4]), (V.UINT32, [])])),
    (V.ARRAY, (V.ARRAY, [(V.ARRAY, [(V.ARRAY, [])])])),
]


@FUZZ
@given(st.data())
def test_values_of_the_wrong_type(base: Base, data: st.DataObject) -> None:
    """Any key holding any value: a clean refusal, or a model fit can plan."""
    header = base.data[: base.header_bytes]
    for _ in range(data.draw(st.integers(1, 3))):
        keys = sorted(base.spans)
        key = data.draw(st.sampled_from(keys))
        type_id, value = data.draw(st.sampled_from(WRONG_VALUES))
        spans = entry_spans(header, list(base.spans), "token_embd.weight")
        header = with_value(header, spans[key], key, int(type_id), value)
    read_or_refuse(base, with_data(header, base.tensor_data))
