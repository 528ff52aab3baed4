"""Tokens/s through two llama.cpp RPC hosts: llmtune's worker against llama.cpp's own path (issue 14).

Target: worker tokens/s >= 0.95 x plain tokens/s, generating and on the prompt.

Two RPC servers started by llmtune (``llmtune.engine.rpc_host``, llama.cpp's
own server in a child process) on 127.0.0.1, one thread each. The demo model is
planned on them (the plan's split pinned with -ts), then, alternating, in each
round:

- worker: ``Supervisor`` -> ``python -m llmtune.engine.worker`` registers the
  hosts, loads, decodes the prompt and generates ``--tokens`` greedy tokens
  (``ignore_eos``), then shuts down (a server serves one client at a time);
- plain: a fresh ``python`` that registers the same servers through
  llama-cpp-python's exported C functions (as ``llama-server --rpc`` does),
  loads with the same parameters, decodes the same prompt tokens and generates
  the same number of tokens greedily (llama.cpp's ``examples/simple`` loop).

Generation speed is ``(n - 1) / (t_last - t_first)`` over sampled tokens in
both; prompt speed is tokens / the time to decode them and synchronize.
Prints the ratios and the plan's predicted speeds beside the measured ones.

    python tests/bench/rpc.py [--rounds 3] [--tokens 128] [--prompt 256]

Exits 0 whatever the ratio (a report); non-zero only on a crash.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys

from llmtune.engine.config import RunConfig
from llmtune.engine.protocol import Failed, Loaded, Stats
from llmtune.engine.rpc_host import RpcServerProcess, free_port
from llmtune.engine.supervisor import Supervisor
from llmtune.fit.commandline import pinned_settings
from llmtune.fit.plan import plan
from llmtune.fit.settings import Extras, Settings
from llmtune.hardware.machine import MachineOptions, machine
from llmtune.model import read_spec
from llmtune.model.demo import fetch_demo_model

TARGET_RATIO = 0.95
TIMEOUT_S = 300.0
BASELINE = "a plain llama-cpp-python process registering the same RPC servers"

_PLAIN = r"""
import ctypes, json, os, sys, time
import llama_cpp as L
from llmtune.engine.ggml_rpc import register_servers
cfg = json.loads(sys.argv[1])
quiet = L.llama_log_callback(lambda level, text, data: None)
L.llama_log_set(quiet, ctypes.c_void_p(0))
L.llama_backend_init()
register_servers(cfg["rpc"])
mp = L.llama_model_default_params()
mp.n_gpu_layers = cfg["ngl"]
split = (ctypes.c_float * L.llama_max_devices())(*cfg["split"])
mp.tensor_split = split
model = L.llama_model_load_from_file(cfg["path"].encode(), mp)
cp = L.llama_context_default_params()
cp.n_ctx = cfg["n_ctx"]; cp.n_batch = 2048; cp.n_ubatch = 512
cp.n_threads = cfg["threads"]; cp.n_threads_batch = cfg["threads"]
cp.flash_attn_type = -1
ctx = L.llama_init_from_model(model, cp)
vocab = L.llama_model_get_vocab(model)
text = cfg["prompt"].encode()
buf = (L.llama_token * (len(text) + 8))()
n = L.llama_tokenize(vocab, text, len(text), buf, len(buf), True, True)
t0 = time.perf_counter()
L.llama_decode(ctx, L.llama_batch_get_one(buf, n))
L.llama_synchronize(ctx)
prompt_s = time.perf_counter() - t0
sampler = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
L.llama_sampler_chain_add(sampler, L.llama_sampler_init_greedy())
one = (L.llama_token * 1)()
times = []
for i in range(cfg["tokens"]):
    token = L.llama_sampler_sample(sampler, ctx, -1)
    times.append(time.monotonic())
    one[0] = token
    L.llama_decode(ctx, L.llama_batch_get_one(one, 1))
print(json.dumps({"n_prompt": n, "pp": n / prompt_s, "tg": (len(times) - 1) / (times[-1] - times[0])}))
"""


def worker_run(config: RunConfig, prompt: str, tokens: int) -> tuple[float, float, int]:
    sup = Supervisor()
    try:
        sup.start()
        sup.load(config)
        while True:
            event = sup.next_event(TIMEOUT_S)
            if isinstance(event, Failed) or event is None:
                raise SystemExit(f"worker: {event}")
            if isinstance(event, Loaded):
                break
        sup.generate(prompt, max_tokens=tokens, ignore_eos=True, temperature=0.0)
        while True:
            event = sup.next_event(TIMEOUT_S)
            if isinstance(event, Failed) or event is None:
                raise SystemExit(f"worker: {event}")
            if isinstance(event, Stats):
                return event.pp_tokens_per_s, event.tg_tokens_per_s, event.n_prompt
    finally:
        sup.shutdown()


def plain_run(cfg: dict[str, object]) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", _PLAIN, json.dumps(cfg)], capture_output=True, timeout=TIMEOUT_S
    )
    if out.returncode != 0:
        raise SystemExit(f"plain run failed: {out.stderr.decode()[-2000:]}")
    result: dict[str, float] = json.loads(out.stdout.decode().strip().splitlines()[-1])
    return result


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--prompt", type=int, default=256, help="about this many prompt tokens")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    demo = str(fetch_demo_model())
    prompt = " ".join(["The quick brown fox jumps over the lazy dog."] * max(1, args.prompt // 10))
    with (
        RpcServerProcess(port=free_port(), threads=1) as a,
        RpcServerProcess(port=free_port(), threads=1) as b,
    ):
        endpoints = (a.endpoint, b.endpoint)
        m = machine(MachineOptions(rpc=(",".join(endpoints),)), for_worker=True)
        spec = read_spec(demo)
        p = plan(spec, m.devices, Settings(n_ctx=4096, threads=args.threads), m.plan_speed)
        settings = pinned_settings(p)
        config = RunConfig.from_settings(demo, settings, Extras(rpc_servers=endpoints))
        cfg = {
            "path": demo,
            "rpc": list(endpoints),
            "ngl": p.n_gpu_layers,
            "split": list(settings.tensor_split),
            "n_ctx": p.n_ctx,
            "threads": args.threads,
            "prompt": prompt,
            "tokens": args.tokens,
        }
        worker_pp: list[float] = []
        worker_tg: list[float] = []
        plain_pp: list[float] = []
        plain_tg: list[float] = []
        for i in range(args.rounds):
            order = ("worker", "plain") if i % 2 == 0 else ("plain", "worker")
            for who in order:
                if who == "worker":
                    pp, tg, _ = worker_run(config, prompt, args.tokens)
                    worker_pp.append(pp)
                    worker_tg.append(tg)
                else:
                    r = plain_run(cfg)
                    plain_pp.append(r["pp"])
                    plain_tg.append(r["tg"])
    tg_ratio = statistics.median(worker_tg) / statistics.median(plain_tg)
    pp_ratio = statistics.median(worker_pp) / statistics.median(plain_pp)
    print(
        f"rpc: demo model over two loopback RPC hosts ({', '.join(endpoints)}), split {cfg['split']}"
    )
    print(f"  baseline: {BASELINE}; {args.rounds} rounds, {args.tokens} tokens")
    print(
        f"  generating: worker {statistics.median(worker_tg):.1f} tokens/s, plain {statistics.median(plain_tg):.1f}: ratio {tg_ratio:.3f} (target >= {TARGET_RATIO})"
    )
    print(
        f"  prompt:     worker {statistics.median(worker_pp):.1f} tokens/s, plain {statistics.median(plain_pp):.1f}: ratio {pp_ratio:.3f}"
    )
    print(
        f"  predicted:  {p.predicted.tg_tokens_per_s:.1f} tokens/s generating (network {p.predicted.tg_network_s * 1e3:.2f} ms a token), {p.predicted.pp_tokens_per_s:.0f} on prompts; measured/predicted {statistics.median(worker_tg) / p.predicted.tg_tokens_per_s:.2f}"
    )
    print(f"  machine: {platform.machine()}, {os.cpu_count()} CPUs; {datetime.date.today()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
