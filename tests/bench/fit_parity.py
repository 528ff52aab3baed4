"""llmtune's --ngl auto against llama.cpp's llama-fit-params on the same devices (issue 15).

Target: the same arguments (``-c N -ngl N [-ts ...] [-ot ...]``) in every case.

Each emulated GPU is a loopback RPC server started by llmtune whose free memory
is this host's, given a margin of free - size + 1 GiB (tests/engine/fit_parity.py);
``llama-fit-params`` comes from ``make tools`` (built here when missing). The
cases: one and two devices of different sizes; dense models shaped as Llama-2
70B and 13B at Q4_K, a MoE (Qwen3-MoE shape, 64 experts; on two devices its
experts come back front to back, part of a layer overflowing to the next
device) and a sliding-window model (Gemma 3 shape); the context given and left
to the fit.

    python tests/bench/fit_parity.py

Exits 0 whatever the count (a report); non-zero only on a crash.
"""

from __future__ import annotations

import datetime
import os
import platform
import sys
import tempfile
from pathlib import Path

sys.path[:0] = [
    str(Path(__file__).resolve().parents[1]),
    str(Path(__file__).resolve().parents[1] / "engine"),
]

from fit_parity import Case, build_model, run_case  # noqa: E402

from llmtune.engine import tools  # noqa: E402
from rpc_support import real_servers  # noqa: E402

CASES = (
    Case("70b-q4_k", (12,), 2048),
    Case("70b-q4_k", (12,), 4096),
    Case("70b-q4_k", (24,), 4096),
    Case("70b-q4_k", (12, 12), 4096),
    Case("70b-q4_k", (8, 16), 4096),
    Case("70b-q4_k", (24,), 0),
    Case("13b-q4_k", (6,), 4096),
    Case("13b-q4_k", (4, 4), 4096),
    Case("13b-q4_k", (3, 6), 2048),
    Case("13b-q4_k", (12,), 0),
    Case("swa", (3,), 0),
    Case("swa", (2,), 8192),
    Case("swa", (1.5, 1.5), 0),
    Case("moe", (2,), 4096),
    Case("moe", (8,), 0),
    # MoE over two devices: fit.cpp step 4 brings experts back front to back and
    # overflows part of one more layer to the next device.
    Case("moe", (2, 2), 4096),
    Case("moe", (2, 2), 0),
    Case("moe", (1.5, 3), 4096),
    Case("moe", (1.5, 3), 0),
    Case("moe", (2.5, 2.5), 4096),
    Case("moe", (2.5, 1.5), 4096),
    Case("moe", (3, 3), 0),
    Case("moe", (3, 1.5), 4096),
    Case("moe", (4, 2), 4096),
)


def main() -> int:
    folder = tools.build()
    with tempfile.TemporaryDirectory() as tmp, real_servers(2) as servers:
        outcomes = [run_case(c, build_model(c.model, Path(tmp)), servers, folder) for c in CASES]
    agree = sum(o.agrees for o in outcomes)
    print(f"fit parity: llama-fit-params (make tools, {folder}) against llmtune's --ngl auto")
    for o in outcomes:
        mark = "same" if o.agrees else "DIFF"
        print(f"  {mark}  {o.case.name}: llama.cpp {o.llama_cpp!s:.120} ({o.llama_cpp_s:.2f} s)")
        print(f"        llmtune   {o.llmtune!s:.120} ({o.llmtune_s * 1000:.0f} ms)")
    llama_s = sum(o.llama_cpp_s for o in outcomes)
    ours_s = sum(o.llmtune_s for o in outcomes)
    print(
        f"  {agree} of {len(outcomes)} agree (target: all); llama-fit-params {llama_s:.1f} s in all, llmtune {ours_s:.2f} s"
    )
    print(f"  machine: {platform.machine()}, {os.cpu_count()} CPUs; {datetime.date.today()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
