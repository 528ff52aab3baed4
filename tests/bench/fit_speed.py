"""How fast the fit estimate is: one plan, the whole offload curve, and inspect.

Targets (issue 3, DESIGN.md): one plan well under 1 ms; the offload curve of an
80-layer model under 5 ms. Printed beside the time `llmtune inspect` takes to
read the same model's header, measured in the same run.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from llmtune.fit.costs import model_costs  # noqa: E402
from llmtune.fit.plan import offload_curve, plan  # noqa: E402
from llmtune.fit.settings import Settings  # noqa: E402
from llmtune.hardware.host import host_device  # noqa: E402
from llmtune.hardware.profiles import parse_gpu_spec  # noqa: E402
from llmtune.model import read_spec  # noqa: E402
from llmtune.units import GIB  # noqa: E402
from synth import llama2_70b_q4_k_m  # noqa: E402


def median_ms(fn, repeat: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "llama-2-70b-shape.gguf")
        llama2_70b_q4_k_m(path)
        inspect_ms = median_ms(lambda: read_spec(path), 9)
        spec = read_spec(path)
        devices = [parse_gpu_spec("rtx3060-12g"), host_device(64 * GIB, 51.2)]
        first_ms = median_ms(lambda: model_costs(read_spec(path)), 5) - inspect_ms
        model_costs(spec)
        settings = [Settings(n_gpu_layers=n) for n in range(82)]
        i = iter(range(10**9))
        plan_ms = median_ms(lambda: plan(spec, devices, settings[next(i) % 82]), 500)
        curve_ms = median_ms(lambda: offload_curve(spec, devices, Settings()), 50)
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, {date.today()}"
    )
    print("model: synthetic Llama-2-70B shape (80 layers, Q4_K), header only")
    print(f"{'what':<40}{'ms':>10}  target")
    rows = [
        ("llmtune inspect (read the header)", inspect_ms, None),
        ("per-model costs, once per model", max(first_ms, 0.0), None),
        ("fit.plan, one offload setting", plan_ms, 1.0),
        ("offload curve, all 82 settings", curve_ms, 5.0),
    ]
    for label, ms, target in rows:
        verdict = "" if target is None else f"< {target:g} ms {'PASS' if ms < target else 'MISS'}"
        print(f"{label:<40}{ms:>10.3f}  {verdict}")
    print(f"plan / inspect ratio: {plan_ms / inspect_ms:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
