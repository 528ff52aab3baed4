"""llama.cpp's ``llama-perplexity``, run for its KL-divergence test, and its output read.

Two runs make one measurement (``tools/perplexity/perplexity.cpp``):

- ``--kl-divergence-base FILE`` on the source model: perplexity over the text
  cut into chunks of ``n_ctx`` tokens (the first token of each replaced by
  BOS), scoring the second half of each chunk; the scored tokens' log-
  probabilities go to FILE (``process_logits``, 16-bit per vocabulary entry).
- ``--kl-divergence`` on a quantized file with the same FILE: its perplexity,
  and per scored token the KL divergence from the source's distribution and
  whether both rank the same token first (``kl_divergence``).

The tool comes from ``make tools`` (:mod:`llmtune.engine.tools`). It runs as a
child process whose output is read as it comes, for progress; a cancel kills it.
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from llmtune.errors import ConfigError, LlmtuneError, WorkerError

# ``--kl-divergence`` prints no statistics under 100 scored tokens (perplexity.cpp, kl_divergence).
MIN_SCORED_TOKENS = 100
STALL_TIMEOUT_S = 1800.0


class MeasureCancelled(LlmtuneError):
    """The user stopped the measurement."""


@dataclass(frozen=True)
class BaseRun:
    """The source's pass: its perplexity and how much of the text was used."""

    ppl: float
    ppl_err: float
    n_chunk: int
    n_ctx: int
    seconds: float

    @property
    def tokens_used(self) -> int:
        return self.n_chunk * self.n_ctx

    @property
    def tokens_scored(self) -> int:
        """The second half of each chunk less its last token (perplexity.cpp: ``first = n_ctx/2``)."""
        return self.n_chunk * (self.n_ctx - 1 - self.n_ctx // 2)


@dataclass(frozen=True)
class KldStats:
    """``--kl-divergence``'s summary, its numbers as llama.cpp printed them (± one standard error)."""

    ppl: float
    ppl_err: float
    ppl_base: float
    ppl_base_err: float
    ln_ppl_ratio: float
    ln_ppl_ratio_err: float
    kld_mean: float
    kld_mean_err: float
    kld_median: float
    kld_p99: float
    kld_max: float
    same_top_pct: float
    same_top_err_pct: float
    rms_dp_pct: float
    seconds: float = 0.0


def perplexity_tool() -> Path:
    """``llama-perplexity`` of this llama.cpp, or a ConfigError saying how to build it."""
    from llmtune.engine.tools import tool, tools_dir

    path = tool("llama-perplexity")
    if path is None:
        raise ConfigError(
            "measuring quality runs llama.cpp's llama-perplexity, which is not built here: "
            "`make tools` (or python -m llmtune.engine.tools) builds it once",
            str(tools_dir()),
        )
    return path


def batch_for(n_ctx: int) -> int:
    """``-b``: whole chunks, at least 512 tokens a pass; perplexity.cpp asserts
    ``n_batch < n_ctx || n_batch % n_ctx == 0`` and runs ``n_batch / n_ctx`` chunks per pass."""
    return n_ctx * max(1, 512 // n_ctx)


def base_command(
    model: str, text: str, base_file: str, n_ctx: int, chunks: int | None, threads: int
) -> list[str]:
    return _common(model, text, n_ctx, chunks, threads) + ["--kl-divergence-base", base_file]


def kld_command(model: str, base_file: str, n_ctx: int, threads: int) -> list[str]:
    # The tokens and chunking come from the base file; -f is not read with --kl-divergence.
    return _common(model, None, n_ctx, None, threads) + [
        "--kl-divergence-base", base_file, "--kl-divergence",
    ]  # fmt: skip


def _common(
    model: str, text: str | None, n_ctx: int, chunks: int | None, threads: int
) -> list[str]:
    cmd = [str(perplexity_tool()), "-m", model, "-c", str(n_ctx), "-b", str(batch_for(n_ctx))]
    if text is not None:
        cmd += ["-f", text]
    if chunks:
        cmd += ["--chunks", str(chunks)]
    if threads:
        cmd += ["-t", str(threads)]
    return cmd


def base_file_bytes(n_vocab: int, n_ctx: int, n_chunk: int) -> int:
    """The size of ``--kl-divergence-base``'s file: magic, n_ctx, n_vocab, n_chunk, the
    tokens, then per scored token ``nv = 2*((n_vocab+1)/2) + 4`` uint16 (perplexity.cpp)."""
    nv = 2 * ((n_vocab + 1) // 2) + 4
    scored = n_ctx - 1 - n_ctx // 2
    return 8 + 12 + 4 * n_ctx * n_chunk + 2 * nv * scored * n_chunk


# ---- reading the output ---------------------------------------------------------------------

_NUM = r"(-?[0-9.]+(?:e[-+]?\d+)?|nan|inf|-inf)"
_PM = r"\s*(?:±|\+/-)\s*"
_SUMMARY = {
    "ppl": rf"Mean PPL\(Q\)\s*:\s*{_NUM}{_PM}{_NUM}",
    "ppl_base": rf"Mean PPL\(base\)\s*:\s*{_NUM}{_PM}{_NUM}",
    "ln_ratio": rf"Mean ln\(PPL\(Q\)/PPL\(base\)\)\s*:\s*{_NUM}{_PM}{_NUM}",
    "kld": rf"Mean\s+KLD:\s*{_NUM}{_PM}{_NUM}",
    "median": rf"Median\s+KLD:\s*{_NUM}",
    "p99": rf"99\.0%\s+KLD:\s*{_NUM}",
    "max": rf"Maximum KLD:\s*{_NUM}",
    "top": rf"Same top p:\s*{_NUM}{_PM}{_NUM}\s*%",
    "rms": rf"RMS Δp\s*:\s*{_NUM}",
}
_CHUNKS = re.compile(r"over (\d+) chunks, n_ctx=(\d+)")
_BASE_DONE = re.compile(r"\[(\d+)\]" + _NUM + ",")
_KLD_DONE = re.compile(r"^\s*(\d+)\s+" + _NUM + _PM, re.MULTILINE)
_FINAL = re.compile(r"Final estimate: PPL = " + _NUM + r" \+/- " + _NUM)
_TOO_SHORT = re.compile(r"tokenizes to only (\d+) tokens")


def parse_kld(output: str) -> KldStats:
    """The ``--kl-divergence`` summary; raises when llama.cpp printed none."""
    found: dict[str, tuple[float, ...]] = {}
    for key, pattern in _SUMMARY.items():
        m = re.search(pattern, output)
        if m is not None:
            found[key] = tuple(float(g) for g in m.groups())
    missing = [k for k in ("ppl", "ppl_base", "kld", "p99", "top") if k not in found]
    if missing:
        raise WorkerError(f"llama-perplexity printed no KL-divergence statistics: {_tail(output)}")
    ratio = found.get("ln_ratio", (0.0, 0.0))
    return KldStats(
        ppl=found["ppl"][0],
        ppl_err=found["ppl"][1],
        ppl_base=found["ppl_base"][0],
        ppl_base_err=found["ppl_base"][1],
        ln_ppl_ratio=ratio[0],
        ln_ppl_ratio_err=ratio[1],
        kld_mean=found["kld"][0],
        kld_mean_err=found["kld"][1],
        kld_median=found.get("median", (float("nan"),))[0],
        kld_p99=found["p99"][0],
        kld_max=found.get("max", (float("nan"),))[0],
        same_top_pct=found["top"][0],
        same_top_err_pct=found["top"][1],
        rms_dp_pct=found.get("rms", (float("nan"),))[0],
    )


def parse_base(output: str, n_ctx: int, text: str) -> BaseRun:
    """The base pass's perplexity and chunk count; a text too short is the user's to fix."""
    short = _TOO_SHORT.search(output)
    if short is not None:
        raise ConfigError(
            f"the text is {int(short.group(1)):,} tokens for this model; llama-perplexity needs "
            f"at least {2 * n_ctx:,} (two chunks of --ctx {n_ctx}): a longer --text or a "
            "smaller --ctx",
            text,
        )
    final, chunks = _FINAL.search(output), _CHUNKS.search(output)
    if final is None or chunks is None:
        raise WorkerError(f"llama-perplexity failed on the source: {_tail(output)}")
    n_chunk = int(chunks.group(1))
    scored = n_chunk * (n_ctx - 1 - n_ctx // 2)
    if scored < MIN_SCORED_TOKENS:
        raise ConfigError(
            f"{n_chunk} chunks of --ctx {n_ctx} score only {scored} tokens; llama.cpp gives "
            f"statistics from {MIN_SCORED_TOKENS}: more --chunks, a longer text or a larger --ctx",
            text,
        )
    return BaseRun(float(final.group(1)), float(final.group(2)), n_chunk, n_ctx, 0.0)


def chunks_done(output: str, kld: bool) -> int:
    """Chunks finished so far, from the lines llama-perplexity prints per chunk."""
    pattern = _KLD_DONE if kld else _BASE_DONE
    done = 0
    for m in pattern.finditer(output):
        done = max(done, int(m.group(1)))
    return done


def total_chunks(output: str) -> int | None:
    m = _CHUNKS.search(output)
    return int(m.group(1)) if m else None


def _tail(output: str) -> str:
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if " E " in line or "error" in line.lower()]
    return ((errors or lines)[-1:] or ["no output"])[0][-300:]


# ---- running it -----------------------------------------------------------------------------


def run_tool(
    cmd: Sequence[str],
    *,
    cancel: threading.Event,
    on_output: Callable[[str], None] = lambda text: None,
    stall_timeout_s: float = STALL_TIMEOUT_S,
) -> str:
    """Run ``cmd`` (a llama.cpp tool) to the end; its stdout and stderr together.

    ``on_output`` gets the output so far whenever more comes. Setting ``cancel``
    kills the tool and raises MeasureCancelled; so does KeyboardInterrupt. The
    tool finds its libraries beside it (LD_LIBRARY_PATH, as ``make tools`` built it).
    """
    folder = os.path.dirname(cmd[0])
    env = dict(os.environ, LD_LIBRARY_PATH=folder, GGML_NO_BACKTRACE="1")
    env.pop("LLAMA_ARG_MODEL", None)  # llama.cpp reads its options from LLAMA_ARG_* too
    proc = subprocess.Popen(
        list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        env=env, start_new_session=True,
    )  # fmt: skip
    chunks: list[bytes] = []
    lock = threading.Lock()

    def read() -> None:
        assert proc.stdout is not None
        while block := os.read(proc.stdout.fileno(), 65536):
            with lock:
                chunks.append(block)

    reader = threading.Thread(target=read, name="llama-perplexity-output", daemon=True)
    reader.start()
    seen = 0
    last_change = time.monotonic()
    try:
        while True:
            if cancel.is_set():
                raise MeasureCancelled("measurement cancelled")
            with lock:
                size = len(chunks)
            if size != seen:
                seen = size
                last_change = time.monotonic()
                on_output(_text(chunks, lock))
            if proc.poll() is not None:
                reader.join(timeout=5.0)
                break
            if time.monotonic() - last_change > stall_timeout_s:
                raise WorkerError(f"llama-perplexity said nothing for {stall_timeout_s:.0f} s")
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        reader.join(timeout=2.0)
        if proc.stdout is not None:
            proc.stdout.close()
    output = _text(chunks, lock)
    on_output(output)
    if proc.returncode != 0:
        raise WorkerError(
            f"llama-perplexity exited with status {proc.returncode}: {_tail(output)}", cmd[2]
        )
    return output


def _text(chunks: list[bytes], lock: threading.Lock) -> str:
    with lock:
        return b"".join(chunks).decode("utf-8", "replace")
