"""The speed model's inputs, in one place so measurements can calibrate them.

Generation is memory-bound: per token every device reads its share of the
weights (for MoE only the experts used) and of the KV cache at its bandwidth,
and the devices run one after another, so their times add. Prompt processing
is compute-bound: 2 FLOPs per weight per token at each device's throughput;
with partial offload llama.cpp copies the CPU's weights to the GPU once per
ubatch (op offload), so PCIe bandwidth bounds it instead. The efficiencies are
the fractions of peak that llama.cpp reaches; `llmtune bench` measures them
per machine.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SpeedModel:
    gpu_bandwidth_efficiency: float = 0.80
    cpu_bandwidth_efficiency: float = 0.65
    gpu_compute_efficiency: float = 0.45
    cpu_compute_efficiency: float = 0.35
    pcie_gbps: float = 16.0  # PCIe 4.0 x16 as measured in practice


DEFAULT_SPEED_MODEL = SpeedModel()
