"""The CPU kernel probe's body: llama.cpp's matrix-vector product timed through ctypes.

Run only in the child process :mod:`llmtune.hardware.cpu_kernels` starts; it
loads llama-cpp-python's ggml libraries into that process. The calls follow
ggml.h, ggml-alloc.h, ggml-backend.h and ggml-cpu.h of the vendored llama.cpp;
the weight buffer type is chosen as llama-model-loader.cpp's
``weight_buft_supported`` does: the CPU device's extra buffer types first
(``CPU_REPACK``), when the device says it supports a ``MUL_MAT`` on a weight in
a zero-sized buffer of that type.
"""

from __future__ import annotations

import ctypes as C
import importlib.util
import os
import random
import sys
import time
from collections.abc import Sequence
from typing import Any

from llmtune.hardware.cpu_kernels import (
    BATCH_COLUMNS,
    BATCH_REPEATS,
    BATCH_TYPES,
    CACHE_REPEATS,
    CACHE_SHAPE,
    RAM_PROBE_BYTES,
    RAM_REPEATS,
    RAM_SHAPES,
    SEED_WEIGHTS,
    UNQUANTIZED,
)

P = C.c_void_p
GGML_TYPE_F32 = 0
BUFFER_FIELD_OFFSET = (
    8  # struct ggml_tensor { enum ggml_type type; ggml_backend_buffer * buffer; ...
)


class InitParams(C.Structure):
    _fields_ = [("mem_size", C.c_size_t), ("mem_buffer", P), ("no_alloc", C.c_bool)]


class Ggml:
    """The functions the probe calls, typed."""

    def __init__(self) -> None:
        spec = importlib.util.find_spec("llama_cpp")
        if spec is None or not spec.origin:
            raise RuntimeError("llama-cpp-python is not installed")
        lib_dir = os.path.join(os.path.dirname(spec.origin), "lib")
        suffix = {"darwin": ".dylib", "win32": ".dll"}.get(sys.platform, ".so")
        self.base = C.CDLL(os.path.join(lib_dir, "libggml-base" + suffix), mode=C.RTLD_GLOBAL)
        self.cpu = C.CDLL(os.path.join(lib_dir, "libggml-cpu" + suffix), mode=C.RTLD_GLOBAL)
        b, c = self.base, self.cpu
        self.init = self._fn(b, "ggml_init", P, InitParams)
        self.free = self._fn(b, "ggml_free", None, P)
        self.new_2d = self._fn(b, "ggml_new_tensor_2d", P, P, C.c_int, C.c_int64, C.c_int64)
        self.mul_mat = self._fn(b, "ggml_mul_mat", P, P, P, P)
        self.new_graph = self._fn(b, "ggml_new_graph", P, P)
        self.expand = self._fn(b, "ggml_build_forward_expand", None, P, P)
        self.tensor_overhead = self._fn(b, "ggml_tensor_overhead", C.c_size_t)
        self.graph_overhead = self._fn(b, "ggml_graph_overhead", C.c_size_t)
        self.row_size = self._fn(b, "ggml_row_size", C.c_size_t, C.c_int, C.c_int64)
        self.quantize = self._fn(
            b, "ggml_quantize_chunk", C.c_size_t, C.c_int, P, P, C.c_int64, C.c_int64, C.c_int64, P
        )
        self.alloc_tensors = self._fn(b, "ggml_backend_alloc_ctx_tensors_from_buft", P, P, P)
        self.buft_alloc = self._fn(b, "ggml_backend_buft_alloc_buffer", P, P, C.c_size_t)
        self.buffer_free = self._fn(b, "ggml_backend_buffer_free", None, P)
        self.tensor_set = self._fn(b, "ggml_backend_tensor_set", None, P, P, C.c_size_t, C.c_size_t)
        self.compute = self._fn(b, "ggml_backend_graph_compute", C.c_int, P, P)
        self.backend_free = self._fn(b, "ggml_backend_free", None, P)
        self.dev_get = self._fn(b, "ggml_backend_reg_dev_get", P, P, C.c_size_t)
        self.proc_address = self._fn(b, "ggml_backend_reg_get_proc_address", P, P, C.c_char_p)
        self.supports_op = self._fn(b, "ggml_backend_dev_supports_op", C.c_bool, P, P)
        self.log_set = self._fn(b, "ggml_log_set", None, P, P)
        self.cpu_init = self._fn(c, "ggml_backend_cpu_init", P)
        self.set_threads = self._fn(c, "ggml_backend_cpu_set_n_threads", None, P, C.c_int)
        self.cpu_buft = self._fn(c, "ggml_backend_cpu_buffer_type", P)
        self.cpu_reg = self._fn(c, "ggml_backend_cpu_reg", P)

    @staticmethod
    def _fn(lib: C.CDLL, name: str, restype: Any, *argtypes: Any) -> Any:
        f = getattr(lib, name)
        f.restype = restype
        f.argtypes = list(argtypes)
        return f

    def extra_bufts(self, device: int) -> list[int]:
        """The CPU device's extra buffer types (ggml-backend.h ggml_backend_dev_get_extra_bufts_t)."""
        address = self.proc_address(self.cpu_reg(), b"ggml_backend_dev_get_extra_bufts")
        if not address:
            return []
        array = C.CFUNCTYPE(C.POINTER(P), P)(address)(device)
        out: list[int] = []
        while array and array[len(out)]:
            out.append(int(array[len(out)]))
        return out


_QUIET = C.CFUNCTYPE(None, C.c_int, C.c_char_p, P)(lambda _level, _text, _data: None)


def probe(
    threads: int, type_names: Sequence[str], evict: int = 0
) -> tuple[dict[str, float], dict[str, float], dict[str, dict[int, float]]]:
    """({type: GB/s from RAM}, {type: GB/s from cache}, {type: {columns: GB/s
    from RAM}}), all threads together; ``evict``: bytes written before every pass
    from RAM, to empty the cache of the weights."""
    from llmtune.model.ggml_types import GGML_TYPE_BY_NAME

    g = Ggml()
    g.log_set(C.cast(_QUIET, P), None)  # the repack lines, one per matrix
    backend = g.cpu_init()
    if not backend:
        raise RuntimeError("ggml's CPU backend did not start")
    g.set_threads(backend, threads)
    device = g.dev_get(g.cpu_reg(), 0)
    extras = g.extra_bufts(device)
    rng = random.Random(0)
    floats = (C.c_float * SEED_WEIGHTS)(*(rng.gauss(0.0, 1.0) for _ in range(SEED_WEIGHTS)))
    ones = (C.c_float * SEED_WEIGHTS)(*([1.0] * SEED_WEIGHTS))
    noise = bytes(rng.getrandbits(8) for _ in range(4 * SEED_WEIGHTS))
    ram: dict[str, float] = {}
    cache: dict[str, float] = {}
    batch: dict[str, dict[int, float]] = {}
    flush = C.create_string_buffer(evict) if evict > 0 else None
    try:
        for name in type_names:
            t = GGML_TYPE_BY_NAME.get(name)
            if t is None or any(k % t.block_size for k, _m in (*RAM_SHAPES, CACHE_SHAPE)):
                continue
            # One run of whole blocks, repeated: blocks are independent.
            seed_bytes = int(g.row_size(t.id, SEED_WEIGHTS))
            seed = C.create_string_buffer(seed_bytes)
            if name in UNQUANTIZED:
                C.memmove(seed, noise, seed_bytes)
            else:
                g.quantize(t.id, floats, seed, 0, 1, SEED_WEIGHTS, ones)
            shapes: list[tuple[int, int]] = []
            while sum(g.row_size(t.id, k) * m for k, m in shapes) < RAM_PROBE_BYTES:
                shapes.append(RAM_SHAPES[len(shapes) % len(RAM_SHAPES)])
            columns = (1, *BATCH_COLUMNS) if name in BATCH_TYPES else (1,)
            from_ram = _rates(
                g, backend, device, extras, t.id, seed, shapes, RAM_REPEATS, columns, flush
            )
            ram[name] = from_ram.pop(1)
            if from_ram:
                batch[name] = from_ram
            cache[name] = _rates(
                g, backend, device, extras, t.id, seed, [CACHE_SHAPE], CACHE_REPEATS
            )[1]
    finally:
        g.backend_free(backend)
    return ram, cache, batch


def _rates(
    g: Ggml,
    backend: int,
    device: int,
    extras: list[int],
    type_id: int,
    seed: Any,
    shapes: Sequence[tuple[int, int]],
    repeats: int,
    columns: Sequence[int] = (1,),
    flush: Any = None,
) -> dict[int, float]:
    """Bytes of weights per second for each count of ``columns``: a matrix of each
    of ``shapes`` (row length, rows) times that many F32 columns (one per stream
    of a batched decode), best of ``repeats`` computations of the whole graph."""
    weights_ctx = g.init(InitParams(g.tensor_overhead() * (len(shapes) + 1), None, True))
    buffers: list[int] = []
    contexts = [weights_ctx]
    try:
        weights = [g.new_2d(weights_ctx, type_id, k, m) for k, m in shapes]
        buft = _weight_buft(g, device, extras, weights[0], shapes[0][0])
        weight_buffer = g.alloc_tensors(weights_ctx, buft)
        if not weight_buffer:
            raise RuntimeError("could not allocate the probe's weights")
        buffers.append(weight_buffer)
        sizes = [int(g.row_size(type_id, k)) * m for k, m in shapes]
        matrix = C.create_string_buffer(max(sizes))
        step = len(seed)
        for offset in range(0, max(sizes), step):
            C.memmove(C.addressof(matrix) + offset, seed, min(step, max(sizes) - offset))
        for w, size in zip(weights, sizes, strict=True):
            g.tensor_set(w, matrix, 0, size)  # a repacking buffer converts here
        del matrix
        total = sum(sizes)
        out: dict[int, float] = {}
        for n in columns:
            size = g.tensor_overhead() * (3 * len(shapes) + 4) + g.graph_overhead()
            graph_ctx = g.init(InitParams(size, None, True))
            contexts.append(graph_ctx)
            inputs = {k: g.new_2d(graph_ctx, GGML_TYPE_F32, k, n) for k in {k for k, _m in shapes}}
            graph = g.new_graph(graph_ctx)
            for w, (k, _m) in zip(weights, shapes, strict=True):
                g.expand(graph, g.mul_mat(graph_ctx, w, inputs[k]))
            graph_buffer = g.alloc_tensors(graph_ctx, g.cpu_buft())
            if not graph_buffer:
                raise RuntimeError("could not allocate the probe's activations")
            buffers.append(graph_buffer)
            for k, x in inputs.items():
                column = (C.c_float * (k * n))(*([0.5] * (k * n)))
                g.tensor_set(x, column, 0, k * n * 4)
            if n == columns[0]:
                g.compute(backend, graph)  # warm: page faults, thread start
            best = float("inf")
            for done in range(repeats if n == 1 else BATCH_REPEATS):
                if flush is not None:
                    _flush(flush, done)
                t0 = time.perf_counter()
                if g.compute(backend, graph) != 0:
                    raise RuntimeError("ggml's CPU backend failed to compute")
                best = min(best, time.perf_counter() - t0)
            out[n] = total / max(best, 1e-9) / 1e9
        return out
    finally:
        for b in buffers:
            g.buffer_free(b)
        for ctx in contexts:
            g.free(ctx)


def _flush(buffer: Any, value: int) -> None:
    """Write ``buffer`` through the cache, so the weights leave it. In pieces of
    16 MiB: glibc's memset writes past its non-temporal threshold (a share of the
    last-level cache) with stores that bypass the cache and evict nothing."""
    piece = 16 << 20
    base = C.addressof(buffer)
    for offset in range(0, len(buffer), piece):
        C.memset(base + offset, value & 0xFF, min(piece, len(buffer) - offset))


def _weight_buft(g: Ggml, device: int, extras: list[int], weight: int, k: int) -> int:
    """The first extra buffer type that supports a MUL_MAT on ``weight``, else the CPU's."""
    for buft in extras:
        ctx = g.init(InitParams(g.tensor_overhead() * 4, None, True))
        try:
            column = g.new_2d(ctx, GGML_TYPE_F32, k, 512)
            op = g.mul_mat(ctx, weight, column)
            slot = C.c_void_p.from_address(weight + BUFFER_FIELD_OFFSET)
            dummy = g.buft_alloc(buft, 0)
            slot.value = dummy
            try:
                ok = bool(g.supports_op(device, op))
            finally:
                slot.value = None
                if dummy:
                    g.buffer_free(dummy)
        finally:
            g.free(ctx)
        if ok:
            return buft
    return int(g.cpu_buft())
