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
