"""Saved settings (``llmtune.config_store``): what a user's choices become on disk,
and what a damaged, hand-edited or unwritable settings file gives back."""

from __future__ import annotations

import json
import os
from dataclasses import fields
from pathlib import Path

import pytest

from llmtune import config_store
from llmtune.config_store import MAX_MODELS, Store, load, save
from llmtune.fit.settings import Settings


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "config" / "llmtune"
    monkeypatch.setenv("LLMTUNE_CONFIG_DIR", str(folder))
    return folder


def write(folder: Path, data: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / config_store.FILE_NAME
    path.write_text(json.dumps(data))
    return path


def one_sentence(notice: str | None) -> str:
    assert notice is not None
    assert notice.endswith(".") and "\n" not in notice
    assert ". " not in notice  # the path's dots are not sentence ends
    return notice


# Every field away from its default, so a field that is not saved shows up.
CHANGED = Settings(
    n_gpu_layers=20,
    n_ctx=32768,
    n_batch=1024,
    n_ubatch=256,
    n_parallel=4,
    kv_unified=True,
    cache_type_k="q8_0",
    cache_type_v="q4_0",
    flash_attn="on",
    swa_full=True,
    no_kv_offload=True,
    split_mode="row",
    main_gpu=1,
    tensor_split=(0.75, 0.25),
    n_cpu_moe=-1,
    use_mmap=False,
    threads=6,
    margin_bytes=512 << 20,
    device_margins=(256 << 20, 2048 << 20),
    fit_ctx=8192,
    gpu_runtime_bytes=300 << 20,
)


def test_nothing_saved_yet_means_the_defaults_and_no_notice(folder: Path) -> None:
    store, notice = load()
    assert notice is None
    assert store.settings_for("/models/any.gguf") is None
    assert store.last_model is None


def test_every_setting_and_the_last_model_come_back_after_a_restart(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    chosen_by_user = [f for f in fields(Settings) if f.name not in config_store.FIT_CHOSEN]
    assert all(getattr(CHANGED, f.name) != f.default for f in chosen_by_user)
    monkeypatch.chdir(tmp_path)
    store = Store().with_settings("models/a.gguf", CHANGED).with_last_model("models/a.gguf")
    store = store.with_settings(tmp_path / "b.gguf", Settings(n_ctx=8192))

    assert save(store) is None
    loaded, notice = load()

    assert notice is None
    assert loaded.settings_for(tmp_path / "models" / "a.gguf") == CHANGED
    assert loaded.settings_for(tmp_path / "b.gguf") == Settings(n_ctx=8192)
    assert loaded.last_model == str(tmp_path / "models" / "a.gguf")
    restored = loaded.settings_for(tmp_path / "models" / "a.gguf")
    assert restored is not None and restored.tensor_split == (0.75, 0.25)
    assert isinstance(restored.tensor_split, tuple)
    assert loaded == store


def test_what_llama_cpps_fit_chose_is_not_saved(folder: Path) -> None:
    fitted = Settings(n_ctx=2048, layer_overflow=((3, "MOE", "CPU"),))
    assert save(Store().with_settings("/m/a.gguf", fitted)) is None
    loaded, notice = load()
    assert notice is None and loaded.settings_for("/m/a.gguf") == Settings(n_ctx=2048)
    assert "layer_overflow" not in (folder / config_store.FILE_NAME).read_text()


def test_a_save_creates_the_folder_and_leaves_only_the_settings_file(folder: Path) -> None:
    assert not folder.exists()
    store = Store().with_settings("/m/a.gguf", Settings(n_ctx=2048))

    assert save(store) is None
    assert save(store.with_last_model("/m/a.gguf")) is None

    assert sorted(os.listdir(folder)) == [config_store.FILE_NAME]
    data = json.loads((folder / config_store.FILE_NAME).read_text())
    assert data["last_model"] == "/m/a.gguf"
    assert data["models"]["/m/a.gguf"]["n_ctx"] == 2048


def test_a_folder_no_one_can_create_gives_a_sentence_not_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("LLMTUNE_CONFIG_DIR", str(blocker / "llmtune"))

    problem = save(Store().with_settings("/m/a.gguf", CHANGED))

    assert one_sentence(problem).startswith("Settings were not saved to ")
    assert str(blocker / "llmtune") in problem
    assert sorted(os.listdir(tmp_path)) == ["a-file"] and blocker.read_text() == ""


def test_a_save_that_fails_at_the_rename_leaves_no_temporary_file(folder: Path) -> None:
    # The temporary file is written, but a folder sits where settings.json goes.
    (folder / config_store.FILE_NAME).mkdir(parents=True)

    problem = save(Store().with_settings("/m/a.gguf", CHANGED))

    assert one_sentence(problem).startswith("Settings were not saved")
    assert os.listdir(folder) == [config_store.FILE_NAME]
    assert os.listdir(folder / config_store.FILE_NAME) == []


def test_a_value_json_cannot_hold_is_refused_and_the_old_file_kept(folder: Path) -> None:
    assert save(Store().with_settings("/m/a.gguf", Settings(n_ctx=2048))) is None
    before = (folder / config_store.FILE_NAME).read_bytes()
    bad = Store().with_settings("/m/a.gguf", Settings(tensor_split=(float("inf"), 1.0)))

    assert one_sentence(save(bad)).startswith("Settings were not saved")
    assert (folder / config_store.FILE_NAME).read_bytes() == before
    assert os.listdir(folder) == [config_store.FILE_NAME]


@pytest.mark.parametrize(
    "content",
    [
        b"{ not json",
        b'{"models": {"/m/a.gguf": {"n_ctx": 2048}}',  # cut short by a full disk
        b"\xff\xfe{}",  # not UTF-8
        b"[]",
        b'"settings"',
        b"null",
        b"[" * 100_000 + b"]" * 100_000,  # deep enough to exhaust a recursive parser
        b"",
    ],
    ids=["syntax", "truncated", "encoding", "list", "string", "null", "deep", "empty"],
)
def test_a_corrupt_file_gives_the_defaults_and_one_sentence(folder: Path, content: bytes) -> None:
    folder.mkdir(parents=True)
    (folder / config_store.FILE_NAME).write_bytes(content)

    store, notice = load()

    assert store == Store()
    assert "corrupt" in one_sentence(notice)
    assert str(folder / config_store.FILE_NAME) in notice


def test_a_file_too_large_to_be_ours_is_not_read_whole(folder: Path) -> None:
    folder.mkdir(parents=True)
    with open(folder / config_store.FILE_NAME, "wb") as fh:
        fh.write(b'{"last_model": "/m/a.gguf"}')
        fh.write(b" " * config_store.MAX_FILE_BYTES)  # still valid JSON

    store, notice = load()

    assert store == Store()
    assert "too large" in one_sentence(notice)


def test_an_unreadable_settings_file_gives_the_defaults_and_one_sentence(folder: Path) -> None:
    (folder / config_store.FILE_NAME).mkdir(parents=True)  # cannot be read as a file

    store, notice = load()

    assert store == Store()
    assert one_sentence(notice).startswith("Could not read saved settings")


def test_models_whose_saved_values_are_invalid_start_from_the_defaults(folder: Path) -> None:
    good = {"n_ctx": 16384, "cache_type_k": "q8_0", "tensor_split": [3, 1]}
    path = write(
        folder,
        {
            "version": 1,
            "last_model": "/m/good.gguf",
            "models": {
                "/m/good.gguf": good,
                # Written by a newer llmtune: options it added are ignored, the rest kept.
                "/m/newer.gguf": {"n_ctx": 8192, "speculative_draft": "/m/draft.gguf"},
                "/m/partial.gguf": {"n_batch": 512},
                "/m/string.gguf": {"n_ctx": "4096"},
                "/m/float.gguf": {"n_ctx": 4096.0},
                "/m/bool-for-int.gguf": {"n_gpu_layers": True},
                "/m/int-for-bool.gguf": {"use_mmap": 1},
                "/m/no-such-cache.gguf": {"cache_type_k": "q3_k"},
                "/m/quantized-v-without-fa.gguf": {"cache_type_v": "q4_0", "flash_attn": "off"},
                "/m/huge-context.gguf": {"n_ctx": 2**31},
                "/m/negative-layers.gguf": {"n_gpu_layers": -3},
                "/m/no-parallel.gguf": {"n_parallel": 0},
                "/m/bad-split.gguf": {"tensor_split": [1, "x"]},
                "/m/split-not-list.gguf": {"tensor_split": 0.5},
                "/m/negative-split.gguf": {"tensor_split": [1, -1]},
                "/m/not-a-dict.gguf": 4096,
                "relative/model.gguf": {"n_ctx": 2048},
                "": {},
            },
        },
    )

    store, notice = load()

    assert set(store.models) == {"/m/good.gguf", "/m/newer.gguf", "/m/partial.gguf"}
    assert store.settings_for("/m/good.gguf") == Settings(
        n_ctx=16384, cache_type_k="q8_0", tensor_split=(3.0, 1.0)
    )
    assert store.settings_for("/m/newer.gguf") == Settings(n_ctx=8192)
    assert store.settings_for("/m/partial.gguf") == Settings(n_batch=512)
    assert store.last_model == "/m/good.gguf"
    assert one_sentence(notice).startswith("15 saved settings in ")
    assert str(path) in notice and "defaults" in notice


@pytest.mark.parametrize(
    "values",
    [
        {"n_gpu_layers": 2**40},  # llama.cpp reads -ngl with std::stoi
        {"threads": 2**31},
        {"main_gpu": -(2**31) - 1},
        {"margin_bytes": 2**64},
    ],
)
def test_numbers_beyond_what_llama_cpp_can_take_are_dropped(
    folder: Path, values: dict[str, int]
) -> None:
    write(folder, {"models": {"/m/a.gguf": values}})

    store, notice = load()

    assert store.settings_for("/m/a.gguf") is None
    assert one_sentence(notice).startswith("1 saved setting in ")


def test_an_invalid_last_model_or_models_table_is_dropped_with_a_notice(folder: Path) -> None:
    write(folder, {"last_model": "model.gguf", "models": {"/m/a.gguf": {"n_ctx": 1024}}})
    store, notice = load()
    assert store.last_model is None
    assert store.settings_for("/m/a.gguf") == Settings(n_ctx=1024)
    assert one_sentence(notice).startswith("1 saved setting in ")

    write(folder, {"last_model": "/m/a.gguf", "models": ["/m/a.gguf"]})
    store, notice = load()
    assert store.last_model == "/m/a.gguf" and dict(store.models) == {}
    assert one_sentence(notice).startswith("1 saved setting in ")


def test_beyond_max_models_the_least_recently_saved_are_forgotten(folder: Path) -> None:
    store = Store()
    for i in range(MAX_MODELS):
        store = store.with_settings(f"/m/{i}.gguf", Settings(n_ctx=1024 + i))
    store = store.with_settings("/m/0.gguf", Settings(n_ctx=512))  # used again: now the newest
    assert save(store) is None
    store, notice = load()

    store = store.with_settings("/m/new.gguf", Settings())

    assert notice is None and len(store.models) == MAX_MODELS
    assert store.settings_for("/m/1.gguf") is None  # the oldest
    assert store.settings_for("/m/0.gguf") == Settings(n_ctx=512)
    assert store.settings_for("/m/2.gguf") == Settings(n_ctx=1026)
    assert store.settings_for("/m/new.gguf") == Settings()


def test_a_hand_written_file_with_too_many_models_keeps_the_last_ones(folder: Path) -> None:
    models = {f"/m/{i}.gguf": {"n_ctx": 1024 + i} for i in range(MAX_MODELS + 5)}
    write(folder, {"models": models})

    store, notice = load()

    assert notice is None and len(store.models) == MAX_MODELS
    assert store.settings_for("/m/4.gguf") is None
    assert store.settings_for("/m/5.gguf") == Settings(n_ctx=1029)
    assert store.settings_for(f"/m/{MAX_MODELS + 4}.gguf") is not None


def test_every_layer_saved_by_a_version_before_auto_becomes_llama_cpps_fit(folder: Path) -> None:
    # Version 1 saved the old default (-1, every layer) for every model opened;
    # a number the user chose stays, and a version 2 file keeps -1 as chosen.
    write(
        folder,
        {
            "version": 1,
            "models": {
                "/m/old-default.gguf": {"n_gpu_layers": -1, "n_ctx": 8192},
                "/m/chosen.gguf": {"n_gpu_layers": 20},
            },
        },
    )
    store, notice = load()
    assert notice is None
    assert store.models["/m/old-default.gguf"] == Settings(n_ctx=8192)  # ngl auto
    assert store.models["/m/chosen.gguf"].n_gpu_layers == 20
    write(folder, {"version": 2, "models": {"/m/max.gguf": {"n_gpu_layers": -1}}})
    store, _ = load()
    assert store.models["/m/max.gguf"].n_gpu_layers == -1
