"""Predicted against measured generation speed, across model sizes, on this CPU.

Baseline: llama.cpp's own generation speed (llama-cpp-python 0.3.36 through the
worker, as ``llmtune bench`` measures it) on the demo model and on synthetic
Llama-shaped models of 0.5 to 3.6 GB whose tensor data is a sparse hole: the
kernel hands llama.cpp real zero-filled pages, so every token still reads every
weight from RAM and multiplies it, at the speed a real model of that shape runs.

Printed per model: the prediction with the default speed model, the measured
speed and their ratio; then the same after calibrating on the demo model alone,
as ``llmtune bench`` on the demo does. A good model of speed predicts the large
models well from a calibration on the small one.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from dataclasses import replace
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gguf import GGMLQuantizationType  # noqa: E402

from llmtune.engine import calibration  # noqa: E402
from llmtune.engine.bench import run_bench  # noqa: E402
from llmtune.engine.config import RunConfig  # noqa: E402
from llmtune.fit.plan import plan  # noqa: E402
from llmtune.fit.settings import Settings  # noqa: E402
from llmtune.fit.speed import DEFAULT_SPEED_MODEL, SpeedModel  # noqa: E402
from llmtune.hardware.host import host_device_measured  # noqa: E402
from llmtune.model import ModelSpec, read_spec  # noqa: E402
from llmtune.model.demo import fetch_demo_model  # noqa: E402
from synth import llama_like  # noqa: E402

# name, layers, embedding, heads, kv heads, FFN: shapes of real model families
# (0.3B, 1.4B, 3.0B and 5.9B parameters with a 32k vocabulary).
SHAPES = (
    ("small", 24, 1024, 16, 4, 2816),
    ("qwen2-1.5b-like", 28, 1536, 12, 2, 8960),
    ("llama-3.2-3b-like", 28, 3072, 24, 8, 8192),
    ("llama-7b-gqa-like", 32, 4096, 32, 8, 11008),
)
CTX = 512
TARGET, TARGET_FROM_GB = 0.15, 0.5  # the small models' fixed costs vary more by shape
SETTINGS = Settings(n_ctx=CTX, n_gpu_layers=0)


def synthetic(folder: Path, name: str, n_layer: int, n_embd: int, n_head: int, n_kv: int,
              n_ff: int) -> Path:  # fmt: skip
    (path,) = llama_like(
        folder / f"{name}.Q4_0.gguf",
        n_layer=n_layer,
        n_embd=n_embd,
        n_head=n_head,
        n_head_kv=n_kv,
        n_ff=n_ff,
        n_vocab=32000,
        weight_type=GGMLQuantizationType.Q4_0,
        output_type=GGMLQuantizationType.Q6_K,
        file_type=2,
        byte_tokens=True,
        name=name,
    )
    return path


def measure(spec: ModelSpec, gen: int, repeat: int) -> tuple[float, float]:
    """(predicted with the defaults, measured) generation tokens/s."""
    p = plan(spec, [host_device_measured(probe=True)], SETTINGS, DEFAULT_SPEED_MODEL)
    r = run_bench(
        RunConfig.from_settings(spec.path, p.settings),
        p,
        prompt_tokens=16,
        gen_tokens=gen,
        repeat=repeat,
    )
    return p.predicted.tg_tokens_per_s, r.tg.mean


def predict(spec: ModelSpec, speed: SpeedModel) -> float:
    p = plan(spec, [host_device_measured()], SETTINGS, speed)
    return p.predicted.tg_tokens_per_s


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--gen", type=int, default=48)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--largest", type=int, default=len(SHAPES), help="how many synthetic sizes")
    args = ap.parse_args()
    host = host_device_measured(probe=True)
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"host bandwidth {host.bandwidth_gbps:.1f} GB/s (probe), {date.today()}"
    )
    print(f"target (llmtune's own): models of {TARGET_FROM_GB} GB and more within "
          f"{TARGET:.0%}, with the defaults and after calibrating on the demo")  # fmt: skip
    print(f"baseline: llama.cpp generation, CPU, ngl 0, context {CTX}, "
          f"{args.gen} tokens x {args.repeat}")  # fmt: skip
    rows: list[tuple[str, ModelSpec, float, float]] = []
    with tempfile.TemporaryDirectory(dir=os.environ.get("LLMTUNE_BENCH_DIR")) as tmp:
        specs = [("demo 135M", read_spec(fetch_demo_model()))]
        for name, *shape in SHAPES[: args.largest]:
            spec = read_spec(synthetic(Path(tmp), name, *shape))
            specs.append((f"{spec.parameters / 1e9:.1f}B", spec))
        for label, spec in specs:
            predicted, measured = measure(spec, args.gen, args.repeat)
            rows.append((label, spec, predicted, measured))
            print(
                f"  {label:<10} {spec.tensor_bytes / 1e9:5.2f} GB  predicted {predicted:7.1f}  "
                f"measured {measured:7.1f} tokens/s  measured/predicted {measured / predicted:.2f}",
                flush=True,
            )
        # Calibrate on the demo alone, as `llmtune bench` on the demo model does.
        _, demo, predicted, measured = rows[0]
        demo_plan = plan(demo, [host], SETTINGS, DEFAULT_SPEED_MODEL)
        measurement = calibration.measurement_of(demo_plan, measured, 0.0, host.bandwidth_measured)
        cal = replace(DEFAULT_SPEED_MODEL, **calibration.fold(DEFAULT_SPEED_MODEL, measurement))
        print("calibrated on the demo model alone:")
        ratios = [measured / predicted for _l, spec, predicted, measured in rows
                  if spec.tensor_bytes >= TARGET_FROM_GB * 1e9]  # fmt: skip
        for label, spec, _p, measured in rows:
            again = predict(spec, cal)
            if spec.tensor_bytes >= TARGET_FROM_GB * 1e9:
                ratios.append(measured / again)
            print(f"  {label:<10} predicted {again:7.1f}  measured {measured:7.1f}  "
                  f"measured/predicted {measured / again:.2f}")  # fmt: skip
    if ratios:
        worst = max(ratios, key=lambda r: abs(r - 1))
        verdict = "PASS" if abs(worst - 1) <= TARGET else "MISS"
        print(f"worst measured/predicted at {TARGET_FROM_GB} GB and more: {worst:.2f} "
              f"(target 1 +- {TARGET:.2f}) {verdict}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
