"""Telemetry: ring-buffer series, the store's bounded memory, and the sampler thread.

The sampler is driven by scripted probes; ticks are either called directly
with a fake clock or run on the real thread at the shortest interval, and no
test asserts on how long anything took.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import queue
import subprocess
import sys
import threading
import tracemalloc
import types
from collections.abc import Iterator

import pytest

from llmtune.telemetry import (
    MIN_INTERVAL_S,
    GPUSample,
    HostSample,
    NvmlGPUProbe,
    ProcessProbe,
    PsutilHostProbe,
    Sample,
    Sampler,
    Series,
    TelemetryStore,
    WorkerSample,
)
from llmtune.telemetry.sampler import clamp_interval, gpu_sample_from_state, next_deadline
from llmtune.telemetry.store import capacity_for

HOST = HostSample(
    ram_total_bytes=16 << 30, ram_available_bytes=10 << 30, swap_used_bytes=0, cpu_percent=12.5
)
GPU0 = GPUSample(0, 3 << 30, 12 << 30, 40.0, 60.0, 120.0)


# -- Series -----------------------------------------------------------------------


def test_series_wraps_and_keeps_only_the_newest_points() -> None:
    series = Series(3)
    for t in range(1, 6):
        series.append(float(t), t * 10.0)
    assert len(series) == 3 and series.capacity == 3
    view = series.view()
    assert view.times == (3.0, 4.0, 5.0)
    assert view.values == (30.0, 40.0, 50.0)
    assert series.last == 50.0 and series.last_time == 5.0


def test_series_before_it_fills() -> None:
    series = Series(4)
    assert series.view().times == () and series.last is None and series.max() is None
    series.append(1.0, 1.0)
    series.append(2.0, 2.0)
    assert series.view().values == (1.0, 2.0)


def test_views_are_immutable_and_unaffected_by_later_appends() -> None:
    series = Series(3)
    for t in range(3):
        series.append(float(t), float(t))
    view = series.view()
    assert isinstance(view.times, tuple) and isinstance(view.values, tuple)
    with pytest.raises(dataclasses.FrozenInstanceError):
        view.times = ()  # type: ignore[misc]
    for t in range(3, 10):
        series.append(float(t), -1.0)
    assert view.times == (0.0, 1.0, 2.0)
    assert view.values == (0.0, 1.0, 2.0)


def test_missing_values_are_gaps() -> None:
    series = Series(4)
    series.append(0.0, 5.0)
    series.append(1.0, None)
    assert series.last is None
    assert series.view().values == (5.0, None)
    assert series.view().present() == (5.0,)
    assert series.max() == 5.0 and series.min() == 5.0


def test_min_and_max_over_a_window() -> None:
    series = Series(100)
    for t, value in enumerate([9.0, 1.0, 5.0, 3.0, 4.0]):
        series.append(float(t), value)
    assert (series.min(), series.max()) == (1.0, 9.0)
    # The last 2 s: t = 2, 3, 4.
    assert (series.min(window_s=2.0), series.max(window_s=2.0)) == (3.0, 5.0)
    assert series.view(window_s=1.0).times == (3.0, 4.0)


def test_window_after_wrapping() -> None:
    series = Series(4)
    for t in range(10):
        series.append(float(t), float(t))
    assert series.view(window_s=2.0).values == (7.0, 8.0, 9.0)
    assert series.view(window_s=100.0).values == (6.0, 7.0, 8.0, 9.0)
    assert series.min(window_s=100.0) == 6.0


def test_series_refuses_time_going_backwards() -> None:
    series = Series(2)
    series.append(5.0, 1.0)
    with pytest.raises(ValueError):
        series.append(4.0, 1.0)


# -- TelemetryStore -----------------------------------------------------------------


def _samples(n: int, start: int = 0) -> Iterator[Sample]:
    worker = WorkerSample(pid=1234, rss_bytes=1 << 30, tokens_per_s=25.0)
    for i in range(start, start + n):
        yield Sample(float(i), HOST, (GPU0,), worker)


def test_store_memory_does_not_grow_after_100000_appends() -> None:
    store = TelemetryStore(history_s=60.0, interval_s=1.0)
    assert store.capacity == capacity_for(60.0, 1.0) == 61
    tracemalloc.start()
    try:
        for sample in _samples(store.capacity * 2):  # warm up: every series full
            store.append(sample)
        before, _ = tracemalloc.get_traced_memory()
        for sample in _samples(100_000, start=store.capacity * 2):
            store.append(sample)
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Only the latest Sample object is retained; anything per-append would be megabytes.
    assert after - before < 4096, f"the store grew by {after - before} bytes"
    assert len(store.host.cpu_percent) == store.capacity
    assert store.host.ram_used_bytes.last == 6 << 30
    assert store.worker.rss_bytes.last == 1 << 30 and store.worker.pid == 1234


def test_store_gpus_appear_and_leave_gaps() -> None:
    store = TelemetryStore(history_s=10.0, interval_s=1.0)
    store.append(Sample(0.0, HOST, (GPU0,)))
    gpu1 = GPUSample(index=1, memory_used_bytes=1 << 30)
    store.append(Sample(1.0, None, (gpu1,)))
    assert [g.index for g in store.gpus] == [0, 1]
    first = store.gpu(0)
    assert first is not None and first.memory_total_bytes == 12 << 30
    assert first.memory_used_bytes.view().values == (float(3 << 30), None)
    assert store.host.cpu_percent.view().values == (12.5, None)
    assert store.worker.pid is None and store.worker.rss_bytes.last is None


def test_store_drops_a_stale_sample() -> None:
    store = TelemetryStore(history_s=10.0, interval_s=1.0)
    assert store.append(Sample(5.0, HOST))
    assert not store.append(Sample(4.0, HOST))
    assert len(store.host.cpu_percent) == 1


def test_capacity_follows_the_clamped_interval() -> None:
    assert capacity_for(600.0, 0.05) == capacity_for(600.0, MIN_INTERVAL_S) == 3001


# -- Sampler: scheduling and clamping -------------------------------------------------


def test_interval_is_clamped() -> None:
    assert clamp_interval(0.01) == MIN_INTERVAL_S == 0.2
    assert clamp_interval(0.0) == 0.2 and clamp_interval(-3.0) == 0.2
    assert clamp_interval(float("nan")) == 1.0
    assert clamp_interval(5.0) == 5.0
    assert Sampler(lambda s: None, interval_s=0.001).interval_s == 0.2
    assert Sampler(lambda s: None).interval_s == 1.0


def test_deadlines_are_absolute_so_slow_ticks_do_not_drift() -> None:
    # Each tick took 0.3 s of a 1 s interval: the grid stays on whole seconds.
    deadline = 100.0
    for k in range(1, 50):
        deadline = next_deadline(deadline, now=deadline + 0.3, interval_s=1.0)
        assert deadline == 100.0 + k


def test_missed_ticks_are_skipped_not_replayed() -> None:
    # A 3.5 s stall (a hung probe, a suspended laptop) resumes on the grid.
    assert next_deadline(10.0, now=13.5, interval_s=1.0) == 14.0
    assert next_deadline(10.0, now=14.0, interval_s=1.0) == 15.0
    assert next_deadline(10.0, now=10.2, interval_s=1.0) == 11.0


# -- Sampler: probes -------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def _boom() -> HostSample:
    raise RuntimeError("probe failed")


def test_tick_calls_each_probe_once_with_a_fake_clock() -> None:
    calls = {"host": 0, "gpu": 0, "worker": 0}

    def host() -> HostSample:
        calls["host"] += 1
        return HOST

    def gpus() -> tuple[GPUSample, ...]:
        calls["gpu"] += 1
        return (GPU0,)

    def worker() -> WorkerSample:
        calls["worker"] += 1
        return WorkerSample(42, 1000, None)

    sampler = Sampler(
        lambda s: None, host_probe=host, gpu_probe=gpus, worker_probe=worker, clock=FakeClock()
    )
    samples = [sampler.tick() for _ in range(3)]
    assert [s.timestamp for s in samples] == [1001.0, 1002.0, 1003.0]
    assert calls == {"host": 3, "gpu": 3, "worker": 3}
    assert samples[0] == Sample(1001.0, HOST, (GPU0,), WorkerSample(42, 1000, None))


def test_a_raising_probe_becomes_a_missing_field_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def bad_gpus() -> tuple[GPUSample, ...]:
        raise OSError("NVML gone")

    def bad_worker() -> WorkerSample:
        raise ValueError("no such pid")

    sampler = Sampler(
        lambda s: None,
        host_probe=_boom,
        gpu_probe=bad_gpus,
        worker_probe=bad_worker,
        clock=FakeClock(),
    )
    with caplog.at_level(logging.WARNING, logger="llmtune.telemetry"):
        samples = [sampler.tick() for _ in range(5)]
    assert all(s.host is None and s.gpus == () and s.worker is None for s in samples)
    messages = [r.getMessage() for r in caplog.records]
    assert sorted(messages) == sorted(
        f"telemetry: the {name} probe failed" for name in ("host", "gpu", "worker")
    )


def test_worker_probe_can_be_swapped_from_another_thread() -> None:
    sampler = Sampler(lambda s: None, host_probe=lambda: HOST, gpu_probe=tuple, clock=FakeClock())
    assert sampler.tick().worker is None
    sampler.watch_worker(os.getpid(), tokens_per_s=lambda: 17.5)
    worker = sampler.tick().worker
    assert worker is not None and worker.pid == os.getpid() and worker.tokens_per_s == 17.5
    assert worker.rss_bytes is not None and worker.rss_bytes > 0
    sampler.watch_worker(None)
    assert sampler.tick().worker is None


# -- Sampler: the thread ---------------------------------------------------------------


def _collect(sampler_kwargs: dict[str, object], n: int) -> tuple[list[Sample], Sampler]:
    delivered: queue.Queue[Sample] = queue.Queue()
    sampler = Sampler(delivered.put, interval_s=0.01, **sampler_kwargs)  # type: ignore[arg-type]
    sampler.start()
    try:
        samples = [delivered.get(timeout=5.0) for _ in range(n)]
    finally:
        sampler.stop()
    return samples, sampler


def test_thread_delivers_samples_with_increasing_timestamps_and_stops() -> None:
    samples, sampler = _collect({"host_probe": lambda: HOST, "gpu_probe": lambda: (GPU0,)}, 3)
    assert sampler.interval_s == MIN_INTERVAL_S
    timestamps = [s.timestamp for s in samples]
    assert timestamps == sorted(timestamps) and len(set(timestamps)) == 3
    assert all(s.host == HOST and s.gpus == (GPU0,) for s in samples)
    assert not sampler.running
    assert not any(t.name == "llmtune-telemetry" and t.is_alive() for t in threading.enumerate())
    assert sampler.ticks >= 3


def test_raising_probes_do_not_stop_the_thread() -> None:
    def bad_gpus() -> tuple[GPUSample, ...]:
        raise OSError("NVML gone")

    samples, sampler = _collect({"host_probe": _boom, "gpu_probe": bad_gpus}, 3)
    assert all(s.host is None and s.gpus == () for s in samples)
    assert not sampler.running


def test_a_raising_callback_does_not_stop_the_thread() -> None:
    delivered: queue.Queue[Sample] = queue.Queue()
    calls = 0

    def callback(sample: Sample) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("the UI is gone")
        delivered.put(sample)

    sampler = Sampler(callback, interval_s=0.2, host_probe=lambda: HOST, gpu_probe=tuple)
    sampler.start()
    try:
        delivered.get(timeout=5.0)
    finally:
        sampler.stop()
    assert not sampler.running


def test_stop_before_start_and_twice_is_harmless() -> None:
    sampler = Sampler(lambda s: None, host_probe=lambda: HOST, gpu_probe=tuple)
    sampler.stop()
    sampler.start()
    sampler.start()  # already running: no second thread
    sampler.stop()
    sampler.stop()
    assert not sampler.running


# -- the default probes ----------------------------------------------------------------


def test_psutil_host_probe_reads_this_machine() -> None:
    probe = PsutilHostProbe()
    first = probe()
    assert first.ram_total_bytes is not None and first.ram_total_bytes > 0
    assert first.ram_available_bytes is not None and first.swap_used_bytes is not None
    assert first.cpu_percent is None  # no interval to measure over yet
    second = probe()
    assert second.cpu_percent is not None and 0.0 <= second.cpu_percent <= 100.0
    assert second.ram_used_bytes is not None and second.ram_used_bytes > 0


def test_process_probe_of_an_exited_process_has_no_rss() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    probe = ProcessProbe(child.pid)
    assert probe() == WorkerSample(pid=child.pid, rss_bytes=None, tokens_per_s=None)


def test_gpu_probe_without_nvml_has_no_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "llmtune.hardware.gpus", None)  # import raises
    probe = NvmlGPUProbe()
    assert probe() == () and probe() == ()


def test_gpu_probe_converts_one_snapshot_per_tick(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = 0
    excluded: list[tuple[int, ...]] = []
    state = types.SimpleNamespace(
        index=1,
        name="GPU",
        memory_used_bytes=2 << 30,
        memory_total_bytes=8 << 30,
        utilization_gpu_percent=55,
        temperature_c=70,
        power_draw_w=150.5,
    )

    def snapshot(exclude_pids: tuple[int, ...] = ()) -> tuple[object, ...]:
        nonlocal calls
        calls += 1
        excluded.append(exclude_pids)
        if calls == 2:
            raise RuntimeError("NVML_ERROR_GPU_IS_LOST")
        return (state,)

    module = types.ModuleType("llmtune.hardware.gpus")
    module.snapshot = snapshot  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "llmtune.hardware.gpus", module)
    probe = NvmlGPUProbe()
    sampler = Sampler(lambda s: None, host_probe=lambda: HOST, gpu_probe=probe)
    sampler.watch_worker(4321)
    expected = GPUSample(1, 2 << 30, 8 << 30, 55.0, 70.0, 150.5, name="GPU")
    assert probe() == (expected,)
    assert probe() == ()  # a failed snapshot: no GPUs this tick
    assert probe() == (expected,)
    assert calls == 3
    assert excluded == [(4321,)] * 3  # the worker's memory is not "other processes'"


def test_gpu_state_with_missing_fields() -> None:
    # A lost GPU (NVML's GPUState(index, lost=True)) or an unknown object: all None.
    lost = types.SimpleNamespace(index=2, name=None, memory_used_bytes=None, lost=True)
    assert gpu_sample_from_state(lost, 0) == GPUSample(index=2)
    assert gpu_sample_from_state(object(), 3) == GPUSample(index=3)


def test_gpu_probe_through_the_real_nvml_layer(monkeypatch: pytest.MonkeyPatch) -> None:
    """llmtune.hardware.nvml over a scripted pynvml: its GPUState converts field by field."""
    fake = pytest.importorskip("fake_pynvml")
    nvml = pytest.importorskip("llmtune.hardware.nvml")
    gib = 1 << 30
    script = fake.FakeNVML(
        [
            fake.FakeGPU(
                used=5 * gib,
                utilization_gpu=80,
                temperature=66,
                power_mw=250_000,
                compute=[fake.FakeProcess(pid=999_999, usedGpuMemory=3 * gib)],
            )
        ]
    )
    monkeypatch.setitem(sys.modules, "pynvml", script.module())
    nvml.reset()
    try:
        samples = NvmlGPUProbe()()
    finally:
        monkeypatch.undo()
        nvml.reset()
    assert samples == (
        GPUSample(
            index=0,
            memory_used_bytes=5 * gib,
            memory_total_bytes=24 * gib,
            utilization_percent=80.0,
            temperature_c=66.0,
            power_w=250.0,
            other_processes_bytes=3 * gib,
            name="NVIDIA GeForce RTX 3090",
        ),
    )


def test_latest_gives_the_newest_points_in_order_across_the_wrap() -> None:
    series = Series(5)
    for i in range(8):  # wraps: 3, 4, 5, 6, 7 remain
        series.append(float(i), None if i == 6 else float(i * 10))
    assert series.latest(3) == (50.0, None, 70.0)
    assert series.latest(10) == (30.0, 40.0, 50.0, None, 70.0)
    assert series.latest(0) == ()
    assert series.latest(5) == series.view().values
