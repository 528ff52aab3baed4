"""The picker's model search (``llmtune.model.discover``) on a fake home.

Every test gets an empty home directory, caches moved into it by the same
environment variables the real tools read, and a working directory of its own;
models are real GGUF files from ``synth.llama_like`` laid out the way the
Hugging Face hub, LM Studio, llama.cpp and Ollama lay them out.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmtune.model import discover
from llmtune.model.demo import DEMO_FILE
from llmtune.model.discover import FoundModel, find_models, quant_tag, sibling_quantizations
from synth import llama_like

CACHE_VARIABLES = (
    "HF_HOME",
    "HF_HUB_CACHE",
    "HUGGINGFACE_HUB_CACHE",
    "XDG_CACHE_HOME",
    "OLLAMA_MODELS",
    "LLAMA_CACHE",
    "LOCALAPPDATA",
)
MODEL_MEDIA_TYPE = "application/vnd.ollama.image.model"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty home; the working directory is an empty folder outside it."""
    home = tmp_path / "home"
    home.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name in CACHE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LLMTUNE_CACHE_DIR", str(tmp_path / "llmtune-cache"))
    monkeypatch.chdir(work)
    return home


def gguf(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (written,) = llama_like(path, n_layer=2)
    return written


def hf_snapshot(
    hub: Path, repo: str, file: str, revision: str = "0123abcd", source: Path | None = None
) -> Path:
    """A hub cache entry as huggingface_hub writes it: the file (``source``, else a
    new model) is a blob named by its hash, and the snapshot holds a relative
    symlink to it."""
    folder = hub / ("models--" + repo.replace("/", "--"))
    blobs = folder / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    scratch = blobs / "download.incomplete"
    if source is None:
        gguf(scratch)
    else:
        shutil.copyfile(source, scratch)
    blob = scratch.rename(blobs / hashlib.sha256(scratch.read_bytes()).hexdigest())
    link = folder / "snapshots" / revision / file
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(os.path.relpath(blob, link.parent))
    (folder / "refs").mkdir(exist_ok=True)
    (folder / "refs" / "main").write_text(revision)
    return link


def ollama_pull(models: Path, name: str, tag: str, layers: dict[str, Path]) -> dict[str, str]:
    """Ollama's store: ``blobs/sha256-<hex>`` named by content, and a manifest at
    ``manifests/registry.ollama.ai/library/<name>/<tag>`` listing the layers by
    media type. ``layers`` maps a media type to the file stored as that layer."""
    blobs = models / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    config = b'{"model_format":"gguf","model_family":"llama"}'
    config_hex = hashlib.sha256(config).hexdigest()
    (blobs / f"sha256-{config_hex}").write_bytes(config)
    entries = []
    digests = {}
    for media_type, source in layers.items():
        data = source.read_bytes()
        hex_digest = hashlib.sha256(data).hexdigest()
        (blobs / f"sha256-{hex_digest}").write_bytes(data)
        digests[media_type] = hex_digest
        entries.append(
            {"mediaType": media_type, "digest": f"sha256:{hex_digest}", "size": len(data)}
        )
    write_manifest(models, name, tag, entries, config_hex)
    return digests


def write_manifest(
    models: Path, name: str, tag: str, layers: list[dict[str, object]], config_hex: str = "0" * 64
) -> None:
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {
            "mediaType": "application/vnd.docker.container.image.v1+json",
            "digest": f"sha256:{config_hex}",
            "size": 48,
        },
        "layers": layers,
    }
    path = models / "manifests" / "registry.ollama.ai" / "library" / name / tag
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest))


def names(models: list[FoundModel]) -> list[tuple[str, str]]:
    return [(m.source, m.name) for m in models]


def test_every_source_is_found_and_labelled_in_the_pickers_order(home: Path) -> None:
    cwd_model = gguf(Path.cwd() / "here.Q5_K_M.gguf")
    own = gguf(home / "models" / "llama" / "Llama-3-8B-Instruct-Q4_K_M.gguf")
    hub_link = hf_snapshot(
        home / ".cache" / "huggingface" / "hub",
        "bartowski/Qwen2.5-0.5B-Instruct-GGUF",
        "Qwen2.5-0.5B-Instruct-Q8_0.gguf",
    )
    lms = gguf(
        home / ".lmstudio" / "models" / "lmstudio-community" / "gemma-GGUF" / "gemma-F16.gguf"
    )
    llama_cache = gguf(home / ".cache" / "llama.cpp" / "ggml-org_phi-GGUF_phi-Q4_0.gguf")
    ollama_models = home / ".ollama" / "models"
    weights = gguf(home.parent / "scratch" / "w.gguf")
    digests = ollama_pull(ollama_models, "llama3.2", "1b", {MODEL_MEDIA_TYPE: weights})
    demo = gguf(Path(os.environ["LLMTUNE_CACHE_DIR"]) / "models" / DEMO_FILE)

    found = find_models()

    assert names(found) == [
        ("cwd", "here.Q5_K_M.gguf"),
        ("models", "llama/Llama-3-8B-Instruct-Q4_K_M.gguf"),
        ("huggingface", "bartowski/Qwen2.5-0.5B-Instruct-GGUF/Qwen2.5-0.5B-Instruct-Q8_0.gguf"),
        ("lmstudio", "lmstudio-community/gemma-GGUF/gemma-F16.gguf"),
        ("llama.cpp", "ggml-org_phi-GGUF_phi-Q4_0.gguf"),
        ("ollama", "llama3.2:1b"),
        ("demo", DEMO_FILE),
    ]
    by_source = {m.source: m for m in found}
    # The hub's snapshot path names the model; the blob it points to is a hash.
    assert by_source["huggingface"].path == str(hub_link)
    assert by_source["ollama"].path == str(
        ollama_models / "blobs" / f"sha256-{digests[MODEL_MEDIA_TYPE]}"
    )
    expected_paths = {
        "cwd": cwd_model,
        "models": own,
        "lmstudio": lms,
        "llama.cpp": llama_cache,
        "demo": demo,
    }
    for source, path in expected_paths.items():
        assert by_source[source].path == str(path)
    assert [m.quant for m in found] == ["Q5_K_M", "Q4_K_M", "Q8_0", "F16", "Q4_0", None, "Q4_1"]
    assert all(m.size_bytes == weights.stat().st_size for m in found)
    assert by_source["demo"].is_demo and not by_source["cwd"].is_demo


def test_the_caches_move_where_their_environment_variables_say(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "disk2"
    hf_snapshot(elsewhere / "hf-home" / "hub", "org/a", "a.gguf")
    hf_snapshot(elsewhere / "hub-cache", "org/b", "b.gguf")
    gguf(elsewhere / "llama-cache" / "c.gguf")
    weights = gguf(elsewhere / "w.gguf")
    ollama_pull(elsewhere / "ollama", "d", "latest", {MODEL_MEDIA_TYPE: weights})
    # The defaults hold models too.
    hf_snapshot(home / ".cache" / "huggingface" / "hub", "org/default", "x.gguf")
    gguf(home / ".cache" / "llama.cpp" / "y.gguf")
    ollama_pull(home / ".ollama" / "models", "z", "latest", {MODEL_MEDIA_TYPE: weights})

    monkeypatch.setenv("HF_HOME", str(elsewhere / "hf-home"))
    monkeypatch.setenv("LLAMA_CACHE", str(elsewhere / "llama-cache"))
    monkeypatch.setenv("OLLAMA_MODELS", str(elsewhere / "ollama"))
    # HF_HOME adds its hub to the default one (downloads made before it was set
    # stay there); LLAMA_CACHE and OLLAMA_MODELS replace their defaults.
    assert names(find_models()) == [
        ("huggingface", "org/a/a.gguf"),
        ("huggingface", "org/default/x.gguf"),
        ("llama.cpp", "c.gguf"),
        ("ollama", "d:latest"),
    ]
    # HF_HUB_CACHE names the one hub folder to read.
    monkeypatch.setenv("HF_HUB_CACHE", str(elsewhere / "hub-cache"))
    assert [n for s, n in names(find_models()) if s == "huggingface"] == ["org/b/b.gguf"]


def test_a_split_model_is_offered_once_with_the_size_of_all_its_shards(home: Path) -> None:
    folder = home / "models"
    folder.mkdir()
    shards = llama_like(folder / "big-Q4_K_M.gguf", n_layer=2, split_max_tensors=8)
    assert [p.name for p in shards] == [f"big-Q4_K_M-0000{i}-of-00003.gguf" for i in (1, 2, 3)]

    (found,) = find_models()

    assert found.name == "big-Q4_K_M.gguf (3 parts)"
    assert found.path == str(shards[0])
    assert found.is_split_shard
    assert found.size_bytes == sum(p.stat().st_size for p in shards)
    assert found.quant == "Q4_K_M"


def test_a_split_model_in_the_hub_is_offered_once(home: Path) -> None:
    hub = home / ".cache" / "huggingface" / "hub"
    scratch = home.parent / "scratch"
    scratch.mkdir()
    shards = llama_like(scratch / "m-Q8_0.gguf", n_layer=2, split_max_tensors=8)
    for shard in shards:
        hf_snapshot(hub, "org/m-GGUF", f"Q8_0/{shard.name}", source=shard)

    (found,) = find_models()

    assert found.name == "org/m-GGUF/Q8_0/m-Q8_0.gguf (3 parts)"
    assert found.size_bytes == sum(p.stat().st_size for p in shards)


def test_later_shards_and_vision_projectors_are_not_offered(home: Path) -> None:
    folder = home / "models"
    folder.mkdir()
    shards = llama_like(folder / "big.gguf", n_layer=2, split_max_tensors=8)
    shards[0].unlink()  # a download that lost its first shard cannot be loaded
    gguf(folder / "llava-v1.5-7b-Q4_K.gguf")
    gguf(folder / "mmproj-model-f16.gguf")
    gguf(folder / "llava-v1.5-7b-mmproj-model-f16.gguf")
    gguf(folder / "mistral-7b-mmproj-v1.5-Q4_1.gguf")

    assert names(find_models()) == [("models", "llava-v1.5-7b-Q4_K.gguf")]


def test_files_without_the_gguf_magic_are_skipped(home: Path) -> None:
    folder = home / "models"
    gguf(folder / "real.gguf")
    (folder / "empty.gguf").write_bytes(b"")
    (folder / "html.gguf").write_text("<!DOCTYPE html><title>404</title>")  # a failed download
    (folder / "ggml.gguf").write_bytes(b"lmgg" + bytes(64))  # the format before GGUF
    shutil.copyfile(folder / "real.gguf", folder / "real.bin")  # not named as a model
    os.mkfifo(folder / "pipe.gguf")  # opening it would wait forever for a writer

    assert names(find_models()) == [("models", "real.gguf")]


def test_a_file_reachable_from_two_places_is_listed_once_under_its_own_source(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gguf(home / "models" / "a.gguf")
    hub = home / ".cache" / "huggingface" / "hub"
    link = hf_snapshot(hub, "org/b", "b.gguf", revision="old")
    newer = hub / "models--org--b" / "snapshots" / "new" / "b.gguf"
    newer.parent.mkdir()
    newer.symlink_to(os.path.relpath(link.resolve(), newer.parent))
    os.utime(newer.parent, (2e9, 2e9))
    monkeypatch.chdir(home)  # the working directory's walk reaches ~/models too

    found = find_models()

    assert names(found) == [("models", "a.gguf"), ("huggingface", "org/b/b.gguf")]
    assert found[1].path == str(newer)  # the newest revision names a blob two share


def test_directory_symlink_loops_are_walked_once(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = home / "models"
    model = gguf(folder / "b" / "c" / "d" / "m.gguf")
    for i in (1, 2, 3):
        (folder / f"a-loop{i}").symlink_to(folder)
    (folder / "b" / "parent").symlink_to("..")
    (folder / "self").symlink_to("self")  # stat fails with ELOOP
    (folder / "dangling.gguf").symlink_to("nowhere.gguf")
    # Ten entries are enough when each real folder is read once; walking the loops
    # would spend them on copies of ~/models before reaching d/.
    monkeypatch.setattr(discover, "MAX_ENTRIES", 20)

    found = find_models()

    assert names(found) == [("models", "b/c/d/m.gguf")]
    assert found[0].path == str(model)


# Run as a user that folder permissions apply to (tests run as root in CI).
_AS_NOBODY = """
import json, os, sys
import llmtune.model.demo
from llmtune.model.discover import find_models
if os.geteuid() == 0:  # the interpreter itself may live where nobody cannot read
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)
print(json.dumps([[m.source, m.name] for m in find_models()]))
"""


@pytest.fixture
def shared_home(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A home that another user can enter (pytest's own temporary folder is private)."""
    top = Path(tempfile.mkdtemp(prefix="llmtune-discover-"))
    top.chmod(0o755)
    home = top / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name in CACHE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LLMTUNE_CACHE_DIR", str(top / "llmtune-cache"))
    yield home
    for folder, _, _ in os.walk(top):
        os.chmod(folder, 0o755)
    shutil.rmtree(top)


def test_unreadable_folders_are_skipped_and_the_rest_is_still_found(shared_home: Path) -> None:
    home = shared_home
    gguf(home / "models" / "a-locked" / "hidden.gguf")
    gguf(home / "models" / "b-open" / "seen.gguf")
    gguf(home / "models" / "c-locked-file.gguf").chmod(0)
    gguf(home / ".lmstudio" / "models" / "x" / "y" / "studio.gguf")
    hf_snapshot(home / ".cache" / "huggingface" / "hub", "org/locked", "l.gguf")
    hf_snapshot(home / ".cache" / "huggingface" / "hub", "org/open", "o.gguf")
    weights = gguf(home.parent / "w.gguf")
    ollama_pull(home / ".ollama" / "models", "m", "1b", {MODEL_MEDIA_TYPE: weights})
    ollama_pull(home / ".ollama" / "models", "n", "2b", {MODEL_MEDIA_TYPE: weights})
    for locked in (
        home / "models" / "a-locked",
        home / ".cache" / "huggingface" / "hub" / "models--org--locked" / "snapshots",
        home / ".ollama" / "models" / "manifests" / "registry.ollama.ai" / "library" / "m",
    ):
        locked.chmod(0)

    result = subprocess.run(
        [sys.executable, "-c", _AS_NOBODY],
        cwd=home,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [
        ["models", "b-open/seen.gguf"],
        ["huggingface", "org/open/o.gguf"],
        ["lmstudio", "x/y/studio.gguf"],
        ["ollama", "n:2b"],
    ]


def test_the_entry_budget_bounds_a_huge_folder(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(discover, "MAX_ENTRIES", 100)
    folder = home / "models"
    gguf(folder / "top.gguf")
    huge = folder / "a-huge"
    huge.mkdir()
    for i in range(1000):
        (huge / f"{i:04d}.txt").touch()
    gguf(folder / "z-after" / "beyond-the-budget.gguf")
    gguf(home / ".lmstudio" / "models" / "p" / "r" / "studio.gguf")

    found = names(find_models())

    # The walk of ~/models stops inside the huge folder; other places have budgets of their own.
    assert found == [("models", "top.gguf"), ("lmstudio", "p/r/studio.gguf")]
    monkeypatch.setattr(discover, "MAX_ENTRIES", 2000)
    assert ("models", "z-after/beyond-the-budget.gguf") in names(find_models())


def test_a_folder_deeper_than_the_walk_goes_is_not_searched(home: Path) -> None:
    gguf(home / "models" / "1" / "2" / "3" / "4" / "deep-enough.gguf")
    gguf(home / "models" / "1" / "2" / "3" / "4" / "5" / "too-deep.gguf")

    assert names(find_models()) == [("models", "1/2/3/4/deep-enough.gguf")]


def test_ollama_never_offers_a_file_outside_its_blobs_folder(home: Path) -> None:
    models = home / ".ollama" / "models"
    outside = gguf(home / "private" / "secret.gguf")
    weights = gguf(home.parent / "w.gguf")
    ollama_pull(models, "good", "latest", {MODEL_MEDIA_TYPE: weights})
    # A digest that walks out of blobs/.
    write_manifest(
        models,
        "escape",
        "latest",
        [{"mediaType": MODEL_MEDIA_TYPE, "digest": "sha256:../../../private/secret.gguf"}],
    )
    # A well-formed digest whose blob is a symlink to a file elsewhere, named by a
    # manifest and left as an orphan.
    for name, fake_hex in (("linked", "a" * 64), ("orphan", "b" * 64)):
        (models / "blobs" / f"sha256-{fake_hex}").symlink_to(outside)
        if name == "linked":
            write_manifest(
                models,
                name,
                "latest",
                [{"mediaType": MODEL_MEDIA_TYPE, "digest": f"sha256:{fake_hex}"}],
            )
    (models / "manifests" / "registry.ollama.ai" / "library" / "junk").mkdir()
    (models / "manifests" / "registry.ollama.ai" / "library" / "junk" / "latest").write_text("{[")

    assert names(find_models()) == [("ollama", "good:latest")]


def test_ollama_offers_model_layers_not_projectors_or_adapters(home: Path) -> None:
    models = home / ".ollama" / "models"
    scratch = home.parent / "scratch"
    weights = gguf(scratch / "weights.gguf")
    projector = gguf(scratch / "projector.gguf")
    projector.write_bytes(projector.read_bytes() + b"projector")  # a blob of its own
    adapter = gguf(scratch / "adapter.gguf")
    adapter.write_bytes(adapter.read_bytes() + b"adapter")
    ollama_pull(
        models,
        "llava",
        "7b",
        {
            MODEL_MEDIA_TYPE: weights,
            "application/vnd.ollama.image.projector": projector,
            "application/vnd.ollama.image.adapter": adapter,
        },
    )
    # Two tags of one model share a blob; an interrupted pull leaves a blob no manifest names.
    ollama_pull(models, "llava", "latest", {MODEL_MEDIA_TYPE: weights})
    orphan = gguf(scratch / "orphan.gguf")
    orphan.write_bytes(orphan.read_bytes() + b"orphan")
    orphan_hex = hashlib.sha256(orphan.read_bytes()).hexdigest()
    shutil.copyfile(orphan, models / "blobs" / f"sha256-{orphan_hex}")

    assert names(find_models()) == [
        ("ollama", "llava:7b, llava:latest"),
        ("ollama", f"sha256-{orphan_hex[:12]}"),
    ]


def test_other_registries_keep_their_host_in_the_ollama_name(home: Path) -> None:
    models = home / ".ollama" / "models"
    weights = gguf(home.parent / "w.gguf")
    digests = ollama_pull(models, "x", "y", {MODEL_MEDIA_TYPE: weights})
    shutil.rmtree(models / "manifests")
    manifest = (
        models / "manifests" / "hf.co" / "bartowski" / "Llama-3.2-1B-Instruct-GGUF" / "Q4_K_M"
    )
    manifest.parent.mkdir(parents=True)
    manifest.write_text(
        json.dumps(
            {
                "layers": [
                    {"mediaType": MODEL_MEDIA_TYPE, "digest": f"sha256:{digests[MODEL_MEDIA_TYPE]}"}
                ]
            }
        )
    )

    (found,) = find_models()

    assert found.name == "hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M"
    assert found.quant == "Q4_K_M"


def test_siblings_are_the_same_model_at_other_quantizations(tmp_path: Path) -> None:
    current = gguf(tmp_path / "tiny.F16.gguf")
    q8 = gguf(tmp_path / "tiny.Q8_0.gguf")
    split = llama_like(tmp_path / "tiny.Q4_K_M.gguf", n_layer=2, split_max_tensors=8)
    gguf(tmp_path / "other-model.Q8_0.gguf")
    gguf(tmp_path / "tiny.gguf")  # no quantization named: cannot be told apart
    (tmp_path / "tiny.Q6_K.gguf").write_text("not a model")

    siblings = sibling_quantizations(current)

    assert [(m.quant, m.path) for m in siblings] == [("Q4_K_M", str(split[0])), ("Q8_0", str(q8))]
    assert siblings[0].is_split_shard
    assert [m.quant for m in sibling_quantizations(q8)] == ["F16", "Q4_K_M"]
    assert sibling_quantizations(tmp_path / "tiny.gguf") == []
    assert sibling_quantizations(tmp_path / "missing" / "x.Q4_0.gguf") == []


def test_unsloths_dynamic_quants_are_siblings_of_the_plain_ones(tmp_path: Path) -> None:
    current = gguf(tmp_path / "Qwen3-30B-A3B-Q4_K_M.gguf")
    gguf(tmp_path / "Qwen3-30B-A3B-UD-Q4_K_XL.gguf")
    gguf(tmp_path / "Qwen3-30B-A3B-UD-IQ2_XXS.gguf")

    assert [m.quant for m in sibling_quantizations(current)] == ["UD-IQ2_XXS", "UD-Q4_K_XL"]


@pytest.mark.parametrize(
    ("name", "tag"),
    [
        ("Llama-3-8B-Instruct-Q4_K_M.gguf", "Q4_K_M"),
        ("x.IQ3_M.gguf", "IQ3_M"),
        ("x-UD-Q4_K_XL.gguf", "UD-Q4_K_XL"),
        ("model-bf16.gguf", "BF16"),
        ("x.gguf", None),
        ("qwen2.5-7b-instruct-q8_0.gguf", "Q8_0"),
        ("Qwen3-0.6B-IQ2_XXS.gguf", "IQ2_XXS"),
        ("x.IQ3_XXS.gguf", "IQ3_XXS"),
        ("gpt-oss-20b-MXFP4_MOE.gguf", "MXFP4_MOE"),
        ("x-TQ1_0.gguf", "TQ1_0"),
        ("big-Q4_K_M-00001-of-00003.gguf", "Q4_K_M"),
        ("Qwen2-7B-Instruct.gguf", None),
        ("QwQ-32B.gguf", None),
    ],
)
def test_quant_tag_reads_the_file_type_from_the_file_name(name: str, tag: str | None) -> None:
    assert quant_tag(name) == tag
