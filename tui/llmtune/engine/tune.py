"""``llmtune tune``: the fastest llama.cpp settings that fit, found by real runs.

Each trial is a real load and a short benchmark in a fresh worker
(:func:`llmtune.engine.bench.run_bench`); the estimator (:func:`llmtune.fit.plan`)
prunes what cannot fit before anything is loaded. The search goes one setting
at a time, from the one that decides memory to those that only change speed:

1. **KV cache types**, only when the context needs them: f16 first; a smaller
   type is tried only when f16 does not fit, or (with a GPU) lets more layers
   onto it.
2. **GPU layers**: the estimator's most, confirmed by a real load; a failed
   load (out of memory, a crash) steps down 1, 2, 4... layers, then bisects
   back up between the last failure and the first success.
3. **MoE experts on the CPU** (a mixture-of-experts model that does not fit
   the GPU whole): every layer on the GPU with the fewest expert layers kept on
   the CPU that fit, against the plain partial offload.
4. **Threads**: a hill climb from llama.cpp's default (the physical cores).
5. **Flash attention**: the other value (a quantized V cache requires it on).
6. **ubatch** (and batch, at least as large), for prompt speed only: a hill
   climb over powers of two up to the benchmark's prompt length.

A step is taken only when it beats the incumbent by more than ``tolerance``
(2%: what short runs can tell apart), so noise does not wander the search.
A trial's score is the objective over its fastest runs: on a shared machine
other work only ever slows a run down. Last, the two best configurations run
once more, back to back (``confirm``), and the answer is the configuration
with the best mean score over all its trials: the single best score would
favour whichever trial was luckiest (the winner's curse), and on a shared
machine a lucky trial beats a truly faster setting by 10% and more.
A trial whose worker dies is recorded as crashed and the search goes on with a
fresh worker. The objective is generation speed (``tg``), prompt speed
(``pp``), or ``mix``: requests per second for the benchmark's prompt and
generation, ``1 / (prompt/pp + gen/tg)``.

The app runs :meth:`Tuner.run` in a thread: ``on_trial`` gets every finished
:class:`Trial` (for a live table), ``on_start`` each trial's settings and
worker pid, and :meth:`Tuner.cancel` stops at once (the running worker is
killed) and ``run`` returns what was found so far.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Literal

from llmtune.engine import require_llama_cpp
from llmtune.engine.bench import run_bench
from llmtune.engine.config import RunConfig
from llmtune.engine.supervisor import Supervisor
from llmtune.errors import ConfigError, FitError, LlmtuneError
from llmtune.fit.commandline import pinned_settings, plan_extras
from llmtune.fit.handoff import Handoff, plan_handoff
from llmtune.fit.options import resolved_threads
from llmtune.fit.plan import FitPlan, max_context, plan
from llmtune.fit.settings import DEFAULT_CTX, QUANTIZED_CACHE_TYPES, FlashAttn, Settings
from llmtune.fit.speed import DEFAULT_SPEED_MODEL, SpeedModel
from llmtune.hardware.device import Device
from llmtune.model.spec import ModelSpec

Objective = Literal["tg", "pp", "mix"]
OBJECTIVES: tuple[Objective, ...] = ("tg", "pp", "mix")
TrialStatus = Literal["ok", "failed", "crashed", "cancelled"]
Stage = Literal["layers", "moe", "threads", "flash-attn", "ubatch", "confirm", "sweep"]

DEFAULT_UBATCHES = (64, 128, 256, 512, 1024, 2048)


@dataclass(frozen=True)
class TuneSpace:
    """What the search may change. One value in a tuple fixes that setting."""

    threads: tuple[int, ...] = ()  # (): powers of two up to the logical CPUs, and the cores
    flash_attn: tuple[FlashAttn, ...] = ("on", "off")
    ubatch: tuple[int, ...] = DEFAULT_UBATCHES  # searched for pp and mix only
    cache_types: tuple[str, ...] = ("f16", "q8_0", "q4_0")  # K and V alike, in this order
    gpu_layers: bool = True  # False: keep the settings' n_gpu_layers
    moe: bool = True  # try MoE experts on the CPU

    @classmethod
    def around(
        cls, settings: Settings, given: Collection[str], threads: tuple[int, ...] = ()
    ) -> TuneSpace:
        """The search that keeps what the user set: ``given`` names the Settings
        fields they gave; ``threads``, the thread counts to try."""
        return cls(
            threads=threads,
            flash_attn=(settings.flash_attn,) if "flash_attn" in given else ("on", "off"),
            ubatch=(settings.n_ubatch,) if "n_ubatch" in given else DEFAULT_UBATCHES,
            cache_types=()
            if {"cache_type_k", "cache_type_v"} & set(given)
            else ("f16", "q8_0", "q4_0"),
            gpu_layers="n_gpu_layers" not in given,
            moe="n_cpu_moe" not in given,
        )


@dataclass(frozen=True)
class TrialBench:
    """The short benchmark of each trial (llama-bench's pp and tg)."""

    prompt_tokens: int = 64
    gen_tokens: int = 64
    repeat: int = 3

    @classmethod
    def for_objective(cls, objective: Objective) -> TrialBench:
        """A short prompt when only generation counts; 512 tokens when prompts do."""
        return cls() if objective == "tg" else cls(prompt_tokens=512)


@dataclass(frozen=True)
class Trial:
    index: int
    stage: Stage
    settings: Settings  # as loaded: n_gpu_layers resolved, threads explicit
    status: TrialStatus
    tg_tokens_per_s: float = 0.0  # mean over the runs, as llama-bench reports
    pp_tokens_per_s: float = 0.0
    score: float = 0.0  # the objective over the fastest runs: what the search compares
    predicted_tg_tokens_per_s: float = 0.0
    predicted_pp_tokens_per_s: float = 0.0
    load_s: float = 0.0
    peak_rss_bytes: int | None = None
    seconds: float = 0.0
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass(frozen=True)
class TuneResult:
    objective: Objective
    n_ctx: int
    trials: tuple[Trial, ...]
    best: Trial | None
    plan: FitPlan | None  # the best trial's plan
    handoff: Handoff | None  # the best trial's llama-server line etc.
    pruned: int  # candidates the estimator ruled out without a load
    cancelled: bool = False
    notes: tuple[str, ...] = field(default=())


def score_of(objective: Objective, tg: float, pp: float, bench: TrialBench) -> float:
    """The number the search maximises."""
    if objective == "tg":
        return tg
    if objective == "pp":
        return pp
    if tg <= 0 or pp <= 0:
        return 0.0
    return 1.0 / (bench.prompt_tokens / pp + bench.gen_tokens / tg)


def thread_candidates(logical: int | None = None, physical: int | None = None) -> tuple[int, ...]:
    """1, 2, 4, ... up to the logical CPUs, plus the physical core count."""
    from llmtune.hardware.host import physical_cores

    logical = logical or os.cpu_count() or 1
    physical = physical or physical_cores()
    values = {physical, logical}
    n = 1
    while n <= logical:
        values.add(n)
        n *= 2
    return tuple(sorted(v for v in values if 1 <= v <= logical))


class TuneCancelled(LlmtuneError):
    """Raised inside a trial when the user cancels."""


class Tuner:
    """One search; :meth:`run` once, from any thread; :meth:`cancel` from any other."""

    def __init__(
        self,
        spec: ModelSpec,
        devices: Sequence[Device],
        settings: Settings,
        *,
        objective: Objective = "tg",
        space: TuneSpace = TuneSpace(),
        bench: TrialBench | None = None,
        speed: SpeedModel = DEFAULT_SPEED_MODEL,
        max_trials: int = 40,
        tolerance: float = 0.02,
        on_trial: Callable[[Trial], None] = lambda trial: None,
        on_start: Callable[[int, Settings, int], None] = lambda index, settings, pid: None,
        on_progress: Callable[[str], None] = lambda line: None,
    ) -> None:
        if objective not in OBJECTIVES:
            raise ConfigError(f"the objective is tg, pp or mix, not {objective!r}", "--objective")
        if max_trials < 1:
            raise ConfigError("at least one trial is needed", "--max-trials")
        self.spec = spec
        self.devices = tuple(devices)
        self.base = settings
        self.objective = objective
        self.space = space
        self.bench = bench or TrialBench.for_objective(objective)
        self.speed = speed
        self.max_trials = max_trials
        self.tolerance = tolerance
        self.on_trial = on_trial
        self.on_start = on_start
        self.on_progress = on_progress
        self.trials: list[Trial] = []
        self.pruned = 0
        self.notes: list[str] = []
        self.n_ctx = settings.n_ctx
        self._cache: dict[Settings, Trial] = {}
        self._cancel = threading.Event()
        self._lock = threading.Lock()
        self._current: Supervisor | None = None
        self._has_gpu = any(d.offloads for d in self.devices)

    # ---- control -------------------------------------------------------------------------
    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def cancel(self) -> None:
        """Stop the search now: the running trial's worker is killed."""
        self._cancel.set()
        with self._lock:
            sup = self._current
        if sup is not None:
            sup.kill()

    # ---- trials --------------------------------------------------------------------------
    def plan_for(self, settings: Settings) -> FitPlan:
        return plan(self.spec, self.devices, settings, self.speed)

    def run_trial(self, settings: Settings, stage: Stage, *, again: bool = False) -> Trial | None:
        """Load and benchmark ``settings`` (None when the estimator says it cannot fit).

        A configuration tried before is not run again, unless ``again``.
        """
        fit_plan = self.plan_for(settings)
        resolved = fit_plan.settings
        if resolved in self._cache and not again:
            return self._cache[resolved]
        if not fit_plan.fits:
            self.pruned += 1
            return None
        if self._cancel.is_set():
            raise TuneCancelled("tuning cancelled")
        index = len(self.trials) + 1
        sup = Supervisor()
        with self._lock:
            self._current = sup
        started = time.monotonic()

        def started_worker(pid: int) -> None:
            if self._cancel.is_set():
                sup.kill()
            self.on_start(index, resolved, pid)

        def progress(line: str) -> None:
            self.on_progress(f"trial {index}: {line}")

        try:
            result = run_bench(
                RunConfig.from_settings(
                    self.spec.path, pinned_settings(fit_plan), plan_extras(fit_plan)
                ),
                fit_plan,
                prompt_tokens=self.bench.prompt_tokens,
                gen_tokens=self.bench.gen_tokens,
                repeat=self.bench.repeat,
                on_progress=progress,
                supervisor=sup,
                on_started=started_worker,
            )
        except LlmtuneError as err:
            dead = not sup.alive
            status: TrialStatus = (
                "cancelled" if self._cancel.is_set() else "crashed" if dead else "failed"
            )
            trial = Trial(
                index=index,
                stage=stage,
                settings=resolved,
                status=status,
                predicted_tg_tokens_per_s=fit_plan.predicted.tg_tokens_per_s,
                predicted_pp_tokens_per_s=fit_plan.predicted.pp_tokens_per_s,
                seconds=time.monotonic() - started,
                reason=err.what,
            )
        else:
            tg, pp = result.tg.mean, result.pp.mean
            fastest_tg, fastest_pp = max(result.tg.runs), max(result.pp.runs)
            trial = Trial(
                index=index,
                stage=stage,
                settings=resolved,
                status="ok",
                tg_tokens_per_s=tg,
                pp_tokens_per_s=pp,
                score=score_of(self.objective, fastest_tg, fastest_pp, self.bench),
                predicted_tg_tokens_per_s=fit_plan.predicted.tg_tokens_per_s,
                predicted_pp_tokens_per_s=fit_plan.predicted.pp_tokens_per_s,
                load_s=result.load_s,
                peak_rss_bytes=result.peak_rss_bytes,
                seconds=time.monotonic() - started,
            )
        finally:
            with self._lock:
                self._current = None
            sup.shutdown(timeout_s=2.0)
        if trial.status == "cancelled":
            raise TuneCancelled("tuning cancelled")
        self.trials.append(trial)
        self._cache[resolved] = trial
        self.on_trial(trial)
        return trial

    # ---- the search ----------------------------------------------------------------------
    def run(self) -> TuneResult:
        """Search; returns the best found (also when cancelled, with what was found).

        Without llama-cpp-python it raises at once: every trial would fail the same way.
        """
        require_llama_cpp("tune")
        try:
            self._search()
        except (TuneCancelled, KeyboardInterrupt):
            self._cancel.set()
        except _OutOfTrials:
            self.notes.append(f"stopped after {self.max_trials} trials (--max-trials)")
        return self.result()

    def result(self) -> TuneResult:
        best = best_configuration(self.trials)
        best_plan = self.plan_for(best.settings) if best is not None else None
        handoff = plan_handoff(self.spec.path, best_plan) if best_plan is not None else None
        return TuneResult(
            objective=self.objective,
            n_ctx=self.n_ctx,
            trials=tuple(self.trials),
            best=best,
            plan=best_plan,
            handoff=handoff,
            pruned=self.pruned,
            cancelled=self._cancel.is_set(),
            notes=tuple(self.notes),
        )

    def _trial(self, settings: Settings, stage: Stage) -> Trial | None:
        if len(self.trials) >= self.max_trials and self.plan_for(settings).settings not in (
            self._cache
        ):
            raise _OutOfTrials()
        return self.run_trial(settings, stage)

    def _better(self, trial: Trial | None, incumbent: Trial) -> bool:
        return (
            trial is not None and trial.ok and trial.score > incumbent.score * (1 + self.tolerance)
        )

    def _search(self) -> None:
        start = self._starting_settings()
        incumbent = self._memory_stage(start)
        if incumbent is None:
            return
        incumbent = self._moe_stage(incumbent)
        incumbent = self._climb(
            "threads", incumbent, "threads", self._thread_values(incumbent.settings)
        )
        incumbent = self._flash_attn_stage(incumbent)
        if self.objective != "tg":
            incumbent = self._climb("ubatch", incumbent, "n_ubatch", self._ubatch_values())
        self._confirm()

    def _confirm(self) -> None:
        """Run the two best configurations once more: one unlucky trial must not decide."""
        ranked = sorted((t for t in self.trials if t.ok), key=lambda t: t.score, reverse=True)
        top: list[Settings] = []
        for t in ranked:
            if t.settings not in top:
                top.append(t.settings)
        if len(top) < 2:
            return
        for s in top[:2]:
            if len(self.trials) >= self.max_trials:
                raise _OutOfTrials()
            self.run_trial(s, "confirm", again=True)

    def _starting_settings(self) -> Settings:
        s = self.base
        if s.n_ctx < 0:  # --ctx max: the largest context at the estimator's most layers
            at_default = self.plan_for(s.with_(n_ctx=DEFAULT_CTX))
            ngl = at_default.max_gpu_layers if self._has_gpu else 0
            largest = max_context(self.spec, self.devices, s.with_(n_gpu_layers=ngl, n_ctx=256))
            if largest == 0:
                raise FitError("not even 256 tokens of context fit here", "--ctx max")
            s = s.with_(n_ctx=largest)
        self.n_ctx = s.n_ctx or self.spec.n_ctx_train
        if len(self.space.threads) == 1:
            s = s.with_(threads=self.space.threads[0])
        s = s.with_(threads=resolved_threads(s.threads))
        if self.objective != "tg" and len(self.space.ubatch) == 1:
            s = s.with_(n_ubatch=self.space.ubatch[0])
        if len(self.space.flash_attn) == 1:
            s = s.with_(flash_attn=self.space.flash_attn[0])
        elif s.flash_attn == "auto":
            # Say what auto becomes here, so the trials and the hand-off name what ran.
            s = s.with_(flash_attn="on" if self.plan_for(s).flash_attn else "off")
        return s

    # stage 1 and 2 ----------------------------------------------------------------------
    def cache_candidates(self, s: Settings) -> list[tuple[Settings, int]]:
        """(settings with a KV type, the estimator's most GPU layers) worth loading."""
        n_all = self.spec.n_layer + 1
        out: list[tuple[Settings, int]] = []
        most = -1
        # No types to try: the settings' own K and V types, as the user gave them.
        choices = [s.with_(cache_type_k=t, cache_type_v=t) for t in self.space.cache_types] or [s]
        for c in choices:
            if c.cache_type_v in QUANTIZED_CACHE_TYPES:
                if c.flash_attn == "off":
                    continue  # llama.cpp refuses a quantized V cache without flash attention
                c = c.with_(flash_attn="on")
            if not self._has_gpu:
                ngl = 0
            elif self.space.gpu_layers:
                ngl = self.plan_for(c.with_(n_gpu_layers=-1)).max_gpu_layers
            else:
                ngl = self.plan_for(c).n_gpu_layers
            at = c.with_(n_gpu_layers=ngl)
            if not self.plan_for(at).fits:
                self.pruned += 1
                continue
            if self._has_gpu and ngl <= most:
                continue  # no more layers on the GPU than a larger type: not needed
            out.append((at, ngl))
            most = ngl
            if not self._has_gpu or ngl == n_all:
                break  # everything placed: smaller types would only cost quality
        return out

    def _memory_stage(self, s: Settings) -> Trial | None:
        candidates = self.cache_candidates(s)
        if not candidates:
            tried = ", ".join(self.space.cache_types) or f"{s.cache_type_k}/{s.cache_type_v}"
            raise FitError(
                f"the model does not fit at a {self.n_ctx:,}-token context with the KV cache "
                f"types tried ({tried}); give a smaller --ctx",
                "llmtune tune",
            )
        if len(candidates) > 1 or candidates[0][0].cache_type_k != s.cache_type_k:
            kinds = ", ".join(c.cache_type_k for c, _ in candidates)
            self.notes.append(f"KV cache types tried for the context: {kinds}")
        best: Trial | None = None
        for c, ngl in candidates:
            trial = self._layers(c, ngl)
            if trial is not None and (best is None or trial.score > best.score):
                best = trial
        return best

    def _layers(self, s: Settings, most: int) -> Trial | None:
        """The most layers that really load, from the estimator's ``most`` down."""
        if not self._has_gpu or not self.space.gpu_layers:
            trial = self._trial(s, "layers")
            return trial if trial is not None and trial.ok else None
        loaded: list[Trial] = []

        def loads(ngl: int) -> bool:
            trial = self._trial(s.with_(n_gpu_layers=ngl), "layers")
            if trial is not None and trial.ok:
                loaded.append(trial)
                return True
            return False

        ngl = confirm_layers(most, loads)
        if ngl is None:
            return None
        if ngl < most:
            self.notes.append(f"the estimator's {most} GPU layers did not load; {ngl} did")
        return max(loaded, key=lambda t: t.score)

    # stage 3 ---------------------------------------------------------------------------
    def _moe_stage(self, incumbent: Trial) -> Trial:
        s = incumbent.settings
        n_all = self.spec.n_layer + 1
        if (
            not self.space.moe
            or not self._has_gpu
            or self.spec.n_expert == 0
            or s.n_gpu_layers >= n_all
            or self.base.n_cpu_moe != 0
        ):
            return incumbent
        full = s.with_(n_gpu_layers=n_all)
        lo, hi = 1, self.spec.n_layer  # the fewest expert layers on the CPU that fit
        if not self.plan_for(full.with_(n_cpu_moe=hi)).fits:
            self.pruned += 1
            return incumbent
        while lo < hi:
            mid = (lo + hi) // 2
            if self.plan_for(full.with_(n_cpu_moe=mid)).fits:
                hi = mid
            else:
                lo = mid + 1
        for n in (lo, min(self.spec.n_layer, lo + max(1, lo // 8))):  # once more if it fails
            trial = self._trial(full.with_(n_cpu_moe=n), "moe")
            if trial is not None and trial.ok:
                return trial if self._better(trial, incumbent) else incumbent
        return incumbent

    # stages 4 to 6 ---------------------------------------------------------------------
    def _thread_values(self, s: Settings) -> tuple[int, ...]:
        values = set(self.space.threads or thread_candidates())
        values.add(s.threads)
        return tuple(sorted(values))

    def _ubatch_values(self) -> tuple[int, ...]:
        """The ubatches to try: those up to the prompt (a larger one runs the same)."""
        limit = max(1, self.bench.prompt_tokens)
        values = {u for u in self.space.ubatch if u <= limit} or {min(self.space.ubatch)}
        if self.base.n_ubatch <= limit:
            values.add(self.base.n_ubatch)
        return tuple(sorted(values))

    def _with(self, s: Settings, name: str, value: int) -> Settings:
        if name == "n_ubatch":
            return s.with_(n_ubatch=value, n_batch=max(self.base.n_batch, value))
        return s.with_(**{name: value})

    def _climb(self, stage: Stage, incumbent: Trial, name: str, values: tuple[int, ...]) -> Trial:
        """Hill-climb one whole-number setting over ``values``, from the incumbent's."""
        if len(values) < 2:
            return incumbent
        current = getattr(incumbent.settings, name)
        # The incumbent stands for the largest value not above its own (a ubatch beyond
        # the prompt runs as the prompt's length).
        below = [j for j, v in enumerate(values) if v <= current]
        i = below[-1] if below else 0
        best = incumbent
        # Look both ways first, then keep going the way that won.
        neighbours = [j for j in (i - 1, i + 1) if 0 <= j < len(values)]
        winners: list[tuple[Trial, int]] = []
        for j in neighbours:
            trial = self._trial(self._with(incumbent.settings, name, values[j]), stage)
            if self._better(trial, best) and trial is not None:
                best = trial
                winners.append((trial, j - i))
        if not winners:
            return incumbent
        direction = winners[-1][1]  # the best is the neighbour that way
        j = i + 2 * direction
        while 0 <= j < len(values):
            trial = self._trial(self._with(best.settings, name, values[j]), stage)
            if not self._better(trial, best) or trial is None:
                break
            best = trial
            j += direction
        return best

    def _flash_attn_stage(self, incumbent: Trial) -> Trial:
        s = incumbent.settings
        resolved = "on" if self.plan_for(s).flash_attn else "off"
        best = incumbent
        for value in self.space.flash_attn:
            if value == resolved or value == s.flash_attn:
                continue
            if value == "off" and s.cache_type_v in QUANTIZED_CACHE_TYPES:
                continue
            trial = self._trial(s.with_(flash_attn=value), "flash-attn")
            if self._better(trial, best) and trial is not None:
                best = trial
        return best


def best_configuration(trials: Sequence[Trial]) -> Trial | None:
    """The latest trial of the configuration with the best mean score over its
    successful trials (ties go to the one tried first), or None when none ran."""
    scores: dict[Settings, list[float]] = {}
    latest: dict[Settings, Trial] = {}
    for t in trials:
        if t.ok:
            scores.setdefault(t.settings, []).append(t.score)
            latest[t.settings] = t
    if not scores:
        return None
    best = max(scores, key=lambda s: sum(scores[s]) / len(scores[s]))  # first of equals
    return latest[best]


class _OutOfTrials(Exception):
    pass


def confirm_layers(most: int, loads: Callable[[int], bool]) -> int | None:
    """The most GPU layers that load, searching down from the estimator's ``most``.

    ``loads(n)`` is a real load at ``n`` layers. After a failure the count steps
    down 1, 2, 4, ... layers, then bisects back up between the first success and
    the last failure; None when not even 0 layers load.
    """
    failed: int | None = None
    step, n = 1, most
    while n >= 0 and not loads(n):
        failed = n
        n -= step
        step *= 2
    if n < 0:
        if failed is not None and failed > 0 and loads(0):
            n = 0
        else:
            return None
    lo, hi = n, failed
    while hi is not None and hi - lo > 1:
        mid = (lo + hi) // 2
        if loads(mid):
            lo = mid
        else:
            hi = mid
    return lo


def sweep(tuner: Tuner, candidates: Sequence[Settings]) -> list[Trial]:
    """Run every candidate (an exhaustive sweep for comparison); pruned ones are skipped."""
    trials: list[Trial] = []
    for s in candidates:
        try:
            trial = tuner.run_trial(s, "sweep")
        except FitError:  # settings llama.cpp would refuse
            tuner.pruned += 1
            continue
        if trial is not None:
            trials.append(trial)
    return trials
