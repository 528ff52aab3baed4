"""What ``llmtune inspect`` prints: a JSON object and an 80-column summary.

Every string that comes from the model file goes through :func:`inert` before
it is put in the human summary; JSON escapes control characters by itself.
"""

from __future__ import annotations

import math
import os
import unicodedata
from dataclasses import dataclass
from typing import Any

from llmtune.errors import ConfigError, GGUFError
from llmtune.model.gguf_file import GGUFArray, GGUFString, Value, value_type_name
from llmtune.model.spec import ModelSpec, location
from llmtune.textsafe import inert
from llmtune.units import format_bytes, format_count


def _json_value(value: Value) -> Any:
    if isinstance(value, GGUFArray):
        return {"type": value.type_name, "length": value.length}
    if isinstance(value, GGUFString):
        return {"type": "STRING", "bytes": value.nbytes}
    if isinstance(value, list):
        item = _list_item_type(value)
        return {"type": item, "length": len(value)}
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _list_item_type(values: list[Value]) -> str:
    if not values:
        return "EMPTY"
    first = values[0]
    if isinstance(first, bool):
        return "BOOL"
    if isinstance(first, int):
        return "INT"
    if isinstance(first, float):
        return "FLOAT"
    if isinstance(first, str):
        return "STRING"
    return "ARRAY"


def _uniform_or_list(values: tuple[int, ...]) -> int | list[int]:
    if values and all(v == values[0] for v in values):
        return values[0]
    return list(values)


def inspect_dict(spec: ModelSpec) -> dict[str, Any]:
    """The ``llmtune inspect --json`` object (DESIGN.md)."""
    types = {
        name: {"tensors": s.tensors, "parameters": s.parameters, "bytes": s.nbytes}
        for name, s in spec.type_stats().items()
    }
    metadata: dict[str, Any] = {}
    for key, value in spec.metadata.items():
        metadata[key] = _json_value(value)
    return {
        "path": location(spec.path),
        "shards": [location(p) for p in spec.shard_paths],
        "file_bytes": spec.file_bytes,
        "gguf_version": spec.gguf_version,
        "architecture": spec.architecture,
        "name": spec.name,
        "file_type": spec.file_type_name,
        "file_type_id": spec.file_type,
        "parameters": spec.parameters,
        "bits_per_weight": round(spec.bits_per_weight, 4),
        "n_layer": spec.n_layer,
        "n_embd": spec.n_embd,
        "n_head": spec.n_head,
        "n_head_kv": spec.n_head_kv,
        "n_head_per_layer": _uniform_or_list(spec.n_head_per_layer),
        "n_head_kv_per_layer": _uniform_or_list(spec.n_head_kv_per_layer),
        "n_embd_head_k": spec.n_embd_head_k,
        "n_embd_head_v": spec.n_embd_head_v,
        "n_ff": _uniform_or_list(spec.n_ff_per_layer),
        "n_ctx_train": spec.n_ctx_train,
        "n_vocab": spec.n_vocab,
        "n_expert": spec.n_expert,
        "n_expert_used": spec.n_expert_used,
        "n_ff_exp": spec.n_ff_exp,
        "sliding_window": spec.sliding_window,
        "swa_layers": [i for i, slides in enumerate(spec.swa_layers) if slides],
        "kv_lora_rank": spec.kv_lora_rank,
        "tokenizer": spec.tokenizer_model,
        "chat_template_chars": len(spec.chat_template),
        "tensor_count": len(spec.tensors),
        "tensor_bytes": spec.tensor_bytes,
        "types": types,
        "layers": [{"index": layer.index, "bytes": layer.nbytes} for layer in spec.layers],
        "input_bytes": sum(t.nbytes for t in spec.input_tensors),
        "output_bytes": sum(t.nbytes for t in spec.output_tensors),
        "metadata": metadata,
        "layout": layout_dict(byte_layout(spec)),
        "warnings": list(spec.warnings),
    }


def _layer_runs(sizes: list[int]) -> list[tuple[int, int, int]]:
    """Consecutive layers of equal size as (first, last, bytes) runs."""
    runs: list[tuple[int, int, int]] = []
    for i, size in enumerate(sizes):
        if runs and runs[-1][2] == size and runs[-1][1] == i - 1:
            first, _, _ = runs[-1]
            runs[-1] = (first, i, size)
        else:
            runs.append((i, i, size))
    return runs


def _shorten_path(path: str, width: int) -> str:
    home = os.path.expanduser("~")
    if home and home != "/" and path.startswith(home + os.sep):
        path = "~" + path[len(home) :]
    if len(path) <= width:
        return path
    return "…" + path[-(width - 1) :]


def inspect_lines(spec: ModelSpec, width: int = 80) -> list[str]:
    """The human summary, one string per line, each at most ``width`` columns."""
    w = max(40, width)
    lines: list[str] = []
    name = inert(spec.name, max_chars=w - 2)
    lines.append(name)
    lines.append("  " + _shorten_path(inert(location(spec.path), max_chars=None), w - 2))
    shards = f" in {len(spec.shard_paths)} shards" if len(spec.shard_paths) > 1 else ""
    identity = [
        inert(spec.architecture, max_chars=24),
        spec.file_type_name,
        f"{format_count(spec.parameters)} parameters",
        f"{spec.bits_per_weight:.2f} bits/weight",
        f"{format_bytes(spec.file_bytes)} file{shards}",
        f"{len(spec.tensors)} tensors",
        f"GGUF v{spec.gguf_version}",
    ]
    # Two lines at 80 columns (what and how big); more when narrower.
    lines.extend(_flow(identity[:4], w))
    lines.extend(_flow(identity[4:], w))
    lines.append("")
    lines.append("Shape")
    heads = _uniform_or_list(spec.n_head_per_layer)
    heads_kv = _uniform_or_list(spec.n_head_kv_per_layer)
    head_text = str(heads) if isinstance(heads, int) else f"{_span(heads)} per layer"
    kv_text = str(heads_kv) if isinstance(heads_kv, int) else _span(heads_kv)
    gqa = ""
    if isinstance(heads, int) and isinstance(heads_kv, int) and heads_kv and heads != heads_kv:
        gqa = f", GQA {heads // heads_kv}:1" if heads % heads_kv == 0 else ", GQA"
    ff = _uniform_or_list(spec.n_ff_per_layer)
    ff_text = f"{ff:,}" if isinstance(ff, int) else _span(ff)
    pairs = [
        ("layers", f"{spec.n_layer}"),
        ("embedding", f"{spec.n_embd:,}"),
        ("heads", f"{head_text} (KV {kv_text}{gqa})"),
        (
            "head dim",
            f"{spec.n_embd_head_k}"
            + (f"/{spec.n_embd_head_v}" if spec.n_embd_head_v != spec.n_embd_head_k else ""),
        ),
        ("FFN", ff_text),
        ("context", f"{spec.n_ctx_train:,} trained"),
        ("vocab", f"{spec.n_vocab:,}"),
    ]
    if spec.n_expert:
        pairs.append(
            ("experts", f"{spec.n_expert} ({spec.n_expert_used} used, FFN {spec.n_ff_exp:,})")
        )
    n_swa = sum(spec.swa_layers)
    if n_swa and spec.swa_window:
        pairs.append(("sliding window", f"{spec.swa_window:,} in {n_swa} of {spec.n_layer} layers"))
    elif spec.sliding_window:
        pairs.append(("sliding window", f"{spec.sliding_window:,}"))
    if spec.kv_lora_rank:
        pairs.append(("MLA KV rank", f"{spec.kv_lora_rank}"))
    if spec.ssm_state_size:
        pairs.append(("SSM state", f"{spec.ssm_state_size} (inner {spec.ssm_inner_size:,})"))
    lines.extend(_flow_pairs(pairs, w))
    lines.append("")

    lines.append("Quantization mix")
    # The parameters column goes first when the table (58 columns) does not fit.
    wide = w >= 58
    lines.append(
        f"  {'type':<9}{'tensors':>8}"
        + (f"{'parameters':>12}" if wide else "")
        + f"{'bytes':>12}{'bits/w':>8}{'share':>7}"
    )
    total_bytes = spec.tensor_bytes or 1
    for type_name, stats in spec.type_stats().items():
        lines.append(
            f"  {_fit(type_name, 8):<9}{stats.tensors:>8}"
            + (f"{format_count(stats.parameters):>12}" if wide else "")
            + f"{format_bytes(stats.nbytes):>12}{stats.bits_per_weight:>8.2f}"
            f"{stats.nbytes * 100 / total_bytes:>6.1f}%"
        )
    lines.append("")

    lines.append("Layers")
    sizes = [layer.nbytes for layer in spec.layers]
    runs = _layer_runs(sizes)
    if len(runs) <= 6:
        for first, last, size in runs:
            label = f"{first}" if first == last else f"{first}-{last}"
            each = " each" if first != last else ""
            lines.append(f"  blk {label:<9} {format_bytes(size):>10}{each}")
    elif sizes:
        mean = sum(sizes) / len(sizes)
        summary = [
            f"{len(sizes)} layers: {format_bytes(min(sizes))} to {format_bytes(max(sizes))}",
            f"{format_bytes(int(mean))} on average",
        ]
        lines.extend(_flow(summary, w, sep=", "))
        largest = max(range(len(sizes)), key=lambda i: sizes[i])
        lines.append(f"  largest: blk {largest} ({format_bytes(sizes[largest])})")
    for label, group in (("input", spec.input_tensors), ("output", spec.output_tensors)):
        if group:
            parts = ", ".join(
                f"{inert(t.name.removesuffix('.weight'), max_chars=24)} {t.type_name}"
                for t in group[:3]
            )
            more = f" +{len(group) - 3}" if len(group) > 3 else ""
            lines.append(
                _fit(
                    f"  {label:<13} {format_bytes(sum(t.nbytes for t in group)):>10}  {parts}{more}",
                    w,
                )
            )
    if spec.other_tensors:
        other = sum(t.nbytes for t in spec.other_tensors)
        lines.append(
            f"  {'other':<13} {format_bytes(other):>10}  {len(spec.other_tensors)} tensors"
        )
    lines.append("")

    tokenizer = inert(spec.tokenizer_model, max_chars=20) or "none"
    pre = spec.metadata.get("tokenizer.ggml.pre")
    pre_text = f" ({inert(pre, max_chars=20)})" if isinstance(pre, str) and pre else ""
    merges = spec.metadata.get("tokenizer.ggml.merges")
    n_merges = (
        merges.length
        if isinstance(merges, GGUFArray)
        else len(merges)
        if isinstance(merges, list)
        else 0
    )
    merges_text = f", {n_merges:,} merges" if n_merges else ""
    lines.append(_fit(f"Tokenizer  {tokenizer}{pre_text}, {spec.n_vocab:,} tokens{merges_text}", w))
    template = spec.chat_template
    if template:
        first_line = template.strip().splitlines()[0] if template.strip() else ""
        lines.append(
            _fit(f"Chat template  {len(template):,} chars: {inert(first_line, max_chars=w)}", w)
        )
    else:
        lines.append("Chat template  none")
    lines.append("")
    lines.extend(layout_lines(byte_layout(spec)))
    for warning in spec.warnings:
        lines.append(_fit("warning: " + inert(warning, max_chars=w * 2), w))
    # Escapes make model strings longer than they were cut to; nothing may overflow.
    return [_fit(line, w) for line in lines]


def _span(values: list[int]) -> str:
    return f"{min(values):,}-{max(values):,}" if values else "none"


def _char_cells(ch: str) -> int:
    if unicodedata.combining(ch) or unicodedata.category(ch) in ("Mn", "Me", "Cf"):
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def _cells(text: str) -> int:
    """Terminal columns ``text`` takes (wide CJK characters take two)."""
    if text.isascii():
        return len(text)
    return sum(_char_cells(ch) for ch in text)


def _fit(line: str, width: int) -> str:
    """``line`` cut to ``width`` terminal columns, ending in … when cut."""
    if _cells(line) <= width:
        return line
    used = 0
    for i, ch in enumerate(line):
        used += _char_cells(ch)
        if used > width - 1:
            return line[:i] + "…"
    return line


def _flow(items: list[str], width: int, sep: str = " · ") -> list[str]:
    """Join items with ``sep`` into indented lines no wider than ``width``."""
    lines: list[str] = []
    current = ""
    for item in items:
        if current and _cells(f"  {current}{sep}{item}") > width:
            lines.append(f"  {current}")
            current = item
        else:
            current = f"{current}{sep}{item}" if current else item
    if current:
        lines.append(f"  {current}")
    return lines


def _flow_pairs(pairs: list[tuple[str, str]], width: int) -> list[str]:
    """Lay out label/value pairs in as many columns as fit the width."""
    cells = [f"{label} {value}" for label, value in pairs]
    lines: list[str] = []
    current = " "
    for cell in cells:
        candidate = f"{current}  {cell}" if current.strip() else f"  {cell}"
        if len(candidate) > width and current.strip():
            lines.append(current)
            current = f"  {cell}"
        else:
            current = candidate
    if current.strip():
        lines.append(current)
    return [_fit(line, width) for line in lines]


def inspect_text(spec: ModelSpec, width: int = 80) -> str:
    return "\n".join(inspect_lines(spec, width)) + "\n"


def metadata_rows(spec: ModelSpec, max_value_chars: int = 200) -> list[tuple[str, str, str]]:
    """(key, type, value) rows for a metadata browser, all inert."""
    rows: list[tuple[str, str, str]] = []
    for key, value in spec.metadata.items():
        type_name = value_type_name(spec.metadata_types.get(key, -1))
        if isinstance(value, GGUFArray):
            shown = f"[{value.length:,} × {value.type_name}]"
        elif isinstance(value, GGUFString):
            try:
                head = value.text(max_bytes=max_value_chars * 4)
            except GGUFError:  # the file changed since it was read
                head = ""
            shown = f"[{value.nbytes:,} bytes] {head}"
        elif isinstance(value, list):
            preview = ", ".join(str(v) for v in value[:8])
            more = ", …" if len(value) > 8 else ""
            shown = f"[{preview}{more}] ({len(value)})"
        else:
            shown = str(value)
        rows.append((inert(key, max_chars=80), type_name, inert(shown, max_chars=max_value_chars)))
    return rows


@dataclass(frozen=True)
class ByteLayout:
    """Where a file's bytes go, and whether the tensor table accounts for all of them."""

    file_bytes: int
    header_bytes: int  # metadata and the tensor table
    tensor_bytes: int
    padding_bytes: int  # alignment after the header and between tensors
    trailing_bytes: int  # after the last tensor's data (negative: missing)
    problems: tuple[str, ...]

    @property
    def reconciles(self) -> bool:
        return not self.problems


def byte_layout(spec: ModelSpec) -> ByteLayout:
    """Sum each shard's header, tensor data and the gaps between them (gguf.cpp
    aligns every tensor to ``general.alignment``); gaps past an alignment, overlaps
    and bytes after the last tensor are problems."""
    raw = spec.metadata.get("general.alignment")
    alignment = raw if isinstance(raw, int) and not isinstance(raw, bool) and raw > 0 else 32
    padding = 0
    data_end_total = 0
    problems: list[str] = []
    for shard in range(len(spec.shard_paths)):
        ordered = sorted((t for t in spec.tensors if t.shard == shard), key=lambda t: t.offset)
        if not ordered:
            continue
        end = ordered[0].offset
        padding += ordered[0].offset  # less this shard's header, below
        for t in ordered:
            gap = t.offset - end
            if gap < 0 and len(problems) < 3:
                problems.append(f"tensor '{t.name}' overlaps the one before by {-gap:,} bytes")
            elif gap >= alignment and len(problems) < 3:
                problems.append(f"{gap:,} unaccounted bytes before tensor '{t.name}'")
            padding += max(gap, 0)
            end = max(end, t.offset + t.nbytes)
        data_end_total += end
    padding -= spec.header_bytes if data_end_total else 0
    trailing = spec.file_bytes - (data_end_total or spec.header_bytes)
    if trailing < 0:
        problems.append(f"{-trailing:,} bytes of tensor data are missing from the file")
    elif trailing >= alignment:
        problems.append(f"{trailing:,} bytes after the last tensor are not in the tensor table")
    return ByteLayout(
        spec.file_bytes, spec.header_bytes, spec.tensor_bytes, padding, trailing, tuple(problems)
    )


def layout_lines(layout: ByteLayout) -> list[str]:
    total = layout.file_bytes or 1
    rows = [
        ("header", layout.header_bytes),
        ("tensor data", layout.tensor_bytes),
        ("padding", layout.padding_bytes),
    ]
    if layout.trailing_bytes:
        rows.append(("after data", layout.trailing_bytes))
    lines = [f"Bytes  {format_bytes(layout.file_bytes)} in the file"]
    for label, n in rows:
        lines.append(f"  {label:<12}{format_bytes(n):>11}{n * 100 / total:>7.2f}%  {n:,} B")
    if layout.reconciles:
        lines.append("  offsets and sizes reconcile: every byte is accounted for")
    else:
        lines.append("  offsets and sizes do not reconcile:")
        lines.extend(f"    {p}" for p in layout.problems)
    return lines


def layout_dict(layout: ByteLayout) -> dict[str, Any]:
    return {
        "file_bytes": layout.file_bytes,
        "header_bytes": layout.header_bytes,
        "tensor_bytes": layout.tensor_bytes,
        "padding_bytes": layout.padding_bytes,
        "trailing_bytes": layout.trailing_bytes,
        "reconciles": layout.reconciles,
        "problems": list(layout.problems),
    }


def tensor_dicts(spec: ModelSpec) -> list[dict[str, Any]]:
    return [
        {
            "name": t.name,
            "type": t.type_name,
            "shape": list(t.shape),
            "bytes": t.nbytes,
            "offset": t.offset,
            "shard": t.shard,
        }
        for t in spec.tensors
    ]


def tensor_lines(spec: ModelSpec, width: int = 80) -> list[str]:
    """One line per tensor: name, type, shape (ggml order), bytes, offset."""
    shards = len(spec.shard_paths) > 1
    lines = [
        f"{'name':<34} {'type':<7} {'shape':<22} {'bytes':>14} {'offset':>14}"
        + ("  shard" if shards else "")
    ]
    for t in spec.tensors:
        shape = "×".join(str(d) for d in t.shape) or "scalar"
        name = inert(t.name, max_chars=None)
        line = f"{name:<34} {t.type_name:<7} {shape:<22} {t.nbytes:>14,} {t.offset:>14,}"
        lines.append(line + (f"  {t.shard + 1}" if shards else ""))
    return lines


def key_value(spec: ModelSpec, key: str) -> tuple[str, Any]:
    """One metadata value as (type name, JSON value): lazy arrays and strings decoded."""
    if key not in spec.metadata:
        raise ConfigError(f"no metadata key {key!r} in this file", "--key")
    value = spec.metadata[key]
    type_name = value_type_name(spec.metadata_types.get(key, -1))
    return type_name, _full_value(value)


def _full_value(value: Value) -> Any:
    if isinstance(value, GGUFArray):
        return [_full_value(v) for v in value.values()]
    if isinstance(value, GGUFString):
        return value.text()
    if isinstance(value, list):
        return [_full_value(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value
