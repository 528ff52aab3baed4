"""Bad input through the real command line: ``python -m llmtune.cli inspect PATH``.

Every error is exit status 2 and one line on stderr, ``llmtune: error: ...``,
that says what is wrong; never a traceback. The child runs with its address
space capped, so a count that made the reader allocate what the file claims
(instead of what it holds) would fail here as a MemoryError.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import resource
import stat
import struct
import subprocess
import sys
import tempfile
import unicodedata
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from gguf import GGMLQuantizationType as Q
from gguf import GGUFValueType as V
from gguf_edit import (
    KV_COUNT_AT,
    TENSOR_COUNT_AT,
    VERSION_AT,
    key_at,
    patch,
    tensor_field_at,
    unpack,
    value_at,
    value_type_at,
)

from llmtune.model import read_gguf
from synth import Tensor, llama_like, write_gguf

TIMEOUT_S = 60
ADDRESS_SPACE_LIMIT = 1 << 30


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_LIMIT, ADDRESS_SPACE_LIMIT))


def inspect(path: Path | str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llmtune.cli", "inspect", str(path), *args],
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="backslashreplace",
        timeout=TIMEOUT_S,
        env={**os.environ, "COLUMNS": "80", **env},
        preexec_fn=_limit_memory,
    )


def error_of(result: subprocess.CompletedProcess[str]) -> str:
    """The one error line's message, after checking the error contract."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("llmtune: error: ")
    assert "internal error" not in lines[0]
    return lines[0].removeprefix("llmtune: error: ")


@pytest.fixture
def model(tmp_path: Path) -> Path:
    """A small valid llama-like model whose tensor data is real bytes."""
    return llama_like(
        tmp_path / "model.gguf",
        n_layer=2,
        n_embd=64,
        n_head=4,
        n_head_kv=2,
        n_ff=128,
        n_vocab=100,
        fill=b"\x3c",
    )[0]


def test_valid_model_is_inspected(model: Path) -> None:
    result = inspect(model)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.startswith("synthetic llama\n")
    assert "layers 2" in result.stdout


# ---- the file itself ------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    message = error_of(inspect(tmp_path / "nowhere.gguf"))
    assert message.startswith("no such file")
    assert "nowhere.gguf" in message


def test_directory(tmp_path: Path) -> None:
    message = error_of(inspect(tmp_path))
    assert "is a directory" in message
    assert str(tmp_path) in message


def test_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.gguf"
    os.mkfifo(fifo)
    assert "not a regular file" in error_of(inspect(fifo))


@pytest.fixture
def nobody_dir() -> Iterator[Path]:
    """A directory user nobody may enter (pytest's tmp_path is root's alone)."""
    with tempfile.TemporaryDirectory(prefix="llmtune-perm-") as name:
        os.chmod(name, 0o755)
        yield Path(name)


# The interpreter lives under /root, which nobody cannot read, so the child
# starts as root, imports what it needs and then drops to nobody before
# llmtune opens the file.
_AS_NOBODY = """
import os, sys, unicodedata, json, argparse, shutil, locale, gettext
import llmtune.cli, llmtune.model, llmtune.model.describe, llmtune.textsafe
os.setgroups([])
os.setgid(65534)
os.setuid(65534)
sys.exit(llmtune.cli.main(["inspect", sys.argv[1]]))
"""


def test_permission_denied(nobody_dir: Path, model: Path) -> None:
    secret = nobody_dir / "secret.gguf"
    secret.write_bytes(model.read_bytes())
    secret.chmod(0o600)
    public = nobody_dir / "public.gguf"
    public.write_bytes(model.read_bytes())
    public.chmod(0o644)
    if os.geteuid() == 0:

        def run(path: Path) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-c", _AS_NOBODY, str(path)],
                capture_output=True,
                text=True,
                timeout=TIMEOUT_S,
                env={**os.environ, "COLUMNS": "80"},
            )

        # The same file, readable: nobody can run llmtune and read it.
        allowed = run(public)
        assert allowed.returncode == 0, allowed.stderr
        assert allowed.stdout.startswith("synthetic llama\n")
    else:
        secret.chmod(0)
        if os.access(secret, os.R_OK):
            pytest.skip("this user reads files whatever their mode")

        def run(path: Path) -> subprocess.CompletedProcess[str]:
            return inspect(path)

    message = error_of(run(secret))
    assert message.startswith("permission denied")
    assert "secret.gguf" in message


def test_empty_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.gguf"
    empty.touch()
    assert "empty file" in error_of(inspect(empty))


# ---- not GGUF -------------------------------------------------------------


def test_safetensors_is_named(tmp_path: Path) -> None:
    header = json.dumps({"weight": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    path = tmp_path / "model.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 8)
    message = error_of(inspect(path))
    assert "safetensors" in message
    assert "convert" in message


def test_pytorch_zip_is_named(tmp_path: Path) -> None:
    path = tmp_path / "pytorch_model.bin"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({"weight": [1.0]}, protocol=2))
        archive.writestr("archive/version", "3\n")
    message = error_of(inspect(path))
    assert "zip" in message and "PyTorch" in message


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_pickle_is_named(tmp_path: Path, protocol: int) -> None:
    path = tmp_path / "model.pt"
    path.write_bytes(pickle.dumps({"weight": [1.0, 2.0]}, protocol=protocol))
    assert "pickle" in error_of(inspect(path))


def test_other_bytes_say_what_they_start_with(tmp_path: Path) -> None:
    path = tmp_path / "notes.gguf"
    path.write_bytes(b"hello, this is text\n")
    message = error_of(inspect(path))
    assert "not a GGUF file" in message
    assert "68 65 6c 6c" in message  # "hell"


@pytest.mark.parametrize("version", [1, 99])
def test_unsupported_version(model: Path, version: int) -> None:
    patch(model, VERSION_AT, "I", version)
    message = error_of(inspect(model))
    assert f"version {version}" in message
    assert "not supported" in message or "unsupported" in message


# ---- truncated and oversized ----------------------------------------------

_TRUNCATED = (
    "file ends inside the header",
    "runs past the end of the file",
    "run past the end of the file",
    "bytes are left",
    "more than the file's",
)


def _cut_points(model: Path) -> dict[str, int]:
    data = model.read_bytes()
    gf = read_gguf(model)
    return {
        "in the magic": 2,
        "in the version": 6,
        "in the tensor count": 12,
        "in the metadata count": 20,
        "after the counts": 24,
        "in a key": key_at(data, "general.name") + 10,
        "in a string value": value_at(data, "general.name") + 11,
        "in the token array": value_at(data, "tokenizer.ggml.tokens") + 200,
        "in the score array": value_at(data, "tokenizer.ggml.scores") + 40,
        "in a tensor name": tensor_field_at(data, "blk.1.attn_q.weight", "n_dims") - 5,
        "in a tensor shape": tensor_field_at(data, "output.weight", "dims") + 3,
        "in the last tensor offset": gf.header_bytes - 2,
    }


@pytest.mark.parametrize(
    "where",
    [
        "in the magic",
        "in the version",
        "in the tensor count",
        "in the metadata count",
        "after the counts",
        "in a key",
        "in a string value",
        "in the token array",
        "in the score array",
        "in a tensor name",
        "in a tensor shape",
        "in the last tensor offset",
    ],
)
def test_truncated_header(model: Path, where: str) -> None:
    cut = _cut_points(model)[where]
    model.write_bytes(model.read_bytes()[:cut])
    message = error_of(inspect(model))
    assert any(phrase in message for phrase in _TRUNCATED), message
    assert "model.gguf" in message


def test_truncated_in_the_tensor_data_says_how_much_is_missing(model: Path) -> None:
    size = model.stat().st_size
    missing = 12_345
    os.truncate(model, size - missing)
    message = error_of(inspect(model))
    assert f"{missing:,} bytes are missing" in message
    assert f"ends at byte {size:,}" in message


def test_cut_between_header_and_data(model: Path) -> None:
    gf = read_gguf(model)
    os.truncate(model, gf.header_bytes)
    message = error_of(inspect(model))
    assert f"{gf.file_bytes - gf.header_bytes:,} bytes are missing" in message


@pytest.mark.parametrize(
    ("field", "fmt", "value", "phrase"),
    [
        ("tensor count", "Q", 2**40, "tensor count 1,099,511,627,776 is more than the file"),
        ("tensor count", "Q", 2**64 - 1, "is more than the file"),
        ("metadata count", "Q", 2**63, "metadata count 9,223,372,036,854,775,808"),
        ("key length", "Q", 2**64 - 1, "runs past the end of the file"),
        ("string length", "Q", 2**62, "runs past the end of the file"),
        ("token count", "Q", 2**60, "claims 1,152,921,504,606,846,976 items"),
        ("score count", "Q", 2**61, "bytes are left"),
        ("one token's length", "Q", 2**64 - 8, "run past the end of the file"),
        ("tensor name length", "Q", 2**50, "runs past the end of the file"),
        ("tensor dimensions", "I", 2**31, r"2,147,483,648 dimensions \(ggml allows 4\)"),
        ("tensor shape", "Q", 2**40, "tensors overlap or leave gaps"),
        ("tensor shape", "Q", 2**60, "more than ggml can hold"),
        ("tensor offset", "Q", 2**64 - 32, "data offset is 0xffffffffffffffe0"),
        ("tensor offset", "Q", 7, "not aligned to 32"),
    ],
)
def test_counts_and_lengths_larger_than_the_file(
    model: Path, field: str, fmt: str, value: int, phrase: str
) -> None:
    data = model.read_bytes()
    offsets = {
        "tensor count": TENSOR_COUNT_AT,
        "metadata count": KV_COUNT_AT,
        "key length": key_at(data, "tokenizer.ggml.model"),
        "string length": value_at(data, "general.name"),
        "token count": value_at(data, "tokenizer.ggml.tokens") + 4,
        "score count": value_at(data, "tokenizer.ggml.scores") + 4,
        "one token's length": data.index(struct.pack("<Q", 3) + b"t50"),
        "tensor name length": tensor_field_at(data, "blk.0.ffn_up.weight", "n_dims") - 27,
        "tensor dimensions": tensor_field_at(data, "blk.0.ffn_up.weight", "n_dims"),
        "tensor shape": tensor_field_at(data, "blk.0.ffn_up.weight", "dims") + 8,
        "tensor offset": tensor_field_at(data, "blk.0.ffn_up.weight", "offset"),
    }
    patch(model, offsets[field], fmt, value)
    message = error_of(inspect(model))
    assert re.search(phrase, message), message


@pytest.mark.parametrize(
    ("counts", "phrase"),
    [
        ((65_537, 0), "tensor count 65,537 is more than any model holds"),
        ((0, 16_385), "metadata count 16,385 is more than any model holds"),
    ],
)
def test_more_entries_than_any_model_holds(
    tmp_path: Path, counts: tuple[int, int], phrase: str
) -> None:
    """Room for them in the file, but each would become Python objects of a few
    hundred bytes: a header packed with tiny entries would take 15x its size."""
    path = tmp_path / "dense.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, *counts) + bytes(2 << 20))
    assert phrase in error_of(inspect(path))


def test_row_not_a_whole_number_of_blocks(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "m.gguf", [], [Tensor("x.weight", (64, 2), Q.Q8_0)])[0]
    patch(path, tensor_field_at(path.read_bytes(), "x.weight", "dims"), "Q", 48)
    message = error_of(inspect(path))
    assert "row of 48 is not a multiple of Q8_0's block of 32" in message
    assert "x.weight" in message


def test_huge_tensor_shape_is_reported_as_missing_data(model: Path) -> None:
    data = model.read_bytes()
    # The last tensor may claim any size; its data is then past the end.
    patch(model, tensor_field_at(data, "output.weight", "dims") + 8, "Q", 2**40)
    message = error_of(inspect(model))
    assert "bytes are missing" in message


def test_block_count_beyond_llama_cpp_limit(model: Path) -> None:
    patch(model, value_at(model.read_bytes(), "llama.block_count"), "I", 2**32 - 1)
    message = error_of(inspect(model))
    assert "llama.block_count" in message and "512" in message


def _fit(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llmtune.cli", "fit", str(path), "--gpu", "rtx3060-12g"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        env={**os.environ, "COLUMNS": "80"},
        preexec_fn=_limit_memory,
    )


def test_a_float_too_large_for_any_integer_is_not_an_internal_error(tmp_path: Path) -> None:
    """1e308 as a layer width once overflowed the plan's arithmetic."""
    path = llama_like(
        tmp_path / "m.gguf", n_layer=2, extra_kv=[("llama.embedding_length", (1e308, V.FLOAT64))]
    )[0]
    result = _fit(path)
    assert result.returncode == 0, result.stderr
    assert "internal error" not in result.stderr
    assert "RTX 3060" in result.stdout  # the plan, per device


@pytest.mark.parametrize("value", [1e308, float("nan")])
def test_a_float_layer_count_llama_cpp_cannot_hold_is_refused(tmp_path: Path, value: float) -> None:
    path = llama_like(
        tmp_path / "m.gguf", n_layer=2, extra_kv=[("llama.block_count", (value, V.FLOAT64))]
    )[0]
    message = error_of(_fit(path))
    assert "llama.block_count" in message and "512" in message


@pytest.mark.parametrize("index", ["512", "999999999", "9" * 5000])
def test_layer_index_beyond_llama_cpp_limit(tmp_path: Path, index: str) -> None:
    tensors = [Tensor("blk.0.attn_q.weight", (32, 32)), Tensor(f"blk.{index}.ffn.weight", (32,))]
    path = write_gguf(tmp_path / "m.gguf", [], tensors)[0]
    result = inspect(path)
    if len(index) > 9:
        # Not a layer index llama.cpp could mean: the tensor is shown as "other".
        assert result.returncode == 0, result.stderr
        assert "other" in result.stdout
    else:
        message = error_of(result)
        assert f"blk.{index}.ffn.weight" in message and "512 layers" in message


# ---- unknown types ----------------------------------------------------------


@pytest.mark.parametrize("type_id", [13, 255, 2**32 - 1])
def test_unknown_value_type(model: Path, type_id: int) -> None:
    patch(model, value_type_at(model.read_bytes(), "llama.context_length"), "I", type_id)
    message = error_of(inspect(model))
    assert f"unknown value type {type_id}" in message
    assert "llama.context_length" in message


def test_unknown_array_item_type(model: Path) -> None:
    patch(model, value_at(model.read_bytes(), "tokenizer.ggml.scores"), "I", 77)
    message = error_of(inspect(model))
    assert "unknown item type 77" in message
    assert "tokenizer.ggml.scores" in message


def test_unknown_tensor_type_is_reported_and_the_rest_inspected(model: Path) -> None:
    patch(model, tensor_field_at(model.read_bytes(), "blk.1.ffn_gate.weight", "type"), "I", 200)
    result = inspect(model)
    assert result.returncode == 0, result.stderr
    warnings = result.stderr.splitlines()
    assert len(warnings) == 1
    assert warnings[0].startswith("llmtune: warning: 1 tensor of unknown ggml type 200")
    assert "layers 2" in result.stdout
    assert "type 200" in result.stdout  # in the quantization mix
    assert "F16" in result.stdout
    report = json.loads(inspect(model, "--json").stdout)
    assert report["tensor_count"] == 1 + 2 * 9 + 2
    assert report["types"]["type 200"]["tensors"] == 1
    assert report["types"]["type 200"]["bytes"] == 64 * 128 * 2  # the gap it leaves
    assert report["warnings"] == [warnings[0].removeprefix("llmtune: warning: ")]


# ---- text from the file -----------------------------------------------------


def test_invalid_utf8_is_replaced_and_flagged(tmp_path: Path) -> None:
    path = llama_like(
        tmp_path / "m.gguf",
        n_layer=1,
        extra_kv=[("general.name", (b"caf\xe9 \xff model", V.STRING))],
    )[0]
    result = inspect(path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "caf\ufffd \ufffd model"
    assert "'general.name'" in result.stderr
    assert "not valid UTF-8" in result.stderr
    assert "warning: 'general.name'" in result.stdout
    report = json.loads(inspect(path, "--json").stdout)
    assert report["name"] == "caf\ufffd \ufffd model"
    assert any("not valid UTF-8" in w for w in report["warnings"])


def test_invalid_utf8_warnings_are_capped(tmp_path: Path) -> None:
    kv = [(f"bad.{i}", (b"\xff", V.STRING)) for i in range(50)]
    path = write_gguf(tmp_path / "m.gguf", kv, [Tensor("x.weight", (32,), Q.F32)])[0]
    result = inspect(path)
    assert result.returncode == 0
    warnings = result.stderr.splitlines()
    assert len(warnings) == 6
    assert (
        warnings[-1] == "llmtune: warning: 45 more strings are not valid UTF-8 (shown with \ufffd)"
    )


_HOSTILE = {
    "general.name": "\x1b]0;owned\x07\x1b[2J\x1b[31mRED\x1b[0m name",
    "tokenizer.ggml.model": "\u202egpt2\u202c",
    "tokenizer.ggml.pre": "[bold red]markup[/]",
    "tokenizer.chat_template": "\x9b31m{{ messages }}\x00\x07 end",
}


def _is_hidden(ch: str) -> bool:
    return unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") and ch != "\n"


def test_escape_sequences_markup_and_bidi_are_shown_inert(tmp_path: Path) -> None:
    extra = list(_HOSTILE.items()) + [("bad\x1b[1mkey", (b"\xff\x1b[5m", V.STRING))]
    path = llama_like(tmp_path / "m.gguf", n_layer=1, extra_kv=extra)[0]
    result = inspect(path)
    assert result.returncode == 0, result.stderr
    for stream in (result.stdout, result.stderr):
        assert "\x1b" not in stream
        assert not [ch for ch in stream if _is_hidden(ch)]
    out = result.stdout
    assert out.splitlines()[0] == "\\x1b]0;owned\\x07\\x1b[2J\\x1b[31mRED\\x1b[0m name"
    assert "\\u202egpt2\\u202c" in out
    assert "[bold red]markup[/]" in out  # printed as text, not interpreted
    assert "\\x9b31m{{ messages }}\\x00\\x07 end" in out
    assert "bad\\x1b[1mkey" in result.stderr
    assert all(len(line) <= 80 for line in out.splitlines())
    report = json.loads(inspect(path, "--json").stdout)
    assert report["name"] == _HOSTILE["general.name"]
    assert report["tokenizer"] == _HOSTILE["tokenizer.ggml.model"]


def test_hostile_tensor_names_are_shown_inert(tmp_path: Path) -> None:
    tensors = [Tensor("token_embd\x1b[8m.weight", (32, 4)), Tensor("output\u202e.weight", (32, 4))]
    path = write_gguf(tmp_path / "m.gguf", [], tensors)[0]
    result = inspect(path)
    assert result.returncode == 0, result.stderr
    assert "token_embd\\x1b[8m" in result.stdout
    assert not [ch for ch in result.stdout if _is_hidden(ch)]


def test_hostile_file_name_in_an_error(tmp_path: Path) -> None:
    evil = tmp_path / "evil\x1b[2J\nname.gguf"
    message = error_of(inspect(evil))
    assert "evil\\x1b[2J\\nname.gguf" in message


# ---- split files ----------------------------------------------------------


def test_missing_shard(tmp_path: Path) -> None:
    paths = llama_like(tmp_path / "m.gguf", n_layer=2, split_max_tensors=8)
    assert len(paths) == 3
    paths[1].unlink()
    message = error_of(inspect(paths[0]))
    assert message.startswith("shard 2 of 3 is missing")
    assert "m-00002-of-00003.gguf" in message


def test_shard_of_another_model(tmp_path: Path) -> None:
    paths = llama_like(tmp_path / "m.gguf", n_layer=2, split_max_tensors=8)
    (tmp_path / "o").mkdir()
    other = llama_like(tmp_path / "o" / "m.gguf", n_layer=2, split_max_tensors=12)
    paths[1].write_bytes(other[1].read_bytes())
    message = error_of(inspect(paths[2]))
    assert "split.count 2" in message and "different models" in message


def test_first_shard_claiming_to_be_second(tmp_path: Path) -> None:
    paths = llama_like(tmp_path / "m.gguf", n_layer=2, split_max_tensors=8)
    patch(paths[0], value_at(paths[0].read_bytes(), "split.no"), "H", 1)
    assert unpack(paths[0], value_at(paths[0].read_bytes(), "split.no"), "H") == 1
    message = error_of(inspect(paths[0]))
    assert "split.no 1, expected 0" in message


def test_shard_that_is_a_directory(tmp_path: Path) -> None:
    paths = llama_like(tmp_path / "m.gguf", n_layer=2, split_max_tensors=8)
    paths[2].unlink()
    paths[2].mkdir()
    assert stat.S_ISDIR(paths[2].stat().st_mode)
    message = error_of(inspect(paths[0]))
    assert "is a directory" in message and "m-00003-of-00003.gguf" in message


def test_every_invisible_format_character_is_escaped_not_only_bidi() -> None:
    # Found by the fuzzer: U+070F (SYRIAC ABBREVIATION MARK) in a key name reached
    # an error message as is. Soft hyphens and tag characters are as invisible.
    from llmtune.textsafe import inert

    shown = inert("key\u070f\u00ad\U000e0041end")
    assert shown == "key\\u070f\\xad\\U000e0041end"
    assert not [ch for ch in shown if _is_hidden(ch)]
