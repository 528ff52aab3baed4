"""The speed model's inputs, in one place so measurements can calibrate them.

Generation is memory-bound: per token every device reads its share of the
weights (for MoE only the experts used) and of the KV cache at its bandwidth,
and the devices run one after another, so their times add. On top of the
reading, every layer costs a fixed time per token whatever its size: llama.cpp
walks a graph of about thirty operations per layer, and each is a kernel launch
on a GPU or a barrier between the threads on the CPU. For a 7B model that is a
few percent; for a 135M model it is most of the time (measured here by
``tests/bench/speed_accuracy.py``: SmolLM2-135M generates at 0.3x what its 0.1 GB
of weights would allow, synthetic 3B-7B Llama shapes at 0.9x).

Prompt processing is compute-bound: 2 FLOPs per weight per token at each
device's throughput; with partial offload llama.cpp copies the CPU's weights to
the GPU once per ubatch (op offload), so PCIe bandwidth bounds it instead.

The efficiencies are the fractions of a bandwidth or throughput that llama.cpp
reaches. A bandwidth from a data sheet or profile is a peak (DDR4-3200 dual
channel: 51.2 GB/s) that nothing reads at; the host bandwidth llmtune measures
on this machine (``hardware.bandwidth``, a STREAM-style copy) is what a program
gets, and llama.cpp's reading matches it (1.07x on the machine of the README's
Performance section), so it has an efficiency of its own. ``llmtune bench``
calibrates all of them per machine (``engine.calibration``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SpeedModel:
    gpu_bandwidth_efficiency: float = 0.80
    cpu_bandwidth_efficiency: float = 0.65  # of a peak figure (a host profile, --ram)
    cpu_measured_bandwidth_efficiency: float = 1.0  # of this machine's measured bandwidth
    gpu_compute_efficiency: float = 0.45
    cpu_compute_efficiency: float = 0.35
    pcie_gbps: float = 16.0  # PCIe 4.0 x16 as measured in practice
    # Fixed time per layer (and for the output) per generated token. CPU: about
    # 100 us with two threads on this project's 2-core machine (SmolLM2-135M,
    # 30 layers, spends 6.6 of its 10.2 ms per token beyond reading its weights).
    # GPU: llama.cpp's published RTX 4090 figures for 7B Q4_0 (about 155 tokens/s
    # for 3.6 GB at 1008 GB/s) leave about 40 us per layer beyond the reading.
    cpu_layer_overhead_s: float = 100e-6
    gpu_layer_overhead_s: float = 40e-6


DEFAULT_SPEED_MODEL = SpeedModel()
