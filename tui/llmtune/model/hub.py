"""The Hugging Face Hub: repo ids, their GGUF files, tokens and the local cache.

``huggingface_hub`` asks the Hub (the repo's file listing, model search) and
knows its cache layout; the headers themselves are read by
:mod:`llmtune.model.remote`, which controls its round trips.

The Hub's conventions are read when they are used, not at import:
``HF_ENDPOINT`` (a mirror), ``HF_TOKEN`` or the token file ``hf auth login``
writes, ``HF_HUB_OFFLINE`` (the local cache and llmtune's cached listings
only), ``HF_HUB_CACHE``/``HF_HOME``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from llmtune.errors import ConfigError, RemoteError

if TYPE_CHECKING:
    from huggingface_hub import HfApi

DEFAULT_ENDPOINT = "https://huggingface.co"
# llama.cpp's -hf picks this quant when the tag is left out (common/arg.cpp).
DEFAULT_QUANT = "Q4_K_M"
_REPO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_SPLIT_RE = re.compile(r"^(?P<prefix>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")
# A quant tag in a file name: Q4_K_M, IQ4_XS, Q8_0, BF16, UD-Q4_K_XL, MXFP4_MOE, ...
_QUANT_RE = re.compile(
    r"(?:^|[-._/])((?:UD-)?(?:I?Q\d(?:_[A-Z0-9]{1,4}){0,2}|TQ\d_\d|MXFP4(?:_MOE)?|B?F16|F32))"
    r"(?=[-._/]|$)",
    re.IGNORECASE,
)


def endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def offline() -> bool:
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in ("1", "ON", "YES", "TRUE")


def _hf_home() -> Path:
    home = os.environ.get("HF_HOME")
    if home:
        return Path(os.path.expanduser(home))
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "huggingface"


def hub_cache_dir() -> Path:
    """Where huggingface_hub keeps downloads (``models--owner--name/snapshots/...``)."""
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    return Path(os.path.expanduser(explicit)) if explicit else _hf_home() / "hub"


def token() -> str | None:
    """``HF_TOKEN``, else the token file ``hf auth login`` wrote (``HF_TOKEN_PATH``)."""
    value = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    if value and value.strip():
        return value.strip()
    path = os.environ.get("HF_TOKEN_PATH") or str(_hf_home() / "token")
    try:
        text = Path(os.path.expanduser(path)).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text or None


def auth_headers() -> dict[str, str]:
    value = token()
    return {"Authorization": f"Bearer {value}"} if value else {}


# ---- what the user names -------------------------------------------------------


@dataclass(frozen=True)
class HubRef:
    """``OWNER/REPO[:QUANT]``, llama.cpp's ``-hf`` syntax."""

    repo_id: str
    quant: str | None = None

    def __str__(self) -> str:
        return f"{self.repo_id}:{self.quant}" if self.quant else self.repo_id


def parse_ref(text: str) -> HubRef:
    repo, _, quant = text.strip().partition(":")
    for prefix in ("hf://", "https://huggingface.co/", "huggingface.co/"):
        repo = repo.removeprefix(prefix)
    if not _REPO_RE.match(repo) or ".." in repo:
        raise ConfigError(
            f"{text!r} is not a Hub model id like OWNER/REPO or OWNER/REPO:Q4_K_M", "--hf"
        )
    return HubRef(repo, quant.strip() or None)


# ---- the repo's GGUF files -----------------------------------------------------


@dataclass(frozen=True)
class RepoFile:
    name: str  # path in the repo
    size: int
    etag: str | None  # the Hub's ETag: an LFS file's SHA-256, else the git blob id
    sha256: str | None


@dataclass(frozen=True)
class Entry:
    """One choice in a repo: a GGUF file, or a split set's shards in order."""

    label: str  # the quant tag, else the file name
    files: tuple[RepoFile, ...]
    mmproj: bool

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def name(self) -> str:
        return self.files[0].name


@dataclass(frozen=True)
class Repo:
    repo_id: str
    revision: str  # the commit the listing describes (or "main" offline)
    entries: tuple[Entry, ...]
    gated: bool = False

    def url(self, name: str) -> str:
        return f"{endpoint()}/{self.repo_id}/resolve/{self.revision}/{name}"


def quant_tag(name: str) -> str | None:
    base = name.rsplit("/", 1)[-1].removesuffix(".gguf")
    base = _SPLIT_RE.sub(r"\g<prefix>", base + ".gguf").removesuffix(".gguf")
    found = _QUANT_RE.findall(base) or _QUANT_RE.findall(name.rsplit("/", 1)[0])
    return found[-1].upper() if found else None


def group_entries(files: Sequence[RepoFile]) -> tuple[Entry, ...]:
    """GGUF files as choices: split sets as one entry, mmproj files marked."""
    sets: dict[tuple[str, str, int], dict[int, RepoFile]] = {}
    entries: list[Entry] = []
    for f in files:
        if not f.name.lower().endswith(".gguf"):
            continue
        folder, _, base = f.name.rpartition("/")
        mmproj = "mmproj" in base.lower()
        m = _SPLIT_RE.match(base)
        if m:
            sets.setdefault((folder, m.group("prefix"), int(m.group("count"))), {})[
                int(m.group("no"))
            ] = f
            continue
        entries.append(Entry(quant_tag(f.name) or base, (f,), mmproj))
    for (_folder, prefix, count), shards in sets.items():
        if sorted(shards) != list(range(1, count + 1)):
            continue  # an incomplete set cannot be loaded: leave it out
        ordered = tuple(shards[i] for i in range(1, count + 1))
        label = quant_tag(ordered[0].name) or prefix
        entries.append(Entry(label, ordered, "mmproj" in prefix.lower()))
    entries.sort(key=lambda e: (e.mmproj, e.size))
    return tuple(entries)


# common/download.cpp ``gguf_filename_is_model``: sidecar files that are not models.
_NOT_MODELS = ("mmproj", "imatrix", "mtp-", "eagle3-", "dflash-", "dspark-")
# common/download.cpp ``find_best_model``: the tags tried when none is given.
DEFAULT_TAGS = (DEFAULT_QUANT, "Q8_0")


def is_model(entry: Entry) -> bool:
    """A file llama.cpp's -hf would load as the model (not an mmproj, imatrix, ...)."""
    base = entry.name.rsplit("/", 1)[-1]
    return not entry.mmproj and not any(k in base for k in _NOT_MODELS)


def choose(repo: Repo, quant: str | None) -> Entry:
    """The entry ``quant`` names, as llama.cpp's -hf resolves it (common/download.cpp
    ``find_best_model``): the first model file, in the listing's path order, whose
    path matches the tag followed by ``.`` or ``-`` (case-insensitive; a split set
    by its first shard); with no tag Q4_K_M, then Q8_0, then the first model."""
    models = sorted((e for e in repo.entries if is_model(e)), key=lambda e: e.name)
    if not models:
        raise RemoteError("the repo holds no GGUF model files", repo.repo_id)
    for tag in (quant,) if quant else DEFAULT_TAGS:
        pattern = re.compile(re.escape(tag) + "[.-]", re.IGNORECASE)
        for entry in models:
            if pattern.search(entry.name):
                return entry
    if not quant:
        return models[0]
    labels = ", ".join(sorted({e.label for e in models}))
    raise ConfigError(f"no {quant} file in {repo.repo_id}; it has {labels}", "--hf")


# ---- asking the Hub --------------------------------------------------------------


def api() -> HfApi:
    """huggingface_hub's client for this endpoint, with a timeout on every request."""
    import httpx2
    from huggingface_hub import HfApi, set_client_factory
    from huggingface_hub.utils._http import hf_request_event_hook

    from llmtune.model.remote import timeout_s

    limit = httpx2.Timeout(timeout_s())

    def bounded(request: httpx2.Request) -> None:
        # huggingface_hub passes timeout=None (wait forever) on most calls; a slow Hub
        # must end in a sentence, so every request gets the limit back.
        request.extensions["timeout"] = limit.as_dict()

    set_client_factory(
        lambda: httpx2.Client(
            event_hooks={"request": [hf_request_event_hook, bounded]},
            follow_redirects=True,
            timeout=limit,
            max_redirects=10,
        )
    )
    return HfApi(endpoint=endpoint(), token=token() or False)


def hub_failure(exc: BaseException, what: str) -> NoReturn:
    """A huggingface_hub or network exception as one sentence about ``what``."""
    import httpx2
    from huggingface_hub import errors

    page = f"{endpoint()}/{what}"
    has_token = token() is not None
    if isinstance(exc, errors.GatedRepoError):
        raise RemoteError(
            f"{what} is gated: accept its terms at {page} with your account, then set HF_TOKEN "
            "(or run 'hf auth login')",
            what,
        ) from None
    if isinstance(exc, errors.RepositoryNotFoundError):
        hint = "the token given cannot read it" if has_token else "set HF_TOKEN if it is private"
        raise RemoteError(f"no model repo {what} on {endpoint()} ({hint})", what) from None
    if isinstance(exc, errors.RevisionNotFoundError):
        raise RemoteError(f"no such revision of {what}", what) from None
    if isinstance(exc, errors.HfHubHTTPError):
        status = exc.response.status_code if exc.response is not None else 0
        if status == 401 and has_token:
            raise RemoteError(
                "the Hub refused the token (HF_TOKEN or the token file): it is invalid or "
                f"expired; make a new one at {endpoint()}/settings/tokens",
                what,
            ) from None
        raise RemoteError(f"the Hub answered HTTP {status} for {what}", endpoint()) from None
    if isinstance(exc, httpx2.TimeoutException):
        raise RemoteError("the Hub did not answer in time (LLMTUNE_HTTP_TIMEOUT)", endpoint())
    if isinstance(exc, httpx2.TooManyRedirects):
        raise RemoteError("the Hub redirects in a loop", endpoint()) from None
    if isinstance(exc, (httpx2.HTTPError, OSError)):
        raise RemoteError(f"cannot reach the Hub: {exc}", endpoint()) from None
    raise exc


def list_repo(repo_id: str) -> Repo:
    """The repo's GGUF files, from the Hub (or offline, from what is cached)."""
    if offline():
        return _offline_repo(repo_id)
    try:
        info = api().model_info(repo_id, files_metadata=True)
    except Exception as exc:  # noqa: BLE001 (every failure becomes one sentence)
        hub_failure(exc, repo_id)
    files = []
    for s in info.siblings or ():
        lfs = s.lfs
        sha = lfs.sha256 if lfs is not None else None
        size = s.size if s.size is not None else (lfs.size if lfs is not None else 0)
        files.append(RepoFile(s.rfilename, int(size or 0), sha or s.blob_id, sha))
    repo = Repo(repo_id, info.sha or "main", group_entries(files), gated=bool(info.gated))
    _save_listing(repo)
    return repo


def _listing_path(repo_id: str) -> Path:
    from llmtune.paths import cache_dir

    return cache_dir() / "hub" / (repo_id.replace("/", "--") + ".json")


def _save_listing(repo: Repo) -> None:
    """Kept for HF_HUB_OFFLINE: with the headers cached, a repo plans without network."""
    from llmtune.model.remote import _write_atomic

    files = [f.__dict__ for e in repo.entries for f in e.files]
    body = {"repo_id": repo.repo_id, "revision": repo.revision, "files": files}
    _write_atomic(_listing_path(repo.repo_id), json.dumps(body).encode())


def _offline_repo(repo_id: str) -> Repo:
    try:
        saved = json.loads(_listing_path(repo_id).read_text(encoding="utf-8"))
        files = [RepoFile(**f) for f in saved["files"]]
        return Repo(repo_id, str(saved["revision"]), group_entries(files))
    except (OSError, ValueError, KeyError, TypeError):
        pass
    snapshot = local_snapshot(repo_id, "main")
    if snapshot is None:
        raise RemoteError(
            f"HF_HUB_OFFLINE is set and {repo_id} is not in the Hugging Face cache",
            str(hub_cache_dir()),
        )
    found = [
        RepoFile(p.relative_to(snapshot).as_posix(), p.stat().st_size, None, None)
        for p in sorted(snapshot.rglob("*.gguf"))
        if p.is_file()
    ]
    return Repo(repo_id, snapshot.name, group_entries(found))


def _repo_folder(repo_id: str) -> Path:
    return hub_cache_dir() / ("models--" + repo_id.replace("/", "--"))


def local_snapshot(repo_id: str, revision: str) -> Path | None:
    """The cached snapshot folder of a revision (a branch name goes through refs/)."""
    folder = _repo_folder(repo_id)
    try:
        commit = (folder / "refs" / revision).read_text(encoding="utf-8").strip()
    except OSError:
        commit = revision
    snapshot = folder / "snapshots" / commit
    return snapshot if commit and "/" not in commit and snapshot.is_dir() else None


def local_paths(repo: Repo, entry: Entry) -> tuple[str, ...] | None:
    """The entry's files in the local Hugging Face cache, when every one is there."""
    from huggingface_hub import try_to_load_from_cache

    paths = []
    for f in entry.files:
        found = try_to_load_from_cache(
            repo.repo_id, f.name, cache_dir=hub_cache_dir(), revision=repo.revision
        )
        if not isinstance(found, str) or not os.path.isfile(found):
            return None
        if f.size and os.path.getsize(found) != f.size:
            return None
        paths.append(found)
    return tuple(paths)


# ---- search ----------------------------------------------------------------------


@dataclass(frozen=True)
class SearchHit:
    repo_id: str
    downloads: int
    likes: int


def search(text: str, limit: int) -> Iterator[SearchHit]:
    """GGUF model repos matching ``text``, most downloaded first."""
    if offline():
        raise RemoteError("HF_HUB_OFFLINE is set: search asks the Hub", "llmtune search")
    try:
        found: Any = api().list_models(search=text, filter="gguf", sort="downloads", limit=limit)
        hits = [SearchHit(m.id, int(m.downloads or 0), int(m.likes or 0)) for m in found]
    except Exception as exc:  # noqa: BLE001 (every failure becomes one sentence)
        hub_failure(exc, f"search {text!r}")
    yield from hits
