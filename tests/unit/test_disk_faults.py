"""Saved settings, calibration and the bandwidth cache on a disk that is full or
read-only, for real: a small tmpfs filled to the last byte and a read-only bind
mount (root ignores permissions, so ``chmod`` would prove nothing). A failed
write is a sentence or a quiet miss, never a crash; the file that was there is
kept whole and no temporary file is left. Skipped where mounting is not allowed.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmtune import config_store
from llmtune.engine import calibration
from llmtune.fit.settings import Settings
from llmtune.fit.speed import DEFAULT_SPEED_MODEL, SpeedModel
from llmtune.hardware import bandwidth
from mounts import MountUnavailable, fill, read_only_or_skip, small_tmpfs

MODEL = "/models/m.gguf"


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs, ready to be filled."""
    try:
        with small_tmpfs(tmp_path / "disk", 256 << 10) as disk:
            yield disk
    except MountUnavailable as exc:
        pytest.skip(f"cannot mount a tmpfs here: {exc}")


@pytest.fixture
def read_only_folder(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "ro"
    folder.mkdir()
    (folder / "keep").write_text("")
    with read_only_or_skip(folder):
        yield folder


def snapshot(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def calibrate() -> SpeedModel | None:
    return calibration.record(
        calibration.Measurement(on_gpu=False, predicted_tg=10.0, measured_tg=5.0),
        DEFAULT_SPEED_MODEL,
    )


def test_settings_on_a_full_disk_keep_the_last_good_file(
    full_disk: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMTUNE_CONFIG_DIR", str(full_disk))
    first = config_store.Store().with_settings(MODEL, Settings(n_ctx=2048))
    assert config_store.save(first) is None
    fill(full_disk)
    before = snapshot(full_disk)
    # Enough settings that the new file cannot fit in what is left.
    bigger = first
    for i in range(200):
        bigger = bigger.with_settings(f"/models/other-{i}.gguf", Settings(n_ctx=4096 + i))

    problem = config_store.save(bigger)

    assert problem is not None and problem.startswith("Settings were not saved to ")
    assert "No space left on device" in problem
    assert snapshot(full_disk) == before  # the old file whole, no temporary file
    assert config_store.load() == (first, None)


def test_settings_in_a_read_only_folder_are_a_sentence(
    read_only_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMTUNE_CONFIG_DIR", str(read_only_folder))

    problem = config_store.save(config_store.Store().with_settings(MODEL, Settings()))

    assert problem is not None and "Read-only file system" in problem
    assert config_store.load() == (config_store.Store(), None)  # read as "nothing saved"
    assert os.listdir(read_only_folder) == ["keep"]


def test_calibration_on_a_full_disk_keeps_the_last_good_file(
    full_disk: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMTUNE_CONFIG_DIR", str(full_disk))
    # A calibration file of other machines' entries, then a full disk.
    others = {f"CPU model {i} x8": {"cpu_bandwidth_efficiency": 0.5} for i in range(400)}
    (full_disk / calibration.FILE_NAME).write_text(json.dumps(others))
    fill(full_disk)
    before = snapshot(full_disk)

    assert calibrate() is None  # not kept; the bench result itself still stands

    assert snapshot(full_disk) == before
    assert calibration.load() == (DEFAULT_SPEED_MODEL, None)


def test_calibration_in_a_read_only_folder_is_not_kept(
    read_only_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMTUNE_CONFIG_DIR", str(read_only_folder))
    assert calibrate() is None
    assert os.listdir(read_only_folder) == ["keep"]


def test_a_config_folder_under_a_regular_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("LLMTUNE_CONFIG_DIR", str(blocker / "llmtune"))
    speed, notice = calibration.load()
    assert speed == DEFAULT_SPEED_MODEL
    assert notice is not None and notice.startswith("Could not read the calibration")
    assert calibrate() is None
    assert blocker.read_text() == ""


def test_the_bandwidth_cache_on_a_full_disk_still_gives_the_measurement(
    full_disk: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMTUNE_CACHE_DIR", str(full_disk))
    monkeypatch.setattr(
        bandwidth,
        "measure_host_bandwidth",
        lambda **kwargs: bandwidth.BandwidthMeasurement(12.5, 4 << 20, 2, 1),
    )
    fill(full_disk)
    before = snapshot(full_disk)

    assert bandwidth.host_bandwidth_gbps(probe=True) == 12.5

    assert snapshot(full_disk) == before
