"""Where a model comes from: a local file, an https URL, or the Hub (``--hf``).

Every way ends in the same :class:`~llmtune.model.spec.ModelSpec`, built by
the same parser and checks (:func:`~llmtune.model.spec.spec_from_files`), so
the plan of a remote file is the plan of the same file on disk.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from llmtune.errors import ConfigError, GGUFError
from llmtune.model.gguf_file import GGUFFile
from llmtune.model.spec import ModelSpec, check_shard, is_url, read_spec, spec_from_files

if TYPE_CHECKING:
    from llmtune.model.hub import Entry, Repo
    from llmtune.model.remote import HeaderCache, HttpClient, Traffic

_SPLIT_RE = re.compile(r"^(?P<prefix>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")


@dataclass(frozen=True)
class Opened:
    """A model's spec and what reading it cost on the network."""

    spec: ModelSpec
    traffic: Traffic | None  # None: read from disk, no network
    cached: bool  # every header came from the header cache or the local HF cache
    source: str  # what the user named: a path, a URL or OWNER/REPO:QUANT


def open_spec(
    model: str | None, hf: str | None = None, *, cache: HeaderCache | None = None
) -> Opened:
    """The model ``model`` (a path or URL) or ``hf`` (``OWNER/REPO[:QUANT]``) names.

    A local file imports nothing of the network code.
    """
    if hf and model:
        raise ConfigError("give a model file or --hf, not both", "--hf")
    if hf:
        from llmtune.model.hub import choose, list_repo, parse_ref

        ref = parse_ref(hf)
        repo = list_repo(ref.repo_id)
        return open_entry(repo, choose(repo, ref.quant), cache=cache, source=str(ref))
    if model is None:
        raise ConfigError("name a model: a .gguf file, an https URL or --hf OWNER/REPO", "model")
    if is_url(model):
        return open_url(model, cache=cache)
    return Opened(read_spec(model), None, True, model)


def open_entry(
    repo: Repo,
    entry: Entry,
    *,
    cache: HeaderCache | None = None,
    client: HttpClient | None = None,
    source: str | None = None,
) -> Opened:
    """One entry of a Hub repo: from the local HF cache when it is there, else its headers."""
    from llmtune.model.hub import local_paths
    from llmtune.model.remote import (
        FIRST_READ_BYTES,
        LATER_SHARD_READ_BYTES,
        default_cache,
        read_remote_gguf,
    )

    shown = source or f"{repo.repo_id}:{entry.label}"
    local = local_paths(repo, entry)
    if local is not None:
        return Opened(read_spec(local[0]), None, True, shown)
    own = client is None
    http = client or hub_client()
    cache = default_cache() if cache is None else cache
    try:
        urls = [repo.url(f.name) for f in entry.files]
        files: list[GGUFFile] = []
        all_cached = True
        for i, (f, url) in enumerate(zip(entry.files, urls, strict=True)):
            header = read_remote_gguf(
                http,
                url,
                i,
                display=url,
                etag=f.etag,
                size=f.size or None,
                cache=cache,
                first_read=FIRST_READ_BYTES if i == 0 else LATER_SHARD_READ_BYTES,
            )
            all_cached = all_cached and header.cached
            files.append(header.gguf)
        spec = _assemble(files, tuple(urls))
        return Opened(spec, http.traffic, all_cached, shown)
    finally:
        if own:
            http.close()


def open_url(url: str, *, cache: HeaderCache | None = None) -> Opened:
    """A GGUF file at a URL, and its sibling shards when it is one of a split set."""
    from llmtune.model.remote import (
        LATER_SHARD_READ_BYTES,
        HttpClient,
        default_cache,
        read_remote_gguf,
    )

    cache = default_cache() if cache is None else cache
    with HttpClient() as http:
        first = read_remote_gguf(http, url, 0, cache=cache)
        files = [first.gguf]
        urls: tuple[str, ...] = (url,)
        count = first.gguf.metadata.get("split.count")
        if isinstance(count, int) and not isinstance(count, bool) and count > 1:
            urls = shard_urls(url, count)
            files = []
            for i, shard_url in enumerate(urls):
                if shard_url == url:
                    gf = dataclasses.replace(
                        first.gguf,
                        tensors=tuple(dataclasses.replace(t, shard=i) for t in first.gguf.tensors),
                    )
                else:
                    gf = read_remote_gguf(
                        http, shard_url, i, cache=cache, first_read=LATER_SHARD_READ_BYTES
                    ).gguf
                files.append(gf)
        spec = _assemble(files, urls)
        return Opened(spec, http.traffic, first.cached, url)


def shard_urls(url: str, count: int) -> tuple[str, ...]:
    """Every shard's URL, named like llama.cpp's ``llama_split_path``."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    folder, _, base = parts.path.rpartition("/")
    m = _SPLIT_RE.match(base)
    if not m or int(m.group("count")) != count:
        raise GGUFError(
            f"this is one of {count} shards, but its name does not follow "
            "'name-00001-of-0000N.gguf', so the others cannot be found",
            url,
        )
    prefix = m.group("prefix")
    return tuple(
        urlunsplit(parts._replace(path=f"{folder}/{prefix}-{i:05d}-of-{count:05d}.gguf"))
        for i in range(1, count + 1)
    )


def _assemble(files: Sequence[GGUFFile], urls: tuple[str, ...]) -> ModelSpec:
    first = files[0]
    count = first.metadata.get("split.count")
    if isinstance(count, int) and not isinstance(count, bool) and count > 1:
        if len(files) != count:
            raise GGUFError(f"split.count says {count} shards; the repo has {len(files)}", urls[0])
        total = first.metadata.get("split.tensors.count")
        for i, gf in enumerate(files):
            check_shard(gf, i, count, total if isinstance(total, int) else None)
    return spec_from_files(files, urls)


def open_many(
    repo: Repo,
    entries: Sequence[Entry],
    on_each: Callable[[Entry, Opened | Exception], None],
) -> None:
    """Read many entries' headers on one connection, reporting each as it arrives."""
    from llmtune.model.remote import default_cache

    cache = default_cache()
    with hub_client() as http:
        for entry in entries:
            try:
                on_each(entry, open_entry(repo, entry, cache=cache, client=http))
            except (GGUFError, ConfigError) as exc:
                on_each(entry, exc)


def hub_client() -> HttpClient:
    """A client that sends the Hub's token to the Hub's host only."""
    from urllib.parse import urlsplit

    from llmtune.model.hub import auth_headers, endpoint
    from llmtune.model.remote import HttpClient

    return HttpClient(auth_headers(), urlsplit(endpoint()).hostname)
