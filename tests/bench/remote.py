"""Time to plan a remote 70B-shaped split model, against gguf-parser-go's approach.

Run by ``make bench``. A loopback Hub (tests/hub_server.py) serves a Llama-3-70B-
shaped Q4_K_M header (80 layers, 128,256 tokens, 280,000 merges; tensor data a
sparse hole) split in two shards, with 50 ms injected before every reply (a round
trip). llmtune plans it from ``--hf OWNER/REPO:Q4_K_M``: the listing, then per
shard the resolve redirect and range reads that grow only as far as the header.
gguf-parser-go's published approach (``ParseGGUFFileRemote``: one HEAD, then
reads through a 4 MiB buffer) is replayed against the same server for the same
headers, counting its round trips; its redirects are followed once per shard (in
its favour) and it needs no listing, since it is given the file names.

Targets (issue 17): under 0.5 s, and no more round trips than gguf-parser-go.
A missed target prints MISS; the script only fails when something crashes.
"""

from __future__ import annotations

import datetime
import http.client
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

TESTS_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(TESTS_DIR))

from gguf import GGMLQuantizationType, GGUFValueType  # noqa: E402

from hub_server import FakeHub, hub_env  # noqa: E402
from llmtune.fit.plan import plan  # noqa: E402
from llmtune.fit.settings import Settings  # noqa: E402
from llmtune.hardware.machine import MachineOptions, machine  # noqa: E402
from llmtune.model.gguf_file import HeaderIncomplete, parse_header  # noqa: E402
from synth import Tensor, write_gguf  # noqa: E402

RTT_S = 0.050
TARGET_S = 0.5
GO_BUFFER = 4 << 20
REPEATS = 3
N_VOCAB, N_MERGES, N_LAYER, N_EMBD, N_FF, N_HEAD, N_HEAD_KV = (
    128_256,
    280_000,
    80,
    8192,
    28_672,
    64,
    8,
)


def write_70b(folder: Path) -> list[Path]:
    rng = random.Random(70)
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.,'-"
    tokens = [
        f"{'Ġ' if i % 3 else ''}{''.join(rng.choices(alphabet, k=rng.randint(2, 11)))}{i}"
        for i in range(N_VOCAB)
    ]
    merges = [f"{rng.choice(tokens)} {rng.choice(tokens)}" for _ in range(N_MERGES)]
    kv: list[tuple[str, Any]] = [
        ("general.name", "Llama 3 70B Instruct (synthetic header)"),
        ("general.file_type", 15),
        ("llama.block_count", N_LAYER),
        ("llama.context_length", 8192),
        ("llama.embedding_length", N_EMBD),
        ("llama.feed_forward_length", N_FF),
        ("llama.attention.head_count", N_HEAD),
        ("llama.attention.head_count_kv", N_HEAD_KV),
        ("llama.rope.freq_base", 500000.0),
        ("llama.attention.layer_norm_rms_epsilon", 1e-5),
        ("llama.rope.dimension_count", N_EMBD // N_HEAD),
        ("tokenizer.ggml.model", "gpt2"),
        ("tokenizer.ggml.pre", "llama-bpe"),
        ("tokenizer.ggml.tokens", tokens),
        ("tokenizer.ggml.token_type", ([1] * N_VOCAB, GGUFValueType.ARRAY, GGUFValueType.INT32)),
        ("tokenizer.ggml.merges", merges),
        ("tokenizer.ggml.bos_token_id", 128_000),
    ]
    q4k, q6k, f32 = GGMLQuantizationType.Q4_K, GGMLQuantizationType.Q6_K, GGMLQuantizationType.F32
    kv_dim = N_EMBD // N_HEAD * N_HEAD_KV
    tensors = [Tensor("token_embd.weight", (N_EMBD, N_VOCAB), q4k)]
    for i in range(N_LAYER):
        tensors += [
            Tensor(f"blk.{i}.attn_norm.weight", (N_EMBD,), f32),
            Tensor(f"blk.{i}.attn_q.weight", (N_EMBD, N_EMBD), q4k),
            Tensor(f"blk.{i}.attn_k.weight", (N_EMBD, kv_dim), q4k),
            Tensor(f"blk.{i}.attn_v.weight", (N_EMBD, kv_dim), q6k),
            Tensor(f"blk.{i}.attn_output.weight", (N_EMBD, N_EMBD), q4k),
            Tensor(f"blk.{i}.ffn_norm.weight", (N_EMBD,), f32),
            Tensor(f"blk.{i}.ffn_gate.weight", (N_EMBD, N_FF), q4k),
            Tensor(f"blk.{i}.ffn_up.weight", (N_EMBD, N_FF), q4k),
            Tensor(f"blk.{i}.ffn_down.weight", (N_FF, N_EMBD), q6k),
        ]
    tensors += [
        Tensor("output_norm.weight", (N_EMBD,), f32),
        Tensor("output.weight", (N_EMBD, N_VOCAB), q6k),
    ]
    return write_gguf(folder / "Llama-3-70B-Q4_K_M.gguf", kv, tensors, split_max_tensors=370)


def go_style(endpoint: str, urls: list[str]) -> tuple[int, int]:
    """gguf-parser-go's requests for the same headers: (round trips, bytes)."""
    netloc = urlsplit(endpoint).netloc
    conn = http.client.HTTPConnection(netloc, timeout=10)
    trips = 0
    nbytes = 0

    def send(method: str, url: str, headers: dict[str, str]) -> http.client.HTTPResponse:
        nonlocal trips
        parts = urlsplit(url)
        conn.request(method, parts.path, headers=headers)
        trips += 1
        return conn.getresponse()

    for url in urls:
        current = url
        while True:  # HEAD, following the Hub's redirect
            resp = send("HEAD", current, {})
            resp.read()
            if resp.status not in (301, 302, 307, 308):
                size = int(resp.getheader("Content-Length") or 0)
                break
            current = urljoin(current, resp.getheader("Location") or "")
        buf = b""
        while True:
            end = min(len(buf) + GO_BUFFER, size) - 1
            resp = send("GET", current, {"Range": f"bytes={len(buf)}-{end}"})
            buf += resp.read()
            try:
                parse_header(buf, size, url)
                break
            except HeaderIncomplete:
                continue
        nbytes += len(buf)
    conn.close()
    return trips, nbytes


def mark(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def main() -> int:
    print("llmtune remote: plan a 70B-shaped split model over HTTP vs gguf-parser-go's approach")
    print(f"date:     {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(
        f"machine:  {platform.machine()}, {os.cpu_count()} logical cores, Python {platform.python_version()}"
    )
    print(
        f"method:   loopback Hub, {RTT_S * 1000:.0f} ms before every reply; best of {REPEATS} cold runs (empty header cache)\n"
    )
    with tempfile.TemporaryDirectory(prefix="llmtune-bench-") as tmp:
        folder = Path(tmp)
        shards = write_70b(folder)
        with FakeHub() as hub:
            hub.add_repo("bench/llama-3-70b", {p.name: p for p in shards})
            commit = hub.commit("bench/llama-3-70b")
            urls = [f"{hub.endpoint}/bench/llama-3-70b/resolve/{commit}/{p.name}" for p in shards]
            from llmtune.model.source import open_spec

            m = machine(
                MachineOptions(gpus=("rtx4090", "rtx4090"), ram="64GiB"), probe_bandwidth=False
            )
            times, trips, nbytes, headers = [], 0, 0, 0
            for i in range(REPEATS):
                os.environ.update(hub_env(hub, folder / f"cache{i}", folder / f"hf{i}"))
                hub.reset()
                hub.faults.delay_s = RTT_S
                start = time.perf_counter()
                opened = open_spec(None, "bench/llama-3-70b:Q4_K_M")
                fit_plan = plan(opened.spec, m.devices, Settings(), m.plan_speed)
                times.append(time.perf_counter() - start)
                trips, nbytes = hub.counters.requests, hub.counters.body_bytes
                headers = opened.spec.header_bytes
            hub.reset()
            hub.faults.delay_s = RTT_S
            start = time.perf_counter()
            go_trips, go_bytes = go_style(hub.endpoint, urls)
            go_s = time.perf_counter() - start
    best = min(times)
    print(
        f"model: {len(shards)} shards, {opened.spec.file_bytes / 2**30:.1f} GiB apparent, {headers:,} header bytes; plan: ngl {fit_plan.n_gpu_layers}, fits {fit_plan.fits}\n"
    )
    rows = [
        ("llmtune (listing + ranges)", best, trips, nbytes),
        ("gguf-parser-go approach", go_s, go_trips, go_bytes),
    ]
    lines = [f"{'reader':<30}{'time s':>8}{'round trips':>13}{'bytes read':>14}"]
    lines.append("-" * len(lines[0]))
    for label, secs, n, b in rows:
        lines.append(f"{label:<30}{secs:>8.3f}{n:>13}{b:>14,}")
    print("\n".join(lines))
    print(
        f"\ntargets: < {TARGET_S} s {mark(best < TARGET_S)}; "
        f"round trips {trips} <= {go_trips} {mark(trips <= go_trips)}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
