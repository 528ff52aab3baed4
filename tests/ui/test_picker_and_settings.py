"""No model on the command line: a picker with the demo model among the models
found. Settings per model and the last model persist; a corrupt file gives the
defaults and a notice."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rendered import screen_text
from ui_support import cpu_only, wait_for

from llmtune import config_store
from llmtune.fit.settings import Settings
from llmtune.model import ModelSpec
from llmtune.ui.app import AppOptions, make_app
from llmtune.ui.screens.picker import ModelPicker
from synth import llama_like


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, demo_model: Path) -> Path:
    """An empty home and working directory, a private config directory, and the
    demo model where llmtune keeps it."""
    monkeypatch.setenv("LLMTUNE_CACHE_DIR", str(demo_model.parent.parent))
    home = tmp_path / "home"
    (home / "models").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("HF_HOME", raising=False)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("OLLAMA_MODELS", raising=False)
    monkeypatch.delenv("LLAMA_CACHE", raising=False)
    monkeypatch.setenv("LLMTUNE_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.chdir(home)
    return home


async def test_without_a_model_the_picker_offers_the_demo(home: Path, demo_model: Path) -> None:
    (mine,) = llama_like(home / "models" / "mine.Q8_0.gguf", n_layer=2)
    (home / "models" / "notes.gguf").write_text("not a model")  # no GGUF magic: not offered
    app = make_app(None, hardware=cpu_only())
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, ModelPicker))
        picker = app.screen
        assert isinstance(picker, ModelPicker)
        await wait_for(pilot, lambda: not picker.searching)
        paths = [m.path for m in picker.models]
        assert str(demo_model) in paths and str(mine) in paths
        assert not any(p.endswith("notes.gguf") for p in paths)
        assert picker.models[-1].is_demo  # the demo comes last
        # The list is painted on the next refresh after the search ends.
        await wait_for(pilot, lambda: "mine.Q8_0.gguf" in "\n".join(screen_text(app)))
        text = "\n".join(screen_text(app))
        assert "mine.Q8_0.gguf" in text and "~/models" in text and "demo" in text
        await pilot.press(*"mine", "enter")
        await wait_for(pilot, lambda: app.spec is not None)
        assert app.model_path == str(mine)
        assert app.plan is not None


async def test_escape_without_a_model_keeps_the_picker(home: Path) -> None:
    app = make_app(None, hardware=cpu_only())
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, ModelPicker))
        await pilot.press("escape")
        await pilot.pause()
        assert isinstance(app.screen, ModelPicker)
        assert any("Choose a model" in n.message for n in app._notifications)


async def test_a_typed_path_opens_and_a_broken_file_is_one_line(home: Path) -> None:
    (good,) = llama_like(home / "good.gguf", n_layer=2)
    broken = home / "broken.gguf"
    broken.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 8)
    app = make_app(None, hardware=cpu_only())
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, ModelPicker))
        await pilot.press(*str(broken), "enter")
        await pilot.pause()
        # Refused in one line; the picker comes back, nothing else changes.
        await wait_for(pilot, lambda: isinstance(app.screen, ModelPicker))
        assert app.spec is None
        errors = [n.message for n in app._notifications if n.severity == "error"]
        assert errors and all("\n" not in e for e in errors) and "broken.gguf" in errors[-1]
        app.screen.query_one("#picker-filter").clear()  # type: ignore[attr-defined]
        await pilot.press(*str(good), "enter")
        await wait_for(pilot, lambda: app.spec is not None)
        assert app.model_path == str(good)


async def test_settings_persist_per_model(home: Path, demo_spec: ModelSpec) -> None:
    (other,) = llama_like(home / "other.gguf", n_layer=2)
    options = AppOptions(persist=True)
    app = make_app(demo_spec, hardware=cpu_only(), options=options)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause()
        app.change_settings(n_ctx=2048, cache_type_k="q8_0")
        app.open_model(str(other))  # another model starts from the defaults
        await pilot.pause()
        assert app.settings == Settings()
        app.change_settings(n_ctx=1024)
    store, notice = config_store.load()
    assert notice is None
    assert store.last_model == str(other)
    saved = store.settings_for(demo_spec.path)
    assert saved is not None and (saved.n_ctx, saved.cache_type_k) == (2048, "q8_0")
    other_saved = store.settings_for(other)
    assert other_saved is not None and other_saved.n_ctx == 1024

    again = make_app(demo_spec, hardware=cpu_only(), options=options)
    async with again.run_test(size=(100, 30)) as pilot:
        await pilot.pause()
        assert (again.settings.n_ctx, again.settings.cache_type_k) == (2048, "q8_0")
        assert again.plan is not None and again.plan.n_ctx == 2048


async def test_a_corrupt_settings_file_gives_defaults_and_a_notice(
    home: Path, demo_spec: ModelSpec
) -> None:
    folder = config_store.config_dir()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / config_store.FILE_NAME).write_text("{ not json")
    app = make_app(demo_spec, hardware=cpu_only(), options=AppOptions(persist=True))
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause()
        assert app.settings == Settings()
        assert any("corrupt" in n.message for n in app._notifications)
        app.change_settings(n_ctx=2048)
    # The next save replaced the corrupt file with a good one.
    data = json.loads((folder / config_store.FILE_NAME).read_text())
    assert data["models"][demo_spec.path]["n_ctx"] == 2048


async def test_an_unwritable_config_folder_is_a_notice_not_a_crash(
    home: Path, demo_spec: ModelSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A file where the folder should be: no one, root included, can save there.
    blocker = home / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("LLMTUNE_CONFIG_DIR", str(blocker / "llmtune"))
    app = make_app(demo_spec, hardware=cpu_only(), options=AppOptions(persist=True))
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause()
        app.change_settings(n_ctx=2048)
        await wait_for(pilot, lambda: any("not saved" in n.message for n in app._notifications))
        assert app.settings.n_ctx == 2048 and app.plan is not None and app.plan.n_ctx == 2048
