"""``llmtune download --hf OWNER/REPO:QUANT``: into the Hugging Face cache, resumable, verified."""

from __future__ import annotations

import argparse
import sys

from llmtune.commands.common import ProgressLine, print_json
from llmtune.units import format_bytes


def run(args: argparse.Namespace) -> int:
    from llmtune.model.download import Progress, download
    from llmtune.model.hub import choose, list_repo, local_paths, parse_ref

    ref = parse_ref(args.hf)
    repo = list_repo(ref.repo_id)
    entry = choose(repo, ref.quant)
    present = local_paths(repo, entry)
    progress = ProgressLine(not args.json)

    def show(p: Progress) -> None:
        eta = f", {p.eta_s:,.0f} s left" if p.eta_s is not None else ""
        progress.show(
            f"{p.name}: {format_bytes(p.done_bytes)} of {format_bytes(p.total_bytes)} "
            f"at {format_bytes(int(p.bytes_per_s))}/s{eta}",
            p.done_bytes / p.total_bytes if p.total_bytes else 1.0,
        )

    try:
        paths = tuple(str(p) for p in download(repo, entry, show)) if present is None else present
    except KeyboardInterrupt:
        progress.clear()
        print("llmtune: download paused; run the same command to resume", file=sys.stderr)
        return 130
    finally:
        progress.clear()
    if args.json:
        print_json(
            {
                "repo": repo.repo_id,
                "label": entry.label,
                "file_bytes": entry.size,
                "paths": list(paths),
                "already_cached": present is not None,
            }
        )
    else:
        what = "already in the cache" if present is not None else "downloaded and verified"
        print(f"{entry.label}: {format_bytes(entry.size)} {what}")
        for path in paths:
            print(f"  {path}")
    return 0
