"""Samplers and bounded time series (ring buffers).

The sampler thread produces immutable ``Sample`` objects; the UI thread appends
them to a ``TelemetryStore`` of fixed-size ``Series``.
"""

from __future__ import annotations

from llmtune.telemetry.sample import GPUSample, HostSample, Sample, WorkerSample
from llmtune.telemetry.sampler import (
    DEFAULT_INTERVAL_S,
    MIN_INTERVAL_S,
    NvmlGPUProbe,
    ProcessProbe,
    PsutilHostProbe,
    Sampler,
)
from llmtune.telemetry.series import Series, SeriesView
from llmtune.telemetry.store import TelemetryStore

__all__ = [
    "DEFAULT_INTERVAL_S",
    "MIN_INTERVAL_S",
    "GPUSample",
    "HostSample",
    "NvmlGPUProbe",
    "ProcessProbe",
    "PsutilHostProbe",
    "Sample",
    "Sampler",
    "Series",
    "SeriesView",
    "TelemetryStore",
    "WorkerSample",
]
