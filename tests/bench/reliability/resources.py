"""Resource limits: what the app costs while it sits in a tmux pane for days.

- CPU: the real app on a pseudo-terminal, sampling at 1 Hz, the demo model
  loaded in an idle worker: the app process's own CPU time (sampler thread and
  UI, not the worker) over a minute, at 120x40 (every pane: the monitor's
  graphs redrawn each tick), at 80x24 on the monitor and on the offload pane,
  and at 50x40 on the gauges (a tmux side pane). Target: under 1% of one core.
- Memory: the app's resident memory with an 80-layer model open (a header in
  the shape of Llama-2-70B at Q4_K_M), once the quantization table has planned
  every file type. Target: under 150 MB.
"""

from __future__ import annotations

import os
import tempfile
import time

import psutil

from reliability import Section
from reliability.terminal import AppInTerminal

CPU_WINDOW_S = 60.0
CPU_TARGET_PCT = 1.0
MEMORY_TARGET_MB = 150.0


def demo_model() -> str:
    from llmtune.model.demo import fetch_demo_model

    return str(fetch_demo_model())


def app_env(config_dir: str) -> dict[str, str]:
    env = dict(os.environ)
    env["LLMTUNE_CONFIG_DIR"] = config_dir
    return env


def idle_cpu(section: Section, config_dir: str, columns: int, rows: int, view: str) -> None:
    with AppInTerminal([demo_model()], columns=columns, rows=rows, env=app_env(config_dir)) as app:
        if not app.wait_for("Offload", 60):
            section.add("app CPU, worker idle, 1 Hz", "the app did not start", "< 1%", False)
            return
        time.sleep(2)
        app.send("a")
        app.send("4")  # the monitor says when the model is loaded
        if not app.wait_for("loaded in", 60):
            section.add("app CPU, worker idle, 1 Hz", "the model did not load", "< 1%", False)
            return
        if view == "offload":
            app.send("3")
        elif view == "gauges":
            app.send("0")
        time.sleep(5)  # past the load's own work
        process = psutil.Process(app.pid)
        before = process.cpu_times()
        t0 = time.monotonic()
        time.sleep(CPU_WINDOW_S)
        after = process.cpu_times()
        elapsed = time.monotonic() - t0
        used = (after.user - before.user) + (after.system - before.system)
        pct = 100.0 * used / elapsed
        rss_mb = process.memory_info().rss / 2**20
    section.add(
        f"app CPU over {CPU_WINDOW_S:.0f} s, {columns}x{rows} {view}, 1 Hz, worker idle",
        f"{pct:.2f}% of one core ({used:.2f} s CPU)",
        f"< {CPU_TARGET_PCT:g}%",
        pct < CPU_TARGET_PCT,
    )
    section.notes.append(
        f"app RSS with the demo model open and loaded ({columns}x{rows}): {rss_mb:.0f} MB"
    )


def memory_80_layers(section: Section, config_dir: str) -> None:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

    from synth import llama2_70b_q4_k_m

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "llama-2-70b-shape.Q4_K_M.gguf")
        llama2_70b_q4_k_m(path)
        with AppInTerminal([path, "--gpu", "rtx3060-12g"], env=app_env(config_dir)) as app:
            ready = app.wait_for("bpw", 60)  # the quantization table is shown
            time.sleep(5)  # and filled: every file type planned in a thread
            time.sleep(3)
            rss_mb = psutil.Process(app.pid).memory_info().rss / 2**20 if ready else float("nan")
    section.add(
        "app memory, 80-layer model open (70B shape)",
        f"{rss_mb:.0f} MB RSS" if ready else "the table never filled",
        f"< {MEMORY_TARGET_MB:g} MB",
        ready and rss_mb < MEMORY_TARGET_MB,
    )


def run() -> Section:
    section = Section("resources: CPU and memory of the app")
    with tempfile.TemporaryDirectory() as config_dir:
        memory_80_layers(section, config_dir)
        idle_cpu(section, config_dir, 120, 40, "every pane")
        idle_cpu(section, config_dir, 80, 24, "monitor")
        idle_cpu(section, config_dir, 80, 24, "offload")
        idle_cpu(section, config_dir, 50, 40, "gauges")
    return section
