"""The host bandwidth probe and its per-machine cache; host_device never probes."""

from __future__ import annotations

import json

import pytest

from llmtune.hardware import bandwidth
from llmtune.hardware.bandwidth import (
    BandwidthMeasurement,
    cache_path,
    cached_host_bandwidth_gbps,
    host_bandwidth_gbps,
    machine_key,
    measure_host_bandwidth,
    store_host_bandwidth,
)
from llmtune.hardware.host import DEFAULT_HOST_BANDWIDTH_GBPS, host_device, host_device_measured

MIB = 1024**2
SMALL = 4 * MIB


@pytest.fixture(autouse=True)
def cache(monkeypatch, tmp_path):
    path = tmp_path / "cache"
    monkeypatch.setenv("LLMTUNE_CACHE_DIR", str(path))
    return path


@pytest.fixture(autouse=True)
def _no_kernel_probe(monkeypatch):
    """These tests count bandwidth probes; the CPU kernel probe (a child process,
    seconds) has its own tests in test_cpu_kernels.py."""
    from llmtune.hardware import cpu_kernels

    def unavailable(*_args, **_kwargs):
        raise RuntimeError("not in these tests")

    monkeypatch.setattr(cpu_kernels, "measure_kernel_rates", unavailable)


@pytest.fixture
def probes(monkeypatch):
    """Counts probe runs; each one measures the small array for real."""
    runs = []
    real = bandwidth.measure_host_bandwidth

    def counted(array_bytes=SMALL, **kwargs):
        runs.append(array_bytes)
        return real(array_bytes=SMALL, repeats=2)

    monkeypatch.setattr(bandwidth, "measure_host_bandwidth", counted)
    return runs


def test_the_probe_measures_something():
    result = measure_host_bandwidth(array_bytes=SMALL, repeats=3, threads=2)
    assert result.bandwidth_gbps > 0
    assert result.array_bytes == SMALL
    assert 2 <= result.repeats <= 3
    assert result.threads == 1  # 4 MiB is below one 8 MiB chunk per thread


def test_the_probe_stops_at_its_budget():
    result = measure_host_bandwidth(array_bytes=SMALL, repeats=50, budget_s=0.0)
    assert result.repeats == 2  # the minimum: the first copy may be warming up


def test_cache_under_llmtune_cache_dir(cache):
    assert cache_path() == cache / "host_bandwidth.json"


def test_first_call_probes_and_caches_then_hits(probes, cache):
    first = host_bandwidth_gbps(probe=True)
    assert first is not None and first > 0
    assert len(probes) == 1
    data = json.loads((cache / "host_bandwidth.json").read_text())
    entry = data["machines"][machine_key()]
    assert entry["array_bytes"] == SMALL and entry["bandwidth_gbps"] > 0
    assert host_bandwidth_gbps(probe=True) == entry["bandwidth_gbps"]
    assert len(probes) == 1  # the cache answered


def test_no_probe_and_no_cache_means_unknown(probes):
    assert host_bandwidth_gbps(probe=False) is None
    assert probes == []


def test_the_key_is_cpu_model_and_ram(monkeypatch):
    monkeypatch.setattr(bandwidth, "cpu_model_name", lambda: "Example CPU 9000")
    monkeypatch.setattr(bandwidth, "_ram_bytes", lambda: 25276510208)  # 23.5 GiB as the kernel says
    assert machine_key() == "Example CPU 9000 | 24 GiB"


def test_another_machines_entry_is_not_this_one(cache):
    store_host_bandwidth(BandwidthMeasurement(300.0, SMALL, 2, 1), key="Other CPU | 512 GiB")
    assert cached_host_bandwidth_gbps() is None
    assert cached_host_bandwidth_gbps("Other CPU | 512 GiB") == 300.0
    store_host_bandwidth(BandwidthMeasurement(55.5, SMALL, 2, 1))
    assert cached_host_bandwidth_gbps() == 55.5
    assert cached_host_bandwidth_gbps("Other CPU | 512 GiB") == 300.0  # kept beside it
    assert [p.name for p in cache.iterdir()] == ["host_bandwidth.json"]  # no temp file left


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        "",
        "[1, 2, 3]",
        '{"version": 1, "machines": []}',
        '{"version": 99, "machines": {}}',
        "[" * 100_000 + "]" * 100_000,  # deep enough to exhaust a recursive parser
        b"\xff\xfe{}",  # not UTF-8
    ],
    ids=["syntax", "empty", "list", "machines-list", "version", "deep", "encoding"],
)
def test_a_corrupt_cache_file_is_ignored_and_replaced(probes, cache, content):
    cache.mkdir(parents=True)
    raw = content if isinstance(content, bytes) else content.encode()
    (cache / "host_bandwidth.json").write_bytes(raw)
    assert cached_host_bandwidth_gbps() is None
    assert host_bandwidth_gbps(probe=True) is not None
    assert len(probes) == 1
    assert cached_host_bandwidth_gbps() is not None  # rewritten whole


def test_a_cache_file_too_large_to_be_ours_is_not_read_whole(cache):
    cache.mkdir(parents=True)
    key = json.dumps(machine_key())
    entry = f'{{"version": 1, "machines": {{{key}: {{"bandwidth_gbps": 42.0}}}}}}'
    (cache / "host_bandwidth.json").write_text(entry + " " * bandwidth.MAX_CACHE_BYTES)
    assert cached_host_bandwidth_gbps() is None


@pytest.mark.parametrize("value", ['"fast"', "-3", "0", "true", "NaN", "null"])
def test_a_nonsense_value_is_ignored(cache, value):
    cache.mkdir(parents=True)
    key = json.dumps(machine_key())
    (cache / "host_bandwidth.json").write_text(
        f'{{"version": 1, "machines": {{{key}: {{"bandwidth_gbps": {value}}}}}}}'
    )
    assert cached_host_bandwidth_gbps() is None


def test_an_unwritable_cache_still_gives_the_measurement(monkeypatch, tmp_path, probes):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("LLMTUNE_CACHE_DIR", str(blocker))
    assert host_bandwidth_gbps(probe=True) is not None


def test_a_failing_probe_gives_none(monkeypatch):
    def broken(**kwargs):
        raise MemoryError

    monkeypatch.setattr(bandwidth, "measure_host_bandwidth", broken)
    assert host_bandwidth_gbps(probe=True) is None


def test_host_device_never_probes_or_reads_the_cache(probes):
    store_host_bandwidth(BandwidthMeasurement(88.0, SMALL, 2, 1))
    host = host_device()
    assert host.bandwidth_gbps == DEFAULT_HOST_BANDWIDTH_GBPS and not host.bandwidth_known
    assert probes == []


def test_host_device_measured_uses_the_cache(probes):
    assert host_device_measured().bandwidth_known is False  # nothing cached, no probe
    store_host_bandwidth(BandwidthMeasurement(88.0, SMALL, 2, 1))
    host = host_device_measured()
    assert host.bandwidth_gbps == 88.0 and host.bandwidth_known
    assert probes == []
    # Another machine's RAM: this machine's measurement does not apply.
    other = host_device_measured(ram_bytes=64 * 1024**3)
    assert other.bandwidth_gbps == DEFAULT_HOST_BANDWIDTH_GBPS and other.source == "spec"


def test_host_device_measured_can_probe(probes):
    host = host_device_measured(probe=True)
    assert host.bandwidth_known and host.bandwidth_gbps > 0
    assert len(probes) == 1


def test_the_probe_runs_in_rounds():
    result = measure_host_bandwidth(
        array_bytes=SMALL, repeats=50, budget_s=0.0, rounds=3, pause_s=0
    )
    assert result.repeats == 6  # two copies in each of three rounds, the best kept


def _measured(gbps: float) -> BandwidthMeasurement:
    return BandwidthMeasurement(gbps, SMALL, 2, 1)


def test_a_busy_probe_does_not_stick():
    """A probe taken while the machine was busy (7.1 GB/s against 28 quiet) is
    outvoted by the next: plans use the best of the last probes."""
    store_host_bandwidth(_measured(7.1))
    assert cached_host_bandwidth_gbps() == 7.1
    store_host_bandwidth(_measured(28.4))
    store_host_bandwidth(_measured(20.0))  # busy again: the best stays
    assert cached_host_bandwidth_gbps() == 28.4
    record = bandwidth.host_bandwidth_record()
    assert record is not None and (record.bandwidth_gbps, record.probes) == (28.4, 3)
    assert record.describe().startswith("host 28.4 GB/s (best of 3 probes, 20")
    for _ in range(10):
        store_host_bandwidth(_measured(10.0))
    # Only the last few are kept: a machine that really got slower is believed.
    assert bandwidth.host_bandwidth_record().probes == bandwidth.KEPT_PROBES
    assert cached_host_bandwidth_gbps() == 10.0


def test_an_entry_from_before_probes_were_kept_is_one_probe(cache):
    cache.mkdir(parents=True)
    old = {"bandwidth_gbps": 7.1, "measured_at": "2026-01-01T00:00:00+00:00", "repeats": 5}
    (cache / "host_bandwidth.json").write_text(
        json.dumps({"version": 1, "machines": {machine_key(): old}})
    )
    record = bandwidth.host_bandwidth_record()
    assert record is not None and (record.bandwidth_gbps, record.probes) == (7.1, 1)
    assert record.describe() == "host 7.1 GB/s (probed 2026-01-01)"
    store_host_bandwidth(_measured(28.0))
    assert cached_host_bandwidth_gbps() == 28.0
    assert bandwidth.host_bandwidth_record().probes == 2


def test_reprobe_keeps_the_better_figure(monkeypatch):
    store_host_bandwidth(_measured(7.1))
    monkeypatch.setattr(bandwidth, "measure_host_bandwidth", lambda **kw: _measured(28.9))
    assert bandwidth.reprobe_host_bandwidth() == (7.1, 28.9)
    monkeypatch.setattr(bandwidth, "measure_host_bandwidth", lambda **kw: _measured(9.0))
    assert bandwidth.reprobe_host_bandwidth() == (28.9, 28.9)  # a busy re-probe changes nothing

    def fails(**kwargs):
        raise MemoryError

    monkeypatch.setattr(bandwidth, "measure_host_bandwidth", fails)
    assert bandwidth.reprobe_host_bandwidth() == (28.9, 28.9)  # never raises


def test_fit_shows_the_figure_it_planned_with(monkeypatch, tmp_path):
    from llmtune.hardware.machine import MachineOptions, machine

    store_host_bandwidth(_measured(28.4))
    m = machine(MachineOptions(), probe_bandwidth=False)
    assert m.host.bandwidth_gbps == 28.4 and m.host.bandwidth_measured
    assert m.host_line.startswith("host 28.4 GB/s (probed 20")
    # Another machine's RAM is not this one's figure.
    assert machine(MachineOptions(ram="64GiB"), probe_bandwidth=False).host_line == ""


def test_fit_json_and_text_say_which_host_bandwidth(cache, tmp_path):
    import os
    import subprocess
    import sys

    from synth import llama_like

    store_host_bandwidth(_measured(28.4))
    (path,) = llama_like(tmp_path / "tiny.gguf")
    env = dict(os.environ, LLMTUNE_CACHE_DIR=str(cache))

    def fit(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "llmtune.cli", "fit", str(path), "--ctx", "512", *args],
            capture_output=True, text=True, timeout=120, env=env,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout

    data = json.loads(fit("--json"))
    assert data["host_bandwidth"]["bandwidth_gbps"] == 28.4
    assert data["host_bandwidth"]["probes"] == 1
    assert any(n.startswith("CPU speed planned with host 28.4 GB/s") for n in data["notes"])
    assert "host 28.4 GB/s" in fit()
