"""``llmtune attach`` on a local llama-server: its memory on each GPU comes from
NVML's per-process list (through llmtune's NVML layer, here over a scripted
pynvml), and a GPU it does not use reads as none rather than another's bytes."""

from __future__ import annotations

import os
import sys

import pytest

from llmtune.engine.attach_local import LocalProcess

GIB = 1 << 30


def test_the_servers_own_vram_per_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = pytest.importorskip("fake_pynvml")
    nvml = pytest.importorskip("llmtune.hardware.nvml")
    me = os.getpid()  # the "server": a live process psutil can read
    script = fake.FakeNVML(
        [
            fake.FakeGPU(
                used=9 * GIB,
                compute=[
                    fake.FakeProcess(pid=me, usedGpuMemory=7 * GIB),
                    fake.FakeProcess(pid=999_999, usedGpuMemory=2 * GIB),  # someone else's
                ],
            ),
            fake.FakeGPU(used=1 * GIB, compute=[fake.FakeProcess(pid=999_999, usedGpuMemory=GIB)]),
        ]
    )
    monkeypatch.setitem(sys.modules, "pynvml", script.module())
    nvml.reset()
    try:
        reading = LocalProcess(me)()
    finally:
        monkeypatch.undo()
        nvml.reset()
    assert reading.alive and reading.rss_bytes is not None and reading.rss_bytes > 0
    assert reading.vram_bytes == (7 * GIB, None)  # only its own, only where it runs
    assert reading.gpu_total_bytes == (24 * GIB, 24 * GIB)
