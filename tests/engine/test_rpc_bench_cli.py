"""``llmtune bench --rpc``: the demo model measured across two real RPC hosts
(llmtune's, on 127.0.0.1), each host's buffers beside the plan, the plan's
split as run, and this machine's calibration left alone."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from rpc_support import real_servers


def test_bench_over_two_hosts(demo_model: Path) -> None:
    with real_servers(2) as servers:
        endpoints = [s.endpoint for s in servers]
        proc = subprocess.run(
            [sys.executable, "-m", "llmtune.cli", "bench", str(demo_model), "--rpc", ",".join(endpoints),
             "--repeat", "1", "--prompt-tokens", "32", "--gen-tokens", "8", "--ctx", "1024", "--json"],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["calibrated"] is False and "not calibrating" in proc.stderr
    rows = {(c["device"], c["kind"]): c for c in out["comparison"]}
    for endpoint in endpoints:
        weights = rows[(f"RPC0[{endpoint}]", "weights")]
        assert weights["measured_bytes"] > 0
        assert abs(weights["error_pct"]) < 0.5
        assert abs(rows[(f"RPC0[{endpoint}]", "compute")]["error_pct"]) < 15
    devices = out["predicted"]["devices"]
    assert [d.get("endpoint") for d in devices if d["kind"] == "rpc"] == endpoints
    assert out["tg_tokens_per_s"]["mean"] > 0 and out["pp_tokens_per_s"]["mean"] > 0
