"""Real file-system faults for tests: a small tmpfs that fills up, a read-only
bind mount. Both need root (or CAP_SYS_ADMIN); where mounting is not allowed the
context managers raise :class:`MountUnavailable` and tests skip.

Root ignores file permissions, so a read-only folder made with ``chmod`` would
still be written: a read-only mount is refused to everyone.
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class MountUnavailable(Exception):
    """This machine does not let the tests mount file systems."""


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=30)


def _unmount(path: Path) -> None:
    _run("umount", "-l", str(path))


@contextmanager
def small_tmpfs(path: Path, size_bytes: int) -> Iterator[Path]:
    """A tmpfs of ``size_bytes`` at ``path`` (created) for the duration."""
    path.mkdir(parents=True, exist_ok=True)
    done = _run("mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(path))
    if done.returncode != 0:
        raise MountUnavailable(done.stderr.strip() or "mount failed")
    try:
        yield path
    finally:
        _unmount(path)


def fill(folder: Path, leave_bytes: int = 0) -> int:
    """Write a filler file in ``folder`` until at most ``leave_bytes`` are free;
    returns the bytes written."""
    written = 0
    with open(folder / "filler", "wb") as fh:
        chunk = b"\0" * (64 << 10)
        while True:
            free = os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize
            if free <= leave_bytes:
                break
            try:
                written += fh.write(chunk[: max(1, min(len(chunk), free - leave_bytes))])
                fh.flush()
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break
    return written


@contextmanager
def read_only(path: Path) -> Iterator[Path]:
    """``path`` (a folder or a file) bind-mounted read-only onto itself."""
    done = _run("mount", "--bind", str(path), str(path))
    if done.returncode != 0:
        raise MountUnavailable(done.stderr.strip() or "mount --bind failed")
    try:
        done = _run("mount", "-o", "remount,bind,ro", str(path))
        if done.returncode != 0:
            raise MountUnavailable(done.stderr.strip() or "remount read-only failed")
        yield path
    finally:
        _unmount(path)


def is_read_only(path: Path) -> bool:
    """Whether writing in ``path`` (a folder) fails with EROFS, as it should."""
    try:
        fd = os.open(path / ".probe", os.O_WRONLY | os.O_CREAT, 0o600)
    except OSError as exc:
        return exc.errno == errno.EROFS
    os.close(fd)
    os.unlink(path / ".probe")
    return False


@contextmanager
def read_only_or_skip(path: Path) -> Iterator[Path]:
    """:func:`read_only` for a pytest test: skipped where mounting is not allowed
    or a read-only mount still takes writes."""
    import pytest

    try:
        with read_only(path):
            if not is_read_only(path):
                pytest.skip("read-only bind mounts are not read-only here")
            yield path
    except MountUnavailable as exc:
        pytest.skip(f"cannot mount here: {exc}")
