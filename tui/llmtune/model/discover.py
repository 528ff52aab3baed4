"""Finding GGUF models on this machine for the app's picker.

Looks where people and tools keep models: the current directory, ``~/models``,
the Hugging Face hub cache, LM Studio, llama.cpp's download cache and Ollama's
blob store, plus llmtune's demo model. Every walk is bounded (depth and entries
visited), follows directory symlinks at most once per real directory, skips
what it cannot read and never raises: a picker must open even when one folder
is odd.
"""

from __future__ import annotations

import os
import re
import stat
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from llmtune.model.spec import split_shard_paths
from llmtune.paths import read_json

Source = Literal["cwd", "models", "huggingface", "lmstudio", "llama.cpp", "ollama", "demo"]
SOURCE_ORDER: tuple[Source, ...] = (
    "cwd",
    "models",
    "huggingface",
    "lmstudio",
    "llama.cpp",
    "ollama",
    "demo",
)

GGUF_MAGIC = b"GGUF"
MAX_DEPTH = 4
MAX_ENTRIES = 20_000  # directory entries looked at per root
MAX_MANIFEST_BYTES = 1 << 20
OLLAMA_MODEL_MEDIA_TYPE = "application/vnd.ollama.image.model"
# Folders that never hold models worth offering and can be huge.
_SKIP_DIRS = frozenset({"node_modules", "__pycache__", "site-packages", "blobs"})
_SPLIT_RE = re.compile(r"^(?P<prefix>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$", re.IGNORECASE)
_MANIFEST_DIGEST_RE = re.compile(r"sha256:(?P<hex>[0-9a-f]{64})")  # fullmatch only
_BLOB_NAME_RE = re.compile(r"sha256-(?P<hex>[0-9a-f]{64})")  # fullmatch only
# A llama.cpp file type in a file name: Q4_K_M, Q8_0, IQ2_XXS, F16, BF16, MXFP4_MOE...,
# with Unsloth's "UD-" (dynamic) prefix kept: its UD-Q4_K_XL sits beside a plain Q4_K_M.
_QUANT_RE = re.compile(
    r"(?<![A-Za-z0-9])(?P<tag>(?:UD-)?(?:I?Q\d(?:_[A-Z0-9]{1,3})*|BF16|F16|F32|MXFP4(?:_MOE)?|TQ\d_0))"
    r"(?![A-Za-z0-9])",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class FoundModel:
    """One model the picker can offer. A split model is one entry: its first
    shard's path, ``is_split_shard`` set and ``size_bytes`` the sum of the shards."""

    path: str
    name: str
    source: Source
    size_bytes: int
    is_split_shard: bool
    mtime: float
    quant: str | None = None  # the file type named in the file name, upper case

    @property
    def is_demo(self) -> bool:
        return self.source == "demo"


def quant_tag(name: str) -> str | None:
    """The llama.cpp file type a model's file name mentions (``Q4_K_M``), if any."""
    found = _quant_matches(name)
    return found[-1].group("tag").upper() if found else None


def _quant_matches(name: str) -> list[re.Match[str]]:
    return list(_QUANT_RE.finditer(name))


def with_quant_tag(file_name: str, tag: str) -> str:
    """``file_name`` at another quantization: its last quant tag replaced by
    ``tag`` (``x-Q8_0.gguf`` -> ``x-Q4_K_M.gguf``), a split shard's suffix
    dropped (llama.cpp's quantizer writes one file), and ``-TAG`` added before
    ``.gguf`` to a name without a tag."""
    split = _SPLIT_RE.match(file_name)
    if split:
        file_name = split.group("prefix") + ".gguf"
    stem = file_name[:-5] if file_name.lower().endswith(".gguf") else file_name
    matches = _quant_matches(stem)
    if matches:
        last = matches[-1]
        stem = stem[: last.start()] + tag + stem[last.end() :]
    else:
        stem = f"{stem}-{tag}"
    return stem + ".gguf"


def find_models(
    extra_dirs: Iterable[str | os.PathLike[str]] = (), include_demo: bool = True
) -> list[FoundModel]:
    """Every model found, demo last, the others by source then name."""
    seen: set[tuple[int, int]] = set()
    home = _home()
    # The demo first and the current directory last, so a file reachable from
    # several places carries its most telling source.
    sources: list[Iterator[FoundModel]] = []
    if include_demo:
        sources.append(_demo(seen))
    for root in (home / "models", *(Path(d) for d in extra_dirs)):
        sources.append(_walk_root(root, "models", seen))
    sources += [_huggingface(root, seen) for root in _hf_roots(home)]
    for root in (home / ".lmstudio" / "models", home / ".cache" / "lm-studio" / "models"):
        sources.append(_walk_root(root, "lmstudio", seen))
    sources += [_walk_root(root, "llama.cpp", seen) for root in _llama_cpp_roots(home)]
    sources += [_ollama(root, seen) for root in _ollama_roots(home)]
    sources.append(_walk_root(Path.cwd(), "cwd", seen))
    found: list[FoundModel] = []
    for source in sources:  # generators: each runs (and may fail) only here
        found += _drain(source)
    return sorted(found, key=_sort_key)


def sibling_quantizations(path: str | os.PathLike[str], source: Source = "cwd") -> list[FoundModel]:
    """GGUF files beside ``path`` that are the same model at another quantization:
    the same file name with a different file type tag (``Q4_K_M`` vs ``Q8_0``).
    Split sets count once, by their first shard. ``source`` labels the results."""
    try:
        path = os.path.abspath(os.fspath(path))
        key, tag = _model_key(os.path.basename(path))
        if tag is None:
            return []
        folder = Path(os.path.dirname(path))
        out: list[FoundModel] = []
        seen: set[tuple[int, int]] = set()
        for entry in _scandir(folder, [MAX_ENTRIES]):
            other = entry.path
            if os.path.basename(other) == os.path.basename(path):
                continue
            other_key, other_tag = _model_key(entry.name)
            if other_key != key or other_tag is None or other_tag == tag:
                continue
            found = _gguf_file(other, entry.name, source, seen, require_extension=True)
            if found is not None:
                out.append(found)
        return sorted(out, key=lambda m: (m.quant or "", m.name))
    except Exception:  # the pane's marker is optional; never fail it
        return []


def _model_key(file_name: str) -> tuple[str, str | None]:
    """The file name with its quant tag blanked (and split suffix removed), and the tag."""
    base = file_name
    m = _SPLIT_RE.match(base)
    if m:
        base = m.group("prefix") + ".gguf"
    matches = _quant_matches(base)
    if not matches:
        return base.lower(), None
    last = matches[-1]
    key = base[: last.start()] + "\0" + base[last.end() :]
    return key.lower(), last.group("tag").upper()


def _sort_key(m: FoundModel) -> tuple[bool, int, str, str]:
    return (m.is_demo, SOURCE_ORDER.index(m.source), m.name.lower(), m.path)


def _drain(models: Iterator[FoundModel]) -> list[FoundModel]:
    """What one source yields before any failure: one odd folder never hides the others."""
    out: list[FoundModel] = []
    try:
        for model in models:
            out.append(model)
    except Exception:  # see the docstring
        pass
    return out


def _home() -> Path:
    try:
        return Path.home()
    except (RuntimeError, KeyError, OSError):
        return Path(os.sep)


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value).expanduser() if value else None


def _cache_home(home: Path) -> Path:
    return _env_path("XDG_CACHE_HOME") or home / ".cache"


def _hf_roots(home: Path) -> list[Path]:
    # huggingface_hub's constants: HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub.
    explicit = _env_path("HF_HUB_CACHE") or _env_path("HUGGINGFACE_HUB_CACHE")
    if explicit is not None:
        return [explicit]
    hf_home = _env_path("HF_HOME") or _cache_home(home) / "huggingface"
    return _unique([hf_home / "hub", home / ".cache" / "huggingface" / "hub"])


def _llama_cpp_roots(home: Path) -> list[Path]:
    # common/common.cpp fs_get_cache_directory: LLAMA_CACHE, else the platform cache dir.
    explicit = _env_path("LLAMA_CACHE")
    if explicit is not None:
        return [explicit]
    roots = [_cache_home(home) / "llama.cpp", home / ".cache" / "llama.cpp"]
    if sys.platform == "darwin":
        roots.append(home / "Library" / "Caches" / "llama.cpp")
    local_app_data = _env_path("LOCALAPPDATA")
    if sys.platform == "win32" and local_app_data is not None:
        roots.append(local_app_data / "llama.cpp")
    return _unique(roots)


def _ollama_roots(home: Path) -> list[Path]:
    explicit = _env_path("OLLAMA_MODELS")
    if explicit is not None:
        return [explicit]
    return [home / ".ollama" / "models"]


def _unique(paths: list[Path]) -> list[Path]:
    out: list[Path] = []
    for p in paths:
        if p not in out:
            out.append(p)
    return out


def _scandir(folder: Path | str, budget: list[int]) -> Iterator[os.DirEntry[str]]:
    """Entries of one folder, sorted by name, spending ``budget[0]``; nothing if unreadable."""
    if budget[0] <= 0:
        return
    try:
        with os.scandir(folder) as it:
            entries: list[os.DirEntry[str]] = []
            for entry in it:
                budget[0] -= 1
                if budget[0] < 0:
                    break
                entries.append(entry)
    except OSError:
        return
    yield from sorted(entries, key=lambda e: e.name)


def _dir_identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISDIR(st.st_mode):
        return None
    return (st.st_dev, st.st_ino)


def _has_magic(path: str) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == GGUF_MAGIC
    except OSError:
        return False


def _gguf_file(
    path: str,
    name: str,
    source: Source,
    seen: set[tuple[int, int]],
    *,
    require_extension: bool,
) -> FoundModel | None:
    """A model entry for one file (a split set's first shard stands for the set),
    or None when it is not a GGUF model, is a later shard, or was already found."""
    base = os.path.basename(path)
    if require_extension and not base.lower().endswith(".gguf"):
        return None
    if "mmproj" in base.lower():
        return None  # a vision projector (mmproj-*.gguf, llava-*-mmproj-f16.gguf), not a model
    try:
        st = os.stat(path)  # follows the Hugging Face snapshot symlink into blobs/
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    identity = (st.st_dev, st.st_ino)
    if identity in seen or not _has_magic(path):
        return None
    size = st.st_size
    is_split = False
    m = _SPLIT_RE.match(base)
    if m:
        if int(m.group("no")) != 1:
            return None
        shards = split_shard_paths(path) or (path,)
        is_split = len(shards) > 1
        for shard in shards[1:]:
            try:
                shard_st = os.stat(shard)
            except OSError:
                continue
            size += shard_st.st_size
            seen.add((shard_st.st_dev, shard_st.st_ino))
        if is_split:
            name = _split_display_name(name, m, len(shards))
    seen.add(identity)
    return FoundModel(
        path=path,
        name=name,
        source=source,
        size_bytes=size,
        is_split_shard=is_split,
        mtime=st.st_mtime,
        quant=quant_tag(name),
    )


def _split_display_name(name: str, m: re.Match[str], count: int) -> str:
    folder = name[: len(name) - len(m.group(0))]
    return f"{folder}{m.group('prefix')}.gguf ({count} parts)"


def _walk(
    root: Path, budget: list[int], visited: set[tuple[int, int]], max_depth: int = MAX_DEPTH
) -> Iterator[tuple[str, str]]:
    """(path, path relative to root) of every file under ``root`` down to ``max_depth``,
    breadth first, skipping hidden and known-huge folders and directory loops."""
    root_id = _dir_identity(str(root))
    if root_id is None or root_id in visited:
        return
    visited.add(root_id)
    level: list[tuple[str, str]] = [(str(root), "")]
    for depth in range(max_depth + 1):
        next_level: list[tuple[str, str]] = []
        for folder, rel in level:
            for entry in _scandir(folder, budget):
                rel_name = f"{rel}{entry.name}"
                try:
                    is_dir = entry.is_dir()  # follows symlinks; loops stop at `visited`
                except OSError:
                    continue
                if is_dir:
                    if depth == max_depth or entry.name.startswith(".") or entry.name in _SKIP_DIRS:
                        continue
                    ident = _dir_identity(entry.path)
                    if ident is None or ident in visited:
                        continue
                    visited.add(ident)
                    next_level.append((entry.path, rel_name + "/"))
                else:
                    yield entry.path, rel_name
        level = next_level
        if not level:
            return


def _walk_root(root: Path, source: Source, seen: set[tuple[int, int]]) -> Iterator[FoundModel]:
    for path, rel in _walk(root, [MAX_ENTRIES], set()):
        found = _gguf_file(path, rel, source, seen, require_extension=True)
        if found is not None:
            yield found


def _demo(seen: set[tuple[int, int]]) -> Iterator[FoundModel]:
    from llmtune.model.demo import demo_model_path

    path = demo_model_path()
    found = _gguf_file(str(path), path.name, "demo", seen, require_extension=True)
    if found is not None:
        yield found


def _huggingface(hub: Path, seen: set[tuple[int, int]]) -> Iterator[FoundModel]:
    """``models--owner--name/snapshots/<revision>/**.gguf``, symlinks into ``blobs/``:
    the snapshot path is reported (its file name is the model's), the blob is read."""
    budget = [MAX_ENTRIES]
    for repo in _scandir(hub, budget):
        if not repo.name.startswith("models--"):
            continue
        repo_id = repo.name.removeprefix("models--").replace("--", "/", 1)
        snapshots = list(_scandir(os.path.join(repo.path, "snapshots"), budget))
        snapshots.sort(key=_mtime_of, reverse=True)  # the newest revision names a shared blob
        for snap in snapshots:
            for path, rel in _walk(Path(snap.path), budget, set(), MAX_DEPTH - 1):
                found = _gguf_file(
                    path, f"{repo_id}/{rel}", "huggingface", seen, require_extension=True
                )
                if found is not None:
                    yield found


def _mtime_of(entry: os.DirEntry[str]) -> float:
    try:
        return entry.stat().st_mtime
    except OSError:
        return 0.0


def _ollama(models: Path, seen: set[tuple[int, int]]) -> Iterator[FoundModel]:
    """Ollama keeps weights as ``blobs/sha256-<hex>`` (GGUF without an extension);
    ``manifests/<host>/<namespace>/<model>/<tag>`` name them."""
    blobs = models / "blobs"
    try:
        blobs_real = os.path.realpath(blobs)
    except (OSError, ValueError):
        return
    names: dict[str, list[str]] = {}
    named: set[str] = set()  # every layer of every manifest: projectors and adapters too
    for manifest, display in _ollama_manifests(models / "manifests"):
        for hex_digest, is_model in _ollama_layer_digests(manifest):
            named.add(hex_digest)
            if is_model:
                names.setdefault(hex_digest, []).append(display)
    budget = [MAX_ENTRIES]
    for hex_digest in sorted(names, key=lambda h: sorted(names[h])[0]):
        blob = blobs / f"sha256-{hex_digest}"
        if not _inside(str(blob), blobs_real):
            continue
        display = ", ".join(sorted(set(names[hex_digest])))
        found = _gguf_file(str(blob), display, "ollama", seen, require_extension=False)
        if found is not None:
            yield found
    # Blobs no manifest names (an interrupted pull or removed tag) may still be models.
    for entry in _scandir(blobs, budget):
        m = _BLOB_NAME_RE.fullmatch(entry.name)
        if m is None or m.group("hex") in named or not _inside(entry.path, blobs_real):
            continue
        found = _gguf_file(
            entry.path, f"sha256-{m.group('hex')[:12]}", "ollama", seen, require_extension=False
        )
        if found is not None:
            yield found


def _inside(path: str, folder_real: str) -> bool:
    try:
        real = os.path.realpath(path)
        return os.path.commonpath([real, folder_real]) == folder_real
    except (OSError, ValueError):
        return False


def _ollama_manifests(root: Path) -> Iterator[tuple[str, str]]:
    """(manifest path, ``model:tag`` as ``ollama run`` takes it) for every manifest."""
    budget = [MAX_ENTRIES]
    for host in _scandir(root, budget):
        for namespace in _scandir(host.path, budget):
            for model in _scandir(namespace.path, budget):
                for tag in _scandir(model.path, budget):
                    prefix = "" if host.name == "registry.ollama.ai" else f"{host.name}/"
                    if not prefix and namespace.name == "library":
                        display = f"{model.name}:{tag.name}"
                    else:
                        display = f"{prefix}{namespace.name}/{model.name}:{tag.name}"
                    yield tag.path, display


def _ollama_layer_digests(manifest: str) -> list[tuple[str, bool]]:
    """(hex digest, is a model layer) for a manifest's layers; malformed digests are
    refused, so a crafted manifest cannot name a file outside ``blobs/``."""
    try:
        data = read_json(manifest, MAX_MANIFEST_BYTES)
    except (OSError, ValueError):
        return []
    layers = data.get("layers") if isinstance(data, dict) else None
    if not isinstance(layers, list):
        return []
    out: list[tuple[str, bool]] = []
    for layer in layers:
        if not isinstance(layer, dict):
            continue
        digest = layer.get("digest")
        m = _MANIFEST_DIGEST_RE.fullmatch(digest) if isinstance(digest, str) else None
        if m is not None:
            out.append((m.group("hex"), layer.get("mediaType") == OLLAMA_MODEL_MEDIA_TYPE))
    return out
