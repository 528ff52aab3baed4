"""``llmtune quantize``: llama.cpp's quantizer, run in the worker, that never leaves a mess.

The steps, for one source model and one file type:

1. :func:`prepare_quantize` checks everything that needs no llama.cpp run:
   llama-cpp-python is installed, the source reads as GGUF, the file type
   exists, the output name (by default the source's with its quant tag
   replaced, :func:`default_output`) is not the source and does not exist
   (unless ``force``), requantizing an already quantized model was allowed
   (llama.cpp refuses it otherwise, and it costs quality), an importance
   matrix is given when the file type needs one, and the predicted file
   (``fit.quant.requantize``) fits on the disk.
2. :func:`run_quantize` asks llama.cpp for a dry run
   (``llama_model_quantize_params.dry_run``): the type of every tensor and the
   size it will write, beside llmtune's prediction; the disk is checked again
   against the larger of the two.
3. The real run writes ``<output>.<pid>.partial`` in the output's folder,
   reporting each tensor as llama.cpp starts it; on success the file is synced,
   its header read back, and it is linked to the output name (an existing file
   is replaced only with ``force``). Cancelling, a dead worker, a full disk or
   any error deletes the partial file; the source is only ever read.

Every function raises :class:`~llmtune.errors.LlmtuneError` subclasses with
messages for users. The app runs :func:`run_quantize` in a thread and sets a
``threading.Event`` to cancel it.
"""

from __future__ import annotations

import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field

from llmtune.engine import require_llama_cpp
from llmtune.engine.protocol import (
    Event,
    Exited,
    Failed,
    Quantize,
    Quantized,
    QuantizeProgress,
)
from llmtune.engine.supervisor import Supervisor
from llmtune.errors import ConfigError, FitError, LlmtuneError, WorkerError
from llmtune.fit.quant import (
    QUANT_ALIGNMENT,
    FileType,
    QuantOptions,
    file_type,
    requantize,
    requantized_tensors,
    tensors_needing_imatrix,
)
from llmtune.model.ggml_types import GGML_TYPE_BY_NAME
from llmtune.model.gguf_file import TensorInfo
from llmtune.model.spec import ModelSpec, read_spec
from llmtune.units import MIB, format_bytes

# Kept free beyond the file, so quantizing never fills a disk to its last byte.
DISK_HEADROOM_BYTES = 64 * MIB
PARTIAL_SUFFIX = ".partial"
DRY_RUN_TIMEOUT_S = 300.0
# No event for this long while writing: the worker is stuck (llama.cpp logs every tensor).
STALL_TIMEOUT_S = 1800.0


class QuantizeCancelled(LlmtuneError):
    """The user stopped the quantization; nothing was written."""


@dataclass(frozen=True)
class QuantizeJob:
    """A checked request: what will be read, what will be written, and the prediction."""

    source: str
    output: str
    file_type: FileType
    source_file_type: str
    source_bytes: int
    allow_requantize: bool
    imatrix: str | None
    force: bool
    threads: int
    predicted: ModelSpec  # the file llama.cpp should write (fit.quant.requantize)
    requantized: tuple[str, ...] = ()  # quantized tensors that get another type
    replaces_existing: bool = False
    warnings: tuple[str, ...] = ()

    @property
    def predicted_file_bytes(self) -> int:
        return self.predicted.file_bytes

    @property
    def folder(self) -> str:
        return os.path.dirname(self.output)


@dataclass(frozen=True)
class QuantizePlan:
    """After llama.cpp's dry run: its sizes beside the prediction, and the disk."""

    job: QuantizeJob
    dry_run_tensor_bytes: int  # llama.cpp's "quant size" (MiB, two decimals)
    dry_run_file_bytes: int  # the file with llama.cpp's tensor types, laid out as it writes
    type_mismatches: tuple[str, ...]  # tensors whose dry-run type differs from the prediction
    free_bytes: int
    needed_bytes: int
    imatrix_entries: int = 0  # importance matrix entries llama.cpp received
    tensor_order: tuple[str, ...] = field(default=(), repr=False)


@dataclass(frozen=True)
class QuantizeStep:
    """llama.cpp started tensor ``index`` of ``count``; ``fraction`` of the work is done."""

    index: int
    count: int
    tensor: str
    fraction: float
    elapsed_s: float


@dataclass(frozen=True)
class QuantizeResult:
    plan: QuantizePlan
    output: str
    file_bytes: int
    seconds: float

    @property
    def size_error_pct(self) -> float:
        """The written file against llmtune's prediction, in percent."""
        predicted = self.plan.job.predicted_file_bytes
        return (predicted - self.file_bytes) / self.file_bytes * 100 if self.file_bytes else 0.0


QuantizeUpdate = QuantizePlan | QuantizeStep | QuantizeResult


# ---- names --------------------------------------------------------------------------------


def default_output(source: str | os.PathLike[str], ftype_name: str) -> str:
    """The source's path with its quant tag replaced: ``x-Q8_0.gguf`` -> ``x-Q4_K_M.gguf``.

    A split model's shard suffix goes (llama.cpp writes one file); a name without a
    tag gets ``-FTYPE`` before ``.gguf``.
    """
    from llmtune.model.discover import with_quant_tag

    folder, name = os.path.split(os.path.abspath(os.fspath(source)))
    return os.path.join(folder, with_quant_tag(name, file_type(ftype_name).name))


def partial_path(output: str, pid: int | None = None) -> str:
    """Where the file is written before it gets its name (same folder: rename is atomic)."""
    return f"{output}.{os.getpid() if pid is None else pid}{PARTIAL_SUFFIX}"


def remove_stale_partials(output: str) -> list[str]:
    """Delete partial files of ``output`` left by llmtune processes that no longer run."""
    folder, name = os.path.split(output)
    pattern = re.compile(re.escape(name) + r"\.(\d+)" + re.escape(PARTIAL_SUFFIX))
    removed: list[str] = []
    try:
        entries = os.listdir(folder)
    except OSError:
        return removed
    for entry in entries:
        m = pattern.fullmatch(entry)
        if m is None or pid_alive(int(m.group(1))):
            continue
        try:
            os.unlink(os.path.join(folder, entry))
            removed.append(entry)
        except OSError:
            pass
    return removed


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def disk_free_bytes(folder: str) -> int:
    """Bytes this user may still write in ``folder``'s file system."""
    return int(shutil.disk_usage(folder).free)


# ---- checks -------------------------------------------------------------------------------


def prepare_quantize(
    model: str | os.PathLike[str],
    to: str,
    output: str | os.PathLike[str] | None = None,
    *,
    allow_requantize: bool = False,
    imatrix: str | os.PathLike[str] | None = None,
    force: bool = False,
    threads: int = 0,
) -> QuantizeJob:
    """Check a quantization before anything runs; raise with a one-line reason."""
    require_llama_cpp("quantize")
    spec = read_spec(model)
    try:
        ft = file_type(to)
    except FitError as err:
        raise ConfigError(err.what, "--to") from None
    if threads < 0:
        raise ConfigError(f"threads must be 0 (all) or more, not {threads}", "--threads")
    out = os.path.abspath(os.fspath(output)) if output else default_output(spec.path, ft.name)
    if os.path.isdir(out):
        out = os.path.join(out, os.path.basename(default_output(spec.path, ft.name)))
    folder = os.path.dirname(out)
    if not os.path.isdir(folder):
        raise ConfigError("the output folder does not exist", folder)
    sources = [os.path.abspath(p) for p in spec.shard_paths]
    if any(_same_file(out, s) for s in sources):
        raise ConfigError("the output would overwrite the model being read; give another -o", out)
    exists = os.path.lexists(out)
    if exists and not force:
        raise ConfigError(f"{os.path.basename(out)} exists; --force replaces it", out)
    if exists and os.path.isdir(out):
        raise ConfigError("the output is a folder", out)
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError("cannot write in the output folder", folder)

    imatrix_path = os.path.abspath(os.fspath(imatrix)) if imatrix else None
    if imatrix_path is not None and not os.path.isfile(imatrix_path):
        raise ConfigError("no such importance matrix file", imatrix_path)
    options = QuantOptions(imatrix=imatrix_path is not None)
    warnings: list[str] = []
    requantized = requantized_tensors(spec, ft.name, options)
    source_type = spec.file_type_name
    if requantized:
        loss = (
            f"requantizing {source_type} to {ft.name} loses more quality than quantizing "
            "from F16/BF16/F32"
        )
        if not allow_requantize:
            raise ConfigError(
                f"the model is already quantized ({len(requantized)} tensors): {loss}; "
                "--allow-requantize does it anyway",
                spec.path,
            )
        warnings.append(loss)
    if imatrix_path is None:
        needing = tensors_needing_imatrix(spec, ft.name, QuantOptions(imatrix=False))
        if needing:
            raise ConfigError(
                f"{ft.name} needs an importance matrix for {len(needing)} tensors "
                "(llama.cpp refuses without one): give --imatrix FILE",
                "--to",
            )
    predicted = requantize(spec, ft.name, options)
    job = QuantizeJob(
        source=os.path.abspath(spec.path),
        output=out,
        file_type=ft,
        source_file_type=source_type,
        source_bytes=spec.file_bytes,
        allow_requantize=allow_requantize,
        imatrix=imatrix_path,
        force=force,
        threads=threads,
        predicted=predicted,
        requantized=tuple(requantized),
        replaces_existing=exists,
        warnings=tuple(warnings),
    )
    check_disk(job, predicted.file_bytes, disk_free_bytes(folder))
    return job


def _same_file(a: str, b: str) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_disk(job: QuantizeJob, file_bytes: int, free_bytes: int) -> int:
    """Raise when ``file_bytes`` (plus headroom) do not fit; returns the bytes needed."""
    needed = file_bytes + DISK_HEADROOM_BYTES
    if free_bytes < needed:
        raise ConfigError(
            f"not enough disk space: the {job.file_type.name} file takes "
            f"{format_bytes(file_bytes)} and {format_bytes(DISK_HEADROOM_BYTES)} are kept free, "
            f"but {format_bytes(free_bytes)} are free",
            job.folder,
        )
    return needed


# ---- the run ------------------------------------------------------------------------------


def run_quantize(
    job: QuantizeJob,
    *,
    cancel: threading.Event | None = None,
    file_size_limit_bytes: int | None = None,
) -> Generator[QuantizeUpdate, None, None]:
    """Dry run, then the real run: yields a QuantizePlan, QuantizeSteps, a QuantizeResult.

    Set ``cancel`` (from any thread) to stop: the worker is killed, the partial
    file deleted, and QuantizeCancelled raised. Closing the generator early does
    the same cleanup. ``file_size_limit_bytes`` is a test hook (a full disk).
    """
    require_llama_cpp("quantize")
    stop = cancel or threading.Event()
    started = time.monotonic()
    remove_stale_partials(job.output)
    sup = Supervisor(log_lines=50)
    temp: str | None = None
    finished = False
    try:
        sup.start()
        base = Quantize(
            source=job.source,
            output="",
            ftype=job.file_type.ftype,
            allow_requantize=job.allow_requantize,
            imatrix_path=job.imatrix or "",
            threads=job.threads,
        )
        sup.quantize(base)
        dry = _wait(sup, stop, DRY_RUN_TIMEOUT_S, "the dry run")
        assert isinstance(dry, Quantized)
        plan = _plan(job, dry)
        yield plan

        temp = partial_path(job.output)
        sup.quantize(
            Quantize(
                source=base.source,
                output=temp,
                ftype=base.ftype,
                allow_requantize=base.allow_requantize,
                imatrix_path=base.imatrix_path,
                threads=base.threads,
                file_size_limit_bytes=file_size_limit_bytes,
            )
        )
        weights = _tensor_weights(job, plan)
        t0 = time.monotonic()
        while True:
            event = _next(sup, stop, STALL_TIMEOUT_S, "quantizing", job, temp)
            if isinstance(event, QuantizeProgress):
                yield QuantizeStep(
                    index=event.index,
                    count=event.count,
                    tensor=event.tensor,
                    fraction=weights(event.index, event.count),
                    elapsed_s=time.monotonic() - t0,
                )
            elif isinstance(event, Quantized):
                break
        sup.shutdown()
        file_bytes = _verify(temp, job)
        _publish(temp, job.output, job.force)
        finished = True
        yield QuantizeResult(plan, job.output, file_bytes, time.monotonic() - started)
    finally:
        if not finished:
            sup.kill()  # llama.cpp's quantizer cannot be interrupted otherwise
        sup.shutdown(timeout_s=2.0)
        if temp is not None and os.path.lexists(temp):
            try:
                os.unlink(temp)
            except OSError:
                pass


def quantize(
    job: QuantizeJob,
    *,
    on_update: Callable[[QuantizeUpdate], None] = lambda update: None,
    cancel: threading.Event | None = None,
) -> QuantizeResult:
    """Run :func:`run_quantize` to the end, passing every update to ``on_update``."""
    result: QuantizeResult | None = None
    for update in run_quantize(job, cancel=cancel):
        on_update(update)
        if isinstance(update, QuantizeResult):
            result = update
    assert result is not None
    return result


def _wait(sup: Supervisor, stop: threading.Event, timeout_s: float, what: str) -> Event:
    while True:
        event = _next(sup, stop, timeout_s, what, None, None)
        if isinstance(event, Quantized):
            return event


def _next(
    sup: Supervisor,
    stop: threading.Event,
    timeout_s: float,
    what: str,
    job: QuantizeJob | None,
    temp: str | None,
) -> Event:
    """The next quantizer event; raises on cancel, failure, death or silence."""
    deadline = time.monotonic() + timeout_s
    while True:
        if stop.is_set():
            raise QuantizeCancelled("quantization cancelled; nothing was written")
        if time.monotonic() > deadline:
            raise WorkerError(f"llama.cpp's quantizer said nothing for {timeout_s:.0f} s ({what})")
        event = sup.next_event(timeout_s=0.1)
        if event is None:
            continue
        if isinstance(event, (QuantizeProgress, Quantized)):
            return event
        if isinstance(event, Failed):
            raise WorkerError(_failure(event.reason, job, temp))
        if isinstance(event, Exited):
            raise WorkerError(f"the llama.cpp worker ended during {what}: {event.describe}")


def _failure(reason: str, job: QuantizeJob | None, temp: str | None) -> str:
    """The worker's reason, with what a failed write most likely means."""
    if job is None or temp is None:
        return reason
    # llama-quant.cpp writes with std::ofstream and failbit exceptions: a failed write is
    # reported as the stream's own "basic_ios::clear: iostream error".
    if "iostream error" in reason:
        reason = f"llama.cpp could not write the file in {job.folder}: a write failed"
    try:
        free = disk_free_bytes(job.folder)
    except OSError:
        return reason
    if free < DISK_HEADROOM_BYTES // 4:
        return f"{reason}; the disk is full ({format_bytes(free)} free)"
    return reason


def _tensor_bytes(t: TensorInfo, type_name: str) -> int | None:
    """Bytes of ``t`` in ``type_name``: rows x ggml_row_size, as llama-quant.cpp counts them."""
    ggml = GGML_TYPE_BY_NAME.get(type_name)
    if ggml is None:
        return None
    ne0 = t.shape[0] if t.shape else 1
    return t.n_elements // max(ne0, 1) * ggml.row_bytes(ne0)


def _pad(n: int) -> int:
    return (n + QUANT_ALIGNMENT - 1) // QUANT_ALIGNMENT * QUANT_ALIGNMENT


def _plan(job: QuantizeJob, dry: Quantized) -> QuantizePlan:
    predicted = {t.name: t for t in job.predicted.tensors}
    file_bytes = _pad(job.predicted.header_bytes)
    mismatches: list[str] = []
    for name, type_name in dry.tensor_types:
        p = predicted.get(name)
        nbytes = _tensor_bytes(p, type_name) if p is not None else None
        if p is not None and p.type_name != type_name:
            mismatches.append(f"{name}: llama.cpp {type_name}, llmtune {p.type_name}")
        if nbytes is None:
            nbytes = p.nbytes if p is not None else 0
        file_bytes += _pad(nbytes)
    if not dry.tensor_types:  # nothing parsed: fall back to the prediction
        file_bytes = job.predicted_file_bytes
    free = disk_free_bytes(job.folder)
    needed = check_disk(job, max(file_bytes, job.predicted_file_bytes), free)
    return QuantizePlan(
        job=job,
        dry_run_tensor_bytes=dry.quant_tensor_bytes,
        dry_run_file_bytes=file_bytes,
        type_mismatches=tuple(mismatches),
        free_bytes=free,
        needed_bytes=needed,
        imatrix_entries=dry.imatrix_entries,
        tensor_order=tuple(name for name, _ in dry.tensor_types),
    )


def _tensor_weights(job: QuantizeJob, plan: QuantizePlan) -> Callable[[int, int], float]:
    """Fraction of the work done when tensor ``index`` starts: weights by element count."""
    elements = {t.name: t.n_elements for t in job.predicted.tensors}
    sizes = [elements.get(name, 0) for name in plan.tensor_order]
    total = sum(sizes)
    done = [0]
    for n in sizes:
        done.append(done[-1] + n)

    def fraction(index: int, count: int) -> float:
        if total and len(sizes) == count and 1 <= index <= count:
            return done[index - 1] / total
        return (index - 1) / count if count else 0.0

    return fraction


def _verify(temp: str, job: QuantizeJob) -> int:
    """Sync the written file and read its header back before it gets its name."""
    try:
        with open(temp, "rb+") as fh:
            os.fsync(fh.fileno())
        written = read_spec(temp)
    except (OSError, LlmtuneError) as err:
        raise WorkerError(f"llama.cpp wrote an unreadable file: {err}", temp) from None
    if written.file_type_name != job.file_type.name:
        raise WorkerError(
            f"llama.cpp wrote a {written.file_type_name} file, not {job.file_type.name}", temp
        )
    return written.file_bytes


def _publish(temp: str, output: str, force: bool) -> None:
    """Give the finished file its name; never replace an existing file without ``force``."""
    if force:
        os.replace(temp, output)
    else:
        try:
            os.link(temp, output)  # fails if the name exists: no check-then-write race
        except FileExistsError:
            raise ConfigError(
                f"{os.path.basename(output)} appeared while quantizing; kept it "
                "(--force replaces it)",
                output,
            ) from None
        except OSError:  # a file system without hard links
            if os.path.lexists(output):
                raise ConfigError(
                    f"{os.path.basename(output)} appeared while quantizing; kept it", output
                ) from None
            os.replace(temp, output)
        else:
            os.unlink(temp)
    try:
        fd = os.open(os.path.dirname(output), os.O_RDONLY)
        try:
            os.fsync(fd)  # the new name survives a power cut
        finally:
            os.close(fd)
    except OSError:
        pass
