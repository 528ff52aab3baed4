"""The whole accuracy table: model x context x cache type, predicted vs llama.cpp.

Baseline: the buffer sizes llama.cpp (vendored in llama-cpp-python 0.3.36)
logs when it loads each synthetic model on this machine's CPU.
"""

from __future__ import annotations

import os
import platform
import sys
import tempfile
from datetime import date
from pathlib import Path

here = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(here), str(here / "engine")]

from accuracy import CONFIGS, build, compare  # noqa: E402

from synth_arch import FAMILIES  # noqa: E402

MIB = 1024 * 1024


def main() -> int:
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {date.today()}")
    print("baseline: llama.cpp's logged buffers (llama-cpp-python 0.3.36), CPU, ngl 0, mmap")
    print("targets: weights 0.5%, KV 1%, compute 15%, total 3%")
    head = f"{'model':<14}{'ctx':>6} {'cache':<5}{'fa':<5}"
    for kind in ("weights", "kv", "compute", "total"):
        head += f"{kind + ' MiB':>22}{'err%':>7}"
    print(head)
    worst = {"weights": 0.0, "kv": 0.0, "compute": 0.0, "total": 0.0}
    with tempfile.TemporaryDirectory() as folder:
        for family in sorted(FAMILIES):
            path = build(family, folder)
            for n_ctx, cache, fa in CONFIGS:
                row = compare(family, path, n_ctx, cache, fa)
                line = f"{family:<14}{n_ctx:>6} {cache:<5}{fa:<5}"
                for kind in worst:
                    err = row.error_pct(kind)
                    worst[kind] = max(worst[kind], abs(err))
                    pair = f"{row.predicted[kind] / MIB:.2f}/{row.measured[kind] / MIB:.2f}"
                    line += f"{pair:>22}{err:>7.2f}"
                print(line)
    print("worst |error| %: " + ", ".join(f"{k} {v:.2f}" for k, v in worst.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
