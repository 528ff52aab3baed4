"""Measured quality kept between runs: which source, which llama.cpp, which text.

A measurement is only comparable to another made on the same source weights,
by the same llama.cpp and on the same tokens, so each row is kept under
``(source fingerprint, llama.cpp build, text hash, n_ctx, chunks)``, in one JSON
file per source in the user config folder beside the speed calibration (``quality/<fingerprint>.json``).

The fingerprint of a multi-GB source must cost little: SHA-256 over each
file's size, its first 4 MiB (the GGUF header: metadata, vocabulary and
tensor table, which name the model and its layout) and 32 blocks of 64 KiB
at evenly spaced offsets through the rest (the weights). About 6 MiB read
whatever the size, a fraction of a second even on a disk that seeks, where a
full hash of 140 GB takes minutes. It is a content key, not a path: a copy or
a move of the file keeps its measurements, and a re-conversion changes the
header or the sampled weights. A change confined to unsampled weights of the
same size would be missed; GGUF files are written whole, not patched, so
llmtune accepts that. The modification time is left out for the same reason
(a copy keeps its key); results are cached in memory by (path, size, mtime).

The bundled text (``texts/quality.txt``) is original prose written for
llmtune and dedicated to the public domain (CC0 1.0): about 3,800 words,
about 4,600 tokens for a 49k-token BPE vocabulary.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from llmtune.errors import ConfigError
from llmtune.paths import config_dir, write_atomic

HEAD_BYTES = 4 << 20
SAMPLE_BLOCKS = 32
SAMPLE_BYTES = 64 << 10
FORMAT_VERSION = 1
MAX_FILE_BYTES = 4 << 20
BUNDLED_TEXT_NAME = "bundled"

_fingerprints: dict[tuple[str, int, int], str] = {}


# ---- the source -----------------------------------------------------------------------------


def fingerprint(paths: str | os.PathLike[str] | tuple[str, ...]) -> str:
    """A content key of a model file (or a split model's shards), 32 hex digits."""
    files = (os.fspath(paths),) if isinstance(paths, (str, os.PathLike)) else paths
    digest = hashlib.sha256(b"llmtune-quality-fingerprint-1")
    for path in files:
        digest.update(_file_fingerprint(path).encode())
    return digest.hexdigest()[:32]


def _file_fingerprint(path: str) -> str:
    try:
        st = os.stat(path)
    except OSError as err:
        raise ConfigError(f"cannot read the model: {err.strerror}", path) from None
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    cached = _fingerprints.get(key)
    if cached is not None:
        return cached
    digest = hashlib.sha256(str(st.st_size).encode())
    try:
        with open(path, "rb") as fh:
            digest.update(fh.read(HEAD_BYTES))
            rest = st.st_size - HEAD_BYTES
            if rest > 0:
                step = max(rest // SAMPLE_BLOCKS, 1)
                for i in range(SAMPLE_BLOCKS):
                    fh.seek(HEAD_BYTES + i * step)
                    digest.update(fh.read(SAMPLE_BYTES))
    except OSError as err:
        raise ConfigError(f"cannot read the model: {err.strerror}", path) from None
    value = digest.hexdigest()
    _fingerprints[key] = value
    return value


def llama_build() -> str:
    """The llama.cpp that quantizes and measures: the one vendored in the pinned
    llama-cpp-python (the worker's quantizer and ``make tools`` are both built from it)."""
    from llmtune.engine.tools import LLAMA_CPP_PYTHON_VERSION

    return f"llama-cpp-python {LLAMA_CPP_PYTHON_VERSION}"


# ---- the text -------------------------------------------------------------------------------


@dataclass(frozen=True)
class QualityText:
    name: str  # "bundled", or the file's path
    path: str
    sha256: str
    bytes: int


def bundled_text_path() -> str:
    return str(Path(__file__).with_name("texts") / "quality.txt")


def load_text(path: str | os.PathLike[str] | None) -> QualityText:
    """The bundled text (``None``) or a user's plain-text file, hashed."""
    where = bundled_text_path() if path is None else os.path.abspath(os.fspath(path))
    try:
        with open(where, "rb") as fh:
            data = fh.read()
    except OSError as err:
        raise ConfigError(f"cannot read the text: {err.strerror}", where) from None
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError("the text is not UTF-8 plain text", where) from None
    if not data.strip():
        raise ConfigError("the text is empty", where)
    return QualityText(
        name=BUNDLED_TEXT_NAME if path is None else where,
        path=where,
        sha256=hashlib.sha256(data).hexdigest(),
        bytes=len(data),
    )


# ---- the rows -------------------------------------------------------------------------------


@dataclass(frozen=True)
class QualityRow:
    """One file type measured against the source on one text."""

    file_type: str
    imatrix: bool
    file_bytes: int
    ppl: float
    ppl_err: float
    ln_ppl_ratio: float
    ln_ppl_ratio_err: float
    kld_mean: float
    kld_mean_err: float
    kld_median: float
    kld_p99: float
    kld_max: float
    same_top_pct: float
    same_top_err_pct: float
    rms_dp_pct: float
    quantize_s: float
    measure_s: float
    is_source: bool = False

    @property
    def label(self) -> str:
        return self.file_type + ("+imatrix" if self.imatrix else "")


@dataclass(frozen=True)
class QualityKey:
    """What makes two measurements comparable."""

    source: str  # fingerprint()
    build: str  # llama_build()
    text_sha256: str
    n_ctx: int
    n_chunk: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class StoredRow:
    key: QualityKey
    text_name: str
    measured_at: float  # seconds since the epoch
    row: QualityRow


def store_path(source_fingerprint: str) -> Path:
    return config_dir() / "quality" / f"{source_fingerprint}.json"


def load_rows(source_fingerprint: str) -> list[StoredRow]:
    """Every row kept for this source; a missing or damaged file is none."""
    path = store_path(source_fingerprint)
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            return []
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    if not isinstance(data, dict) or data.get("version") != FORMAT_VERSION:
        return []
    out: list[StoredRow] = []
    for item in data.get("rows", []):
        try:
            out.append(
                StoredRow(
                    key=QualityKey(**item["key"]),
                    text_name=str(item["text_name"]),
                    measured_at=float(item["measured_at"]),
                    row=QualityRow(**item["row"]),
                )
            )
        except (KeyError, TypeError, ValueError):
            continue
    return out


def save_rows(rows: list[StoredRow]) -> None:
    """Add ``rows`` (all of one source), replacing those with the same key and type."""
    if not rows:
        return
    source = rows[0].key.source
    new = {(r.key, r.row.file_type, r.row.imatrix) for r in rows}
    kept = [r for r in load_rows(source) if (r.key, r.row.file_type, r.row.imatrix) not in new]
    data = {
        "version": FORMAT_VERSION,
        "rows": [
            {
                "key": r.key.as_dict(),
                "text_name": r.text_name,
                "measured_at": r.measured_at,
                "row": asdict(r.row),
            }
            for r in kept + rows
        ],
    }
    write_atomic(store_path(source), json.dumps(data, indent=1, allow_nan=True))


def latest(rows: list[StoredRow], build: str) -> tuple[StoredRow | None, dict[str, StoredRow]]:
    """The rows of the most recent measurement setting (text, context, chunks) with this
    llama.cpp: ``(the newest row, {type label: row})``; other texts are not mixed in."""
    mine = [r for r in rows if r.key.build == build]
    if not mine:
        return None, {}
    newest = max(mine, key=lambda r: r.measured_at)
    same = [r for r in mine if r.key == newest.key]
    by_type: dict[str, StoredRow] = {}
    for r in sorted(same, key=lambda r: r.measured_at):
        by_type[r.row.label] = r
    return newest, by_type


def now() -> float:
    return time.time()
