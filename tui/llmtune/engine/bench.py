"""``llmtune bench``: load a model in the worker and measure it like llama-bench.

Prompt processing of N tokens and generation of M tokens, repeated; mean and
standard deviation; the buffers llama.cpp allocated beside the plan's; the
worker's peak RSS; the VRAM it took when a GPU is present. The measured
generation speed is kept as this machine's calibration (engine.calibration).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from llmtune.engine import require_llama_cpp
from llmtune.engine.compare import Comparison, compare
from llmtune.engine.config import RunConfig
from llmtune.engine.protocol import Exited, Failed, Loaded, Progress, Stats
from llmtune.engine.supervisor import Supervisor
from llmtune.errors import WorkerError
from llmtune.fit.plan import FitPlan

# Words that most tokenizers keep as one token each, to build a prompt of
# about N tokens; the worker reports the exact count.
_PROMPT_WORDS = "the quick brown fox jumps over a lazy dog and then runs far away".split()

LOAD_TIMEOUT_S = 600.0
RUN_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class Measured:
    mean: float
    stdev: float
    runs: tuple[float, ...]


@dataclass(frozen=True)
class BenchResult:
    config: RunConfig
    load_s: float
    n_prompt: int
    n_gen: int
    pp: Measured
    tg: Measured
    loaded: Loaded
    comparison: Comparison
    peak_rss_bytes: int | None
    vram_delta_bytes: int | None
    notes: tuple[str, ...] = field(default=())


def make_prompt(n_tokens: int) -> str:
    words = [_PROMPT_WORDS[i % len(_PROMPT_WORDS)] for i in range(max(1, n_tokens - 1))]
    return " ".join(words)


def _summary(values: list[float]) -> Measured:
    mean = statistics.fmean(values) if values else 0.0
    stdev = statistics.stdev(values) if len(values) > 1 else 0.0
    return Measured(mean, stdev, tuple(values))


def _peak_rss(pid: int) -> int | None:
    """VmHWM: the most resident memory the process has had (Linux)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil

        return int(psutil.Process(pid).memory_info().rss)
    except Exception:
        return None


def _build_warning() -> str | None:
    """The CPU-only-build warning when NVIDIA GPUs are here (hardware.detect):
    a benchmark that shows no speed-up from a GPU must say why."""
    try:
        from llmtune.hardware.detect import gpu_build_warning, gpu_device, supports_gpu_offload
        from llmtune.hardware.gpus import snapshot

        gpus = [d for d in (gpu_device(s) for s in snapshot()) if d is not None]
        return gpu_build_warning(gpus, supports_gpu_offload()) if gpus else None
    except Exception:
        return None


def _gpu_used_bytes() -> int | None:
    try:
        from llmtune.hardware.gpus import snapshot

        states = snapshot()
    except Exception:
        return None
    used = [s.memory_used_bytes for s in states if s.memory_used_bytes is not None]
    return sum(used) if used else None


def _await(
    supervisor: Supervisor,
    want: type,
    timeout_s: float,
    on_progress: Callable[[str], None],
) -> object:
    deadline = time.monotonic() + timeout_s
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise WorkerError(
                f"the worker did not answer within {timeout_s:.0f} s", "llmtune bench"
            )
        event = supervisor.next_event(timeout_s=min(left, 1.0))
        if event is None:
            continue
        if isinstance(event, want):
            return event
        if isinstance(event, Progress):
            on_progress(f"loading {event.fraction * 100:5.1f}%")
        elif isinstance(event, Failed):
            raise WorkerError(event.reason, "llama.cpp")
        elif isinstance(event, Exited):
            raise WorkerError(f"the worker ended: {event.describe}", "llama.cpp")


def run_bench(
    config: RunConfig,
    fit_plan: FitPlan,
    *,
    prompt_tokens: int = 512,
    gen_tokens: int = 128,
    repeat: int = 3,
    on_progress: Callable[[str], None] = lambda line: None,
    supervisor: Supervisor | None = None,
    on_started: Callable[[int], None] = lambda pid: None,
) -> BenchResult:
    """Load ``config`` in a fresh worker, run ``repeat`` rounds, shut it down.

    ``supervisor``: run in this one's worker instead (started here; the caller may
    kill it from another thread to cancel, and shuts it down). ``on_started`` gets
    the worker's pid once it runs.
    """
    require_llama_cpp("bench")
    vram_before = _gpu_used_bytes()
    warning = _build_warning()
    owned = supervisor is None
    if supervisor is None:
        supervisor = Supervisor()
    try:
        on_started(supervisor.start())
        started = time.monotonic()
        supervisor.load(config)
        loaded = _await(supervisor, Loaded, LOAD_TIMEOUT_S, on_progress)
        assert isinstance(loaded, Loaded)
        load_s = loaded.load_s if loaded.load_s else time.monotonic() - started
        vram_after = _gpu_used_bytes()
        prompt = make_prompt(prompt_tokens)
        pp_runs: list[float] = []
        tg_runs: list[float] = []
        n_prompt = n_gen = 0
        for i in range(repeat):
            on_progress(
                f"run {i + 1}/{repeat}: {prompt_tokens} prompt + {gen_tokens} generated tokens"
            )
            supervisor.generate(prompt, max_tokens=gen_tokens, ignore_eos=True)
            stats = _await(supervisor, Stats, RUN_TIMEOUT_S, on_progress)
            assert isinstance(stats, Stats)
            pp_runs.append(stats.pp_tokens_per_s)
            tg_runs.append(stats.tg_tokens_per_s)
            n_prompt, n_gen = stats.n_prompt, stats.n_gen
        pid = supervisor.pid
        peak = _peak_rss(pid) if pid is not None else None
    finally:
        if owned:
            supervisor.shutdown()
    delta = None
    if vram_before is not None and vram_after is not None:
        delta = vram_after - vram_before
    return BenchResult(
        config=config,
        load_s=load_s,
        n_prompt=n_prompt,
        n_gen=n_gen,
        pp=_summary(pp_runs),
        tg=_summary(tg_runs),
        loaded=loaded,
        comparison=compare(loaded, fit_plan),
        peak_rss_bytes=peak,
        vram_delta_bytes=delta,
        notes=tuple(loaded.notes) + ((warning,) if warning else ()),
    )
