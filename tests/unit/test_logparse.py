"""llmtune.engine.logparse against real llama.cpp log text.

Every excerpt below was captured from llama-cpp-python 0.3.36 (CPU build, AVX2)
loading the synthetic models of ``tests/synth_arch.py`` through
``tests/engine/llama_probe.measure`` on the CPU; lines are verbatim, some runs
of irrelevant lines (tokenizer, per-layer debug lines) are left out. The one
exception, ``GPU_FROM_FORMAT_STRINGS``, is marked as such: a CPU-only build
never prints device, offload or CUDA buffer lines.
"""

from __future__ import annotations

import pytest

from llmtune.engine.logparse import (
    MIB,
    Buffer,
    mib_to_bytes,
    parse_buffers,
    parse_log,
)

PREC = 5243  # half of 0.01 MiB, rounded up

# build_llama(), n_ctx 4096, f16 KV, FA auto, mmap, llama-server defaults otherwise.
LLAMA_F16 = """\
print_info: file format = GGUF V3 (latest)
print_info: file type   = F16
print_info: file size   = 5.99 MiB (16.01 BPW) 
init_tokenizer: initializing tokenizer for type 1
load: SPM vocabulary, but newline token not found: unordered_map::at! Using special_pad_id instead.load: 0 unused tokens
print_info: n_ctx_train           = 8192
print_info: n_layer               = 4
print_info: n_head_kv             = 8
print_info: n_swa                 = 0
print_info: n_embd_k_gqa          = 256
print_info: model params          = 3.14 M
load_tensors: loading model tensors, this can take a while... (load_mode = mmap)
load_tensors:   CPU_Mapped model buffer size =     5.99 MiB
..............................
llama_context: constructing llama_context
llama_context: n_seq_max             = 1
llama_context: n_ctx                 = 4096
llama_context: n_ctx_seq             = 4096
llama_context: n_batch               = 2048
llama_context: n_ubatch              = 512
llama_context: causal_attn           = 1
llama_context: flash_attn            = auto
llama_context: kv_unified            = false
llama_context: freq_base             = 500000.0
llama_context: freq_scale            = 1
llama_context: n_rs_seq              = 0
llama_context: n_outputs_max         = 2048
llama_context: n_outputs_max_per_seq = 1
llama_context: n_ctx_seq (4096) < n_ctx_train (8192) -- the full capacity of the model will not be utilized
set_abort_callback: call
llama_context:        CPU  output buffer size =     0.00 MiB
llama_kv_cache:        CPU KV buffer size =    16.00 MiB
llama_kv_cache: size =   16.00 MiB (  4096 cells,   4 layers,  1/1 seqs), K (f16):    8.00 MiB, V (f16):    8.00 MiB
resolve_fused_ops: Flash Attention enabled
sched_reserve:        CPU compute buffer size =     8.51 MiB
sched_reserve: graph: nodes = 130, splits = 1, input objects = 4, input tensors = 6
sched_reserve: reserve took 2.06 ms, sched copies = 1
~llama_context:        CPU compute buffer size is   8.5137 MiB, matches expectation of   8.5137 MiB
"""

# build_llama_gqa(weight_type=Q4_0), q8_0 K and V: repacked weights, FA forced on.
LLAMA_Q4_0_Q8_KV = """\
print_info: file type   = Q4_0
print_info: file size   = 1.48 MiB (4.52 BPW) 
print_info: model params          = 2.74 M
load_tensors: loading model tensors, this can take a while... (load_mode = mmap)
load_tensors:   CPU_Mapped model buffer size =     1.27 MiB
load_tensors:   CPU_REPACK model buffer size =     1.33 MiB
.repack: repack tensor output.weight with q4_0_8x8
.repack: repack tensor blk.0.attn_q.weight with q4_0_8x8
llama_init_from_model: enabling flash_attn since it is required for quantized V cache
llama_context: n_seq_max             = 1
llama_context: n_ctx                 = 4096
llama_context: n_ctx_seq             = 4096
llama_context: n_batch               = 2048
llama_context: n_ubatch              = 512
llama_context: causal_attn           = 1
llama_context: flash_attn            = enabled
llama_context: kv_unified            = false
llama_context:        CPU  output buffer size =     0.00 MiB
llama_kv_cache:        CPU KV buffer size =     2.12 MiB
llama_kv_cache: size =    2.12 MiB (  4096 cells,   4 layers,  1/1 seqs), K (q8_0):    1.06 MiB, V (q8_0):    1.06 MiB
sched_reserve:        CPU compute buffer size =     8.51 MiB
~llama_context:        CPU compute buffer size is   8.5137 MiB, matches expectation of   8.5137 MiB
"""

# build_gemma2() (sliding window 256, SWA on even layers), n_ctx 4096, swa_full off.
GEMMA2_ISWA = """\
print_info: file size   = 6.50 MiB (16.02 BPW) 
print_info: n_swa                 = 256
print_info: is_swa_any            = 1
llama_context:        CPU  output buffer size =     0.00 MiB
llama_kv_cache_iswa: creating non-SWA KV cache, size = 4096 cells
llama_kv_cache: layer   0: filtered
llama_kv_cache: layer   1: dev = CPU
llama_kv_cache: layer   2: filtered
llama_kv_cache: layer   3: dev = CPU
llama_kv_cache:        CPU KV buffer size =     4.00 MiB
llama_kv_cache: size =    4.00 MiB (  4096 cells,   2 layers,  1/1 seqs), K (f16):    2.00 MiB, V (f16):    2.00 MiB
llama_kv_cache_iswa: creating     SWA KV cache, size = 768 cells
llama_kv_cache: layer   0: dev = CPU
llama_kv_cache: layer   1: filtered
llama_kv_cache: layer   2: dev = CPU
llama_kv_cache: layer   3: filtered
llama_kv_cache:        CPU KV buffer size =     0.75 MiB
llama_kv_cache: size =    0.75 MiB (   768 cells,   2 layers,  1/1 seqs), K (f16):    0.38 MiB, V (f16):    0.38 MiB
sched_reserve:        CPU compute buffer size =    11.27 MiB
"""

# The same with swa_full=True (the C API's default).
GEMMA2_SWA_FULL = """\
llama_kv_cache_iswa: using full-size SWA cache (ref: https://github.com/ggml-org/llama.cpp/pull/13194#issuecomment-2868343055)
llama_kv_cache_iswa: creating non-SWA KV cache, size = 4096 cells
llama_kv_cache:        CPU KV buffer size =     4.00 MiB
llama_kv_cache: size =    4.00 MiB (  4096 cells,   2 layers,  1/1 seqs), K (f16):    2.00 MiB, V (f16):    2.00 MiB
llama_kv_cache_iswa: creating     SWA KV cache, size = 4096 cells
llama_kv_cache:        CPU KV buffer size =     4.00 MiB
llama_kv_cache: size =    4.00 MiB (  4096 cells,   2 layers,  1/1 seqs), K (f16):    2.00 MiB, V (f16):    2.00 MiB
sched_reserve:        CPU compute buffer size =    14.52 MiB
"""

# build_mamba2(), n_ctx 4096: a recurrent state, no KV cache.
MAMBA2 = """\
load_tensors:   CPU_Mapped model buffer size =     4.30 MiB
llama_context:        CPU  output buffer size =     0.00 MiB
llama_memory_recurrent:        CPU RS buffer size =     0.53 MiB
llama_memory_recurrent: size =    0.53 MiB (     1 cells,   4 layers,  1 seqs  0 rs_seq), R (f32):    0.03 MiB, S (f32):    0.50 MiB, P (f32):    0.00 MiB
resolve_fused_ops: Flash Attention enabled
sched_reserve:        CPU compute buffer size =     7.28 MiB
"""

# build_qwen3next(): one attention layer in four, plus gated delta-net state.
QWEN3NEXT = """\
load_tensors:   CPU_Mapped model buffer size =     9.81 MiB
llama_context:        CPU  output buffer size =     0.00 MiB
llama_kv_cache:        CPU KV buffer size =     2.00 MiB
llama_kv_cache: size =    2.00 MiB (  4096 cells,   1 layers,  1/1 seqs), K (f16):    1.00 MiB, V (f16):    1.00 MiB
llama_memory_recurrent:        CPU RS buffer size =     0.21 MiB
llama_memory_recurrent: size =    0.21 MiB (     1 cells,   4 layers,  1 seqs  0 rs_seq), R (f32):    0.02 MiB, S (f32):    0.19 MiB, P (f32):    0.00 MiB
sched_reserve:        CPU compute buffer size =     9.11 MiB
~llama_context:        CPU compute buffer size is   9.1133 MiB, matches expectation of   9.1133 MiB
"""

# build_llama(n_vocab=32000) with no_alloc=True and load_mode NONE.
NO_ALLOC = """\
load_tensors: loading model tensors, this can take a while... (load_mode = none)
load_tensors:          CPU model buffer size =     0.00 MiB
llama_context: n_ctx                 = 4096
llama_context:        CPU  output buffer size =     0.12 MiB
llama_kv_cache:        CPU KV buffer size =     0.00 MiB
llama_kv_cache: size =   16.00 MiB (  4096 cells,   4 layers,  1/1 seqs), K (f16):    8.00 MiB, V (f16):    8.00 MiB
resolve_fused_ops: Flash Attention enabled
sched_reserve:        CPU compute buffer size =    67.00 MiB
"""

# build_llama_gqa(), n_ctx 1000, n_seq_max 3, q4_0 V: padding rounds n_ctx *up*.
THREE_SEQS = """\
llama_init_from_model: enabling flash_attn since it is required for quantized V cache
llama_context: n_ctx is not divisible by n_seq_max - rounding down to 1536
llama_context: n_seq_max             = 3
llama_context: n_ctx                 = 1536
llama_context: n_ctx_seq             = 512
llama_context: n_batch               = 1000
llama_context: n_ubatch              = 512
llama_context: flash_attn            = enabled
llama_context: kv_unified            = false
llama_context:        CPU  output buffer size =     0.01 MiB
llama_kv_cache:        CPU KV buffer size =     0.96 MiB
llama_kv_cache: size =    0.96 MiB (   512 cells,   4 layers,  3/3 seqs), K (f16):    0.75 MiB, V (q4_0):    0.21 MiB
sched_reserve:        CPU compute buffer size =     5.02 MiB
"""

UNIFIED = """\
llama_context: n_seq_max             = 4
llama_context: kv_unified            = true
llama_kv_cache: size =    4.00 MiB (  4096 cells,   4 layers,  4/1 seqs), K (f16):    2.00 MiB, V (f16):    2.00 MiB
"""

# flash_attn off with a q8_0 V cache: llama_init_from_model returns NULL.
FA_OFF_QUANT_V = """\
load_tensors: loading model tensors, this can take a while... (load_mode = mmap)
load_tensors:   CPU_Mapped model buffer size =     5.24 MiB
...........................
llama_init_from_model: quantized V cache requires flash_attn to be enabled
"""

FA_OFF = """\
llama_context: flash_attn            = disabled
llama_kv_cache:        CPU KV buffer size =     4.00 MiB
sched_reserve:        CPU compute buffer size =    74.76 MiB
"""


def _gpu_lines() -> str:
    """Lines a CUDA build prints, made with the C format strings (a CPU build never prints them).

    src/llama.cpp llama_prepare_model_devices, src/llama-model.cpp load_tensors,
    src/llama-context.cpp ctor and sched_reserve, src/llama-kv-cache.cpp ctor.
    """
    fn = "load_tensors"
    return "".join(
        [
            "llama_prepare_model_devices: using device CUDA0 (NVIDIA GeForce RTX 3060) "
            "(0000:01:00.0) - 11811 MiB free\n",
            f"{fn}: offloading output layer to GPU\n",
            f"{fn}: offloading {20} repeating layers to GPU\n",
            f"{fn}: offloaded {21}/{81} layers to GPU\n",
            f"{fn}: {'CPU_Mapped':>12} model buffer size = {27000.25:8.2f} MiB\n",
            f"{fn}: {'CUDA0':>12} model buffer size = {9123.4:8.2f} MiB\n",
            f"llama_context: {'CUDA_Host':>10}  output buffer size = {0.49:8.2f} MiB\n",
            f"llama_kv_cache: {'CUDA0':>10} KV buffer size = {320.0:8.2f} MiB\n",
            f"llama_kv_cache: {'CPU':>10} KV buffer size = {960.0:8.2f} MiB\n",
            f"sched_reserve: {'CUDA0':>10} compute buffer size = {1093.5:8.2f} MiB\n",
            f"sched_reserve: {'CUDA_Host':>10} compute buffer size = {40.01:8.2f} MiB\n",
        ]
    )


def _kinds(text: str) -> list[tuple[str, str, str]]:
    return [(b.kind, b.name, b.mib_text) for b in parse_buffers(text)]


def test_llama_cpu_buffers_context_and_file() -> None:
    log = parse_log(LLAMA_F16)
    assert _kinds(LLAMA_F16) == [
        ("model", "CPU_Mapped", "5.99"),
        ("output", "CPU", "0.00"),
        ("kv", "CPU", "16.00"),
        ("compute", "CPU", "8.51"),
    ]
    assert log.buffers[0] == Buffer("model", "CPU_Mapped", round(5.99 * MIB), PREC, "5.99")
    assert log.total("kv") == 16 * MIB
    assert log.precision("kv") == PREC
    assert log.by_name("model") == {"CPU_Mapped": round(5.99 * MIB)}
    ctx = log.context
    assert (ctx.n_seq_max, ctx.n_ctx, ctx.n_ctx_seq) == (1, 4096, 4096)
    assert (ctx.n_batch, ctx.n_ubatch) == (2048, 512)
    assert ctx.flash_attn == "auto" and ctx.kv_unified is False and ctx.causal_attn is True
    assert ctx.n_outputs_max == 2048
    assert log.flash_attn_resolved is True
    assert log.load_mode == "mmap"
    assert log.offloaded_layers is None and log.devices == ()
    (kv,) = log.kv_caches
    assert (kv.cells, kv.layers, kv.n_seq_max, kv.n_stream) == (4096, 4, 1, 1)
    assert (kv.type_k, kv.k_bytes, kv.type_v, kv.v_bytes) == ("f16", 8 * MIB, "f16", 8 * MIB)
    assert log.kv_cells == 4096 and log.swa_cells is None
    f = log.file
    assert f.file_format == "GGUF V3 (latest)" and f.file_type == "F16"
    assert f.file_size_bytes == round(5.99 * MIB) and f.file_size_precision_bytes == PREC
    assert f.bits_per_weight == 16.01
    assert f.n_params == 3_140_000 and f.n_params_precision == 5_000
    assert (log.info("n_layer"), log.info("n_swa"), log.info("n_ctx_train")) == ("4", "0", "8192")
    (exact,) = log.compute_exact
    assert exact.name == "CPU" and exact.matches
    assert exact.bytes == exact.expected_bytes == round(8.5137 * MIB)
    assert exact.precision_bytes == 53
    assert abs(exact.bytes - log.total("compute")) <= PREC


def test_repacked_weights_and_quantized_kv() -> None:
    log = parse_log(LLAMA_Q4_0_Q8_KV)
    assert log.by_name("model") == {
        "CPU_Mapped": round(1.27 * MIB),
        "CPU_REPACK": round(1.33 * MIB),
    }
    assert log.total("model") == round(1.27 * MIB) + round(1.33 * MIB)
    assert log.precision("model") == 2 * PREC
    (kv,) = log.kv_caches
    assert (kv.type_k, kv.type_v) == ("q8_0", "q8_0")
    # FA forced on by the quantized V cache: no resolve_fused_ops line, context says "enabled".
    assert log.context.flash_attn == "enabled" and log.flash_attn_resolved is True
    assert log.file.file_type == "Q4_0" and log.file.bits_per_weight == 4.52


def test_sliding_window_caches() -> None:
    log = parse_log(GEMMA2_ISWA)
    assert [b.mib_text for b in log.of_kind("kv")] == ["4.00", "0.75"]
    assert log.total("kv") == 4 * MIB + round(0.75 * MIB)
    assert (log.non_swa_cells, log.swa_cells) == (4096, 768)
    assert [(c.cells, c.layers) for c in log.kv_caches] == [(4096, 2), (768, 2)]
    assert log.kv_cells == 4096
    assert log.info("n_swa") == "256" and log.info("is_swa_any") == "1"

    full = parse_log(GEMMA2_SWA_FULL)
    assert (full.non_swa_cells, full.swa_cells) == (4096, 4096)
    assert full.total("kv") == 8 * MIB
    assert full.total("compute") > log.total("compute")


def test_recurrent_and_hybrid_state() -> None:
    log = parse_log(MAMBA2)
    assert log.of_kind("kv") == ()
    assert _kinds(MAMBA2) == [
        ("model", "CPU_Mapped", "4.30"),
        ("output", "CPU", "0.00"),
        ("rs", "CPU", "0.53"),
        ("compute", "CPU", "7.28"),
    ]
    (rs,) = log.rs_caches
    assert (rs.cells, rs.layers, rs.n_seqs, rs.n_rs_seq) == (1, 4, 1, 0)
    assert (rs.type_r, rs.type_s, rs.type_p) == ("f32", "f32", "f32")
    assert rs.r_bytes == round(0.03 * MIB) and rs.s_bytes == round(0.50 * MIB) and rs.p_bytes == 0

    hybrid = parse_log(QWEN3NEXT)
    assert hybrid.total("kv") == 2 * MIB and hybrid.total("rs") == round(0.21 * MIB)
    assert hybrid.kv_caches[0].layers == 1
    # The RS summary counts every layer of the model, not only the recurrent ones.
    assert hybrid.rs_caches[0].layers == 4


def test_no_alloc_prints_zero_model_and_kv_but_real_compute() -> None:
    log = parse_log(NO_ALLOC)
    assert log.load_mode == "none"
    assert _kinds(NO_ALLOC) == [
        ("model", "CPU", "0.00"),
        ("output", "CPU", "0.12"),
        ("kv", "CPU", "0.00"),
        ("compute", "CPU", "67.00"),
    ]
    # The summary line still carries the size the KV cache would have.
    assert log.kv_caches[0].bytes == 16 * MIB
    assert log.compute_exact == ()  # the destructor skips its check with no_alloc


def test_padding_and_streams() -> None:
    log = parse_log(THREE_SEQS)
    ctx = log.context
    assert (ctx.n_seq_max, ctx.n_ctx, ctx.n_ctx_seq, ctx.n_batch) == (3, 1536, 512, 1000)
    (kv,) = log.kv_caches
    assert (kv.cells, kv.n_seq_max, kv.n_stream, kv.type_v) == (512, 3, 3, "q4_0")
    assert log.flash_attn_resolved is True

    unified = parse_log(UNIFIED)
    assert unified.context.kv_unified is True
    assert (unified.kv_caches[0].n_seq_max, unified.kv_caches[0].n_stream) == (4, 1)


def test_flash_attention_off_and_failed_context() -> None:
    off = parse_log(FA_OFF)
    assert off.context.flash_attn == "disabled" and off.flash_attn_resolved is False
    failed = parse_log(FA_OFF_QUANT_V)
    assert _kinds(FA_OFF_QUANT_V) == [("model", "CPU_Mapped", "5.24")]
    assert failed.context.n_ctx is None and failed.kv_caches == ()
    assert failed.flash_attn_resolved is None


def test_gpu_lines_from_format_strings() -> None:
    log = parse_log(_gpu_lines())
    (dev,) = log.devices
    assert (dev.name, dev.description, dev.device_id, dev.free_mib) == (
        "CUDA0",
        "NVIDIA GeForce RTX 3060",
        "0000:01:00.0",
        11811,
    )
    assert (log.offloaded_layers, log.offloadable_layers) == (21, 81)
    assert log.by_name("model") == {
        "CPU_Mapped": round(27000.25 * MIB),
        "CUDA0": round(9123.40 * MIB),
    }
    assert log.by_name("kv") == {"CUDA0": 320 * MIB, "CPU": 960 * MIB}
    assert log.by_name("compute") == {"CUDA0": round(1093.5 * MIB), "CUDA_Host": round(40.01 * MIB)}
    assert log.by_name("output") == {"CUDA_Host": round(0.49 * MIB)}


@pytest.mark.parametrize(
    "line",
    [
        "load_tensors:   CPU_Mapped model buffer size =     5.99 MiB",
        "load_tensors: CPU_Mapped model buffer size = 5.99 MiB",
        "load_tensors:\tCPU_Mapped\tmodel buffer size=5.99MiB",
        "......................load_tensors:   CPU_Mapped model buffer size =     5.99 MiB",
        "load_tensors:   CPU_Mapped model buffer size =     5.99 MiB\r",
    ],
)
def test_spacing_and_glued_messages(line: str) -> None:
    assert _kinds(line + "\n") == [("model", "CPU_Mapped", "5.99")]


def test_lines_that_are_not_buffers() -> None:
    text = (
        "~llama_context:        CPU compute buffer size is   8.5137 MiB, matches expectation of   8.5137 MiB\n"
        "llama_kv_cache: size =   16.00 MiB (  4096 cells,   4 layers,  1/1 seqs), K (f16):    8.00 MiB, V (f16):    8.00 MiB\n"
        "load_tensors: CPU_Mapped model buffer size =\n"
        "5.99 MiB\n"
    )
    assert parse_buffers(text) == ()


def test_mib_figures_round_trip_within_precision() -> None:
    assert mib_to_bytes("5.49") == (round(5.49 * MIB), PREC)
    assert mib_to_bytes("8.5137") == (round(8.5137 * MIB), 53)
    for size in (0, 1, 4000, 5242, 5243, 10_485, MIB - 1, 123_456_789, 40 * 1024**3 + 12_345):
        printed = f"{size / 1024 / 1024:8.2f}".strip()  # llama.cpp's %8.2f
        parsed, precision = mib_to_bytes(printed)
        assert abs(parsed - size) <= precision, (size, printed)
