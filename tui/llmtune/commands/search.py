"""``llmtune search TEXT``: GGUF repos on the Hub, and what of each runs here.

One header per repo is read (the file llama.cpp's -hf would pick); the repo's
other quants are planned from it by the quantization what-if
(:func:`llmtune.fit.quant.requantize`), so ten repos cost ten headers, not two
hundred. The best file that fits is the one ``fit --hf`` would put on top.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from llmtune.commands.common import print_json, text_width, warn_calibration
from llmtune.errors import LlmtuneError, RemoteError
from llmtune.fit.quant import requantize
from llmtune.fit.repo import RepoRow, plan_entry, verdict
from llmtune.fit.settings import Settings
from llmtune.hardware.machine import Machine, MachineOptions, machine
from llmtune.model.hub import Repo, choose, list_repo, search
from llmtune.model.remote import HttpClient
from llmtune.model.source import hub_client, open_entry
from llmtune.textsafe import inert
from llmtune.units import format_bytes


def best_row(repo: Repo, m: Machine, settings: Settings, client: HttpClient) -> RepoRow | None:
    """The best file of ``repo`` that fits (None: none does, or none is readable)."""
    base_entry = choose(repo, None)
    base = open_entry(repo, base_entry, client=client).spec
    rows = []
    for entry in repo.entries:
        if entry.mmproj:
            continue
        try:
            spec = base if entry is base_entry else requantize(base, entry.label)
            rows.append(RepoRow(entry, spec, plan_entry(spec, m.devices, m.plan_speed, settings)))
        except LlmtuneError:
            continue  # a quant the what-if does not know (UD-..., MXFP4): left out
    rows.sort(key=lambda r: r.rank)
    fitting = [r for r in rows if r.plan is not None and r.plan.fits]
    return fitting[0] if fitting else None


def run(args: argparse.Namespace, settings: Settings, options: MachineOptions) -> int:
    if not 1 <= args.limit <= 100:
        raise RemoteError("--limit must be 1 to 100", "--limit")
    m = machine(options)
    warn_calibration(m)
    results: list[dict[str, Any]] = []
    with hub_client() as client:
        for hit in search(args.text, args.limit):
            row: RepoRow | None = None
            error = None
            try:
                row = best_row(list_repo(hit.repo_id), m, settings, client)
            except LlmtuneError as exc:
                error = exc.one_line()
            p = row.plan if row is not None else None
            results.append(
                {
                    "repo": hit.repo_id,
                    "downloads": hit.downloads,
                    "best": row.entry.label if row is not None else None,
                    "file_bytes": row.entry.size if row is not None else None,
                    "verdict": verdict(row) if row is not None else None,
                    "n_gpu_layers": p.n_gpu_layers if p is not None else None,
                    "tg_tokens_per_s": p.predicted.tg_tokens_per_s if p is not None else None,
                    "error": error,
                }
            )
    if args.json:
        print_json({"query": args.text, "results": results})
        return 0
    width = text_width()
    sys.stdout.write(
        f"{'repo':<44}{'downloads':>10}  {'best that fits':<14}{'size':>10}{'tg t/s':>8}\n"
    )
    for r in results:
        repo = inert(r["repo"], max_chars=43)
        head = f"{repo:<44}{r['downloads']:>10,}  "
        if r["best"] is not None:
            line = f"{head}{inert(r['best'], max_chars=13):<14}{format_bytes(r['file_bytes']):>10}{r['tg_tokens_per_s']:>8.1f}"
        else:
            line = head + inert(r["error"] or "nothing fits here", max_chars=width)
        sys.stdout.write(line[:width] + "\n")
    if not results:
        sys.stdout.write(f"no GGUF repos match {inert(args.text, max_chars=60)!r}\n")
    return 0
