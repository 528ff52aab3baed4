"""The GGUF header reader on small real files written by ``gguf.GGUFWriter``.

``gguf.GGUFReader`` (the reference reader) serves as an oracle where it helps:
what it decodes from a file, ours must decode the same.
"""

from __future__ import annotations

import math
import shutil
import struct
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from gguf import GGUFReader, GGUFWriter
from gguf import GGUFValueType as V
from gguf_edit import patch, tensor_field_at, value_at

from llmtune.errors import GGUFError
from llmtune.model import GGUFArray, GGUFString, read_gguf, read_spec
from llmtune.model.describe import inspect_dict, inspect_lines, metadata_rows
from llmtune.model.gguf_file import EAGER_NUMERIC_ITEMS, EAGER_STRING_ITEMS, MAX_EAGER_ITEMS
from synth import Tensor, llama_like, write_gguf

SCALARS: list[tuple[V, Any]] = [
    (V.UINT8, 0),
    (V.UINT8, 255),
    (V.INT8, -128),
    (V.INT8, 127),
    (V.UINT16, 65535),
    (V.INT16, -32768),
    (V.UINT32, 2**32 - 1),
    (V.INT32, -(2**31)),
    (V.UINT64, 2**64 - 1),
    (V.INT64, -(2**63)),
    (V.FLOAT32, -0.25),
    (V.FLOAT32, math.inf),
    (V.FLOAT64, 1e300),
    (V.FLOAT64, -5e-324),
    (V.BOOL, True),
    (V.BOOL, False),
    (V.STRING, "plain"),
    (V.STRING, "héllo → 世界 🎉"),
    (V.STRING, ""),
]


@pytest.mark.parametrize(("vtype", "value"), SCALARS, ids=lambda x: repr(x))
def test_every_scalar_type_reads_back_as_written(tmp_path: Path, vtype: V, value: Any) -> None:
    path = write_gguf(tmp_path / "m.gguf", [("test.value", (value, vtype))])[0]
    gf = read_gguf(path)
    assert gf.metadata["test.value"] == value
    assert type(gf.metadata["test.value"]) is type(value)
    assert gf.metadata_types["test.value"] == int(vtype)
    assert gf.version == 3


ARRAYS: list[tuple[V, list[Any]]] = [
    (V.UINT8, [0, 1, 255]),
    (V.INT8, [-128, 0, 127]),
    (V.UINT16, [0, 65535]),
    (V.INT16, [-32768, 32767]),
    (V.UINT32, [0, 2**32 - 1]),
    (V.INT32, [-(2**31), 2**31 - 1]),
    (V.UINT64, [0, 2**64 - 1]),
    (V.INT64, [-(2**63), 2**63 - 1]),
    (V.FLOAT32, [0.5, -1.5, math.inf]),
    (V.FLOAT64, [1e300, -2.5]),
    (V.BOOL, [True, False, True]),
    (V.STRING, ["a", "", "ü", "tab\there"]),
    (V.UINT8, [7]),  # a single item
]


@pytest.mark.parametrize(("item_type", "items"), ARRAYS, ids=lambda x: repr(x))
def test_arrays_of_every_type_read_back_as_written(
    tmp_path: Path, item_type: V, items: list[Any]
) -> None:
    path = write_gguf(tmp_path / "m.gguf", [("test.array", (items, V.ARRAY, item_type))])[0]
    gf = read_gguf(path)
    assert gf.metadata["test.array"] == items
    assert gf.metadata_types["test.array"] == int(V.ARRAY)


def test_nested_arrays_read_back_as_written(tmp_path: Path) -> None:
    kv = [
        ("test.ints", [[1, 2], [3]]),
        ("test.strings", [["x"], ["y", "z"]]),
        ("test.deep", [[[1.5]], [[2.5, 3.5]]]),
    ]
    gf = read_gguf(write_gguf(tmp_path / "m.gguf", kv)[0])
    assert gf.metadata["test.ints"] == [[1, 2], [3]]
    assert gf.metadata["test.strings"] == [["x"], ["y", "z"]]
    assert gf.metadata["test.deep"] == [[[1.5]], [[2.5, 3.5]]]


def test_metadata_matches_the_reference_reader(tmp_path: Path) -> None:
    kv: list[tuple[str, Any]] = [(f"test.{i}", (v, t)) for i, (t, v) in enumerate(SCALARS)]
    kv += [(f"test.a{i}", (items, V.ARRAY, t)) for i, (t, items) in enumerate(ARRAYS)]
    path = write_gguf(tmp_path / "m.gguf", kv, [Tensor("x.weight", (64, 2), Q.Q8_0)])[0]
    ours = read_gguf(path)
    reference = GGUFReader(path)
    keys = [name for name in reference.fields if not name.startswith("GGUF.")]
    assert list(ours.metadata) == keys
    for key in keys:
        assert ours.metadata[key] == reference.fields[key].contents(), key


def test_empty_array_and_metadata_only_file(tmp_path: Path) -> None:
    # GGUFWriter refuses empty arrays; write one item, then make the length 0
    # and drop the item (llama.cpp reads zero-length arrays).
    path = write_gguf(tmp_path / "m.gguf", [("test.empty", ([7], V.ARRAY, V.UINT8))])[0]
    data = bytearray(path.read_bytes())
    length_at = value_at(bytes(data), "test.empty") + 4
    data[length_at : length_at + 8] = (0).to_bytes(8, "little")
    del data[length_at + 8]
    path.write_bytes(bytes(data))
    gf = read_gguf(path)
    assert gf.metadata["test.empty"] == []
    assert gf.tensors == ()
    spec = read_spec(path)
    assert spec.n_layer == 0 and spec.parameters == 0 and spec.tensor_bytes == 0
    assert inspect_dict(spec)["metadata"]["test.empty"]["length"] == 0
    assert any("0 tensors" in line for line in inspect_lines(spec))


def test_empty_key_and_empty_strings(tmp_path: Path) -> None:
    kv = [("", "value of an empty key"), ("test.blank", ""), ("test.blanks", ["", ""])]
    gf = read_gguf(write_gguf(tmp_path / "m.gguf", kv)[0])
    assert gf.metadata[""] == "value of an empty key"
    assert gf.metadata["test.blank"] == ""
    assert gf.metadata["test.blanks"] == ["", ""]


def test_metadata_only_file_without_data_padding_is_complete(tmp_path: Path) -> None:
    # gguf.cpp aligns the data section only when there are tensors.
    path = write_gguf(tmp_path / "m.gguf", [("general.name", "meta only")])[0]
    gf = read_gguf(path)
    path.write_bytes(path.read_bytes()[: gf.header_bytes])
    spec = read_spec(path)
    assert spec.name == "meta only"
    assert spec.warnings == ()


def _decoded(metadata: dict[str, Any]) -> dict[str, Any]:
    return {k: v.values() if isinstance(v, GGUFArray) else v for k, v in metadata.items()}


@pytest.mark.parametrize("version", [2, 3])
def test_gguf_v2_and_v3_read_the_same(tmp_path: Path, version: int) -> None:
    path = llama_like(tmp_path / f"v{version}.gguf", n_layer=2, version=version)[0]
    reference = read_gguf(llama_like(tmp_path / "ref.gguf", n_layer=2)[0])
    gf = read_gguf(path)
    assert gf.version == version
    assert _decoded(gf.metadata) == _decoded(reference.metadata)
    assert [(t.name, t.shape, t.ggml_type, t.nbytes) for t in gf.tensors] == [
        (t.name, t.shape, t.ggml_type, t.nbytes) for t in reference.tensors
    ]
    assert read_spec(path).gguf_version == version


def test_tensor_infos_and_offsets_match_the_reference_reader(tmp_path: Path) -> None:
    path = llama_like(tmp_path / "m.gguf", n_layer=2, weight_type=Q.Q4_K, embd_type=Q.Q6_K)[0]
    gf = read_gguf(path)
    reference = GGUFReader(path)
    assert len(gf.tensors) == len(reference.tensors) == 1 + 2 * 9 + 2
    for ours, theirs in zip(gf.tensors, reference.tensors, strict=True):
        assert ours.name == theirs.name
        assert ours.shape == tuple(int(d) for d in theirs.shape)
        assert ours.ggml_type == int(theirs.tensor_type)
        assert ours.n_elements == int(theirs.n_elements)
        assert ours.nbytes == int(theirs.n_bytes)
        assert ours.offset == int(theirs.data_offset)
    assert gf.data_offset == reference.data_offset
    assert gf.data_offset % 32 == 0 and gf.data_offset >= gf.header_bytes
    assert gf.data_end == gf.file_bytes and gf.missing_bytes == 0
    by_name = {t.name: t for t in gf.tensors}
    assert by_name["token_embd.weight"].type_name == "Q6_K"
    assert by_name["blk.1.ffn_down.weight"].shape == (512, 256)
    assert by_name["blk.1.attn_k.weight"].type_name == "Q4_K"


def _write_with_alignment(path: Path, alignment: int) -> list[np.ndarray[Any, Any]]:
    """A file with real tensor data and ``general.alignment`` (GGUFWriter honours it)."""
    writer = GGUFWriter(path, "llama")
    writer.add_custom_alignment(alignment)
    arrays = [np.arange(n, dtype=np.float32) + n for n in (3, 5, 70)]
    for i, array in enumerate(arrays):
        writer.add_tensor(f"t{i}.weight", array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return arrays


@pytest.mark.parametrize("alignment", [1, 8, 256, 4096])
def test_custom_alignment_is_honoured(tmp_path: Path, alignment: int) -> None:
    path = tmp_path / "aligned.gguf"
    arrays = _write_with_alignment(path, alignment)
    gf = read_gguf(path)
    assert gf.alignment == alignment
    assert gf.data_offset % alignment == 0
    data = path.read_bytes()
    for tensor, array in zip(gf.tensors, arrays, strict=True):
        assert (tensor.offset - gf.data_offset) % alignment == 0
        assert data[tensor.offset : tensor.offset + tensor.nbytes] == array.tobytes()
    assert read_spec(path).tensor_bytes == sum(a.nbytes for a in arrays)


@pytest.mark.parametrize("bad", [0, 48, 2**32 - 1])
def test_alignment_not_a_power_of_two_is_rejected(tmp_path: Path, bad: int) -> None:
    path = tmp_path / "aligned.gguf"
    _write_with_alignment(path, 32)
    patch(path, value_at(path.read_bytes(), "general.alignment"), "I", bad)
    with pytest.raises(GGUFError, match="power of two") as info:
        read_gguf(path)
    assert "general.alignment" in str(info.value)


def test_alignment_of_the_wrong_type_is_rejected(tmp_path: Path) -> None:
    # gguf.cpp accepts only a UINT32 general.alignment.
    path = write_gguf(tmp_path / "m.gguf", [("general.alignment", (64, V.UINT64))])[0]
    with pytest.raises(GGUFError, match="UINT32"):
        read_gguf(path)


def test_large_arrays_stay_lazy_and_decode_on_demand(tmp_path: Path) -> None:
    tokens = [f"tok{i}" for i in range(EAGER_STRING_ITEMS + 100)]
    scores = [i / 4 for i in range(EAGER_NUMERIC_ITEMS + 10)]
    nested = [[i, -i] for i in range(EAGER_NUMERIC_ITEMS + 1)]
    kv = [
        ("tokenizer.ggml.tokens", tokens),
        ("tokenizer.ggml.scores", (scores, V.ARRAY, V.FLOAT32)),
        ("test.nested", nested),
        ("test.small", (list(range(EAGER_NUMERIC_ITEMS)), V.ARRAY, V.INT32)),
    ]
    path = write_gguf(tmp_path / "m.gguf", kv)[0]
    gf = read_gguf(path)
    lazy_tokens = gf.metadata["tokenizer.ggml.tokens"]
    lazy_scores = gf.metadata["tokenizer.ggml.scores"]
    lazy_nested = gf.metadata["test.nested"]
    assert isinstance(lazy_tokens, GGUFArray)
    assert isinstance(lazy_scores, GGUFArray)
    assert isinstance(lazy_nested, GGUFArray)
    assert gf.metadata["test.small"] == list(range(EAGER_NUMERIC_ITEMS))
    assert (lazy_tokens.type_name, lazy_tokens.length) == ("STRING", len(tokens))
    assert (lazy_scores.type_name, lazy_scores.length) == ("FLOAT32", len(scores))
    assert lazy_scores.nbytes == 4 * len(scores)
    assert lazy_tokens.values() == tokens
    assert lazy_tokens.values(limit=3) == tokens[:3]
    assert lazy_scores.values() == scores
    assert lazy_nested.values() == nested
    # Decoding happens when asked: the file as it is now, not as it was read.
    data = bytearray(path.read_bytes())
    at = data.index(b"tok7\x04")  # "tok7", then the next string's length (4)
    data[at : at + 4] = b"TOK7"
    path.write_bytes(bytes(data))
    assert lazy_tokens.values(limit=8)[7] == "TOK7"
    summary = inspect_dict(read_spec(path))["metadata"]["tokenizer.ggml.tokens"]
    assert summary == {"type": "STRING", "length": len(tokens)}


def test_nested_arrays_cannot_multiply_the_file_in_memory(tmp_path: Path) -> None:
    """4,096 arrays of 1,024 float32 (16 MB): decoded, each float would take 32
    bytes, 128 MB in all. Past MAX_EAGER_ITEMS the arrays stay lazy."""
    inner = struct.pack("<IQ", int(V.FLOAT32), 1024) + struct.pack("<1024f", *range(1024))
    key = b"test.nested"
    value = struct.pack("<IIQ", int(V.ARRAY), int(V.ARRAY), 4096) + inner * 4096
    data = b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", len(key)) + key + value
    path = tmp_path / "nested.gguf"
    path.write_bytes(data)

    tracemalloc.start()
    try:
        spec = read_spec(path)
        inspect_dict(spec)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    assert peak < 4 << 20, f"{peak:,} bytes for a {len(data):,}-byte file"
    nested = spec.metadata["test.nested"]
    assert isinstance(nested, list) and len(nested) == 4096
    assert sum(isinstance(a, list) for a in nested) <= MAX_EAGER_ITEMS // 1024
    last = nested[-1]
    assert isinstance(last, GGUFArray) and last.values(limit=3) == [0.0, 1.0, 2.0]


def test_a_flipped_string_length_does_not_decode_the_tensor_data(tmp_path: Path) -> None:
    """A bit flip makes general.name 32 MB long: its bytes would be tensor data,
    decoded (bad UTF-8 as U+FFFD) into 64-128 MB. It stays in the file."""
    (path,) = llama_like(tmp_path / "m.gguf", n_layer=1, n_embd=4096, n_ff=4096, n_vocab=4096)
    assert path.stat().st_size > 40 << 20
    data = path.read_bytes()
    patch(path, value_at(data, "general.name"), "Q", len("synthetic llama") | 1 << 25)

    tracemalloc.start()
    try:
        with pytest.raises(GGUFError):
            read_spec(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    assert peak < 4 << 20, f"{peak:,} bytes"


def test_long_strings_stay_in_the_file_and_read_on_demand(tmp_path: Path) -> None:
    template = "{% for m in messages %}\u00e9\U0001f600{{ m.content }}{% endfor %}" * 20_000
    huge_json = '{"model": "' + "x" * (3 << 20) + '"}'
    texts = [f"{i}" * 1_000_000 for i in range(5)]  # 4 fit the header's budget, the 5th not
    kv = [
        ("tokenizer.chat_template", template),
        ("tokenizer.huggingface.json", huge_json),
        *[(f"test.text{i}", t) for i, t in enumerate(texts)],
    ]
    path = llama_like(tmp_path / "m.gguf", n_layer=1, extra_kv=kv)[0]

    spec = read_spec(path)

    lazy_json = spec.metadata["tokenizer.huggingface.json"]
    assert isinstance(lazy_json, GGUFString) and lazy_json.nbytes == len(huge_json)
    assert lazy_json.text() == huge_json and lazy_json.text(max_bytes=9) == '{"model":'
    assert [isinstance(spec.metadata[f"test.text{i}"], str) for i in range(5)] == [True] * 4 + [
        False
    ]
    assert spec.metadata["test.text4"].text() == texts[4]  # type: ignore[union-attr]
    # The template is over 1 MiB in UTF-8 (4 bytes a face): too long to render anyway.
    assert len(template.encode()) > 1 << 20 and spec.chat_template == ""
    metadata = inspect_dict(spec)["metadata"]
    assert metadata["tokenizer.huggingface.json"] == {"type": "STRING", "bytes": len(huge_json)}
    assert metadata["test.text0"] == texts[0]
    rows = {key: value for key, _, value in metadata_rows(spec)}
    assert rows["tokenizer.huggingface.json"].startswith(f"[{len(huge_json):,} bytes] {{")


def test_per_layer_head_counts_and_ffn(tmp_path: Path) -> None:
    extra = [
        ("llama.attention.head_count", ([8, 8, 4, 2], V.ARRAY, V.UINT32)),
        ("llama.attention.head_count_kv", ([4, 4, 2, 1], V.ARRAY, V.UINT32)),
        ("llama.feed_forward_length", ([512, 512, 256, 128], V.ARRAY, V.UINT32)),
    ]
    spec = read_spec(llama_like(tmp_path / "m.gguf", n_layer=4, extra_kv=extra)[0])
    assert spec.n_layer == 4
    assert spec.n_head_per_layer == (8, 8, 4, 2)
    assert spec.n_head_kv_per_layer == (4, 4, 2, 1)
    assert spec.n_ff_per_layer == (512, 512, 256, 128)
    assert (spec.n_head, spec.n_head_kv) == (8, 4)
    assert spec.n_embd_head_k == 256 // 8
    report = inspect_dict(spec)
    assert report["n_head_per_layer"] == [8, 8, 4, 2]
    assert report["n_head_kv_per_layer"] == [4, 4, 2, 1]
    assert report["n_ff"] == [512, 512, 256, 128]
    text = "\n".join(inspect_lines(spec))
    assert "heads 2-8 per layer (KV 1-4)" in text
    assert "FFN 128-512" in text


def test_head_count_kv_defaults_to_head_count(tmp_path: Path) -> None:
    path = write_gguf(
        tmp_path / "m.gguf",
        [("llama.block_count", 3), ("llama.attention.head_count", 12)],
    )[0]
    spec = read_spec(path)
    assert spec.n_head_kv_per_layer == (12, 12, 12)
    assert inspect_dict(spec)["n_head_kv"] == 12


def test_non_finite_hyper_parameters_do_not_break_inspect(tmp_path: Path) -> None:
    kv = [
        ("llama.block_count", 2),
        ("llama.embedding_length", (math.nan, V.FLOAT32)),
        ("llama.attention.head_count", ([math.inf, 4.0], V.ARRAY, V.FLOAT32)),
    ]
    spec = read_spec(write_gguf(tmp_path / "m.gguf", kv)[0])
    assert spec.n_embd == 0
    assert spec.n_head_per_layer == (4, 4)
    assert inspect_dict(spec)["n_head"] == 4
    assert inspect_lines(spec)


@pytest.mark.parametrize(
    ("file_type", "name"),
    [(15, "Q4_K_M"), (1, "F16"), (0, "F32"), (7, "Q8_0"), (18, "Q6_K"), (999, "unknown (999)")],
)
def test_file_type_names(tmp_path: Path, file_type: int, name: str) -> None:
    spec = read_spec(llama_like(tmp_path / "m.gguf", n_layer=1, file_type=file_type)[0])
    assert spec.file_type_name == name
    assert inspect_dict(spec)["file_type"] == name
    assert f"· {name} ·" in inspect_lines(spec)[2]


@pytest.mark.parametrize(
    ("weight_type", "name"),
    [(Q.Q4_K, "Q4_K_M"), (Q.Q5_K, "Q5_K_M"), (Q.Q8_0, "Q8_0"), (Q.F16, "F16")],
)
def test_file_type_is_guessed_without_general_file_type(
    tmp_path: Path, weight_type: Q, name: str
) -> None:
    # llama_model_loader guesses from the type most tensors have (Q4_K -> Q4_K_M).
    path = llama_like(tmp_path / "m.gguf", n_layer=2, weight_type=weight_type, file_type=None)
    spec = read_spec(path[0])
    assert "general.file_type" not in spec.metadata
    assert spec.file_type_name == f"{name} (guessed)"


def test_unknown_tensor_types_are_sized_by_the_gaps(tmp_path: Path) -> None:
    tensors = [Tensor(f"t{i}.weight", (32, 3)) for i in range(4)]
    path = write_gguf(tmp_path / "m.gguf", [], tensors)[0]
    for name in ("t1.weight", "t3.weight"):
        patch(path, tensor_field_at(path.read_bytes(), name, "type"), "I", 200)
    spec = read_spec(path)
    assert [t.type_name for t in spec.tensors] == ["F32", "type 200", "F32", "type 200"]
    assert [t.nbytes for t in spec.tensors] == [384] * 4  # 32 * 3 float32, already aligned
    assert spec.warnings == (
        "2 tensors of unknown ggml type 200 (newer than this llmtune?); "
        "their sizes are taken from the gaps between tensors",
    )


# ---- split files ----------------------------------------------------------


def _split(tmp_path: Path, n_layer: int = 4, per_shard: int = 10) -> list[Path]:
    return llama_like(tmp_path / "m.gguf", n_layer=n_layer, split_max_tensors=per_shard)


def test_split_files_are_named_like_llama_split(tmp_path: Path) -> None:
    paths = _split(tmp_path)  # 1 + 4 * 9 + 2 = 39 tensors in shards of 10
    assert [p.name for p in paths] == [f"m-{i:05d}-of-00004.gguf" for i in range(1, 5)]


def test_split_model_totals_add_up(tmp_path: Path) -> None:
    paths = _split(tmp_path)
    whole = read_spec(llama_like(tmp_path / "whole.gguf", n_layer=4)[0])
    spec = read_spec(paths[0])
    assert spec.shard_paths == tuple(str(p) for p in paths)
    assert len(spec.tensors) == len(whole.tensors) == 39
    assert [t.name for t in spec.tensors] == [t.name for t in whole.tensors]
    assert spec.tensor_bytes == whole.tensor_bytes
    assert spec.parameters == whole.parameters
    assert spec.file_bytes == sum(p.stat().st_size for p in paths)
    assert [layer.nbytes for layer in spec.layers] == [layer.nbytes for layer in whole.layers]
    assert spec.type_stats() == whole.type_stats()
    assert sorted({t.shard for t in spec.tensors}) == [0, 1, 2, 3]
    report = inspect_dict(spec)
    assert report["tensor_count"] == 39
    assert report["file_bytes"] == spec.file_bytes
    assert len(report["shards"]) == 4
    assert "in 4 shards" in "\n".join(inspect_lines(spec))


@pytest.mark.parametrize("opened", [1, 2, 3])
def test_opening_any_shard_reads_them_all(tmp_path: Path, opened: int) -> None:
    paths = _split(tmp_path)
    first = read_spec(paths[0])
    spec = read_spec(paths[opened])
    assert spec.path == str(paths[0])
    assert spec.shard_paths == first.shard_paths
    assert spec.tensors == first.tensors


def test_missing_shard_is_named(tmp_path: Path) -> None:
    paths = _split(tmp_path)
    paths[2].unlink()
    for opened in (paths[0], paths[3]):
        with pytest.raises(GGUFError, match="shard 3 of 4 is missing") as info:
            read_spec(opened)
        assert info.value.where == str(paths[2])


def test_missing_first_shard_is_named(tmp_path: Path) -> None:
    paths = _split(tmp_path)
    paths[0].unlink()
    with pytest.raises(GGUFError, match="shard 1 of 4 is missing"):
        read_spec(paths[1])


def test_shard_of_another_split_is_refused(tmp_path: Path) -> None:
    paths = _split(tmp_path)
    (tmp_path / "other").mkdir()
    other = _split(tmp_path / "other", per_shard=20)  # 2 shards
    shutil.copy(other[1], paths[2])
    with pytest.raises(GGUFError, match="split.count 2.*4 shards") as info:
        read_spec(paths[0])
    assert info.value.where == str(paths[2])


def test_shard_of_another_model_with_the_same_count_is_refused(tmp_path: Path) -> None:
    paths = _split(tmp_path)
    (tmp_path / "other").mkdir()
    other = llama_like(tmp_path / "other" / "m.gguf", n_layer=5, split_max_tensors=12)
    assert len(other) == 4
    shutil.copy(other[3], paths[3])
    with pytest.raises(GGUFError, match="split.tensors.count"):
        read_spec(paths[0])


def test_shards_in_the_wrong_order_are_refused(tmp_path: Path) -> None:
    paths = _split(tmp_path)
    patch(paths[0], value_at(paths[0].read_bytes(), "split.no"), "H", 1)
    for opened in (paths[0], paths[1]):
        with pytest.raises(GGUFError, match="split.no 1, expected 0"):
            read_spec(opened)


def test_shard_without_a_split_name_is_refused(tmp_path: Path) -> None:
    paths = _split(tmp_path)
    renamed = paths[0].rename(tmp_path / "model.gguf")
    with pytest.raises(GGUFError, match="name does not follow"):
        read_spec(renamed)


# ---- sliding-window layers --------------------------------------------------------------


def _swa_model(tmp_path: Path, arch: str, extra: list[tuple[str, Any]]) -> Path:
    kv = [(f"{arch}.block_count", 12), (f"{arch}.attention.head_count", 8), *extra]
    return write_gguf(tmp_path / f"{arch}.gguf", kv, arch=arch)[0]


@pytest.mark.parametrize(
    ("arch", "extra", "window", "sliding"),
    [
        # gemma2 slides on even layers; without the key its window is 4096
        ("gemma2", [("gemma2.attention.sliding_window", 256)], 256, [0, 2, 4, 6, 8, 10]),
        ("gemma2", [], 4096, [0, 2, 4, 6, 8, 10]),
        # gemma3: five sliding layers, then one global (set_swa_pattern(6))
        ("gemma3", [("gemma3.attention.sliding_window", 512)], 512, [0, 1, 2, 3, 4, 6, 7, 8, 9, 10]),
        ("gemma3", [], 0, []),  # no window, no sliding layers
        # the file's pattern wins: a period, or a flag per layer
        ("gemma3", [("gemma3.attention.sliding_window", 512),
                    ("gemma3.attention.sliding_window_pattern", 3)], 512, [0, 1, 3, 4, 6, 7, 9, 10]),
        ("llama", [("llama.attention.sliding_window", 128),
                   ("llama.attention.sliding_window_pattern", [True, False] * 6)], 128,
         [0, 2, 4, 6, 8, 10]),
        ("llama", [("llama.attention.sliding_window", 128)], 128, []),  # llama has no pattern
    ],
)  # fmt: skip
def test_sliding_window_and_its_pattern(
    tmp_path: Path, arch: str, extra: list[tuple[str, Any]], window: int, sliding: list[int]
) -> None:
    spec = read_spec(_swa_model(tmp_path, arch, extra))
    assert spec.swa_window == window
    assert [i for i, slides in enumerate(spec.swa_layers) if slides] == sliding
    assert inspect_dict(spec)["swa_layers"] == sliding
    text = "\n".join(inspect_lines(spec))
    if sliding:
        assert f"sliding window {window:,} in {len(sliding)} of 12 layers" in text
    else:
        assert " in 0 of " not in text
