"""attach's cost while watching an idle llama-server at a 1 s interval (issue 18):
target under 1% of one core and under 150 MB resident.

Starts the real llama-server of ``make tools`` on 127.0.0.1 with the demo model,
runs ``llmtune attach --json`` against it in a child process for a minute and
reads that process's CPU time and peak RSS from psutil.

    python tests/bench/attach.py [--seconds 60] [--interval 1.0]
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import date

import psutil

from llmtune.engine import tools
from llmtune.model.demo import fetch_demo_model

TARGET_PERCENT = 1.0
TARGET_MB = 150.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--interval", type=float, default=1.0)
    args = parser.parse_args()
    server = tools.tool("llama-server")
    if server is None:
        print("llama-server is not built: run make tools")
        return 0
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}, "
        f"{date.today()}"
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ, LD_LIBRARY_PATH=str(server.parent))
    llama = subprocess.Popen(
        [str(server), "-m", str(fetch_demo_model()), "--host", "127.0.0.1", "--port", str(port),
         "-np", "2", "-c", "1024", "-t", "1", "--metrics"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        for _ in range(300):
            try:
                with urllib.request.urlopen(url + "/health", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.2)
        samples = int(args.seconds / args.interval)
        watcher = subprocess.Popen(
            [sys.executable, "-m", "llmtune.cli", "attach", url, "--json",
             "--samples", str(samples), "--interval", str(args.interval)],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        proc = psutil.Process(watcher.pid)
        time.sleep(min(5.0, args.seconds / 4))  # start-up and the plan are not idle cost
        cpu0, wall0 = sum(proc.cpu_times()[:2]), time.monotonic()
        peak = 0
        while watcher.poll() is None:
            try:
                peak = max(peak, proc.memory_info().rss)
                cpu1, wall1 = sum(proc.cpu_times()[:2]), time.monotonic()
            except psutil.NoSuchProcess:
                break
            time.sleep(1.0)
        percent = 100.0 * (cpu1 - cpu0) / max(1e-9, wall1 - wall0)
        mb = peak / 1e6
        ok = percent < TARGET_PERCENT and mb < TARGET_MB
        print(
            f"attach --json at {args.interval:g} s, idle server, {wall1 - wall0:.0f} s: "
            f"{percent:.2f}% of one core (target < {TARGET_PERCENT:g}%), peak RSS {mb:.0f} MB "
            f"(target < {TARGET_MB:g} MB): {'PASS' if ok else 'MISS'}"
        )
    finally:
        llama.kill()
        llama.wait(timeout=30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
