"""Where llmtune keeps its files: the user's config and cache directories.

``LLMTUNE_CONFIG_DIR`` and ``LLMTUNE_CACHE_DIR`` override them (tests, and
users who keep dotfiles elsewhere); otherwise platformdirs picks the place
each platform expects.
"""

from __future__ import annotations

import os
from pathlib import Path


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
