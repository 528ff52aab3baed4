"""Where llmtune keeps its files: the user's config and cache directories.

``LLMTUNE_CONFIG_DIR`` and ``LLMTUNE_CACHE_DIR`` override them (tests, and
users who keep dotfiles elsewhere); otherwise platformdirs picks the place
each platform expects.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def config_dir() -> Path:
    """Saved settings and the speed calibration."""
    override = os.environ.get("LLMTUNE_CONFIG_DIR")
    if override:
        return Path(override)
    from platformdirs import user_config_dir

    return Path(user_config_dir("llmtune"))


def cache_dir() -> Path:
    """The demo model and the host bandwidth measurement."""
    override = os.environ.get("LLMTUNE_CACHE_DIR")
    if override:
        return Path(override)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("llmtune"))


def write_atomic(path: Path, data: str | bytes, *, durable_dir: bool = False) -> None:
    """Replace ``path`` with ``data`` all at once: a temporary file beside it,
    flushed to disk, then renamed; on any failure the old file stays and no
    temporary file is left. Raises OSError. ``durable_dir`` also syncs the folder,
    so the rename itself survives a crash (POSIX)."""
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode("utf-8") if isinstance(data, str) else data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if durable_dir:
        try:
            dir_fd = os.open(path.parent, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(dir_fd)
        except OSError:
            pass
        finally:
            os.close(dir_fd)


class TooLarge(ValueError):
    """A file larger than any of ours: read no further than the limit."""


def read_json(path: Path | str, max_bytes: int) -> Any:
    """The JSON in ``path``, read no further than ``max_bytes``. Raises
    FileNotFoundError, OSError, :class:`TooLarge`, or ValueError for what is not
    UTF-8 JSON (nesting too deep included): every caller's file is the user's to
    damage, and each says in its own words what it then does."""
    with open(path, "rb") as fh:
        raw = fh.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise TooLarge(f"larger than {max_bytes:,} bytes")
    try:
        return json.loads(raw.decode("utf-8"))
    except RecursionError as err:
        raise ValueError("nested too deeply") from err
