"""``llmtune quality`` against the same steps run by hand (issue 19, "Benchmark").

Target: for each file type, llmtune's time (its quantization through the
worker, then llama-perplexity --kl-divergence) is at most 1.1x the time of
running ``llama-quantize`` and ``llama-perplexity --kl-divergence`` by hand on
the same F16 source, text, context, chunks and threads; the whole run,
including the source's pass and llmtune's process start, likewise.

The source is an F16 copy of the demo model made by ``llama-quantize
--allow-requantize`` (tools from ``make tools``, built here when missing). The
two sides alternate for ``--rounds`` rounds and the median of each is kept; the
numbers they print must agree (same quantizer, same tool).

    python tests/bench/quality.py [--types Q8_0,Q4_K_M,Q2_K] [--ctx 512] [--chunks 4]
        [--threads 2] [--rounds 2]

Exits 0 whatever the ratio (a report); non-zero only on a crash.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from llmtune.engine import tools
from llmtune.engine.perplexity import batch_for
from llmtune.engine.quality_store import bundled_text_path
from llmtune.model.demo import fetch_demo_model

TARGET = 1.1


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed: {proc.stderr[-1000:]}")
    return seconds, proc.stdout + proc.stderr


def by_hand(src: Path, folder: Path, args: argparse.Namespace, bin_dir: Path) -> dict[str, float]:
    env = dict(os.environ, LD_LIBRARY_PATH=str(bin_dir))
    common = ["-c", str(args.ctx), "-b", str(batch_for(args.ctx)), "-t", str(args.threads)]
    base = folder / "base.kld"
    out: dict[str, float] = {}
    out["source"], _ = timed([str(bin_dir / "llama-perplexity"), "-m", str(src), "-f",
                              bundled_text_path(), "--chunks", str(args.chunks), *common,
                              "--kl-divergence-base", str(base)], env)  # fmt: skip
    for name in args.types.split(","):
        target = folder / f"{name}.gguf"
        q, _ = timed([str(bin_dir / "llama-quantize"), str(src), str(target), name,
                      str(args.threads)], env)  # fmt: skip
        m, text = timed([str(bin_dir / "llama-perplexity"), "-m", str(target), *common,
                         "--kl-divergence-base", str(base), "--kl-divergence"], env)  # fmt: skip
        kld = re.search(r"Mean\s+KLD:\s+([0-9.]+)", text)
        out[name] = q + m
        out[f"{name} kld"] = float(kld.group(1)) if kld else float("nan")
        target.unlink()
    base.unlink()
    return out


def llmtune(src: Path, folder: Path, args: argparse.Namespace) -> dict[str, float]:
    cmd = [sys.executable, "-m", "llmtune.cli", "quality", str(src), "--types", args.types,
           "--ctx", str(args.ctx), "--chunks", str(args.chunks), "--threads", str(args.threads),
           "--work-dir", str(folder), "--json"]  # fmt: skip
    env = dict(os.environ, LLMTUNE_CONFIG_DIR=str(folder / "config"))
    total, text = timed(cmd, env)
    data = json.loads(text[: text.rindex("}") + 1])
    out = {"total": total, "source": data["rows"][0]["measure_s"]}
    for row in data["rows"][1:]:
        out[row["label"]] = row["quantize_s"] + row["measure_s"]
        out[f"{row['label']} kld"] = row["kld_mean"]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--types", default="Q8_0,Q4_K_M,Q2_K")
    parser.add_argument("--ctx", type=int, default=512)
    parser.add_argument("--chunks", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    bin_dir = tools.build()
    env = dict(os.environ, LD_LIBRARY_PATH=str(bin_dir))
    with tempfile.TemporaryDirectory(prefix="llmtune-quality-bench-") as tmp:
        folder = Path(tmp)
        src = folder / "SmolLM2-135M-Instruct-F16.gguf"
        timed([str(bin_dir / "llama-quantize"), "--allow-requantize", str(fetch_demo_model()),
               str(src), "F16", str(args.threads)], env)  # fmt: skip
        hands: list[dict[str, float]] = []
        ours: list[dict[str, float]] = []
        for _ in range(args.rounds):
            start = time.perf_counter()
            hand = by_hand(src, folder, args, bin_dir)
            hand["total"] = time.perf_counter() - start
            hands.append(hand)
            ours.append(llmtune(src, folder, args))
    print(f"llmtune quality vs llama-quantize + llama-perplexity by hand, "
          f"{datetime.date.today()}, {platform.machine()}, {os.cpu_count()} cores; demo F16, "
          f"-c {args.ctx}, {args.chunks} chunks, -t {args.threads}, median of {args.rounds} rounds")  # fmt: skip
    print(f"{'step':<12}{'by hand':>10}{'llmtune':>10}{'ratio':>8}   mean KLD (hand / llmtune)")
    worst = 0.0
    for name in ["source", *args.types.split(","), "total"]:
        h = statistics.median(r[name] for r in hands)
        o = statistics.median(r[name] for r in ours)
        ratio = o / h
        if name != "source":
            worst = max(worst, ratio)
        klds = (
            f"   {hands[0][name + ' kld']:.6f} / {ours[0][name + ' kld']:.6f}"
            if name + " kld" in hands[0]
            else ""
        )
        print(f"{name:<12}{h:>9.2f}s{o:>9.2f}s{ratio:>7.3f}x{klds}")
    verdict = "meets" if worst <= TARGET else "misses"
    print(f"worst ratio {worst:.3f}x: {verdict} the target (<= {TARGET}x per type and in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
