"""Every vendor's GPUs in one never-raising snapshot: NVIDIA (NVML), then AMD (amdsmi).

Each vendor numbers its own GPUs from 0, as llama.cpp names them per backend
(CUDA0, ROCm0); :attr:`GPUState.backend` tells them apart. Apple's GPU has no
per-tick reading here: it is found once by :mod:`llmtune.hardware.apple`.
"""

from __future__ import annotations

from collections.abc import Iterable

from llmtune.hardware import amd, nvml
from llmtune.hardware.nvml import GPUState


def snapshot(exclude_pids: Iterable[int] = ()) -> tuple[GPUState, ...]:
    """Every NVIDIA and AMD GPU now; empty when neither library sees one."""
    excluded = tuple(exclude_pids)
    return nvml.snapshot(excluded) + amd.snapshot(excluded)


def gpu_status() -> tuple[bool, str]:
    """(any GPU library sees a GPU, one sentence): NVML's sentence unless only
    amdsmi sees GPUs; both when neither does."""
    nvidia, nvidia_text = nvml.nvml_status()
    if nvidia:
        return True, nvidia_text
    radeon, radeon_text = amd.amd_status()
    if radeon:
        return True, radeon_text
    if "/dev/kfd" in radeon_text:  # the ROCm driver is here: say how to see its GPUs
        return False, f"{nvidia_text} And {radeon_text}."
    return False, nvidia_text
