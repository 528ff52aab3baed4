"""This machine's probe results (host bandwidth, llama.cpp's CPU kernels), for
tests that give llmtune a private cache folder.

A private cache means a first start: without these files every ``llmtune fit``
in such a test would time llama.cpp's kernels again (seconds each). The probes
describe the machine, not the test's state, so they are copied in; the tests of
the probes themselves start from an empty folder.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

PROBE_FILES = ("cpu_kernels.json", "host_bandwidth.json")
# The cache folder of the session (LLMTUNE_CACHE_DIR as the run began, before any
# test points it elsewhere), else the user's.
_AT_START = os.environ.get("LLMTUNE_CACHE_DIR")


def machine_cache_dir() -> Path:
    """The session's cache folder, whatever LLMTUNE_CACHE_DIR says now."""
    from platformdirs import user_cache_dir

    return Path(_AT_START or user_cache_dir("llmtune"))


def ensure_probed() -> None:
    """Probe this machine once into the user's cache (a few seconds, the first time)."""
    from llmtune.hardware.bandwidth import host_bandwidth_gbps
    from llmtune.hardware.cpu_kernels import host_kernel_rates

    saved = os.environ.get("LLMTUNE_CACHE_DIR")
    os.environ["LLMTUNE_CACHE_DIR"] = str(machine_cache_dir())
    try:
        host_bandwidth_gbps(probe=True)
        host_kernel_rates(probe=True)
    finally:
        if saved is None:
            os.environ.pop("LLMTUNE_CACHE_DIR", None)
        else:
            os.environ["LLMTUNE_CACHE_DIR"] = saved


def seed_probes(cache: Path) -> Path:
    """Copy this machine's probe files into ``cache`` (made if missing); returns it."""
    cache.mkdir(parents=True, exist_ok=True)
    for name in PROBE_FILES:
        source = machine_cache_dir() / name
        if source.is_file() and not (cache / name).exists():
            shutil.copyfile(source, cache / name)
    return cache
