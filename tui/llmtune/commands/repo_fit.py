"""``llmtune fit --hf OWNER/REPO`` and ``llmtune search``: the rows of
:mod:`llmtune.fit.repo` as text and JSON."""

from __future__ import annotations

import sys
from typing import Any

from llmtune.commands.common import text_width
from llmtune.fit.repo import RepoRow, verdict
from llmtune.model.hub import Repo
from llmtune.textsafe import inert
from llmtune.units import format_bytes


def row_dict(row: RepoRow) -> dict[str, Any]:
    p = row.plan
    return {
        "label": row.entry.label,
        "files": [f.name for f in row.entry.files],
        "file_bytes": row.entry.size,
        "fits": p.fits if p is not None else None,
        "all_on_gpu": row.all_on_gpu,
        "n_gpu_layers": p.n_gpu_layers if p is not None else None,
        "n_layer": p.n_layer if p is not None else None,
        "n_ctx": p.n_ctx if p is not None else None,
        # A plan that does not fit runs at no speed.
        "predicted": (
            {
                "tg_tokens_per_s": p.predicted.tg_tokens_per_s,
                "pp_tokens_per_s": p.predicted.pp_tokens_per_s,
            }
            if p is not None and p.fits
            else None
        ),
        "error": row.error,
    }


def repo_dict(repo: Repo, rows: list[RepoRow]) -> dict[str, Any]:
    return {
        "repo": repo.repo_id,
        "revision": repo.revision,
        "rows": [row_dict(r) for r in rows],
        "mmproj": [e.name for e in repo.entries if e.mmproj],
    }


def repo_text(repo: Repo, rows: list[RepoRow]) -> str:
    width = text_width()
    lines = [
        f"{inert(repo.repo_id, max_chars=width)}: {len(rows)} GGUF "
        f"{'model' if len(rows) == 1 else 'models'}, the best that fits first"
    ]
    lines.append(
        f"  {'quant':<16}{'size':>10}  {'verdict':<11}{'layers':>8}{'ctx':>8}{'tg t/s':>9}"
    )
    for row in rows:
        p = row.plan
        label = inert(row.entry.label, max_chars=15)
        shards = f" ({len(row.entry.files)} files)" if len(row.entry.files) > 1 else ""
        if p is None:
            lines.append(
                f"  {label:<16}{format_bytes(row.entry.size):>10}  "
                + inert(row.error or "", max_chars=max(20, width - 30))
            )
            continue
        layers = f"{p.n_gpu_layers}/{p.n_layer + 1}" if p.gpus else "CPU"
        speed = f"{p.predicted.tg_tokens_per_s:>9.1f}" if p.fits else f"{'-':>9}"
        lines.append(
            f"  {label:<16}{format_bytes(row.entry.size):>10}  {verdict(row):<11}{layers:>8}"
            f"{p.n_ctx:>8}{speed}{shards}"
        )
    mmproj = [e.name for e in repo.entries if e.mmproj]
    if mmproj:
        lines.append(f"  mmproj (vision projector, not a model): {', '.join(mmproj)}")
    return "\n".join(line[:width] for line in lines) + "\n"


def print_repo(repo: Repo, rows: list[RepoRow]) -> None:
    sys.stdout.write(repo_text(repo, rows))
