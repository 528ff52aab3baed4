"""Predicted against measured CPU generation per weight type: the kernel probe's claim.

llmtune plans CPU generation with llama.cpp's own matrix-vector product timed per
weight type on this machine (``hardware.cpu_kernels``). This checks that claim
type by type: a synthetic Qwen2-1.5B-shaped model (28 layers, 1536 wide, FFN
8960, 32k vocabulary; sparse, so every token still reads every weight) in each
weight type, generation measured by llama-bench (``make tools``; tg64, ngl 0,
this machine's physical cores as threads) against ``llmtune fit``'s prediction
for the same file.

Target (llmtune's own): within 20% for every type (the machine's own noise on a
shared VM is about 10%).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gguf import GGMLQuantizationType as T  # noqa: E402

from llmtune.engine.tools import tool  # noqa: E402
from llmtune.fit.plan import plan  # noqa: E402
from llmtune.fit.settings import Settings  # noqa: E402
from llmtune.hardware.host import host_device_measured, physical_cores  # noqa: E402
from llmtune.model import read_spec  # noqa: E402
from synth import llama_like  # noqa: E402

TYPES = ("Q4_0", "Q4_K", "Q5_K", "Q6_K", "Q8_0", "IQ4_XS", "F16")
TARGET = 0.20
GEN = 64


def llama_bench_tg(path: Path, threads: int, repeat: int) -> float:
    exe = tool("llama-bench")
    if exe is None:
        raise SystemExit("llama-bench is not built: run `make tools` first")
    out = subprocess.run(
        [str(exe), "-m", str(path), "-p", "0", "-n", str(GEN), "-t", str(threads),
         "-ngl", "0", "-r", str(repeat), "-o", "json"],
        capture_output=True, text=True, timeout=900, check=True,
    ).stdout  # fmt: skip
    (row,) = json.loads(out)
    return float(row["avg_ts"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--types", default=",".join(TYPES))
    args = ap.parse_args()
    host = host_device_measured(probe=True)
    threads = physical_cores()
    print(f"machine: {os.cpu_count()} cores, {threads} threads, {date.today()}; "
          f"baseline: llama-bench tg{GEN}, ngl 0, {args.repeat} repeats")  # fmt: skip
    worst = 0.0
    with tempfile.TemporaryDirectory(dir=os.environ.get("LLMTUNE_BENCH_DIR")) as tmp:
        for name in args.types.split(","):
            (path,) = llama_like(
                Path(tmp) / f"q15-{name}.gguf", n_layer=28, n_embd=1536, n_head=12,
                n_head_kv=2, n_ff=8960, n_vocab=32000, weight_type=getattr(T, name),
                output_type=T.Q6_K, file_type=None, byte_tokens=True,
            )  # fmt: skip
            spec = read_spec(path)
            p = plan(spec, [host], Settings(n_ctx=512, n_gpu_layers=0))
            predicted = p.predicted.tg_tokens_per_s
            measured = llama_bench_tg(path, threads, args.repeat)
            ratio = measured / predicted
            worst = max(worst, abs(ratio - 1))
            rate = dict(host.kernel_rates).get(name, 0.0)
            print(f"  {name:<7} {spec.tensor_bytes / 1e9:5.2f} GB  probe {rate:5.1f} GB/s  "
                  f"predicted {predicted:6.2f}  measured {measured:6.2f} tokens/s  "
                  f"measured/predicted {ratio:.2f}", flush=True)  # fmt: skip
            path.unlink()
    verdict = "PASS" if worst <= TARGET else "MISS"
    print(
        f"CPU generation per weight type: worst off by {worst:.0%} (target {TARGET:.0%}) {verdict}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
