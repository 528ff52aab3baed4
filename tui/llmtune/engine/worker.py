"""The worker process: llama.cpp through llama-cpp-python's low-level C API.

Started by :class:`llmtune.engine.supervisor.Supervisor` as
``python -m llmtune.engine.worker --fd N``; ``N`` is this end of a socket pair
that carries pickled commands and events (:mod:`llmtune.engine.protocol`).

- llama.cpp's log goes to fd 2 as it is produced (the supervisor keeps the
  last lines, so they survive an abort) and into a buffer that
  :func:`~llmtune.engine.logparse.parse_log` reads after a load.
- A reader thread receives commands. End of file on the socket means the
  parent is gone: the worker exits at once, even in the middle of a C call
  (ctypes releases the GIL). On Linux the parent-death signal is set too, when
  the supervisor asks for it (only a process's main thread may own it: the
  signal follows the thread that forked).
- The same thread answers the supervisor's ``Ping`` with ``Pong`` at once, so
  a worker deep in a load or a prompt decode still shows it is alive; one
  that answers nothing (stopped, or hung with the GIL held) is killed by the
  supervisor. Events are sent under a lock: two threads write to the socket.
- ``Stop`` is seen between tokens, and during a prompt decode through
  llama.cpp's abort callback (installed only for the prompt: it is called for
  every graph node, too often for token-by-token generation) and during a load
  through the progress callback.
- ``Quantize`` runs ``llama_model_quantize``; llama.cpp's per-tensor log lines
  become ``QuantizeProgress`` events. The quantizer has no cancel hook: a
  ``Stop`` seen at the next tensor deletes the unfinished output and ends the
  worker (the supervisor's caller deletes it too, for a kill or a crash).
- SIGINT is ignored: Ctrl-C in a terminal reaches the whole process group, and
  the parent, not the terminal, decides when the worker stops.
"""

from __future__ import annotations

import argparse
import codecs
import ctypes
import os
import queue
import re
import resource
import signal
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from llmtune.engine.config import RunConfig, tensor_overrides
from llmtune.engine.ggml_rpc import buffer_types
from llmtune.engine.logparse import QUANT_TENSOR_START_RE, parse_log, parse_quantize_log
from llmtune.engine.protocol import (
    Command,
    Failed,
    Generate,
    Load,
    Loaded,
    Ping,
    Pong,
    Progress,
    Quantize,
    Quantized,
    QuantizeProgress,
    Shutdown,
    Started,
    Stats,
    Stop,
    Token,
    Unload,
    Unloaded,
)
from llmtune.engine.worker_rpc import RpcHosts

PR_SET_PDEATHSIG = 1
_ALLOC_RES: tuple[re.Pattern[str], ...] = (
    # llama-model.cpp load_tensors: "unable to allocate %s buffer"
    re.compile(r"unable to allocate (\S+) buffer"),
    # llama-kv-cache.cpp: "failed to allocate buffer for kv cache"
    re.compile(r"failed to allocate buffer for (kv cache|rs cache|recurrent state)"),
    # llama-context.cpp sched_reserve: "failed to allocate compute buffers"
    re.compile(r"failed to allocate (compute) buffers"),
    # llama-context.cpp output_reserve: "failed to allocate output buffer of size %.2f MiB"
    re.compile(r"failed to allocate (output) buffer"),
)
_ALLOC_SIZE_RE = re.compile(
    r"(\w+)_buffer_type_alloc_buffer: failed to allocate buffer of size (\d+)"
)
# gguf.cpp gguf_read_emplace_helper: "encountered bad_alloc error while reading value for key '%s'"
_BAD_ALLOC_KEY_RE = re.compile(r"bad_alloc error while reading value for key '([^'\n]{1,80})")
_ERROR_RES: tuple[re.Pattern[str], ...] = (
    re.compile(r"error loading model: ([^\n]+)"),
    re.compile(r"failed to initialize the context: ([^\n]+)"),
    re.compile(r"llama_init_from_model: ([^\n]*(?:requires|must|failed)[^\n]*)"),
    re.compile(r"(GGML_ASSERT\([^\n]*\) failed)"),
    re.compile(r"([^\n]*: error: [^\n]+)"),
)


def failure_reason(log_text: str, what: str) -> str:
    """A sentence for the user: ``what`` failed, and why as llama.cpp logged it."""
    from llmtune.units import format_bytes

    for pattern in _ALLOC_RES:
        found = pattern.findall(log_text)
        if found:
            name = found[-1] if isinstance(found[-1], str) else found[-1][0]
            name = {"kv cache": "KV", "rs cache": "RS", "recurrent state": "RS"}.get(name, name)
            sizes = _ALLOC_SIZE_RE.findall(log_text)
            size = f" of {format_bytes(int(sizes[-1][1]))}" if sizes else ""
            return f"out of memory: llama.cpp could not allocate the {name} buffer{size} ({what})"
    if "std::bad_alloc" in log_text or "bad_alloc error" in log_text:
        # A small allocation failed before any buffer (the header, the vocabulary): no size to name.
        keys = _BAD_ALLOC_KEY_RE.findall(log_text)
        where = f" while reading {keys[-1]}" if keys else ""
        return f"out of memory: llama.cpp could not {what} (std::bad_alloc{where})"
    for pattern in _ERROR_RES:
        found = pattern.findall(log_text)
        if found:
            return f"llama.cpp could not {what}: {found[-1].strip()}"
    return f"llama.cpp could not {what}"


def _vm_size_bytes() -> int:
    """This process's address space (VmSize), for the out-of-memory test hook."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise OSError("no VmSize in /proc/self/status")


def _limit_address_space(headroom_bytes: int) -> tuple[int, int]:
    """Limit RLIMIT_AS to the current address space plus ``headroom_bytes``; returns the old limits."""
    old = resource.getrlimit(resource.RLIMIT_AS)
    soft, hard = old
    limit = _vm_size_bytes() + headroom_bytes
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    return old


def set_parent_death_signal(sig: int) -> bool:
    """Linux: deliver ``sig`` to this process when its parent thread exits."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def _set_fields(params: Any, values: dict[str, Any]) -> None:
    """Set fields of a llama.h parameter struct; a name it lacks is an error, not a new
    Python attribute llama.cpp never sees."""
    for name, value in values.items():
        if not hasattr(type(params), name):
            raise AttributeError(f"{type(params).__name__} has no field {name!r}")
        setattr(params, name, value)


class Worker:
    """The child's state: one model, one context, one generation at a time."""

    def __init__(self, conn: Connection) -> None:
        import llama_cpp

        self.L: Any = llama_cpp
        self.conn = conn
        self._send_lock = threading.Lock()
        self.commands: queue.Queue[Command] = queue.Queue()
        self.stops_received = 0
        self.stops_handled = 0
        self.shutdown_received = False
        self.log_chunks: list[str] = []
        self.model: Any = None
        self.ctx: Any = None
        self.config: RunConfig | None = None
        self.n_ctx_seq = 0
        self._keep: list[object] = []  # ctypes objects llama.cpp points to
        self._log_cb = llama_cpp.llama_log_callback(self._on_log)
        llama_cpp.llama_log_set(self._log_cb, ctypes.c_void_p(0))
        llama_cpp.llama_backend_init()
        self._abort_cb = llama_cpp.ggml_abort_callback(self._on_abort)
        self._no_abort_cb = llama_cpp.ggml_abort_callback()  # NULL
        self._progress_cb = llama_cpp.llama_progress_callback(self._on_progress)
        self._last_progress = -1.0
        self._quantizing: Quantize | None = None
        self.rpc = RpcHosts(self.send)

    # ---- callbacks from llama.cpp ----------------------------------------
    def _on_log(self, level: int, text: bytes | None, user_data: object) -> None:
        if text:
            try:
                os.write(2, text)
            except OSError:
                pass
            self.log_chunks.append(text.decode("utf-8", "replace"))
            if self._quantizing is not None:
                self._on_quantize_log(self._quantizing, text)

    def _on_quantize_log(self, q: Quantize, text: bytes) -> None:
        """Each tensor's first log line: report it, or stop here when asked to."""
        m = QUANT_TENSOR_START_RE.match(text.decode("utf-8", "replace"))
        if m is None or q.dry_run:
            return
        if self._cancel_pending():
            # llama_model_quantize cannot be interrupted: leave no partial file and go.
            try:
                os.unlink(q.output)
            except OSError:
                pass
            self.send(Failed("quantization cancelled; the unfinished file was deleted", fatal=True))
            os._exit(0)
        self.send(QuantizeProgress(int(m.group(1)), int(m.group(2)), m.group(3)))

    def _cancel_pending(self) -> bool:
        return self.stops_received > self.stops_handled or self.shutdown_received

    def _on_abort(self, data: object) -> bool:
        return self._cancel_pending()

    def _on_progress(self, fraction: float, user_data: object) -> bool:
        if fraction >= 1.0 or fraction - self._last_progress >= 0.01:
            self._last_progress = fraction
            self.send(Progress(float(fraction)))
        return not self._cancel_pending()

    # ---- plumbing ---------------------------------------------------------
    def send(self, event: object) -> None:
        try:
            with self._send_lock:
                self.conn.send(event)
        except OSError:
            os._exit(0)  # the parent is gone

    def _read_commands(self) -> None:
        while True:
            try:
                cmd = self.conn.recv()
            except (EOFError, OSError):
                os._exit(0)  # end of file: the parent is gone, and so are we
            if isinstance(cmd, Ping):
                self.send(Pong(cmd.seq))
                continue
            if isinstance(cmd, Stop):
                self.stops_received += 1
            elif isinstance(cmd, Shutdown):
                self.shutdown_received = True
            self.commands.put(cmd)

    def log_text(self) -> str:
        return "".join(self.log_chunks)

    def run(self) -> int:
        threading.Thread(target=self._read_commands, name="commands", daemon=True).start()
        self.send(Started(os.getpid()))
        while True:
            cmd = self.commands.get()
            if isinstance(cmd, Stop):
                self.stops_handled += 1
            elif isinstance(cmd, Shutdown):
                self.unload()
                return 0
            elif isinstance(cmd, Load):
                self.load(cmd.config)
            elif isinstance(cmd, Generate):
                self.generate(cmd)
            elif isinstance(cmd, Quantize):
                self.quantize(cmd)
            elif isinstance(cmd, Unload):
                self.unload()
                self.send(Unloaded())

    # ---- commands ---------------------------------------------------------
    def unload(self) -> None:
        L = self.L
        self.rpc.stop_watching()
        if self.ctx:
            L.llama_free(self.ctx)
        if self.model:
            L.llama_model_free(self.model)
        self.ctx = self.model = None
        self.config = None
        self._keep.clear()

    def _fail(self, reason: str, lines: int = 20) -> None:
        tail = tuple(self.log_text().rstrip("\n").splitlines()[-lines:])
        self.send(Failed(reason, tail))

    def _tensor_overrides(self, c: RunConfig, notes: list[str]) -> int | None:
        """The address of a NULL-terminated llama_model_tensor_buft_override array, or None."""
        wanted = tensor_overrides(c.settings)
        if not wanted:
            return None
        bufts = buffer_types()
        if not bufts:
            notes.append("tensor placement is not supported by this build; ignored")
            return None
        unknown = sorted({name for _pattern, name in wanted if name not in bufts})
        if unknown:
            # llama-server refuses -ot with an unknown buffer type (common/arg.cpp).
            raise ValueError(
                f"no buffer type {', '.join(unknown)} among this llama.cpp's devices "
                f"({', '.join(sorted(bufts))})"
            )

        class Override(ctypes.Structure):
            _fields_ = [("pattern", ctypes.c_char_p), ("buft", ctypes.c_void_p)]

        encoded = [pattern.encode() for pattern, _name in wanted]
        overrides = (Override * (len(encoded) + 1))()
        for i, (pattern, (_p, name)) in enumerate(zip(encoded, wanted, strict=True)):
            overrides[i].pattern = pattern
            overrides[i].buft = bufts[name]
        self._keep += [encoded, overrides]
        n_cpu_moe = c.settings.n_cpu_moe
        if n_cpu_moe:
            what = "every layer" if n_cpu_moe < 0 else f"{n_cpu_moe} layers"
            notes.append(f"experts of {what} kept on the CPU")
        if c.settings.layer_overflow:
            moved = len(c.settings.layer_overflow)
            notes.append(f"FFN tensors of {moved} layers placed as llama.cpp's fit chose")
        return ctypes.addressof(overrides)

    def load(self, c: RunConfig) -> None:
        L = self.L
        self.unload()
        self.log_chunks.clear()
        self._last_progress = -1.0
        notes: list[str] = []
        try:
            c.validate()
        except Exception as exc:
            self.send(Failed(str(exc)))
            return
        if not self.rpc.register(c.extras.rpc_servers):
            return
        mp = L.llama_model_default_params()
        _set_fields(mp, c.model_params())  # every option's, from the options table
        mp.lazy_mode = L.LLAMA_LAZY_MODE_AUTO
        mp.vocab_only = False
        mp.check_tensors = False
        mp.no_host = False
        mp.no_alloc = False
        mp.load_mtp = False
        if c.settings.tensor_split:
            n = int(L.llama_max_devices())
            split = (ctypes.c_float * n)(*list(c.settings.tensor_split)[:n])
            self._keep.append(split)
            mp.tensor_split = split
        try:
            overrides = self._tensor_overrides(c, notes)
        except ValueError as exc:
            self.send(Failed(str(exc)))
            return
        if overrides is not None:
            mp.tensor_buft_overrides = overrides
        mp.progress_callback = self._progress_cb
        mp.progress_callback_user_data = None
        old_limit = None
        if c.oom_headroom_bytes is not None and c.oom_stage == "load":
            old_limit = _limit_address_space(c.oom_headroom_bytes)
        t0 = time.perf_counter()
        self.rpc.busy.set()  # a load may wait on a host for long: not a stall
        model = L.llama_model_load_from_file(c.model_path.encode(), mp)
        load_s = time.perf_counter() - t0
        if old_limit is not None:
            resource.setrlimit(resource.RLIMIT_AS, old_limit)
        if not model:
            self.rpc.busy.clear()
            if self._cancel_pending():
                self.send(Failed("model load cancelled"))
            else:
                self._fail(failure_reason(self.log_text(), f"load the model {c.model_path}"))
            return
        self.model = model

        cp = L.llama_context_default_params()
        context_params = c.context_params()
        _set_fields(cp, context_params)
        cp.embeddings = False
        cp.no_perf = True
        if c.oom_headroom_bytes is not None and c.oom_stage == "context":
            old_limit = _limit_address_space(c.oom_headroom_bytes)
        t0 = time.perf_counter()
        ctx = L.llama_init_from_model(model, cp)
        context_s = time.perf_counter() - t0
        self.rpc.busy.clear()
        if old_limit is not None:
            resource.setrlimit(resource.RLIMIT_AS, old_limit)
        if not ctx:
            self._fail(failure_reason(self.log_text(), "create the context"))
            self.unload()
            return
        self.ctx = ctx
        self.config = c
        self.n_ctx_seq = int(L.llama_n_ctx_seq(ctx))
        text = self.log_text()
        log = parse_log(text)
        self.send(
            Loaded(
                buffers=log.buffers,
                load_s=load_s,
                context_s=context_s,
                n_ctx=int(L.llama_n_ctx(ctx)),
                n_ctx_seq=self.n_ctx_seq,
                n_batch=int(L.llama_n_batch(ctx)),
                n_ubatch=int(L.llama_n_ubatch(ctx)),
                n_seq_max=int(L.llama_n_seq_max(ctx)),
                n_threads=context_params["n_threads"],
                model_bytes=int(L.llama_model_size(model)),
                n_params=int(L.llama_model_n_params(model)),
                n_layer=int(L.llama_model_n_layer(model)),
                log=log,
                notes=tuple(notes),
            )
        )
        self.rpc.watch_memory()

    def quantize(self, q: Quantize) -> None:
        L = self.L
        params = L.llama_model_quantize_default_params()
        params.nthread = q.threads
        params.ftype = q.ftype
        params.allow_requantize = q.allow_requantize
        params.dry_run = q.dry_run
        keep: list[object] = []
        if q.imatrix_path:
            from llmtune.engine.imatrix import imatrix_struct, load_imatrix

            try:
                pointer, keep = imatrix_struct(load_imatrix(q.imatrix_path), L)
            except Exception as exc:  # LlmtuneError with a message for users, or a bug
                self.send(Failed(str(exc)))
                return
            params.imatrix = pointer
        self.log_chunks.clear()
        old_limit = None
        if q.file_size_limit_bytes is not None and not q.dry_run:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failing write, not a signal
            old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
            resource.setrlimit(resource.RLIMIT_FSIZE, (q.file_size_limit_bytes, old_limit[1]))
        self._quantizing = q
        t0 = time.perf_counter()
        try:
            # llama.cpp opens no output file in a dry run; it still wants a name.
            output = (q.output or os.devnull).encode()
            status = int(L.llama_model_quantize(q.source.encode(), output, ctypes.byref(params)))
        finally:
            self._quantizing = None
            if old_limit is not None:
                resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
            del keep
        seconds = time.perf_counter() - t0
        log = parse_quantize_log(self.log_text())
        if status != 0:
            why = log.error or f"llama_model_quantize returned {status}"
            self._fail(f"llama.cpp could not quantize: {why}")
            return
        output_bytes = 0
        if not q.dry_run:
            try:
                output_bytes = os.path.getsize(q.output)
            except OSError:
                pass
        self.send(
            Quantized(
                dry_run=q.dry_run,
                seconds=seconds,
                tensor_types=log.tensor_types,
                source_tensor_bytes=log.source_tensor_bytes or 0,
                quant_tensor_bytes=log.quant_tensor_bytes or 0,
                needs_imatrix=log.needs_imatrix,
                imatrix_entries=log.imatrix_entries,
                output_bytes=output_bytes,
            )
        )

    def _tokenize(self, vocab: Any, text: str, add_special: bool, parse_special: bool) -> list[int]:
        L = self.L
        data = text.encode("utf-8")
        cap = len(data) + 8
        while True:
            buf = (L.llama_token * cap)()
            n = int(L.llama_tokenize(vocab, data, len(data), buf, cap, add_special, parse_special))
            if n >= 0:
                return list(buf[:n])
            cap = -n

    def _piece(self, vocab: Any, token: int) -> bytes:
        L = self.L
        size = 64
        while True:
            buf = ctypes.create_string_buffer(size)
            n = int(L.llama_token_to_piece(vocab, token, buf, size, 0, False))
            if n >= 0:
                return buf.raw[:n]
            size = -n

    def _sampler(self, g: Generate) -> Any:
        L = self.L
        chain = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
        if g.temperature <= 0.0:
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_greedy())
            return chain
        if g.top_k > 0:
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_top_k(g.top_k))
        L.llama_sampler_chain_add(chain, L.llama_sampler_init_top_p(g.top_p, 1))
        L.llama_sampler_chain_add(chain, L.llama_sampler_init_min_p(g.min_p, 1))
        L.llama_sampler_chain_add(chain, L.llama_sampler_init_temp(g.temperature))
        L.llama_sampler_chain_add(chain, L.llama_sampler_init_dist(g.seed & 0xFFFFFFFF))
        return chain

    def _decode(self, tokens: Any, offset: int, count: int) -> int:
        L = self.L
        ptr = ctypes.cast(
            ctypes.byref(tokens, offset * ctypes.sizeof(L.llama_token)), L.llama_token_p
        )
        return int(L.llama_decode(self.ctx, L.llama_batch_get_one(ptr, count)))

    def generate(self, g: Generate) -> None:
        L = self.L
        if not self.ctx or self.config is None:
            self.send(Failed("no model is loaded"))
            return
        vocab = L.llama_model_get_vocab(self.model)
        L.llama_memory_clear(L.llama_get_memory(self.ctx), True)
        prompt = self._tokenize(vocab, g.prompt, g.add_special, g.parse_special)
        if not prompt:
            self.send(Failed("the prompt is empty"))
            return
        if len(prompt) >= self.n_ctx_seq:
            self.send(
                Failed(f"the prompt has {len(prompt)} tokens; the context holds {self.n_ctx_seq}")
            )
            return
        n_batch = self.config.settings.n_batch
        tokens = (L.llama_token * len(prompt))(*prompt)
        finish = "length"
        t0 = time.perf_counter()
        # The abort callback runs for every graph node: install it for the prompt only.
        L.llama_set_abort_callback(self.ctx, self._abort_cb, None)
        self.rpc.busy.set()  # a long prompt may keep a host busy: not a stall
        try:
            for start in range(0, len(prompt), n_batch):
                rc = self._decode(tokens, start, min(n_batch, len(prompt) - start))
                if rc == 2 or (rc == 0 and self._cancel_pending()):
                    finish = "stop"
                    break
                if rc != 0:
                    self._fail(
                        f"llama.cpp could not decode the prompt (llama_decode returned {rc})"
                    )
                    return
            if finish != "stop":
                # llama_decode may return before the devices finish (a GPU's or an
                # RPC host's graph runs asynchronously): the prompt's time ends here.
                L.llama_synchronize(self.ctx)
        finally:
            L.llama_set_abort_callback(self.ctx, self._no_abort_cb, None)
            self.rpc.busy.clear()
        prompt_s = time.perf_counter() - t0
        prompt_done = finish != "stop"
        n_gen = 0
        times: list[float] = []
        if finish != "stop":
            finish = self._generate_tokens(g, vocab, len(prompt), times)
            n_gen = len(times)
        gen_s = times[-1] - times[0] if len(times) > 1 else 0.0
        self.send(
            Stats(
                n_prompt=len(prompt),
                n_gen=n_gen,
                pp_tokens_per_s=len(prompt) / prompt_s if prompt_done and prompt_s > 0 else 0.0,
                tg_tokens_per_s=(n_gen - 1) / gen_s if gen_s > 0 else 0.0,
                prompt_s=prompt_s,
                gen_s=gen_s,
                finish=finish,  # type: ignore[arg-type]
            )
        )

    def _generate_tokens(self, g: Generate, vocab: Any, n_prompt: int, times: list[float]) -> str:
        """Sample, stream and decode tokens; returns why it ended."""
        L = self.L
        sampler = self._sampler(g)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        one = (L.llama_token * 1)()
        now: Callable[[], float] = time.monotonic
        try:
            for i in range(g.max_tokens):
                if self._cancel_pending():
                    return "stop"
                token = int(L.llama_sampler_sample(sampler, self.ctx, -1))
                if not g.ignore_eos and L.llama_vocab_is_eog(vocab, token):
                    return "eog"
                t = now()
                times.append(t)
                self.send(Token(token, decoder.decode(self._piece(vocab, token)), t))
                if i == g.max_tokens - 1:
                    return "length"
                if n_prompt + len(times) >= self.n_ctx_seq:
                    return "context"
                one[0] = token
                rc = self._decode(one, 0, 1)
                if rc != 0:
                    return "stop" if rc == 2 else "context"
            return "length"
        finally:
            L.llama_sampler_free(sampler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llmtune.engine.worker")
    parser.add_argument("--fd", type=int, required=True, help="this end of the command socket")
    parser.add_argument("--parent", type=int, default=0, help="the supervisor's pid")
    parser.add_argument("--pdeathsig", action="store_true", help="die with the parent thread")
    args = parser.parse_args(argv)
    os.environ["GGML_NO_BACKTRACE"] = "1"  # no gdb on an abort (ggml.c ggml_print_backtrace)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides (see the docstring)
    if args.pdeathsig:
        set_parent_death_signal(signal.SIGKILL)
    if args.parent and os.getppid() != args.parent:
        return 0  # the parent died before the signal was armed
    try:
        os.dup2(2, 1)  # anything printed on stdout joins the log
    except OSError:
        pass
    conn = Connection(args.fd)
    return Worker(conn).run()


if __name__ == "__main__":
    sys.exit(main())
