"""Messages between the supervisor (parent) and the worker (child).

Commands flow down, events flow up, each a frozen dataclass pickled over one
``socket.socketpair`` wrapped in ``multiprocessing.connection.Connection``
(length-prefixed pickle frames). Both ends are the same user's processes
running llmtune's own code.

Liveness: the supervisor sends ``Ping`` whenever the worker has been quiet
for a while; the worker's command-reader thread answers ``Pong`` at once, even
while llama.cpp computes on the main thread (ctypes releases the GIL for the
whole C call). ``Pong`` is the supervisor's own business and never reaches its
caller's events.

Timestamps (``Token.t``) are ``time.monotonic()`` in the worker; on Linux that
clock is system-wide, so the parent can compare them with its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from llmtune.engine.config import RunConfig
from llmtune.engine.logparse import Buffer, LlamaLog

LLAMA_DEFAULT_SEED = 0xFFFFFFFF  # llama.h: a random seed


# ---- commands (parent -> worker) ---------------------------------------------
@dataclass(frozen=True)
class Load:
    config: RunConfig


@dataclass(frozen=True)
class Generate:
    """Generate up to ``max_tokens`` after ``prompt``; temperature 0 samples greedily."""

    prompt: str
    max_tokens: int = 128
    temperature: float = 0.0
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    seed: int = LLAMA_DEFAULT_SEED
    add_special: bool = True  # BOS etc. as the vocabulary asks
    parse_special: bool = True  # "<|im_start|>" in the prompt is one token
    ignore_eos: bool = False  # benchmarks generate exactly max_tokens


@dataclass(frozen=True)
class Quantize:
    """Run llama.cpp's quantizer (``llama_model_quantize``) from ``source`` to ``output``.

    An empty ``output`` is a dry run (``llama_model_quantize_params.dry_run``): the
    types and sizes llama.cpp would write, and nothing written. The quantizer cannot
    be interrupted: on ``Stop`` the worker deletes ``output`` and exits.
    """

    source: str
    output: str
    ftype: int  # enum llama_ftype
    allow_requantize: bool = False
    imatrix_path: str = ""
    threads: int = 0  # 0: every hardware thread (llama.cpp's default for quantizing)
    # Test hook: RLIMIT_FSIZE while writing, so a write fails as on a full disk.
    file_size_limit_bytes: int | None = None

    @property
    def dry_run(self) -> bool:
        return not self.output


@dataclass(frozen=True)
class Stop:
    """Cancel the running generation (or prompt decode) at once."""


@dataclass(frozen=True)
class Unload:
    pass


@dataclass(frozen=True)
class Shutdown:
    pass


@dataclass(frozen=True)
class Ping:
    """Are you there? Answered by ``Pong(seq)`` from the worker's reader thread."""

    seq: int


Command = Load | Generate | Quantize | Stop | Unload | Shutdown | Ping


# ---- events (worker -> parent; Exited comes from the supervisor) --------------
@dataclass(frozen=True)
class Pong:
    """The answer to ``Ping(seq)``; consumed by the supervisor, not an ``Event``."""

    seq: int


@dataclass(frozen=True)
class Started:
    """The worker is up and waits for commands."""

    pid: int


@dataclass(frozen=True)
class Progress:
    """Model load progress from llama.cpp's progress callback, 0.0 to 1.0."""

    fraction: float


@dataclass(frozen=True)
class Loaded:
    """The model and its context exist; ``buffers`` as llama.cpp logged them."""

    buffers: tuple[Buffer, ...]
    load_s: float  # llama_model_load_from_file
    context_s: float  # llama_init_from_model
    n_ctx: int
    n_ctx_seq: int
    n_batch: int
    n_ubatch: int
    n_seq_max: int
    n_threads: int
    model_bytes: int  # llama_model_size
    n_params: int
    n_layer: int
    log: LlamaLog = field(default_factory=LlamaLog)
    notes: tuple[str, ...] = ()

    def by_device(self) -> dict[str, dict[str, int]]:
        """``{device: {buffer kind: bytes}}``; host buffer types (CPU*, *_Host) count as ``CPU``."""
        from llmtune.engine.compare import device_of

        out: dict[str, dict[str, int]] = {}
        for b in self.buffers:
            kinds = out.setdefault(device_of(b.name), {})
            kinds[b.kind] = kinds.get(b.kind, 0) + b.bytes
        return out


@dataclass(frozen=True)
class DeviceReading:
    """One RPC device's memory as its server reports it (``GET_DEVICE_MEMORY``)."""

    name: str  # llama.cpp's device name: RPC0, RPC1, ...
    endpoint: str  # HOST:PORT
    free_bytes: int
    total_bytes: int


@dataclass(frozen=True)
class DeviceMemory:
    """The RPC devices' memory, read through the worker's own connection (a
    server serves one client at a time), about once a second while loaded."""

    readings: tuple[DeviceReading, ...]
    t: float  # time.monotonic() in the worker


@dataclass(frozen=True)
class Token:
    id: int
    text: str  # may be "" while a multi-byte character is incomplete
    t: float  # time.monotonic() when the token was sampled


FinishReason = Literal["eog", "length", "stop", "context"]


@dataclass(frozen=True)
class Stats:
    """The last event of every generation."""

    n_prompt: int
    n_gen: int
    pp_tokens_per_s: float
    tg_tokens_per_s: float
    prompt_s: float
    gen_s: float
    finish: FinishReason


@dataclass(frozen=True)
class Unloaded:
    pass


@dataclass(frozen=True)
class QuantizeProgress:
    """llama.cpp started on tensor ``index`` of ``count`` (1-based, as it logs them)."""

    index: int
    count: int
    tensor: str


@dataclass(frozen=True)
class Quantized:
    """The quantizer finished (or its dry run did); sizes as llama.cpp logged them."""

    dry_run: bool
    seconds: float
    tensor_types: tuple[tuple[str, str], ...]  # (tensor, ggml type written), llama.cpp's order
    source_tensor_bytes: int  # "model size", MiB with two decimals
    quant_tensor_bytes: int  # "quant size", MiB with two decimals
    needs_imatrix: bool = False  # a dry run says the real run will need an imatrix
    imatrix_entries: int = 0
    output_bytes: int = 0  # the file written; 0 for a dry run


@dataclass(frozen=True)
class Failed:
    """A command failed (the worker may still be alive) or the worker died.

    ``log_tail``: llama.cpp's last log lines (its stderr), oldest first.
    """

    reason: str
    log_tail: tuple[str, ...] = ()
    fatal: bool = False  # the worker is gone


@dataclass(frozen=True)
class Exited:
    """The worker process ended and was reaped.

    ``returncode`` as Popen reports it: the exit status, or minus the signal.
    """

    returncode: int
    pid: int

    @property
    def signal(self) -> int | None:
        return -self.returncode if self.returncode < 0 else None

    @property
    def describe(self) -> str:
        import signal as _signal

        sig = self.signal
        if sig is None:
            return f"exit status {self.returncode}"
        try:
            name = _signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        return f"killed by {name}"


Event = (
    Started
    | Progress
    | Loaded
    | Token
    | DeviceMemory
    | Stats
    | Unloaded
    | QuantizeProgress
    | Quantized
    | Failed
    | Exited
)
