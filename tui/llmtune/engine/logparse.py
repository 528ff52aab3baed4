"""Parse what llama.cpp logs while it loads a model and creates a context.

Pure functions over log text: no llama_cpp import, so the parent process, the
worker and the tests share one parser. The formats are those of the llama.cpp
vendored by llama-cpp-python 0.3.36 (docs/llama-cpp-memory.md, section 6):

- ``load_tensors: %12s model buffer size = %8.2f MiB`` (``llama_model_base::load_tensors``)
- ``llama_kv_cache: %10s KV buffer size = %8.2f MiB`` (``llama_kv_cache`` ctor)
- ``llama_memory_recurrent: %10s RS buffer size = %8.2f MiB`` (``llama_memory_recurrent`` ctor)
- ``sched_reserve: %10s compute buffer size = %8.2f MiB`` (``llama_context::sched_reserve``)
- ``llama_context: %10s  output buffer size = %8.2f MiB`` (``llama_context`` ctor)

Every size is ``bytes / 1024 / 1024`` printed with two decimals, so a parsed
size is only known to half a unit in the last place: +-5,243 bytes
(``Buffer.precision_bytes``). The context destructor also logs each compute
buffer with four decimals (``~llama_context: ... compute buffer size is %8.4f
MiB, matches expectation of %8.4f MiB``, a DEBUG line); those are kept in
``LlamaLog.compute_exact``.

Lines are matched anywhere in the text, not only at a line start, because
llama.cpp sometimes logs a message without its newline (the progress dots, or
``load: ... instead.load: 0 unused tokens``), gluing two messages together.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

BufferKind = Literal["model", "kv", "rs", "compute", "output"]
BUFFER_KINDS: tuple[BufferKind, ...] = ("model", "kv", "rs", "compute", "output")

MIB = 1024 * 1024
GIB = 1024 * MIB

# Horizontal whitespace only: a pattern must never run into the next line.
_S = r"[ \t]"
_NUM = r"([0-9]+(?:\.[0-9]+)?)"
_NAME = r"(\S+)"

_BUFFER_RES: tuple[tuple[BufferKind, re.Pattern[str]], ...] = (
    ("model", re.compile(rf"load_tensors:{_S}+{_NAME}{_S}+model{_S}+buffer{_S}+size{_S}*={_S}*{_NUM}{_S}*MiB")),
    ("kv", re.compile(rf"llama_kv_cache:{_S}+{_NAME}{_S}+KV{_S}+buffer{_S}+size{_S}*={_S}*{_NUM}{_S}*MiB")),
    ("rs", re.compile(rf"llama_memory_recurrent:{_S}+{_NAME}{_S}+RS{_S}+buffer{_S}+size{_S}*={_S}*{_NUM}{_S}*MiB")),
    # Older builds printed the compute line with the llama_context prefix.
    ("compute", re.compile(rf"(?<!~)(?:sched_reserve|llama_context):{_S}+{_NAME}{_S}+compute{_S}+buffer{_S}+size{_S}*={_S}*{_NUM}{_S}*MiB")),
    ("output", re.compile(rf"llama_context:{_S}+{_NAME}{_S}+output{_S}+buffer{_S}+size{_S}*={_S}*{_NUM}{_S}*MiB")),
)  # fmt: skip

_COMPUTE_EXACT_RE = re.compile(
    rf"~llama_context:{_S}+{_NAME}{_S}+compute{_S}+buffer{_S}+size{_S}+(?:is|of){_S}*{_NUM}{_S}*MiB,"
    rf"{_S}*(?:matches|does{_S}+not{_S}+match){_S}+expectation{_S}+of{_S}*{_NUM}{_S}*MiB"
)
_KV_SUMMARY_RE = re.compile(
    rf"llama_kv_cache:{_S}+size{_S}*={_S}*{_NUM}{_S}*MiB{_S}*\({_S}*(\d+){_S}+cells,{_S}*(\d+){_S}+layers,"
    rf"{_S}*(\d+){_S}*/{_S}*(\d+){_S}+seqs{_S}*\),{_S}*K{_S}*\((\w+)\):{_S}*{_NUM}{_S}*MiB,"
    rf"{_S}*V{_S}*\((\w+)\):{_S}*{_NUM}{_S}*MiB"
)
_RS_SUMMARY_RE = re.compile(
    rf"llama_memory_recurrent:{_S}+size{_S}*={_S}*{_NUM}{_S}*MiB{_S}*\({_S}*(\d+){_S}+cells,{_S}*(\d+){_S}+layers,"
    rf"{_S}*(\d+){_S}+seqs{_S}+(\d+){_S}+rs_seq{_S}*\),{_S}*R{_S}*\((\w+)\):{_S}*{_NUM}{_S}*MiB,"
    rf"{_S}*S{_S}*\((\w+)\):{_S}*{_NUM}{_S}*MiB(?:,{_S}*P{_S}*\((\w+)\):{_S}*{_NUM}{_S}*MiB)?"
)
_ISWA_RE = re.compile(
    rf"llama_kv_cache_iswa:{_S}+creating{_S}+(non-SWA|SWA){_S}+KV{_S}+cache,{_S}*size{_S}*={_S}*(\d+){_S}+cells"
)
_CTX_RE = re.compile(
    rf"llama_context:{_S}+(n_seq_max|n_ctx|n_ctx_seq|n_batch|n_ubatch|causal_attn|flash_attn|kv_unified"
    rf"|n_rs_seq|n_outputs_max|n_outputs_max_per_seq){_S}*={_S}*(\S+)"
)
_FA_FORCED_RE = re.compile(r"llama_init_from_model:[ \t]+enabling flash_attn since it is required")
_FA_RESOLVED_RE = re.compile(
    rf"resolve_fused_ops:{_S}+Flash{_S}+Attention{_S}+(enabled|not{_S}+supported,{_S}*set{_S}+to{_S}+disabled)"
)
_OFFLOADED_RE = re.compile(
    rf"load_tensors:{_S}+offloaded{_S}+(\d+){_S}*/{_S}*(\d+){_S}+layers{_S}+to{_S}+GPU"
)
_LOAD_MODE_RE = re.compile(
    rf"load_tensors:{_S}+loading{_S}+model{_S}+tensors.*?\(load_mode{_S}*={_S}*([\w+]+)\)"
)
_DEVICE_RE = re.compile(
    rf"llama_prepare_model_devices:{_S}+using{_S}+device{_S}+(\S+){_S}+\((.*?)\){_S}+\((.*?)\){_S}*-{_S}*(\d+){_S}*MiB{_S}+free"
)
_PRINT_INFO_RE = re.compile(rf"print_info:{_S}+([^=\n]*?){_S}*={_S}*([^\n]*?){_S}*$", re.MULTILINE)
_FILE_SIZE_RE = re.compile(rf"^{_NUM}{_S}*(MiB|GiB){_S}*\({_S}*{_NUM}{_S}*BPW{_S}*\)$")
_PARAMS_RE = re.compile(rf"^{_NUM}{_S}*([KMBT])$")
_PARAM_SCALE = {"K": 10**3, "M": 10**6, "B": 10**9, "T": 10**12}


def _decimals(text: str) -> int:
    return len(text.partition(".")[2])


def _half_ulp(text: str, unit: int) -> int:
    """Half a unit in the last printed place, in bytes (or units), rounded up."""
    places: int = 10 ** _decimals(text)
    return math.ceil(0.5 * unit / places)


def mib_to_bytes(text: str) -> tuple[int, int]:
    """A MiB figure as printed by llama.cpp -> (bytes, precision in bytes)."""
    return round(float(text) * MIB), _half_ulp(text, MIB)


@dataclass(frozen=True)
class Buffer:
    """One buffer llama.cpp allocated (or, with ``no_alloc``, would allocate).

    The true size lies within ``bytes +- precision_bytes``.
    """

    kind: BufferKind
    name: str  # buffer type name: CPU, CPU_Mapped, CPU_REPACK, CUDA0, CUDA_Host, ...
    bytes: int
    precision_bytes: int
    mib_text: str  # the figure exactly as logged


@dataclass(frozen=True)
class ExactCompute:
    """The destructor's four-decimal compute buffer line (a DEBUG message)."""

    name: str
    bytes: int
    expected_bytes: int
    precision_bytes: int
    matches: bool


@dataclass(frozen=True)
class KvCacheSummary:
    """``llama_kv_cache: size = ... (N cells, L layers, s/S seqs), K (t): ..., V (t): ...``.

    ``cells`` is per stream; the K and V figures are unpadded tensor sums. With
    ``no_alloc`` the buffer line prints 0.00 but this line keeps the real size.
    """

    bytes: int
    cells: int
    layers: int
    n_seq_max: int
    n_stream: int
    type_k: str
    k_bytes: int
    type_v: str
    v_bytes: int
    precision_bytes: int


@dataclass(frozen=True)
class RsCacheSummary:
    """``llama_memory_recurrent: size = ... (N cells, L layers, S seqs R rs_seq), R ..., S ..., P ...``.

    ``layers`` is the model's layer count, not the number of layers holding a
    state (a hybrid's attention layers are counted too), and ``type_p`` repeats
    the R type: both as ``llama_memory_recurrent``'s constructor prints them.
    """

    bytes: int
    cells: int
    layers: int
    n_seqs: int
    n_rs_seq: int
    type_r: str
    r_bytes: int
    type_s: str
    s_bytes: int
    type_p: str | None
    p_bytes: int | None
    precision_bytes: int


@dataclass(frozen=True)
class ContextInfo:
    """The values ``llama_context`` prints when it is constructed (after its own padding)."""

    n_seq_max: int | None = None
    n_ctx: int | None = None
    n_ctx_seq: int | None = None
    n_batch: int | None = None
    n_ubatch: int | None = None
    causal_attn: bool | None = None
    flash_attn: str | None = None  # as requested: auto, enabled or disabled
    kv_unified: bool | None = None
    n_rs_seq: int | None = None
    n_outputs_max: int | None = None
    n_outputs_max_per_seq: int | None = None


@dataclass(frozen=True)
class FileInfo:
    """``print_info`` lines about the file (``llama_model_loader::print_info``, ``llama_model::print_info``)."""

    file_format: str | None = None
    file_type: str | None = None
    file_size_bytes: int | None = None  # sum of ggml_nbytes over all tensors
    file_size_precision_bytes: int | None = None
    bits_per_weight: float | None = None
    n_params: int | None = None  # from "model params = 2.87 M"
    n_params_precision: int | None = None


@dataclass(frozen=True)
class Device:
    name: str
    description: str
    device_id: str
    free_mib: int


@dataclass(frozen=True)
class LlamaLog:
    """Everything llmtune reads from one model load plus one context creation."""

    buffers: tuple[Buffer, ...] = ()
    compute_exact: tuple[ExactCompute, ...] = ()
    context: ContextInfo = field(default_factory=ContextInfo)
    file: FileInfo = field(default_factory=FileInfo)
    kv_caches: tuple[KvCacheSummary, ...] = ()  # iSWA: the non-SWA cache first, then the SWA one
    rs_caches: tuple[RsCacheSummary, ...] = ()
    non_swa_cells: int | None = None
    swa_cells: int | None = None
    offloaded_layers: int | None = None  # "offloaded X/Y layers to GPU"; absent in CPU-only builds
    offloadable_layers: int | None = None
    load_mode: str | None = None  # none, mmap, mlock, mmap+mlock, dio
    devices: tuple[Device, ...] = ()
    flash_attn_resolved: bool | None = None  # what AUTO became, or True when forced on
    print_info: tuple[tuple[str, str], ...] = ()  # every "print_info: key = value" line, in order

    def of_kind(self, kind: BufferKind) -> tuple[Buffer, ...]:
        return tuple(b for b in self.buffers if b.kind == kind)

    def total(self, kind: BufferKind, name: str | None = None) -> int:
        """Bytes over the buffers of one kind (and one buffer type name, if given)."""
        return sum(b.bytes for b in self.of_kind(kind) if name is None or b.name == name)

    def precision(self, kind: BufferKind, name: str | None = None) -> int:
        """How far ``total`` may be from the truth, in bytes."""
        return sum(b.precision_bytes for b in self.of_kind(kind) if name is None or b.name == name)

    def by_name(self, kind: BufferKind) -> dict[str, int]:
        out: dict[str, int] = {}
        for b in self.of_kind(kind):
            out[b.name] = out.get(b.name, 0) + b.bytes
        return out

    def info(self, key: str) -> str | None:
        """The last ``print_info`` value logged under ``key`` (e.g. ``n_layer``, ``n_swa``)."""
        for k, v in reversed(self.print_info):
            if k == key:
                return v
        return None

    @property
    def kv_cells(self) -> int | None:
        """Cells per stream of the (first, i.e. non-SWA) KV cache."""
        return self.kv_caches[0].cells if self.kv_caches else None


def parse_buffers(text: str) -> tuple[Buffer, ...]:
    """Every model, KV, RS, compute and output buffer line, in log order."""
    found: list[tuple[int, Buffer]] = []
    for kind, pattern in _BUFFER_RES:
        for m in pattern.finditer(text):
            size, precision = mib_to_bytes(m.group(2))
            found.append((m.start(), Buffer(kind, m.group(1), size, precision, m.group(2))))
    found.sort(key=lambda item: item[0])
    return tuple(b for _, b in found)


def parse_compute_exact(text: str) -> tuple[ExactCompute, ...]:
    out = []
    for m in _COMPUTE_EXACT_RE.finditer(text):
        size, precision = mib_to_bytes(m.group(2))
        expected, _ = mib_to_bytes(m.group(3))
        out.append(ExactCompute(m.group(1), size, expected, precision, "does" not in m.group(0)))
    return tuple(out)


def parse_kv_summaries(text: str) -> tuple[KvCacheSummary, ...]:
    out = []
    for m in _KV_SUMMARY_RE.finditer(text):
        total, precision = mib_to_bytes(m.group(1))
        out.append(
            KvCacheSummary(
                bytes=total,
                cells=int(m.group(2)),
                layers=int(m.group(3)),
                n_seq_max=int(m.group(4)),
                n_stream=int(m.group(5)),
                type_k=m.group(6),
                k_bytes=mib_to_bytes(m.group(7))[0],
                type_v=m.group(8),
                v_bytes=mib_to_bytes(m.group(9))[0],
                precision_bytes=precision,
            )
        )
    return tuple(out)


def parse_rs_summaries(text: str) -> tuple[RsCacheSummary, ...]:
    out = []
    for m in _RS_SUMMARY_RE.finditer(text):
        total, precision = mib_to_bytes(m.group(1))
        out.append(
            RsCacheSummary(
                bytes=total,
                cells=int(m.group(2)),
                layers=int(m.group(3)),
                n_seqs=int(m.group(4)),
                n_rs_seq=int(m.group(5)),
                type_r=m.group(6),
                r_bytes=mib_to_bytes(m.group(7))[0],
                type_s=m.group(8),
                s_bytes=mib_to_bytes(m.group(9))[0],
                type_p=m.group(10),
                p_bytes=mib_to_bytes(m.group(11))[0] if m.group(11) else None,
                precision_bytes=precision,
            )
        )
    return tuple(out)


def _as_bool(value: str) -> bool:
    return value.lower() in ("1", "true", "yes", "on")


def parse_context(text: str) -> ContextInfo:
    """The ``llama_context: key = value`` lines; the last value of each key wins."""
    values: dict[str, str] = {}
    for m in _CTX_RE.finditer(text):
        values[m.group(1)] = m.group(2)

    def num(key: str) -> int | None:
        v = values.get(key)
        return int(v) if v is not None and v.isdigit() else None

    def flag(key: str) -> bool | None:
        v = values.get(key)
        return None if v is None else _as_bool(v)

    return ContextInfo(
        n_seq_max=num("n_seq_max"),
        n_ctx=num("n_ctx"),
        n_ctx_seq=num("n_ctx_seq"),
        n_batch=num("n_batch"),
        n_ubatch=num("n_ubatch"),
        causal_attn=flag("causal_attn"),
        flash_attn=values.get("flash_attn"),
        kv_unified=flag("kv_unified"),
        n_rs_seq=num("n_rs_seq"),
        n_outputs_max=num("n_outputs_max"),
        n_outputs_max_per_seq=num("n_outputs_max_per_seq"),
    )


def parse_print_info(text: str) -> tuple[tuple[str, str], ...]:
    return tuple((m.group(1).strip(), m.group(2).strip()) for m in _PRINT_INFO_RE.finditer(text))


def parse_file_info(pairs: Iterable[tuple[str, str]]) -> FileInfo:
    info = dict(pairs)
    size_bytes = size_precision = n_params = n_params_precision = None
    bpw = None
    size = _FILE_SIZE_RE.match(info.get("file size", ""))
    if size:
        unit = MIB if size.group(2) == "MiB" else GIB
        size_bytes = round(float(size.group(1)) * unit)
        size_precision = _half_ulp(size.group(1), unit)
        bpw = float(size.group(3))
    params = _PARAMS_RE.match(info.get("model params", ""))
    if params:
        scale = _PARAM_SCALE[params.group(2)]
        n_params = round(float(params.group(1)) * scale)
        n_params_precision = _half_ulp(params.group(1), scale)
    return FileInfo(
        file_format=info.get("file format"),
        file_type=info.get("file type"),
        file_size_bytes=size_bytes,
        file_size_precision_bytes=size_precision,
        bits_per_weight=bpw,
        n_params=n_params,
        n_params_precision=n_params_precision,
    )


def parse_log(text: str) -> LlamaLog:
    """Parse the log of one model load and one context creation.

    A log holding several loads yields all their buffers; scalar values are
    taken from the last occurrence.
    """
    non_swa_cells = swa_cells = None
    for m in _ISWA_RE.finditer(text):
        if m.group(1) == "SWA":
            swa_cells = int(m.group(2))
        else:
            non_swa_cells = int(m.group(2))

    offloaded = offloadable = None
    for m in _OFFLOADED_RE.finditer(text):
        offloaded, offloadable = int(m.group(1)), int(m.group(2))

    load_mode = None
    for m in _LOAD_MODE_RE.finditer(text):
        load_mode = m.group(1)

    context = parse_context(text)
    # AUTO is resolved in sched_reserve (resolve_fused_ops); "enabled"/"disabled" are final,
    # and a quantized V cache turns AUTO into "enabled" before the context prints it.
    fa_resolved: bool | None = None
    for m in _FA_RESOLVED_RE.finditer(text):
        fa_resolved = m.group(1) == "enabled"
    if fa_resolved is None:
        if context.flash_attn == "enabled" or _FA_FORCED_RE.search(text):
            fa_resolved = True
        elif context.flash_attn == "disabled":
            fa_resolved = False

    pairs = parse_print_info(text)
    return LlamaLog(
        buffers=parse_buffers(text),
        compute_exact=parse_compute_exact(text),
        context=context,
        file=parse_file_info(pairs),
        kv_caches=parse_kv_summaries(text),
        rs_caches=parse_rs_summaries(text),
        non_swa_cells=non_swa_cells,
        swa_cells=swa_cells,
        offloaded_layers=offloaded,
        offloadable_layers=offloadable,
        load_mode=load_mode,
        devices=tuple(
            Device(m.group(1), m.group(2), m.group(3), int(m.group(4)))
            for m in _DEVICE_RE.finditer(text)
        ),
        flash_attn_resolved=fa_resolved,
        print_info=pairs,
    )


# ---- the quantizer (src/llama-quant.cpp, llama_model_quantize_impl) -----------------------

# One line per tensor, in pieces: "[%4d/%4d] %-36s - [%s], type = %6s, ", then for a real
# run "converting to %s .. " when the type changes, then "size = %8.2f MiB -> %8.2f MiB\n"
# (a dry run adds " (%s)", the new type) or "size = %8.3f MiB\n" for a tensor kept as it is.
QUANT_TENSOR_START_RE = re.compile(rf"\[{_S}*(\d+)/{_S}*(\d+)\]{_S}+(\S+)")
_QUANT_TENSOR_RE = re.compile(
    rf"\[{_S}*(\d+)/{_S}*(\d+)\]{_S}+(\S+){_S}+-{_S}+\[[^\]\n]*\],{_S}*type{_S}*={_S}*(\S+),"
    rf"{_S}*(?:converting{_S}+to{_S}+(\S+){_S}+\.\.{_S}*)?size{_S}*={_S}*{_NUM}{_S}*MiB"
    rf"(?:{_S}*->{_S}*{_NUM}{_S}*MiB(?:{_S}*\((\S+)\))?)?"
)
_QUANT_TOTAL_RE = re.compile(rf"(model|quant){_S}+size{_S}*={_S}*{_NUM}{_S}*MiB")
_QUANT_FAILED_RE = re.compile(r"failed to quantize: ([^\n]+)")
_QUANT_IMATRIX_RE = re.compile(r"have importance matrix data with (\d+) entries")


@dataclass(frozen=True)
class QuantLog:
    """What llama.cpp logs while it quantizes (or dry-runs) a model."""

    tensor_types: tuple[tuple[str, str], ...] = ()  # (tensor, type written), upper case
    n_tensors: int = 0
    source_tensor_bytes: int | None = None  # "model size = %8.2f MiB"
    quant_tensor_bytes: int | None = None  # "quant size = %8.2f MiB"
    needs_imatrix: bool = False  # a dry run's warning that the real run needs an imatrix
    imatrix_entries: int = 0
    error: str | None = None  # "failed to quantize: ..."


def parse_quantize_log(text: str) -> QuantLog:
    types: list[tuple[str, str]] = []
    n_tensors = 0
    for m in _QUANT_TENSOR_RE.finditer(text):
        new_type = m.group(8) or m.group(5) or m.group(4)
        types.append((m.group(3), new_type.upper()))
        n_tensors = int(m.group(2))
    totals: dict[str, int] = {}
    for m in _QUANT_TOTAL_RE.finditer(text):
        totals[m.group(1)] = mib_to_bytes(m.group(2))[0]
    failed = _QUANT_FAILED_RE.findall(text)
    imatrix = _QUANT_IMATRIX_RE.findall(text)
    return QuantLog(
        tensor_types=tuple(types),
        n_tensors=n_tensors,
        source_tensor_bytes=totals.get("model"),
        quant_tensor_bytes=totals.get("quant"),
        needs_imatrix="will require an imatrix" in text,
        imatrix_entries=int(imatrix[-1]) if imatrix else 0,
        error=failed[-1].strip() if failed else None,
    )
