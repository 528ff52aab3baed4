"""Models on a (loopback) Hub and at URLs: the header read by range requests plans
exactly like the file on disk, for a fraction of its bytes and few round trips."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hub_server import FakeHub, hub_env, standard_hub
from llmtune.fit.plan import plan
from llmtune.fit.report import plan_dict
from llmtune.fit.settings import Settings
from llmtune.hardware.machine import MachineOptions, machine
from llmtune.model import read_spec
from llmtune.model.describe import inspect_dict
from llmtune.model.gguf_file import HeaderIncomplete, parse_header, read_gguf
from llmtune.model.remote import FIRST_READ_BYTES
from llmtune.model.source import open_spec

MAX_PARSES = 64


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory, demo_model: Path) -> Iterator[FakeHub]:
    with standard_hub(tmp_path_factory.mktemp("hub-files"), demo_model) as served:
        yield served


@pytest.fixture
def env(hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """llmtune pointed at the fake Hub, with empty private caches; returns the header cache."""
    for key, value in hub_env(hub, tmp_path / "cache", tmp_path / "hf").items():
        monkeypatch.setenv(key, value)
    hub.reset()
    return tmp_path / "cache" / "headers"


def _without_location(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k not in ("path", "shards", "model", "command")}


def _plan_json(spec: Any) -> dict[str, Any]:
    m = machine(MachineOptions(gpus=("rtx3060-12g",), ram="32GiB"), probe_bandwidth=False)
    return _without_location(plan_dict(spec, plan(spec, m.devices, Settings(), m.plan_speed)))


def test_a_growing_prefix_parses_to_the_whole_files_header(demo_model: Path) -> None:
    data = demo_model.read_bytes()
    whole = read_gguf(demo_model)
    have = 4096
    for _ in range(MAX_PARSES):
        try:
            gf = parse_header(data[:have], len(data), str(demo_model))
            break
        except HeaderIncomplete as more:
            assert more.end > have  # always asks for more than it had
            have = more.end
    else:
        pytest.fail("the prefix never grew to the header")
    assert gf.header_bytes == whole.header_bytes
    assert gf.tensors == whole.tensors
    assert gf.metadata.keys() == whole.metadata.keys()


def test_the_plan_of_a_hub_file_equals_the_plan_of_the_file_on_disk(
    env: Path, hub: FakeHub, demo_model: Path
) -> None:
    remote = open_spec(None, "test/smol:Q4_1")
    local = read_spec(demo_model)
    assert _plan_json(remote.spec) == _plan_json(local)
    assert _without_location(inspect_dict(remote.spec)) == _without_location(inspect_dict(local))
    # The listing, then the resolve redirect and the storage: one header read.
    assert hub.counters.requests == 3, hub.counters.log
    # One read: the 1.7 MB header is inside the first 4 MiB.
    assert remote.traffic.bytes_read <= FIRST_READ_BYTES
    print(f"demo model: {hub.counters.requests} requests, {remote.traffic.bytes_read:,} bytes")


def test_a_1gb_model_costs_under_one_percent_of_its_bytes(env: Path, hub: FakeHub) -> None:
    opened = open_spec(None, "test/big")
    size = opened.spec.file_bytes
    assert size > 1 << 30
    assert hub.counters.body_bytes < size / 100
    assert opened.traffic.requests <= 3  # redirect + one or two reads
    print(f"1.6 GB model: {opened.traffic.requests} round trips, {hub.counters.body_bytes:,} bytes")


def test_a_split_set_reads_every_shard_and_plans_like_the_local_set(
    env: Path, hub: FakeHub
) -> None:
    opened = open_spec(None, "test/split:Q8_0")
    local = read_spec(hub.repos["test/split"]["Q8_0/tiny-Q8_0-00001-of-00003.gguf"].path)
    assert len(opened.spec.shard_paths) == 3
    assert _plan_json(opened.spec) == _plan_json(local)
    # One connection for everything; per shard: the resolve redirect and one read.
    assert hub.counters.connections == 2  # huggingface_hub's listing, then llmtune's reads
    assert opened.traffic.requests == 6


def test_a_second_look_reads_no_header_bytes_and_offline_asks_nothing(
    env: Path, hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = open_spec(None, "test/smol:Q4_1")
    hub.reset()
    again = open_spec(None, "test/smol:Q4_1")
    assert again.cached and hub.counters.requests == 1  # the listing only
    assert again.spec.tensors == first.spec.tensors
    # The vocabulary reads from the cached header.
    tokens = again.spec.metadata["tokenizer.ggml.tokens"]
    assert hasattr(tokens, "values") and len(tokens.values(limit=3)) == 3
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub.reset()
    offline = open_spec(None, "test/smol:Q4_1")
    assert hub.counters.requests == 0
    assert offline.spec.tensors == first.spec.tensors


def test_a_url_is_read_by_ranges_and_revalidated_with_one_byte(
    env: Path, hub: FakeHub, demo_model: Path
) -> None:
    url = hub.add_file("model.gguf", demo_model)
    opened = open_spec(url)
    assert _plan_json(opened.spec) == _plan_json(read_spec(demo_model))
    assert hub.counters.requests == 1
    hub.reset()
    open_spec(url)
    assert hub.counters.log == [("GET", "/files/model.gguf", "bytes=0-0")]


def test_a_file_in_the_local_hf_cache_is_read_from_disk(
    env: Path, hub: FakeHub, demo_model: Path
) -> None:
    from llmtune.model.download import download
    from llmtune.model.hub import choose, list_repo

    repo = list_repo("test/smol")
    (path,) = download(repo, choose(repo, "Q4_1"))
    assert path.is_symlink() and path.read_bytes() == demo_model.read_bytes()
    hub.reset()
    opened = open_spec(None, "test/smol:Q4_1")
    assert opened.spec.path == str(path)
    assert [r for r in hub.counters.log if "/resolve/" in r[1]] == []


def test_a_download_resumes_from_its_partial_file(
    env: Path, hub: FakeHub, demo_model: Path
) -> None:
    from llmtune.model.download import download, repo_folder
    from llmtune.model.hub import choose, list_repo

    repo = list_repo("test/smol")
    entry = choose(repo, "Q4_1")
    blobs = repo_folder("test/smol") / "blobs"
    blobs.mkdir(parents=True)
    sha = entry.files[0].sha256
    (blobs / f"{sha}.partial").write_bytes(demo_model.read_bytes()[:1_000_000])
    hub.reset()
    (path,) = download(repo, entry)
    assert ("GET", f"/storage/{sha}/{demo_model.name}", "bytes=1000000-") in hub.counters.log
    assert path.read_bytes() == demo_model.read_bytes()
    assert not list(blobs.glob("*.partial"))


def test_a_download_that_does_not_fit_on_disk_is_refused_before_any_byte(
    env: Path, hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    from llmtune.errors import RemoteError
    from llmtune.model.download import download
    from llmtune.model.hub import choose, list_repo

    repo = list_repo("test/smol")
    usage = shutil.disk_usage(os.getcwd())
    monkeypatch.setattr(shutil, "disk_usage", lambda _p: usage._replace(free=1000))
    hub.reset()
    with pytest.raises(RemoteError, match="free"):
        download(repo, choose(repo, "Q4_1"))
    assert hub.counters.requests == 0


def test_bytes_that_do_not_match_the_hubs_sha256_are_deleted_not_kept(
    env: Path, hub: FakeHub, demo_model: Path
) -> None:
    from dataclasses import replace

    from llmtune.errors import RemoteError
    from llmtune.model.download import download, repo_folder
    from llmtune.model.hub import choose, list_repo

    repo = list_repo("test/smol")
    entry = choose(repo, "Q4_1")
    # The listing promises other bytes than the server sends (a corrupted mirror).
    wrong = replace(entry.files[0], sha256="0" * 64)
    with pytest.raises(RemoteError, match="SHA-256"):
        download(repo, replace(entry, files=(wrong,)))
    folder = repo_folder("test/smol")
    assert not list(folder.rglob("*.partial"))  # nothing to resume from wrong bytes
    assert not (folder / "blobs" / wrong.sha256).exists()
    assert not (folder / "snapshots").exists() or not list((folder / "snapshots").rglob("*.gguf"))


def test_a_second_download_of_the_same_file_is_refused_while_one_runs(
    env: Path, hub: FakeHub
) -> None:
    import fcntl

    from llmtune.errors import RemoteError
    from llmtune.model.download import download, repo_folder
    from llmtune.model.hub import choose, list_repo

    repo = list_repo("test/smol")
    entry = choose(repo, "Q4_1")
    blobs = repo_folder("test/smol") / "blobs"
    blobs.mkdir(parents=True)
    # Another process holds the file's lock (flock is per open file description).
    with open(blobs / f"{entry.files[0].sha256}.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        hub.reset()
        with pytest.raises(RemoteError, match="another download"):
            download(repo, entry)
        assert hub.counters.requests == 0 and not list(blobs.glob("*.partial"))
    (path,) = download(repo, entry)  # once it is released, the download runs
    assert path.stat().st_size == entry.size
