"""The app on a (loopback) Hub: OWNER/REPO typed in the picker shows every GGUF
of the repo planned for this machine; Enter plans one in every pane from its
header alone; d downloads it into the Hugging Face cache with a progress bar
and opens it; Escape cancels a download, leaving the ``.partial`` to resume."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from rendered import screen_text
from ui_support import wait_for, with_gpu

from hub_server import FakeHub, hub_env, standard_hub
from llmtune.model import ModelSpec, read_spec
from llmtune.ui.app import make_app
from llmtune.ui.screens.download import DownloadScreen
from llmtune.ui.screens.hub_repo import HubRepoScreen
from llmtune.ui.screens.picker import ModelPicker


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory, demo_model: Path) -> Iterator[FakeHub]:
    with standard_hub(tmp_path_factory.mktemp("hub-files"), demo_model) as served:
        yield served


@pytest.fixture
def hf_home(hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for key, value in hub_env(hub, tmp_path / "cache", tmp_path / "hf").items():
        monkeypatch.setenv(key, value)
    hub.reset()
    return tmp_path / "hf"


async def _repo_table(app, pilot, repo: str) -> HubRepoScreen:  # type: ignore[no-untyped-def]
    await pilot.press("o")
    await wait_for(pilot, lambda: isinstance(app.screen, ModelPicker))
    await pilot.press(*repo, "enter")
    await wait_for(pilot, lambda: isinstance(app.screen, HubRepoScreen))
    screen = app.screen
    assert isinstance(screen, HubRepoScreen)
    await wait_for(pilot, lambda: bool(screen.rows))
    return screen


async def test_a_repo_typed_in_the_picker_is_planned_file_by_file(
    hf_home: Path, hub: FakeHub, demo_spec: ModelSpec
) -> None:
    app = make_app(demo_spec, hardware=with_gpu())
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause()
        screen = await _repo_table(app, pilot, "test/split")
        # Both models of the repo, the larger that fits on top; the mmproj is named, not planned.
        labels = [r.entry.label for r in screen.rows]
        assert labels == ["Q8_0", "Q4_0"]
        await wait_for(pilot, lambda: "Q8_0 (3 files)" in "\n".join(screen_text(app)))
        text = "\n".join(screen_text(app))
        assert "fits, GPU" in text and "mmproj-tiny-f16.gguf" in text
        requests_before_choice = hub.counters.requests
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.model_path is not None and "Q8_0" in app.model_path)
        # Planned from the header already read: no new request, every pane on it.
        assert hub.counters.requests == requests_before_choice
        assert app.model_path.startswith("http://127.0.0.1")
        assert app.plan is not None and app.plan.fits
        # llama.cpp needs the file: Apply says how to get it instead of starting a worker.
        await pilot.press("a")
        await pilot.pause()
        assert any("download it first" in n.message for n in app._notifications)
        assert not app.session.holds_model


async def test_d_downloads_into_the_hf_cache_and_opens_the_file(
    hf_home: Path, demo_model: Path, demo_spec: ModelSpec
) -> None:
    app = make_app(demo_spec, hardware=with_gpu())
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause()
        await _repo_table(app, pilot, "test/smol")
        await pilot.press("d")
        # (98 MB on loopback: the progress screen may come and go within a frame)
        await wait_for(pilot, lambda: app.model_path is not None and "snapshots" in app.model_path)
        path = Path(app.model_path)
        assert path.is_relative_to(hf_home) and path.name == demo_model.name
        assert path.read_bytes() == demo_model.read_bytes()
        assert read_spec(path).tensor_bytes == demo_spec.tensor_bytes
        assert not list(hf_home.rglob("*.partial"))


async def test_escape_cancels_a_download_and_keeps_what_it_has(
    hf_home: Path, hub: FakeHub, demo_spec: ModelSpec
) -> None:
    hub.faults.trickle_s = 0.002  # 1 KiB pieces: the 98 MB file takes minutes
    try:
        app = make_app(demo_spec, hardware=with_gpu())
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.pause()
            await _repo_table(app, pilot, "test/smol")
            await pilot.press("d")
            await wait_for(pilot, lambda: isinstance(app.screen, DownloadScreen))
            partial = lambda: [p for p in hf_home.rglob("*.partial") if p.stat().st_size > 0]  # noqa: E731
            await wait_for(pilot, lambda: bool(partial()))
            await pilot.press("escape")
            await pilot.pause()
            assert not isinstance(app.screen, DownloadScreen)
            assert app.model_path == demo_spec.path  # still the model it had
            assert any("cancelled" in n.message for n in app._notifications)
            assert app.error is None  # no failure reached the status line
        assert partial()  # the next download resumes from it
    finally:
        hub.faults.trickle_s = 0.0
