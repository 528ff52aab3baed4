"""llmtune's ``--ngl auto`` beside llama.cpp's ``llama-fit-params``, same devices.

Shared by tests/engine/test_fit_parity.py and tests/bench/fit_parity.py.

An emulated GPU of S GiB is a loopback RPC server (llama.cpp's, started by
llmtune) whose free memory F is this host's RAM, fitted with a margin of
F - S + 1 GiB: the fit then has S - 1 GiB to fill, as on a real S GiB card
with llama.cpp's default 1 GiB target. Both sides see the same servers:
``llama-fit-params --rpc ... -fitt ...`` (built by ``make tools`` from the
vendored llama.cpp) and llmtune's fit on the devices ``--rpc`` probes, with the
same margins. Models are sparse synthetic GGUF files with real shapes (no
weights are ever read: both measure without allocating).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from gguf import GGMLQuantizationType as Q

from llmtune.engine.rpc_host import RpcServerProcess
from synth import LLAMA2_70B_SHAPE, llama_like
from synth_arch import build_gemma3, build_qwen3moe

MIB = 1 << 20
GIB = 1 << 30


@dataclass(frozen=True)
class Case:
    model: str  # a key of MODELS
    sizes_gib: tuple[float, ...]  # one emulated GPU each
    n_ctx: int  # 0: left to the fit

    @property
    def name(self) -> str:
        gpus = "+".join(f"{s:g}" for s in self.sizes_gib)
        return f"{self.model} on {gpus} GiB, ctx {self.n_ctx or 'unset'}"


def build_model(name: str, folder: Path) -> Path:
    """A sparse synthetic model (written once per folder)."""
    path = folder / f"{name}.gguf"
    if path.exists():
        return path
    if name == "70b-q4_k":
        llama_like(path, **LLAMA2_70B_SHAPE, weight_type=Q.Q4_K, embd_type=Q.Q4_K)
    elif name == "13b-q4_k":
        llama_like(path, n_layer=40, n_embd=5120, n_head=40, n_head_kv=40, n_ff=13824,
                   n_vocab=32000, n_ctx_train=4096, weight_type=Q.Q4_K)  # fmt: skip
    elif name == "moe":
        build_qwen3moe(path, n_layer=24, n_embd=2048, n_head=16, n_head_kv=4, head_dim=128,
                       n_ff=6144, n_expert=64, n_expert_used=8, n_ff_exp=768, n_vocab=32000,
                       weight_type=Q.Q4_K)  # fmt: skip
    elif name == "swa":
        build_gemma3(path, n_layer=26, n_embd=2304, n_head=8, n_head_kv=4, head_dim=256,
                     n_ff=9216, n_vocab=32000, n_ctx_train=32768, sliding_window=4096,
                     weight_type=Q.Q4_K)  # fmt: skip
    else:
        raise ValueError(name)
    return path


def margins_mib(servers: list[RpcServerProcess], sizes_gib: tuple[float, ...]) -> list[int]:
    """Per device, F - S + 1 GiB in MiB, F being the free memory the server reports."""
    out = []
    for server, size in zip(servers, sizes_gib, strict=True):
        free = server.host_info.devices[0].free_bytes
        out.append(free // MIB - int(size * 1024) + 1024)
    return out


@dataclass(frozen=True)
class Outcome:
    case: Case
    llama_cpp: str  # what llama-fit-params printed
    llmtune: str
    llama_cpp_s: float
    llmtune_s: float

    @property
    def agrees(self) -> bool:
        return self.llama_cpp == self.llmtune


def run_case(case: Case, model: Path, servers: list[RpcServerProcess], tools: Path) -> Outcome:
    used = servers[: len(case.sizes_gib)]
    endpoints = [s.endpoint for s in used]
    margins = margins_mib(used, case.sizes_gib)
    cmd = [str(tools / "llama-fit-params"), "-m", str(model), "--rpc", ",".join(endpoints),
           "-fitt", ",".join(str(m) for m in margins)]  # fmt: skip
    if case.n_ctx:
        cmd += ["-c", str(case.n_ctx)]
    env = dict(os.environ, LD_LIBRARY_PATH=str(tools))
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    llama_s = time.perf_counter() - start
    lines = proc.stdout.strip().splitlines()
    llama_args = (
        lines[-1].strip()
        if proc.returncode == 0 and lines
        else f"(failed: {proc.stderr.strip().splitlines()[-1:]})"
    )
    start = time.perf_counter()
    # llmtune through its command line: the same hosts (--rpc), the same margins.
    ours_cmd = [sys.executable, "-m", "llmtune.cli", "fit", str(model), "--json",
                "--rpc", ",".join(endpoints), "--fit-target", ",".join(str(m) for m in margins),
                "--ctx", str(case.n_ctx) if case.n_ctx else "train"]  # fmt: skip
    mine = subprocess.run(ours_cmd, capture_output=True, text=True, timeout=120)
    if mine.returncode == 0:
        ours = json.loads(mine.stdout).get("fit_args") or "(no fit_args)"
    else:
        ours = f"(failed: {mine.stderr.strip()})"
    return Outcome(case, llama_args, ours, llama_s, time.perf_counter() - start)
