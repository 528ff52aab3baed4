"""The speed model: what a plan predicts for generation and prompt processing.

docs/speed-model.md explains the model, its sources and how its per-class
figures were fitted; in short:

* **Generation** is memory-bound. Per step every device reads its share of the
  weights (for MoE only the experts used) and, per stream, of the KV cache at
  the bench depth, at its bandwidth times its class's efficiency; every layer
  also costs a fixed time per step whatever its size (llama.cpp walks about
  thirty operations per layer: a kernel launch each on a GPU, a barrier between
  threads on the CPU). Devices run one after another, so their times add.
  With ``--parallel N`` one step decodes a token for each of N streams: the
  weights are read once, and each stream beyond the first adds its own cache
  read and its arithmetic (two FLOPs per weight at the prompt efficiency).
* **Prompt processing** is compute-bound: two FLOPs per weight per token at the
  device's dense FP16 throughput times its class's efficiency, plus the
  attention's own FLOPs at the prompt's depth; without flash attention the
  attention matrix (heads x depth floats per token) also crosses memory a few
  times. Each ubatch of ``n_ubatch`` tokens reads the weights once more and
  pays the per-layer cost once, so small ubatches are slower. With a partial
  offload llama.cpp copies the CPU's weights to the GPU once per ubatch (op
  offload), so PCIe bounds it instead.

The efficiencies are the fractions of a bandwidth or throughput that llama.cpp
reaches, per device class (:data:`CLASS_SPEEDS`): an HBM datacenter card reads
a small model at well under its bandwidth where a GDDR desktop card nearly
reaches it, and an Apple GPU has its own. A bandwidth from a data sheet or a
profile is a peak (DDR4-3200 dual channel: 51.2 GB/s) that nothing reads at;
the host bandwidth llmtune measures on this machine (``hardware.bandwidth``) is
what a program gets, so it has an efficiency of its own. ``llmtune bench``
calibrates the GPU figures per machine (``engine.calibration``): the
``gpu_*`` fields of :class:`SpeedModel` are the consumer NVIDIA class's
figures, and a calibrated value scales every class's by the same ratio.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache

from llmtune.hardware.device import Device


@dataclass(frozen=True)
class ClassSpeed:
    """What llama.cpp reaches on one device class: the share of the bandwidth a
    generated token reads at, the fixed time per layer per step, and the share of
    the dense FP16 throughput a prompt computes at."""

    bandwidth_efficiency: float
    layer_overhead_s: float
    compute_efficiency: float
    rows: str  # the published results fitted (tests/bench/published_llama_bench.csv)


# Fitted by tests/bench/gpu_speed.py --fit on the published llama-bench rows of
# tests/bench/published_llama_bench.csv (XiongjieDai/GPU-Benchmarks-on-LLM-Inference,
# May 2024, and rows from llama.cpp pull requests, lhl's llm-tracker, ROCm issues):
# three figures per class, never one per row. The NVIDIA classes keep their fit on
# the May 2024 rows (the 31 consumer rows now fit 70 us, a 12% smaller fixed cost).
CLASS_SPEEDS: dict[str, ClassSpeed] = {
    "nvidia-consumer": ClassSpeed(0.90, 80e-6, 0.44, "26 rows: 13 cards, 8B/70B Q4_K_M and F16"),
    "nvidia-datacenter": ClassSpeed(0.60, 100e-6, 0.32, "9 rows: A100 PCIe/SXM, H100 PCIe"),
    "apple": ClassSpeed(
        0.80, 160e-6, 0.64, "15 rows: M1, M1 Max, M2 Ultra (60/76 cores), M3 Pro/Max/Ultra"
    ),
    # ROCm reads a token's weights at a smaller share of the bandwidth than CUDA
    # (Q4_K_M worst: 1.46x too fast at the NVIDIA consumer figures).
    "amd-consumer": ClassSpeed(0.60, 80e-6, 0.36, "8 rows: RX 7900 XTX/XT, Radeon Pro W7900"),
    # One MI300X row (a 2024 build without CDNA3 tuning) is not enough to fit: the
    # NVIDIA datacenter figures, with a lower compute efficiency.
    "amd-datacenter": ClassSpeed(
        0.60, 100e-6, 0.20, "none fitted: the NVIDIA datacenter figures, lowered"
    ),
}
DEFAULT_CLASS = "nvidia-consumer"

# The CPU's fixed time per layer per token: barriers between its threads.
CPU_LAYER_OVERHEAD_S = 100e-6

# Prompt processing is predicted for llama-bench's pp512: a 512-token prompt
# from an empty cache, whose tokens attend to 256 cells on average.
PROMPT_TOKENS = 512
# Without flash attention the attention matrix (F32, heads x cells per token) is
# written by the KQ product, read and written by the softmax, read by the KQV
# product (llama-graph.cpp build_attn_mha): four passes of four bytes.
KQ_BYTES_PER_CELL = 16


@dataclass(frozen=True)
class SpeedModel:
    gpu_bandwidth_efficiency: float = CLASS_SPEEDS[DEFAULT_CLASS].bandwidth_efficiency
    cpu_bandwidth_efficiency: float = 0.65  # of a peak figure (a host profile, --ram)
    cpu_measured_bandwidth_efficiency: float = 1.0  # of this machine's measured bandwidth
    gpu_compute_efficiency: float = CLASS_SPEEDS[DEFAULT_CLASS].compute_efficiency
    # Of the host's FP16 peak, as llama.cpp's prompt processing reaches it: 0.70
    # (Q4_0), 0.53 (Q8_0), 0.55 (F16) with 2 threads on this project's Xeon, quiet
    # (tests/bench/cpu_prompt_speed.py, a 13B shape, llama-bench pp512).
    cpu_compute_efficiency: float = 0.6
    pcie_gbps: float = 16.0  # PCIe 4.0 x16 as measured in practice
    # Fixed time per layer (and for the output) per generated token. CPU: about
    # 100 us with two threads on this project's 2-core machine (SmolLM2-135M,
    # 30 layers, spends 6.6 of its 10.2 ms per token beyond reading its weights).
    # GPU: the consumer class's fitted figure; on 8B/70B rows it also absorbs the
    # quantized kernels' arithmetic, so it may overstate a tiny model's cost.
    cpu_layer_overhead_s: float = CPU_LAYER_OVERHEAD_S
    gpu_layer_overhead_s: float = CLASS_SPEEDS[DEFAULT_CLASS].layer_overhead_s


DEFAULT_SPEED_MODEL = SpeedModel()


@dataclass(frozen=True)
class Rates:
    """One device's figures under a speed model: bytes/s a token reads at, FLOP/s
    a prompt computes at, and the fixed time per layer per step."""

    read_bytes_per_s: float
    flops: float
    layer_s: float
    # A CPU: bytes/s at which a token's weights are read *and* multiplied
    # (llama.cpp's kernels for the model's weight types); 0: at read_bytes_per_s.
    weight_bytes_per_s: float = 0.0
    # A probed CPU: (streams, bytes/s) for one step of a batched decode of that
    # many streams, from llama.cpp's kernels at that many columns.
    weight_batch: tuple[tuple[int, float], ...] = ()


def device_class(device: Device) -> str:
    """The device's speed class: its own, its profile's, or by its backend."""
    if device.device_class:
        return device.device_class
    if device.profile:
        from llmtune.hardware.profiles import GPU_PROFILE_BY_KEY

        profile = GPU_PROFILE_BY_KEY.get(device.profile)
        if profile is not None:
            return profile.device_class
    return {"MTL": "apple", "Metal": "apple", "ROCm": "amd-consumer"}.get(
        device.backend, DEFAULT_CLASS
    )


def host_bandwidth_efficiency(host: Device, speed: SpeedModel) -> float:
    """The fraction of ``host``'s bandwidth llama.cpp reads at: a measured
    bandwidth is already what programs get; a peak figure is not."""
    if host.bandwidth_measured:
        return speed.cpu_measured_bandwidth_efficiency
    return speed.cpu_bandwidth_efficiency


@lru_cache(maxsize=64)
def cpu_rates(
    device: Device,
    speed: SpeedModel,
    type_bytes: tuple[tuple[str, int], ...] = (),
    threads: int = 0,
) -> Rates:
    """A CPU's rates; with the model's weight bytes per type (``type_bytes``,
    ``ModelCosts.matmul_type_bytes``) also the rate its generation gets through
    them (:func:`cpu_weight_rate`). Cached: a plan asks once per layer count it
    tries, and the fit estimate runs on every keypress."""
    read = device.bandwidth_gbps * 1e9 * host_bandwidth_efficiency(device, speed)
    mix = dict(type_bytes)
    return Rates(
        read,
        device.fp16_tflops * 1e12 * speed.cpu_compute_efficiency,
        speed.cpu_layer_overhead_s,
        cpu_weight_rate(device, speed, mix, threads, read),
        cpu_batch_rates(device, speed, mix, threads),
    )


def _kernel_scale(device: Device, speed: SpeedModel, threads: int) -> float:
    """A probed CPU's rates at ``threads`` threads (fewer than probed: proportionally
    slower, as the kernels are compute-bound where it matters) and this machine's
    calibrated efficiency."""
    scale = speed.cpu_measured_bandwidth_efficiency
    if threads and device.kernel_threads and threads < device.kernel_threads:
        scale *= threads / device.kernel_threads
    return scale


def cpu_batch_rates(
    device: Device, speed: SpeedModel, type_bytes: Mapping[str, int], threads: int
) -> tuple[tuple[int, float], ...]:
    """(streams, bytes/s) of a batched decoding step on a probed CPU, per probed
    column count; () when the CPU's kernels were not probed at batches."""
    from llmtune.hardware.cpu_kernels import batch_rates, mixed_rate

    if not type_bytes or not device.kernel_rates or not device.kernel_batch:
        return ()
    ram = dict(device.kernel_rates)
    scale = _kernel_scale(device, speed, threads)
    counts = sorted({n for _name, n, _gbps in device.kernel_batch})
    out = []
    for n in counts:
        rate = mixed_rate(batch_rates(ram, device.kernel_batch, n), type_bytes)
        if rate > 0:
            out.append((n, rate * scale))
    return tuple(out)


def cpu_weight_rate(
    device: Device, speed: SpeedModel, type_bytes: Mapping[str, int], threads: int, read: float
) -> float:
    """Bytes/s at which the CPU reads and multiplies a token's weights of these types.

    Probed here (``device.kernel_rates``, hardware.cpu_kernels): llama.cpp's own
    matrix-vector product from RAM per type, scaled down for fewer threads than
    probed (the kernels are compute-bound where it matters) and by this machine's
    calibrated efficiency. Not probed: reading at ``read`` and then computing at
    the stand-in kernels' speed per core (measured on this project's machine),
    one after the other, as the probe found llama.cpp does (Q8_0: 16.8 GB/s from
    RAM against 1 / (1/32 + 1/46) = 18.9 GB/s).
    """
    from llmtune.hardware.cpu_kernels import default_cache_rates, mixed_rate
    from llmtune.hardware.host import HOST_TFLOPS_PER_CORE

    if not type_bytes:
        return 0.0
    if device.kernel_rates:
        return mixed_rate(dict(device.kernel_rates), type_bytes) * _kernel_scale(
            device, speed, threads
        )
    cores = device.fp16_tflops / HOST_TFLOPS_PER_CORE if device.fp16_tflops else 1.0
    compute = mixed_rate(default_cache_rates(cores), type_bytes)
    if compute <= 0 or read <= 0:
        return 0.0
    return 1.0 / (1.0 / read + 1.0 / compute)


def gpu_rates(device: Device, speed: SpeedModel) -> Rates:
    """A GPU's rates: its class's figures, scaled by this machine's calibration
    (the ratio of the calibrated consumer figures to the defaults)."""
    cls = CLASS_SPEEDS.get(device_class(device), CLASS_SPEEDS[DEFAULT_CLASS])
    base = DEFAULT_SPEED_MODEL
    bandwidth = cls.bandwidth_efficiency * (
        speed.gpu_bandwidth_efficiency / base.gpu_bandwidth_efficiency
    )
    compute = cls.compute_efficiency * (speed.gpu_compute_efficiency / base.gpu_compute_efficiency)
    layer = cls.layer_overhead_s * (speed.gpu_layer_overhead_s / base.gpu_layer_overhead_s)
    return Rates(
        device.bandwidth_gbps * 1e9 * min(bandwidth, 1.0),
        device.fp16_tflops * 1e12 * min(compute, 1.0),
        layer,
    )


@dataclass(frozen=True)
class PromptShape:
    """What the prompt terms need of the model and the settings."""

    n_ubatch: int
    flash_attn: bool
    n_embd: int  # the attention's width (query heads x head size)
    n_head: int
    bytes_per_param: float
    n_parallel: int = 1


@dataclass
class SpeedSum:
    """A token's time, summed over the devices a plan runs on in turn."""

    read_s: float = 0.0  # weights, once per step
    kv_s: float = 0.0  # one stream's cache read per step
    overhead_s: float = 0.0  # the fixed per-layer part of a step
    stream_compute_s: float = 0.0  # each further stream's arithmetic per step
    prompt_s: float = 0.0  # per prompt token
    network_s: float = 0.0  # per step, RPC devices
    host_read_s: float = 0.0  # of a step, what the host's bandwidth bounds (its probe moves it)
    # Per probed CPU: (streams, seconds a step of that many streams adds over one
    # stream's), measured at a few counts and interpolated between them.
    batch_extra: list[tuple[tuple[int, float], ...]] = field(default_factory=list)

    def add(
        self,
        rates: Rates,
        shape: PromptShape,
        active_bytes: float,
        kv_read_bytes: float,
        layers: int,
        attention_layers: int,
        prompt: bool = True,
    ) -> None:
        """One device: ``active_bytes`` of weights read per token, one stream's
        ``kv_read_bytes`` of cache, ``layers`` layers (the output counts one) of
        which ``attention_layers`` attend; ``prompt``: it computes its own
        layers' prompt (not under op offload)."""
        batched = bool(rates.weight_batch and rates.weight_bytes_per_s and active_bytes)
        if rates.weight_bytes_per_s:
            self.read_s += active_bytes / rates.weight_bytes_per_s
            if batched:
                one = active_bytes / rates.weight_bytes_per_s
                self.batch_extra.append(
                    tuple((n, active_bytes / rate - one) for n, rate in rates.weight_batch)
                )
        elif rates.read_bytes_per_s:
            self.read_s += active_bytes / rates.read_bytes_per_s
        if rates.read_bytes_per_s:
            self.kv_s += kv_read_bytes / rates.read_bytes_per_s
        self.overhead_s += layers * rates.layer_s
        if not rates.flops or not prompt:
            return
        params = active_bytes / shape.bytes_per_param
        token_flops = 2.0 * params
        if not batched:
            self.stream_compute_s += token_flops / rates.flops
        depth = PROMPT_TOKENS / 2
        # QK^T and KQ.V: two FLOPs per query element per cell, twice.
        attention_flops = 4.0 * shape.n_embd * depth * attention_layers
        token_s = (token_flops + attention_flops) / rates.flops
        if not shape.flash_attn and rates.read_bytes_per_s:
            kq_bytes = shape.n_head * depth * KQ_BYTES_PER_CELL * attention_layers
            token_s += kq_bytes / rates.read_bytes_per_s
        # Each ubatch reads the weights once and walks every layer once.
        per_ubatch = layers * rates.layer_s
        if rates.read_bytes_per_s:
            per_ubatch += active_bytes / rates.read_bytes_per_s
        self.prompt_s += token_s + per_ubatch / max(1, shape.n_ubatch)

    def step_s(self, n_streams: int = 1) -> float:
        """One decoding step for ``n_streams`` streams (one token each)."""
        extra = max(0, n_streams - 1)
        return (
            self.read_s
            + self.overhead_s
            + self.network_s
            + n_streams * self.kv_s
            + extra * self.stream_compute_s
            + sum(_interpolate(points, n_streams) for points in self.batch_extra)
        )


def _interpolate(points: tuple[tuple[int, float], ...], n: int) -> float:
    """The extra time at ``n`` streams from measured (streams, extra) points: none
    at one stream, linear between points, and past the last along the last slope."""
    if n <= 1 or not points:
        return 0.0
    known = [(1, 0.0), *sorted(points)]
    for (n0, e0), (n1, e1) in zip(known, known[1:], strict=False):
        if n <= n1:
            return e0 + (e1 - e0) * (n - n0) / (n1 - n0)
    (n0, e0), (n1, e1) = known[-2], known[-1]
    return e1 + (e1 - e0) * (n - n1) / (n1 - n0)


@dataclass(frozen=True)
class Speed:
    tg_tokens_per_s: float  # one stream's generation
    pp_tokens_per_s: float
    tg_overhead_s: float = 0.0  # of a token's time, the fixed per-layer part (not reading)
    tg_network_s: float = 0.0  # of a token's time, what crosses the network to RPC devices
    tg_host_read_s: float = 0.0  # of a token's time, what the host's bandwidth bounds
    n_parallel: int = 1  # streams decoded together (--parallel)
    # Each stream's speed when all n_parallel generate at once, and their sum:
    # batched decoding reads the weights once per step for every stream.
    tg_stream_tokens_per_s: float = 0.0
    tg_aggregate_tokens_per_s: float = 0.0

    @property
    def tg_token_s(self) -> float:
        return 1.0 / self.tg_tokens_per_s if self.tg_tokens_per_s > 0 else 0.0


def predicted_speed(times: SpeedSum, n_parallel: int) -> Speed:
    """A plan's speeds from its token's parts: one stream alone, and each of
    ``n_parallel`` streams decoding together with their sum."""
    one, together = times.step_s(), times.step_s(n_parallel)
    return Speed(
        tg_tokens_per_s=1.0 / one if one > 0 else 0.0,
        pp_tokens_per_s=1.0 / times.prompt_s if times.prompt_s > 0 else 0.0,
        tg_overhead_s=times.overhead_s,
        tg_network_s=times.network_s,
        tg_host_read_s=times.host_read_s,
        n_parallel=n_parallel,
        tg_stream_tokens_per_s=1.0 / together if together > 0 else 0.0,
        tg_aggregate_tokens_per_s=n_parallel / together if together > 0 else 0.0,
    )
