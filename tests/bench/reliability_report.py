"""What llmtune survives, measured: the reliability report of issue 7.

Runs every section under ``tests/bench/reliability/`` (malformed model files,
the same files through the app's open path, worker faults, hostile text, long
runs, files on disk, resource limits, security) and prints one table per section and a summary; `make bench` runs it and the
README's Performance section keeps the figures. ``--only NAME`` runs one
section. Like the other benchmarks it reports rather than fails: a target that
is missed says MISS.
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import sys
import time
import traceback
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reliability import Row, Section  # noqa: E402

SECTIONS = ("files", "app", "worker", "text", "longrun", "disk", "resources", "security")


def run_section(name: str) -> Section:
    try:
        module = importlib.import_module(f"reliability.{name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"reliability.{name}":
            section = Section(name)
            section.add("section", "not written yet", "measured", False)
            return section
        raise
    try:
        result: Section = module.run()
        return result
    except Exception:  # a section that breaks is reported, and the others still run
        section = Section(name)
        section.add("section", "raised", "measured", False)
        section.notes.append(traceback.format_exc(limit=3))
        return section


def show(section: Section, seconds: float) -> None:
    print(f"\n== {section.title} ({seconds:.0f} s)")
    width = max([len(r.what) for r in section.rows] + [4])
    for r in section.rows:
        mark = "PASS" if r.met else "MISS"
        print(f"  {r.what:<{width}}  {r.measured}  [target {r.target}] {mark}")
    for note in section.notes:
        print(f"  note: {note}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--only", choices=SECTIONS, action="append")
    args = parser.parse_args(argv)
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, {date.today()}"
    )
    results: list[tuple[Section, float]] = []
    for name in args.only or SECTIONS:
        t0 = time.monotonic()
        section = run_section(name)
        results.append((section, time.monotonic() - t0))
        show(section, results[-1][1])
    rows: list[Row] = [r for s, _ in results for r in s.rows]
    met = sum(r.met for r in rows)
    print(f"\nreliability: {met} of {len(rows)} targets met")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
