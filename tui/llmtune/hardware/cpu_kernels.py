"""How fast llama.cpp's CPU backend gets through each weight type, probed once per machine.

Generating a token on the CPU multiplies a vector by every weight matrix: each
weight is read from RAM *and* unpacked and multiplied. Which of the two bounds
the time depends on the type and the CPU: with two threads on this project's
Xeon VM, where a plain read gets 32 GB/s, llama.cpp gets through Q4_0 weights
at 9.9 GB/s, Q8_0 at 17 and F16 at 23 (llama-bench tg on one 1.4B shape per
type). A bandwidth alone predicts Q4_0 three times too fast.

So this module asks llama.cpp itself. In a child process it loads the ggml
libraries llama-cpp-python ships (ctypes), and for each weight type builds
what llama.cpp builds for a token: weight matrices of that type in the
buffer type llama.cpp would put them in (``CPU_REPACK`` where the CPU backend
repacks the type, as llama-model-loader.cpp ``weight_buft_supported`` asks it;
the plain CPU buffer otherwise), one F32 activation column, a ``GGML_OP_MUL_MAT``
per matrix, computed by the CPU backend with one thread per physical core
(llama.cpp's default). Two figures per type, in bytes of weights per second:

* ``ram``: matrices adding up to :data:`RAM_PROBE_BYTES`, more than a CPU's
  last-level cache, so the weights come from RAM as a model's do. This is what
  a token's weights cost on this machine.
* ``cache``: one small matrix multiplied again and again, from the core's cache:
  the kernels' arithmetic alone. Only :data:`DEFAULT_CACHE_GBPS_PER_CORE` (the
  stand-in for CPUs that cannot be probed) uses it.

It takes 4 to 10 seconds; ``cpu_kernels.json`` in the user cache keeps it,
keyed on the CPU and the RAM, with the llama-cpp-python version it timed (the
kernels change between versions: another version probes again).
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from llmtune.hardware.bandwidth import machine_key, read_machine_cache, write_machine_cache
from llmtune.units import MIB

logger = logging.getLogger(__name__)

CACHE_FILE = "cpu_kernels.json"
CACHE_VERSION = 1
MAX_CACHE_BYTES = 1 << 20
PROBE_TIMEOUT_S = 60.0
# Per type: 96 MiB of weights, read from RAM: before every timed pass the probe
# writes a buffer a quarter larger than the last-level cache (at most 256 MiB),
# so no weight is left in it (this project's VM reports 480 MiB of L3: without
# that, repacked Q4_0 read 100 MB at 20 GB/s by the tenth pass, where llama.cpp
# reads a 0.8 GB model at 10).
RAM_PROBE_BYTES = 96 * MIB
EVICT_FACTOR = 1.25
MAX_EVICT_BYTES = 256 * MIB  # here 128 MiB already stops the speed-up
DEFAULT_LLC_BYTES = 64 * MIB  # when the system does not say
# The matrices: a 7B-class FFN's up and down projections in turn (row length,
# rows), whose shapes differ in speed for some kernels (repacked Q4_0: 11.7 GB/s
# for the first, 10.1 for the second here); one small one stays in cache
# (4096 x 256 F16: 2 MiB).
RAM_SHAPES = ((4096, 11008), (11008, 4096))
CACHE_SHAPE = (4096, 256)
SEED_WEIGHTS = 1 << 16  # quantized once, then repeated (blocks are independent)
CACHE_REPEATS = 30
RAM_REPEATS = 3  # passes from RAM agree within a few percent once the cache is emptied
BATCH_REPEATS = 1

# The types llama.cpp's quantizer produces for model weights.
# (F32, Q5_1 and the ternary TQ types are rare in model files: a type that was
# not probed runs like the probed one nearest in bits per weight.)
PROBED_TYPES = (
    "F16", "BF16", "Q8_0", "Q6_K", "Q5_K", "Q4_K", "Q3_K", "Q2_K", "Q5_0", "Q4_0",
    "Q4_1", "IQ4_XS", "IQ4_NL", "IQ3_S", "IQ3_XXS", "IQ2_S", "IQ2_XS", "IQ2_XXS",
    "IQ1_M", "IQ1_S", "MXFP4",
)  # fmt: skip
# Batched decoding (--parallel N) multiplies N columns at once, and llama.cpp's
# kernels change with N (the repacked Q4_0 kernel takes 4 columns per pass, so
# 4 streams step as fast as one): these types are also timed at these counts.
BATCH_COLUMNS = (2, 4, 8)
BATCH_TYPES = frozenset({"F16", "Q8_0", "Q6_K", "Q5_K", "Q4_K", "Q4_1", "Q4_0", "IQ4_XS", "MXFP4"})
# Timed on random bytes: quantizing them first builds search tables (seconds),
# and the kernel's time does not depend on which grid points the bytes pick.
UNQUANTIZED = frozenset({"IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S"})

# The kernels' arithmetic alone (``cache``), in GB/s of weights per core, as this
# probe measured it on this project's machine (an x86_64 Xeon VM with AVX-512,
# two threads, llama-cpp-python 0.3.36, 2026-12-04): the stand-in for a CPU that
# was not probed here (an RPC host, a machine given by its RAM), which then reads
# at its bandwidth and computes at this, one after the other (fit.speed).
DEFAULT_CACHE_GBPS_PER_CORE: dict[str, float] = {
    "F32": 46.0, "F16": 33.7, "BF16": 46.5, "Q8_0": 23.6, "Q6_K": 20.3, "Q5_K": 13.4,
    "Q4_K": 13.4, "Q3_K": 8.5, "Q2_K": 7.3, "Q5_0": 12.0, "Q5_1": 12.0, "Q4_0": 13.7,
    "Q4_1": 11.8, "IQ4_XS": 10.2, "IQ4_NL": 13.5, "IQ3_S": 3.3, "IQ3_XXS": 3.8,
    "IQ2_S": 4.0, "IQ2_XS": 3.2, "IQ2_XXS": 3.3, "IQ1_M": 2.7, "IQ1_S": 2.5, "MXFP4": 11.1,
}  # fmt: skip


@dataclass(frozen=True)
class KernelRates:
    """Bytes of weights per second through llama.cpp's CPU matrix-vector product,
    per type name, all threads together: from RAM and from cache."""

    ram: Mapping[str, float]
    cache: Mapping[str, float]
    threads: int
    measured_at: str = ""
    # {type: {columns: GB/s from RAM}}: a step of a batched decode of that many streams.
    batch: Mapping[str, Mapping[int, float]] = field(default_factory=dict)

    def batch_table(self) -> tuple[tuple[str, int, float], ...]:
        """(type, columns, GB/s) rows, as a Device keeps them."""
        return tuple(
            (name, n, gbps)
            for name, by_n in sorted(self.batch.items())
            for n, gbps in sorted(by_n.items())
        )

    def describe(self) -> str:
        """``Q4_K 17.0, Q6_K 15.4, Q8_0 16.1 GB/s from RAM (2 threads, 2026-12-04)``."""
        shown = [n for n in ("Q4_K", "Q6_K", "Q8_0", "F16") if n in self.ram]
        parts = ", ".join(f"{n} {self.ram[n]:.1f}" for n in shown)
        when = f", {self.measured_at[:10]}" if self.measured_at else ""
        return f"{parts} GB/s from RAM ({self.threads} threads{when})"


def nearest_rate(rates: Mapping[str, float], name: str) -> float:
    """``name``'s figure, else that of the probed type nearest in bits per weight."""
    if name in rates:
        return rates[name]
    from llmtune.model.ggml_types import GGML_TYPE_BY_NAME

    wanted = GGML_TYPE_BY_NAME.get(name)
    known = [
        (GGML_TYPE_BY_NAME[n].bits_per_weight, v)
        for n, v in rates.items()
        if n in GGML_TYPE_BY_NAME
    ]
    if not known:
        return 0.0
    bits = wanted.bits_per_weight if wanted is not None else 4.5
    return min(known, key=lambda kv: abs(kv[0] - bits))[1]


def mixed_rate(rates: Mapping[str, float], type_bytes: Mapping[str, int]) -> float:
    """Bytes per second (not GB) through a model's mix of weight types (``type_bytes``:
    bytes per type name), each at its own rate: all bytes over all their times."""
    total = seconds = 0.0
    for name, nbytes in type_bytes.items():
        rate = nearest_rate(rates, name)
        if nbytes > 0 and rate > 0:
            total += nbytes
            seconds += nbytes / (rate * 1e9)
    return total / seconds if seconds > 0 else 0.0


def batch_rates(
    ram: Mapping[str, float], table: tuple[tuple[str, int, float], ...], n: int
) -> dict[str, float]:
    """Every type's GB/s for a step of ``n`` columns: probed, else its own one-column
    figure times the ratio the nearest batch-probed type (in bits per weight) showed."""
    at_n = {name: gbps for name, cols, gbps in table if cols == n}
    ratios = {name: at_n[name] / ram[name] for name in at_n if ram.get(name)}
    out: dict[str, float] = {}
    for name, one in ram.items():
        out[name] = (
            at_n[name] if name in at_n else one * nearest_rate(ratios, name) if ratios else one
        )
    return out


def last_level_cache_bytes() -> int:
    """The largest CPU cache this system reports (Linux sysfs), else a default."""
    best = 0
    root = Path("/sys/devices/system/cpu/cpu0/cache")
    try:
        for index in root.glob("index*"):
            text = (index / "size").read_text().strip().upper()
            units = {"K": 1024, "M": MIB, "G": 1024 * MIB}
            scale = units.get(text[-1:], 1)
            digits = text[:-1] if text[-1:] in units else text
            if digits.isdigit():
                best = max(best, int(digits) * scale)
    except OSError:
        pass
    return best or DEFAULT_LLC_BYTES


def evict_bytes() -> int:
    return min(int(last_level_cache_bytes() * EVICT_FACTOR), MAX_EVICT_BYTES)


def default_cache_rates(cores: float) -> dict[str, float]:
    return {n: v * max(cores, 1.0) for n, v in DEFAULT_CACHE_GBPS_PER_CORE.items()}


def valid_batch(raw: object) -> dict[str, dict[int, float]]:
    """{type: {columns: GB/s}} from JSON (columns as strings); bad entries dropped."""
    if not isinstance(raw, Mapping):
        return {}
    out: dict[str, dict[int, float]] = {}
    for name, by_n in raw.items():
        rates = valid_rates(by_n)
        kept = {int(n): v for n, v in rates.items() if n.isdigit() and 1 < int(n) <= 1024}
        if isinstance(name, str) and kept:
            out[name] = kept
    return out


def valid_rates(raw: object) -> dict[str, float]:
    """The finite positive figures of ``raw`` ({type: GB/s}); anything else is dropped."""
    if not isinstance(raw, Mapping):
        return {}
    out: dict[str, float] = {}
    for name, value in raw.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if isinstance(name, str) and math.isfinite(value) and value > 0:
            out[name] = float(value)
    return out


# --- the cache ---------------------------------------------------------------


def cache_path() -> Path:
    from llmtune.paths import cache_dir

    return cache_dir() / CACHE_FILE


def llama_cpp_version() -> str:
    try:
        from importlib.metadata import version

        return version("llama_cpp_python")
    except Exception:
        return "unknown"


def cache_key() -> str:
    return machine_key()


def _read_cache(path: Path) -> dict[str, Any]:
    return read_machine_cache(path, CACHE_VERSION, MAX_CACHE_BYTES)


def cached_rates(key: str | None = None) -> KernelRates | None:
    """This machine's probed figures, or None before a probe. Never raises."""
    try:
        entry = _read_cache(cache_path()).get(key or cache_key())
    except Exception as err:
        logger.info("CPU kernel cache unavailable: %r", err)
        return None
    if not isinstance(entry, dict):
        return None
    # The kernels of another llama-cpp-python are not these; without the engine
    # installed (planning only), the last one probed here is the best answer.
    version = llama_cpp_version()
    if version != "unknown" and entry.get("llama_cpp_python") != version:
        return None
    ram = valid_rates(entry.get("ram_gbps"))
    threads = entry.get("threads")
    if not ram or not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        return None
    return KernelRates(
        ram,
        valid_rates(entry.get("cache_gbps")),
        threads,
        str(entry.get("measured_at", "")),
        valid_batch(entry.get("batch_gbps")),
    )


def store_rates(rates: KernelRates, key: str | None = None) -> None:
    path = cache_path()
    machines = _read_cache(path)
    machines[key or cache_key()] = {
        "ram_gbps": {n: round(v, 2) for n, v in sorted(rates.ram.items())},
        "cache_gbps": {n: round(v, 2) for n, v in sorted(rates.cache.items())},
        "batch_gbps": {
            name: {str(n): round(v, 2) for n, v in sorted(by_n.items())}
            for name, by_n in sorted(rates.batch.items())
        },
        "threads": rates.threads,
        "measured_at": rates.measured_at,
        "llama_cpp_python": llama_cpp_version(),
    }
    write_machine_cache(path, CACHE_VERSION, machines)


def host_kernel_rates(probe: bool = True, threads: int | None = None) -> KernelRates | None:
    """This machine's figures: cached, else (when ``probe``) measured and cached;
    None when neither. Never raises."""
    cached = cached_rates()
    if cached is not None or not probe:
        return cached
    if llama_cpp_version() == "unknown":
        return None  # nothing to time: llama-cpp-python is not installed
    if sys.stderr.isatty():
        print("llmtune: timing llama.cpp's CPU kernels on this machine (once)...", file=sys.stderr)
    try:
        rates = measure_kernel_rates(threads)
    except Exception as err:
        logger.warning("CPU kernel probe failed: %s", err)
        return None
    try:
        store_rates(rates)
    except Exception as err:
        logger.info("could not cache the CPU kernel probe: %r", err)
    return rates


# --- the probe ---------------------------------------------------------------


def measure_kernel_rates(
    threads: int | None = None, types: Sequence[str] = PROBED_TYPES
) -> KernelRates:
    """Run the probe of ``types`` in a child process (a ctypes mistake can only
    crash the child). Raises RuntimeError with one line when it fails or takes
    too long."""
    if threads is None:
        from llmtune.hardware.host import physical_cores

        threads = physical_cores()
    threads = max(1, min(int(threads), 256))
    command = [sys.executable, "-m", "llmtune.hardware.cpu_kernels", "--threads", str(threads),
               "--types", ",".join(types)]  # fmt: skip
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S, env=env, check=False
        )
    except subprocess.TimeoutExpired as err:
        raise RuntimeError(f"the CPU kernel probe took over {PROBE_TIMEOUT_S:.0f} s") from err
    except OSError as err:
        raise RuntimeError(f"could not start the CPU kernel probe: {err}") from err
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        raise RuntimeError(f"the CPU kernel probe failed: {last[:200]}")
    try:
        data = json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError) as err:
        raise RuntimeError("the CPU kernel probe printed no figures") from err
    ram = valid_rates(data.get("ram") if isinstance(data, dict) else None)
    if not ram:
        raise RuntimeError("the CPU kernel probe measured no type")
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return KernelRates(
        ram, valid_rates(data.get("cache")), threads, now, valid_batch(data.get("batch"))
    )


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m llmtune.hardware.cpu_kernels")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--types", default=",".join(PROBED_TYPES))
    args = parser.parse_args(argv)
    from llmtune.hardware.ggml_probe import probe

    types = [t for t in args.types.split(",") if t]
    ram, cache, batch = probe(max(1, args.threads), types, evict_bytes())
    print(json.dumps({"ram": ram, "cache": cache, "batch": batch}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
