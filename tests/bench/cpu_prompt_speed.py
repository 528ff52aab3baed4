"""Predicted against measured prompt speed on this CPU, and the compute rate behind it.

Baseline: llama.cpp's own ``llama-bench`` (``make tools``), pp512 on the CPU with
``-t THREADS``, on synthetic Llama-shaped models whose tensor data is a sparse
hole (every weight is still read and multiplied). A 13B shape is cut to a few of
its 40 layers so that it fits beside other work in RAM; prompt time is linear
in the layers, so the rate per weight is the 13B's.

Printed per model and weight type: llmtune's predicted pp (the default speed
model on this machine's host device), llama-bench's measured pp, their ratio,
and the compute rate llama.cpp reached: 2 FLOPs per active weight per prompt
token (the matmuls; token_embd is a row lookup and is left out), per thread.
That rate over the host's per-core peak (``hardware.host.HOST_TFLOPS_PER_CORE``)
is the CPU compute efficiency the speed model would need.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gguf import GGMLQuantizationType  # noqa: E402

from llmtune.engine.tools import tool  # noqa: E402
from llmtune.fit.costs import model_costs  # noqa: E402
from llmtune.fit.plan import plan  # noqa: E402
from llmtune.fit.settings import Settings  # noqa: E402
from llmtune.fit.speed import DEFAULT_SPEED_MODEL  # noqa: E402
from llmtune.hardware.host import HOST_TFLOPS_PER_CORE, host_device_measured  # noqa: E402
from llmtune.model import read_spec  # noqa: E402
from synth import llama_like  # noqa: E402

# name, layers, embedding, heads, kv heads, FFN (Llama 2 13B and 7B, Llama 3.2 3B).
SHAPES = {
    "13b": (40, 5120, 40, 40, 13824),
    "7b": (32, 4096, 32, 32, 11008),
    "3b": (28, 3072, 24, 8, 8192),
}
TYPES = {
    "Q4_0": (GGMLQuantizationType.Q4_0, 2),
    "Q8_0": (GGMLQuantizationType.Q8_0, 7),
    "F16": (GGMLQuantizationType.F16, 1),
}


def llama_bench(path: Path, threads: int, prompt: int, repeat: int) -> float:
    """llama-bench's mean pp tokens/s."""
    exe = tool("llama-bench")
    if exe is None:
        raise SystemExit("llama-bench is not built: run `make tools` first")
    cmd = [str(exe), "-m", str(path), "-p", str(prompt), "-n", "0", "-t", str(threads),
           "-r", str(repeat), "-ngl", "0", "-o", "json"]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=3600)
    rows = json.loads(out.stdout)
    return float(rows[0]["avg_ts"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--layers", type=int, default=6, help="layers kept of each shape")
    ap.add_argument("--shapes", default="13b", help="of 13b, 7b, 3b")
    ap.add_argument("--types", default="Q4_0,Q8_0,F16")
    args = ap.parse_args()
    host = host_device_measured(probe=True)
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"host {host.fp16_tflops * 1e3:.0f} GFLOP/s peak as planned, "
        f"{host.bandwidth_gbps:.1f} GB/s, {date.today()}"
    )
    print(f"baseline: llama-bench pp{args.prompt}, -t {args.threads}, -ngl 0, r {args.repeat}")
    settings = Settings(n_ctx=args.prompt, n_gpu_layers=0)
    with tempfile.TemporaryDirectory(dir=os.environ.get("LLMTUNE_BENCH_DIR")) as tmp:
        for shape in args.shapes.split(","):
            n_layer, n_embd, n_head, n_kv, n_ff = SHAPES[shape]
            for type_name in args.types.split(","):
                qtype, ftype = TYPES[type_name]
                (path,) = llama_like(
                    Path(tmp) / f"{shape}-{type_name}.gguf",
                    n_layer=min(args.layers, n_layer),
                    n_embd=n_embd,
                    n_head=n_head,
                    n_head_kv=n_kv,
                    n_ff=n_ff,
                    n_vocab=32000,
                    weight_type=qtype,
                    output_type=qtype,
                    file_type=ftype,
                    byte_tokens=True,
                    name=f"{shape} {type_name}",
                )
                spec = read_spec(path)
                p = plan(spec, [host], settings, DEFAULT_SPEED_MODEL)
                measured = llama_bench(path, args.threads, args.prompt, args.repeat)
                costs = model_costs(spec)
                active = spec.parameters - costs.input_bytes / costs.bytes_per_param
                gflops = 2 * active * measured / 1e9
                per_thread = gflops / args.threads
                eff = per_thread / (HOST_TFLOPS_PER_CORE * 1e3)
                # The whole shape at the same rate per weight (prompt time is linear in layers).
                per_layer = (active - costs.output_bytes / costs.bytes_per_param) / min(
                    args.layers, n_layer
                )
                whole = per_layer * n_layer + costs.output_bytes / costs.bytes_per_param
                whole_pp = gflops * 1e9 / (2 * whole)
                load = os.getloadavg()[0]
                print(
                    f"  {shape} {type_name:<5} {min(args.layers, n_layer)} layers "
                    f"{active / 1e9:5.2f}B active  predicted {p.predicted.pp_tokens_per_s:7.1f}  "
                    f"measured {measured:7.1f} t/s  ratio {measured / p.predicted.pp_tokens_per_s:5.2f}  "
                    f"{gflops:6.1f} GFLOP/s = {per_thread:5.1f}/thread "
                    f"(efficiency {eff:.2f} of {HOST_TFLOPS_PER_CORE * 1e3:.0f}/core); "
                    f"all {n_layer} layers: {whole_pp:.1f} t/s; load {load:.1f}",
                    flush=True,
                )
                path.unlink()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
