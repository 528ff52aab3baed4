"""``llmtune quality``: what each file type costs in quality, measured on the user's model.

For one source (F16/BF16/F32 at best; a quantized file is requantized, and
said so) and a list of file types:

1. :func:`prepare_quality` checks what needs no run: the file types exist and
   get an importance matrix where llama.cpp needs one (``prepare_quantize``,
   once per type), llama-perplexity is built, the text reads, and the disk
   holds the source's log-probability file plus the largest target.
2. :func:`run_quality` makes a private folder beside the source (or in
   ``work_dir``), runs ``llama-perplexity --kl-divergence-base`` on the source,
   then per type quantizes with llama.cpp's quantizer (``engine.quantize``,
   the disk checked again first) into that folder, runs ``--kl-divergence``
   against the base and deletes the file. Each measured row is kept
   (``engine.quality_store``) as soon as it exists.
3. Cancelling (an Event, or KeyboardInterrupt) kills the running tool or
   quantizer; the private folder is removed whatever happens. The source is
   only read.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass

from llmtune.engine.perplexity import (
    BaseRun,
    KldStats,
    MeasureCancelled,
    base_command,
    base_file_bytes,
    chunks_done,
    kld_command,
    parse_base,
    parse_kld,
    perplexity_tool,
    run_tool,
    total_chunks,
)
from llmtune.engine.quality_store import (
    QualityKey,
    QualityRow,
    QualityText,
    StoredRow,
    fingerprint,
    llama_build,
    load_text,
    now,
    save_rows,
)
from llmtune.engine.quantize import (
    DISK_HEADROOM_BYTES,
    QuantizeCancelled,
    QuantizeJob,
    QuantizeResult,
    QuantizeStep,
    check_disk,
    disk_free_bytes,
    pid_alive,
    prepare_quantize,
    run_quantize,
)
from llmtune.errors import ConfigError, LlmtuneError
from llmtune.fit.quant import file_type
from llmtune.model.spec import read_spec
from llmtune.units import format_bytes

DEFAULT_TYPES = ("Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q3_K_M", "Q2_K")
DEFAULT_CTX = 512  # llama-perplexity's own default (perplexity.cpp main: params.n_ctx = 512)
HIGH_PRECISION = ("F32", "BF16", "F16")


PRIVATE_PREFIX = ".llmtune-quality-"


def remove_stale_folders(work_dir: str) -> list[str]:
    """Private folders left by llmtune processes that no longer run (killed outright)."""
    pattern = re.compile(re.escape(PRIVATE_PREFIX) + r"(\d+)-\w+")
    removed: list[str] = []
    try:
        entries = os.listdir(work_dir)
    except OSError:
        return removed
    for entry in entries:
        m = pattern.fullmatch(entry)
        if m is not None and not pid_alive(int(m.group(1))):
            shutil.rmtree(os.path.join(work_dir, entry), ignore_errors=True)
            removed.append(entry)
    return removed


class QualityCancelled(LlmtuneError):
    """The user stopped the measurement; no temporary file is left."""


@dataclass(frozen=True)
class QualityRequest:
    source: str
    shard_paths: tuple[str, ...]
    source_type: str
    source_bytes: int
    n_vocab: int
    jobs: tuple[QuantizeJob, ...]  # one per type to quantize (outputs set at run time)
    text: QualityText
    n_ctx: int
    chunks: int | None
    threads: int
    imatrix: str | None
    work_dir: str
    warnings: tuple[str, ...] = ()

    @property
    def types(self) -> tuple[str, ...]:
        return tuple(j.file_type.name for j in self.jobs)

    def base_bytes_max(self) -> int:
        """The base file at most: no more chunks than the text has bytes (a token is
        at least one byte, plus the BOS) or than ``chunks`` asks."""
        n_chunk = (self.text.bytes + 1) // self.n_ctx
        if self.chunks:
            n_chunk = min(n_chunk, self.chunks)
        return base_file_bytes(self.n_vocab, self.n_ctx, max(n_chunk, 1))


@dataclass(frozen=True)
class QualityProgress:
    phase: str  # "source" (the base pass), "quantize", "measure"
    file_type: str
    step: int  # 0: the source pass, then 1..steps for the types
    steps: int
    phase_fraction: float
    fraction: float  # of the whole run
    elapsed_s: float
    eta_s: float | None  # None until a first rate is known


@dataclass(frozen=True)
class QualityReport:
    request: QualityRequest
    key: QualityKey
    base: BaseRun
    rows: tuple[QualityRow, ...]
    seconds: float


QualityUpdate = QualityProgress | QualityRow | QualityReport


def parse_types(text: str | None) -> tuple[str, ...]:
    """``--types Q8_0,q4_k_m``: canonical names, in order, without repeats."""
    if not text:
        return DEFAULT_TYPES
    names: list[str] = []
    for part in text.split(","):
        if not part.strip():
            continue
        try:
            name = file_type(part.strip()).name
        except LlmtuneError as err:
            raise ConfigError(err.what, "--types") from None
        if name not in names:
            names.append(name)
    if not names:
        raise ConfigError("no file type given", "--types")
    return tuple(names)


def prepare_quality(
    model: str | os.PathLike[str],
    types: Sequence[str] = DEFAULT_TYPES,
    *,
    text: str | os.PathLike[str] | None = None,
    n_ctx: int = DEFAULT_CTX,
    chunks: int | None = None,
    imatrix: str | os.PathLike[str] | None = None,
    threads: int = 0,
    work_dir: str | os.PathLike[str] | None = None,
) -> QualityRequest:
    """Check a measurement before anything runs; raise with a one-line reason."""
    if n_ctx < 8:
        raise ConfigError(f"the context must be at least 8 tokens, not {n_ctx}", "--ctx")
    if chunks is not None and chunks < 1:
        raise ConfigError("--chunks must be at least 1", "--chunks")
    if threads < 0:
        raise ConfigError(
            f"threads must be 0 (llama.cpp's default) or more, not {threads}", "--threads"
        )
    quality_text = load_text(text)
    spec = read_spec(model)
    perplexity_tool()
    source = os.path.abspath(spec.path)
    folder = os.path.abspath(os.fspath(work_dir)) if work_dir else _default_work_dir(source)
    if not os.path.isdir(folder):
        raise ConfigError("the work folder does not exist", folder)
    source_type = spec.file_type_name
    warnings: list[str] = []
    if source_type not in HIGH_PRECISION:
        warnings.append(
            f"the source is {source_type}, not F16/BF16/F32: each type is requantized from it, "
            "which measures more loss than quantizing from the original weights"
        )
    jobs: list[QuantizeJob] = []
    for name in types:
        if name == source_type:
            continue  # the source's own row is the reference, always measured
        # The output is a placeholder in the work folder: each run writes in a private folder.
        job = prepare_quantize(
            source,
            name,
            os.path.join(folder, f".llmtune-quality-{os.getpid()}-{name}.gguf"),
            allow_requantize=True,
            imatrix=imatrix,
            threads=threads,
        )
        jobs.append(job)
    request = QualityRequest(
        source=source,
        shard_paths=tuple(os.path.abspath(p) for p in spec.shard_paths),
        source_type=source_type,
        source_bytes=spec.file_bytes,
        n_vocab=spec.n_vocab,
        jobs=tuple(jobs),
        text=quality_text,
        n_ctx=n_ctx,
        chunks=chunks,
        threads=threads,
        imatrix=os.path.abspath(os.fspath(imatrix)) if imatrix else None,
        work_dir=folder,
        warnings=tuple(warnings),
    )
    check_space(request, disk_free_bytes(folder))
    return request


def _default_work_dir(source: str) -> str:
    """Beside the source (the disk that holds a large model can hold its quantizations),
    else the system's temporary folder."""
    folder = os.path.dirname(source)
    if os.access(folder, os.W_OK | os.X_OK):
        return folder
    return tempfile.gettempdir()


def check_space(request: QualityRequest, free_bytes: int) -> None:
    """The base file and the largest target at once (targets are deleted one by one)."""
    largest = max((j.predicted_file_bytes for j in request.jobs), default=0)
    needed = request.base_bytes_max() + largest + DISK_HEADROOM_BYTES
    if free_bytes < needed:
        raise ConfigError(
            f"not enough disk space: the source's log-probabilities take up to "
            f"{format_bytes(request.base_bytes_max())} and the largest file type "
            f"{format_bytes(largest)}, {format_bytes(DISK_HEADROOM_BYTES)} kept free, but "
            f"{format_bytes(free_bytes)} are free (--work-dir puts them elsewhere)",
            request.work_dir,
        )


class _Clock:
    """Time left from the phases seen so far: a measurement pass of a quantized file is
    taken to cost what the source's did until one is seen, a quantization half of that."""

    def __init__(self, n_types: int) -> None:
        self.start = time.monotonic()
        self.n_types = n_types
        self.base_s: float | None = None
        self.quantize_s: list[float] = []
        self.measure_s: list[float] = []

    def expected(self, phase: str) -> float | None:
        seen = self.quantize_s if phase == "quantize" else self.measure_s
        if seen:
            return sum(seen) / len(seen)
        if self.base_s is None:
            return None
        return self.base_s * (0.5 if phase == "quantize" else 1.0)

    def eta(
        self, phase: str, step: int, phase_elapsed: float, phase_fraction: float
    ) -> float | None:
        if phase_fraction > 0.02:
            current_left = phase_elapsed * (1 - phase_fraction) / phase_fraction
        else:
            guess = self.expected("measure" if phase == "source" else phase)
            if guess is None:
                return None
            current_left = max(guess - phase_elapsed, 0.0)
        q, m = self.expected("quantize"), self.expected("measure")
        if phase == "source":
            per_type = (current_left + phase_elapsed) * 1.5  # the guesses above, before any
            return current_left + per_type * self.n_types
        if q is None or m is None:
            return None
        later = self.n_types - step
        return current_left + (m if phase == "quantize" else 0.0) + later * (q + m)


def run_quality(
    request: QualityRequest, *, cancel: threading.Event | None = None
) -> Generator[QualityUpdate, None, None]:
    """Yields QualityProgress, a QualityRow per type (the source's first), a QualityReport.

    Raises QualityCancelled when ``cancel`` is set; KeyboardInterrupt passes through
    after the same cleanup. Closing the generator early cleans up too.
    """
    stop = cancel or threading.Event()
    clock = _Clock(len(request.jobs))
    steps = len(request.jobs)
    key_source = fingerprint(request.shard_paths)
    build = llama_build()
    remove_stale_folders(request.work_dir)
    private = tempfile.mkdtemp(prefix=f"{PRIVATE_PREFIX}{os.getpid()}-", dir=request.work_dir)
    progress: list[QualityProgress] = []

    def report(phase: str, name: str, step: int, fraction: float, t0: float) -> QualityProgress:
        elapsed = time.monotonic() - clock.start
        eta = clock.eta(phase, step, time.monotonic() - t0, fraction)
        whole = elapsed / (elapsed + eta) if eta is not None and elapsed + eta > 0 else 0.0
        return QualityProgress(phase, name, step, steps, fraction, whole, elapsed, eta)

    try:
        check_space(request, disk_free_bytes(private))
        base_file = os.path.join(private, "source.kld")
        t0 = time.monotonic()

        def on_base(output: str) -> None:
            total = total_chunks(output)
            if total:
                progress.append(
                    report("source", request.source_type, 0, chunks_done(output, False) / total, t0)
                )

        cmd = base_command(request.source, request.text.path, base_file, request.n_ctx,
                           request.chunks, request.threads)  # fmt: skip
        output = yield from _tool(cmd, stop, on_base, progress)
        if stop.is_set():
            raise QualityCancelled("measurement cancelled; no file was left")
        base = dataclasses.replace(
            parse_base(output, request.n_ctx, request.text.path),
            seconds=time.monotonic() - t0,
        )
        clock.base_s = base.seconds
        key = QualityKey(key_source, build, request.text.sha256, request.n_ctx, base.n_chunk)
        rows: list[QualityRow] = [_source_row(request, base)]
        save_rows([StoredRow(key, request.text.name, now(), rows[0])])
        yield rows[0]
        for step, job in enumerate(request.jobs, start=1):
            name = job.file_type.name
            target = os.path.join(private, f"{name}.gguf")
            check_disk(job, job.predicted_file_bytes, disk_free_bytes(private))
            t0 = time.monotonic()
            file_bytes = 0
            try:
                for update in run_quantize(dataclasses.replace(job, output=target), cancel=stop):
                    if isinstance(update, QuantizeStep):
                        yield report("quantize", name, step, update.fraction, t0)
                    elif isinstance(update, QuantizeResult):
                        file_bytes = update.file_bytes
            except QuantizeCancelled:
                raise QualityCancelled("measurement cancelled; no file was left") from None
            clock.quantize_s.append(time.monotonic() - t0)
            t0 = time.monotonic()

            def on_kld(output: str, name: str = name, step: int = step, t0: float = t0) -> None:
                total = total_chunks(output)
                if total:
                    done = chunks_done(output, True)
                    progress.append(report("measure", name, step, done / total, t0))

            output = yield from _tool(kld_command(target, base_file, request.n_ctx,
                                                  request.threads), stop, on_kld, progress)  # fmt: skip
            if stop.is_set():  # cancelled as the pass ended: cancelled all the same
                raise QualityCancelled("measurement cancelled; no file was left")
            stats = parse_kld(output)
            clock.measure_s.append(time.monotonic() - t0)
            os.unlink(target)
            row = _row(job, stats, file_bytes, clock.quantize_s[-1], clock.measure_s[-1])
            rows.append(row)
            save_rows([StoredRow(key, request.text.name, now(), row)])
            yield row
        yield QualityReport(request, key, base, tuple(rows), time.monotonic() - clock.start)
    finally:
        shutil.rmtree(private, ignore_errors=True)


def _tool(
    cmd: list[str],
    stop: threading.Event,
    on_output: Callable[[str], None],
    progress: list[QualityProgress],
) -> Generator[QualityProgress, None, str]:
    """Run a llama-perplexity pass in a thread, yielding its progress from this one."""
    result: list[str] = []
    error: list[BaseException] = []
    finished = threading.Event()

    def work() -> None:
        try:
            result.append(run_tool(cmd, cancel=stop, on_output=on_output))
        except BaseException as exc:  # handed to the generator's thread
            error.append(exc)
        finally:
            finished.set()

    thread = threading.Thread(target=work, name="llama-perplexity", daemon=True)
    thread.start()
    try:
        while not finished.wait(timeout=0.1):
            while progress:
                yield progress.pop(0)
    finally:
        # KeyboardInterrupt or a closed generator: kill the tool. (Not Thread.is_alive: a
        # join interrupted by KeyboardInterrupt can make it say False while the thread runs.)
        if not finished.is_set():
            stop.set()
            finished.wait()
    while progress:
        yield progress.pop(0)
    if error:
        if isinstance(error[0], MeasureCancelled):
            raise QualityCancelled("measurement cancelled; no file was left") from None
        raise error[0]
    return result[0]


def _source_row(request: QualityRequest, base: BaseRun) -> QualityRow:
    """The reference: the source against itself (no divergence by definition)."""
    return QualityRow(
        file_type=request.source_type, imatrix=False, file_bytes=request.source_bytes,
        ppl=base.ppl, ppl_err=base.ppl_err, ln_ppl_ratio=0.0, ln_ppl_ratio_err=0.0,
        kld_mean=0.0, kld_mean_err=0.0, kld_median=0.0, kld_p99=0.0, kld_max=0.0,
        same_top_pct=100.0, same_top_err_pct=0.0, rms_dp_pct=0.0,
        quantize_s=0.0, measure_s=base.seconds, is_source=True,
    )  # fmt: skip


def _row(
    job: QuantizeJob, s: KldStats, file_bytes: int, quantize_s: float, measure_s: float
) -> QualityRow:
    return QualityRow(
        file_type=job.file_type.name, imatrix=job.imatrix is not None, file_bytes=file_bytes,
        ppl=s.ppl, ppl_err=s.ppl_err, ln_ppl_ratio=s.ln_ppl_ratio,
        ln_ppl_ratio_err=s.ln_ppl_ratio_err, kld_mean=s.kld_mean, kld_mean_err=s.kld_mean_err,
        kld_median=s.kld_median, kld_p99=s.kld_p99, kld_max=s.kld_max,
        same_top_pct=s.same_top_pct, same_top_err_pct=s.same_top_err_pct,
        rms_dp_pct=s.rms_dp_pct, quantize_s=quantize_s, measure_s=measure_s,
    )  # fmt: skip
