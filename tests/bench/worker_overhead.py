"""Generation speed through the llmtune worker against a plain llama-cpp-python loop (issue 4).

Target: worker tokens/s >= 0.97 x plain tokens/s, same settings, same run.

Both paths load the demo model once with one RunConfig (n_ctx, n_batch,
n_ubatch, threads, flash attention, K/V cache types, mmap, CPU_REPACK), then
alternate generations (worker first in even rounds, plain first in odd
rounds) after one untimed warm-up each:

- worker: ``Supervisor`` -> ``python -m llmtune.engine.worker``, a ``Generate``
  with greedy sampling and ``ignore_eos``; speed from the ``Token`` events.
- plain: the loop of llama.cpp's ``examples/simple`` through llama-cpp-python's
  low-level API in this process, set up field by field as the worker does:
  tokenize (BOS, special tokens parsed), decode the prompt in n_batch chunks,
  then per token: greedy sample, detokenize the piece, decode that one token.

Both generate exactly ``--tokens`` tokens from the same prompt tokens (EOS is
ignored) and the script checks that they produced the same token ids and that
llama.cpp logged the same context settings for both.

Generation speed only: ``(tokens - 1) / (t_last - t_first)``, where ``t`` is
``time.monotonic()`` right after a token was sampled, in both paths. The
worker's ``Token.t`` is taken in the worker before the token is pickled and
sent, so the parent's cost of receiving it is not in that interval except as
CPU taken from llama.cpp's threads; the speed as the parent receives the
events (its own clock on its reader thread) is printed beside it.

    python tests/bench/worker_overhead.py [--rounds 5] [--tokens 256] [--threads 2]

Exits 0 whatever the ratio (it is a report); non-zero only on a crash.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import os
import platform
import queue
import re
import statistics
import sys
import time
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any

import llama_cpp

from llmtune.engine.config import RunConfig
from llmtune.engine.protocol import Event, Exited, Failed, Loaded, Stats, Token
from llmtune.engine.supervisor import Supervisor
from llmtune.fit.settings import FLASH_ATTN_IDS
from llmtune.model.demo import fetch_demo_model

TARGET_RATIO = 0.97
TIMEOUT_S = 120.0
BASELINE = (
    "plain llama-cpp-python low-level loop in-process "
    "(llama.cpp examples/simple: greedy sample, detokenize, decode 1 token)"
)
# A chat prompt; EOS is ignored anyway, so generation never ends early.
PROMPT = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\nWrite a long story about a lighthouse keeper who finds a "
    "message in a bottle.<|im_end|>\n<|im_start|>assistant\n"
)
# llama.cpp's lines that describe the context it built (llama_context ctor, KV cache).
_SETTINGS_RE = re.compile(
    r"(llama_context: +(?:n_seq_max|n_ctx|n_ctx_seq|n_batch|n_ubatch|causal_attn|"
    r"flash_attn|kv_unified|freq_base|freq_scale) += [^\n]*|llama_kv_cache: +size += [^\n]*)"
)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def physical_cores() -> int | None:
    try:
        import psutil

        return psutil.cpu_count(logical=False)
    except Exception:
        return None


@dataclass(frozen=True)
class Run:
    tokens_per_s: float  # from the generating side's own timestamps
    received_per_s: float | None  # the worker only: as the parent receives the events
    ids: tuple[int, ...]


def rate(times: list[float]) -> float:
    span = times[-1] - times[0] if len(times) > 1 else 0.0
    return (len(times) - 1) / span if span > 0 else 0.0


def settings_lines(text: str) -> list[str]:
    return [" ".join(m.split()) for m in _SETTINGS_RE.findall(text)]


# ---- the worker path ----------------------------------------------------------
class WorkerPath:
    def __init__(self, config: RunConfig) -> None:
        self.events: queue.Queue[tuple[float, Event]] = queue.Queue()
        # The callback runs on the supervisor's reader thread: stamp each event as it arrives.
        self.sup = Supervisor(lambda e: self.events.put((time.monotonic(), e)), log_lines=2000)
        self.sup.start()
        self.sup.load(config)
        loaded = self._until(Loaded)
        assert isinstance(loaded, Loaded)
        self.loaded = loaded
        # The log comes over the worker's stderr, read by its own thread: Loaded
        # (over the socket) can arrive before the context's lines have been read.
        deadline = time.monotonic() + 5.0
        while True:
            self.log = "\n".join(self.sup.log_tail(lines=2000))
            if "llama_kv_cache: size" in self.log or time.monotonic() > deadline:
                break
            time.sleep(0.02)

    def _until(self, kind: type, tokens: list[tuple[float, Token]] | None = None) -> Event:
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            try:
                received, event = self.events.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise RuntimeError(
                    f"the worker sent no {kind.__name__} in {TIMEOUT_S:g} s"
                ) from None
            if isinstance(event, (Failed, Exited)):
                raise RuntimeError(f"worker: {event}")
            if isinstance(event, Token) and tokens is not None:
                tokens.append((received, event))
            elif isinstance(event, kind):
                return event

    def generate(self, n_tokens: int) -> tuple[Run, Stats]:
        tokens: list[tuple[float, Token]] = []
        self.sup.generate(PROMPT, n_tokens, temperature=0.0, ignore_eos=True)
        stats = self._until(Stats, tokens)
        assert isinstance(stats, Stats)
        if stats.n_gen != n_tokens or len(tokens) != n_tokens:
            raise RuntimeError(f"the worker generated {len(tokens)} tokens, not {n_tokens}")
        run = Run(
            tokens_per_s=rate([tok.t for _, tok in tokens]),
            received_per_s=rate([received for received, _ in tokens]),
            ids=tuple(tok.id for _, tok in tokens),
        )
        return run, stats

    def close(self) -> None:
        self.sup.shutdown()


# ---- the plain path -------------------------------------------------------------
class PlainPath:
    """The same RunConfig set up field by field as the worker sets it, in this process."""

    def __init__(self, c: RunConfig) -> None:
        L = llama_cpp
        self.log_chunks: list[str] = []
        self._log_cb = L.llama_log_callback(self._on_log)
        L.llama_log_set(self._log_cb, ctypes.c_void_p(0))
        L.llama_backend_init()
        mp = L.llama_model_default_params()
        for name, value in c.model_params().items():
            setattr(mp, name, value)
        mp.lazy_mode = L.LLAMA_LAZY_MODE_AUTO
        mp.vocab_only = False
        mp.check_tensors = False
        mp.no_host = False
        mp.no_alloc = False
        mp.load_mtp = False
        self.model = L.llama_model_load_from_file(c.model_path.encode(), mp)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {c.model_path}")
        cp = L.llama_context_default_params()
        for name, value in c.context_params().items():
            setattr(cp, name, value)
        cp.embeddings = False
        cp.no_perf = True
        self.ctx = L.llama_init_from_model(self.model, cp)
        if not self.ctx:
            raise RuntimeError("llama.cpp could not create the context")
        self.n_batch = c.settings.n_batch
        self.vocab = L.llama_model_get_vocab(self.model)
        self.log = "".join(self.log_chunks)

    def _on_log(self, level: int, text: bytes | None, user_data: object) -> None:
        if text:
            self.log_chunks.append(text.decode("utf-8", "replace"))

    def tokenize(self, text: str) -> list[int]:
        L = llama_cpp
        data = text.encode("utf-8")
        buf = (L.llama_token * (len(data) + 8))()
        n = int(L.llama_tokenize(self.vocab, data, len(data), buf, len(buf), True, True))
        if n < 0:
            raise RuntimeError("the prompt does not tokenize")
        return list(buf[:n])

    def _decode(self, tokens: Any, offset: int, count: int) -> None:
        L = llama_cpp
        ptr = ctypes.cast(
            ctypes.byref(tokens, offset * ctypes.sizeof(L.llama_token)), L.llama_token_p
        )
        rc = int(L.llama_decode(self.ctx, L.llama_batch_get_one(ptr, count)))
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")

    def generate(self, n_tokens: int) -> Run:
        L = llama_cpp
        L.llama_memory_clear(L.llama_get_memory(self.ctx), True)
        prompt = self.tokenize(PROMPT)
        tokens = (L.llama_token * len(prompt))(*prompt)
        for start in range(0, len(prompt), self.n_batch):
            self._decode(tokens, start, min(self.n_batch, len(prompt) - start))
        sampler = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
        L.llama_sampler_chain_add(sampler, L.llama_sampler_init_greedy())
        one = (L.llama_token * 1)()
        piece = ctypes.create_string_buffer(64)
        times: list[float] = []
        ids: list[int] = []
        text = bytearray()
        try:
            for i in range(n_tokens):
                token = int(L.llama_sampler_sample(sampler, self.ctx, -1))
                times.append(time.monotonic())
                ids.append(token)
                n = int(L.llama_token_to_piece(self.vocab, token, piece, 64, 0, False))
                text += piece.raw[: max(0, n)]
                if i == n_tokens - 1:
                    break
                one[0] = token
                self._decode(one, 0, 1)
        finally:
            L.llama_sampler_free(sampler)
        return Run(rate(times), None, tuple(ids))

    def close(self) -> None:
        llama_cpp.llama_free(self.ctx)
        llama_cpp.llama_model_free(self.model)


def summary(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="generations per path (alternating)")
    parser.add_argument("--tokens", type=int, default=256, help="tokens generated per run")
    parser.add_argument("--threads", type=int, default=2, help="llama.cpp threads, both paths")
    parser.add_argument("--n-ctx", type=int, default=2048)
    parser.add_argument("--flash-attn", choices=sorted(FLASH_ATTN_IDS), default="auto")
    args = parser.parse_args()
    if args.tokens < 2 or args.rounds < 1:
        parser.error("--tokens must be at least 2 and --rounds at least 1")

    model = fetch_demo_model()
    config = RunConfig.of(
        model_path=str(model),
        n_ctx=args.n_ctx,
        n_batch=512,
        n_ubatch=512,
        threads=args.threads,
        flash_attn=args.flash_attn,
        cache_type_k="f16",
        cache_type_v="f16",
        use_mmap=True,
    )
    s = config.settings
    cores = physical_cores()
    print(
        f"machine: {cpu_model()}, {cores or '?'} physical / {os.cpu_count()} logical cores, "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}, "
        f"llama-cpp-python {version('llama-cpp-python')}, {datetime.date.today()}"
    )
    print(f"model: {model.name}")
    print(
        f"settings: n_ctx {s.n_ctx}, n_batch {s.n_batch}, n_ubatch {s.n_ubatch}, "
        f"threads {config.context_params()['n_threads']}, flash attention {s.flash_attn}, "
        f"cache K {s.cache_type_k} V {s.cache_type_v}, mmap {s.use_mmap}, "
        f"repack {config.extras.use_extra_bufts}"
    )
    print(f"baseline: {BASELINE}")

    t0 = time.monotonic()
    worker = WorkerPath(config)
    plain = PlainPath(config)
    try:
        n_prompt = len(plain.tokenize(PROMPT))
        if n_prompt + args.tokens > worker.loaded.n_ctx_seq:
            parser.error(f"{n_prompt} + {args.tokens} tokens do not fit n_ctx {s.n_ctx}")
        w_set, p_set = settings_lines(worker.log), settings_lines(plain.log)
        if w_set == p_set and w_set:
            print(f"llama.cpp context settings: identical ({'; '.join(w_set)})")
        else:
            print("llama.cpp context settings DIFFER:")
            print(f"  worker: {'; '.join(w_set) or '(none found)'}")
            print(f"  plain:  {'; '.join(p_set) or '(none found)'}")
        print(f"prompt: {n_prompt} tokens; generating {args.tokens} tokens greedily, EOS ignored")

        worker.generate(16)  # warm-up: thread pool, caches, page faults
        plain.generate(16)

        w_runs: list[Run] = []
        p_runs: list[Run] = []
        stats_rates: list[float] = []
        for r in range(args.rounds):
            order = ("worker", "plain") if r % 2 == 0 else ("plain", "worker")
            for which in order:
                if which == "worker":
                    run, stats = worker.generate(args.tokens)
                    w_runs.append(run)
                    stats_rates.append(stats.tg_tokens_per_s)
                else:
                    p_runs.append(plain.generate(args.tokens))
            print(
                f"  round {r + 1}: worker {w_runs[-1].tokens_per_s:7.2f} t/s, "
                f"plain {p_runs[-1].tokens_per_s:7.2f} t/s ({' first, '.join(order)} second)"
            )
    finally:
        worker.close()
        plain.close()

    same_ids = all(run.ids == p_runs[0].ids for run in w_runs + p_runs)
    w_mean, w_sd = summary([run.tokens_per_s for run in w_runs])
    p_mean, p_sd = summary([run.tokens_per_s for run in p_runs])
    recv_mean, recv_sd = summary([run.received_per_s or 0.0 for run in w_runs])
    stats_mean, _ = summary(stats_rates)
    ratio = w_mean / p_mean if p_mean > 0 else 0.0
    verdict = "PASS" if ratio >= TARGET_RATIO else "MISS"
    n = args.rounds
    print(f"same token ids in every run: {'yes' if same_ids else 'NO'}")
    print(f"worker: {w_mean:8.2f} +- {w_sd:5.2f} t/s (n={n}; its Stats say {stats_mean:.2f})")
    print(f"  as the parent receives the Token events: {recv_mean:8.2f} +- {recv_sd:5.2f} t/s")
    print(f"plain:  {p_mean:8.2f} +- {p_sd:5.2f} t/s (n={n})")
    print(f"ratio worker/plain: {ratio:.4f}; target >= {TARGET_RATIO}: {verdict}")
    print(f"total time {time.monotonic() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
