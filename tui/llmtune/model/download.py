"""Downloading a Hub model into the Hugging Face cache layout, so other tools find it.

``blobs/<sha256>`` holds the file, ``snapshots/<commit>/<name>`` links to it and
``refs/main`` names the commit, as huggingface_hub lays them out. The bytes go
to ``blobs/<sha256>.partial`` first: an interrupted download resumes from
there with a range request, and the blob gets its name only when its size and
the Hub's SHA-256 both check out. The free disk space is checked before the
first byte.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from llmtune.errors import RemoteError
from llmtune.model.hub import Entry, Repo, RepoFile, auth_headers, endpoint, hub_cache_dir
from llmtune.model.remote import HttpClient
from llmtune.units import format_bytes


@dataclass(frozen=True)
class Progress:
    name: str
    done_bytes: int
    total_bytes: int
    bytes_per_s: float

    @property
    def eta_s(self) -> float | None:
        left = self.total_bytes - self.done_bytes
        return left / self.bytes_per_s if self.bytes_per_s > 0 else None


def repo_folder(repo_id: str) -> Path:
    return hub_cache_dir() / ("models--" + repo_id.replace("/", "--"))


def download(
    repo: Repo, entry: Entry, on_progress: Callable[[Progress], None] | None = None
) -> tuple[Path, ...]:
    """Every file of ``entry`` in the HF cache; returns the snapshot paths in order."""
    folder = repo_folder(repo.repo_id)
    blobs = folder / "blobs"
    try:
        blobs.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RemoteError(f"cannot create the cache folder: {exc.strerror}", str(blobs)) from None
    for f in entry.files:
        if not f.sha256:
            raise RemoteError(
                "the Hub lists no SHA-256 for this file, so it cannot be verified", f.name
            )
    needed = sum(
        f.size - _have(blobs, f) for f in entry.files if not (blobs / str(f.sha256)).exists()
    )
    free = shutil.disk_usage(blobs).free
    if needed > free:
        raise RemoteError(
            f"needs {format_bytes(needed)} free, {format_bytes(free)} is", str(hub_cache_dir())
        )
    paths = []
    with HttpClient(auth_headers(), urlsplit(endpoint()).hostname) as http:
        for f in entry.files:
            blob = blobs / str(f.sha256)
            if not blob.exists():
                _fetch(http, repo.url(f.name), f, blob, on_progress)
            paths.append(_link(folder, repo.revision, f.name, blob))
    if len(repo.revision) == 40:
        (folder / "refs").mkdir(exist_ok=True)
        (folder / "refs" / "main").write_text(repo.revision, encoding="utf-8")
    return tuple(paths)


def _have(blobs: Path, f: RepoFile) -> int:
    try:
        return (blobs / f"{f.sha256}.partial").stat().st_size
    except OSError:
        return 0


def _fetch(
    http: HttpClient,
    url: str,
    f: RepoFile,
    blob: Path,
    on_progress: Callable[[Progress], None] | None,
) -> None:
    partial = blob.with_name(blob.name + ".partial")
    with _only_download(blob, f.name):
        _fetch_locked(http, url, f, blob, partial, on_progress)


@contextmanager
def _only_download(blob: Path, name: str) -> Iterator[None]:
    """One download of a file at a time: a second process appending to the same
    ``.partial`` would corrupt it (the lock goes with the process that holds it)."""
    lock = blob.with_name(blob.name + ".lock")
    try:
        fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o644)
    except OSError as exc:
        raise RemoteError(f"cannot lock the download: {exc.strerror}", str(lock)) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)  # the holder's lock file stays: it removes it when done
        raise RemoteError("another download of this file is running", name) from None
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)
        os.close(fd)


def _fetch_locked(
    http: HttpClient,
    url: str,
    f: RepoFile,
    blob: Path,
    partial: Path,
    on_progress: Callable[[Progress], None] | None,
) -> None:
    digest = hashlib.sha256()
    start = 0
    if partial.exists():
        with open(partial, "rb") as fh:
            for piece in iter(lambda: fh.read(1 << 20), b""):
                digest.update(piece)
                start += len(piece)
    if start > f.size:
        partial.unlink()
        digest, start = hashlib.sha256(), 0
    began = time.monotonic()
    done = start
    if start < f.size:
        with open(partial, "ab") as out:
            for chunk in http.stream(url, start, lambda total: _same_size(total, f)):
                out.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                if on_progress is not None:
                    elapsed = max(time.monotonic() - began, 1e-6)
                    on_progress(Progress(f.name, done, f.size, (done - start) / elapsed))
            out.flush()
            os.fsync(out.fileno())
    if done != f.size or digest.hexdigest() != f.sha256:
        partial.unlink(missing_ok=True)
        raise RemoteError(
            "the downloaded bytes do not match the Hub's size and SHA-256; deleted, try again",
            f.name,
        )
    os.replace(partial, blob)


def _same_size(total: int, f: RepoFile) -> None:
    if total != f.size:
        raise RemoteError(
            f"the server has {total:,} bytes but the Hub lists {f.size:,}; not downloading", f.name
        )


def _link(folder: Path, revision: str, name: str, blob: Path) -> Path:
    link = folder / "snapshots" / revision / name
    link.parent.mkdir(parents=True, exist_ok=True)
    target = os.path.relpath(blob, link.parent)
    if link.is_symlink() or link.exists():
        link.unlink()
    try:
        link.symlink_to(target)
    except OSError:
        shutil.copyfile(blob, link)  # file systems without symlinks, as huggingface_hub does
    return link
