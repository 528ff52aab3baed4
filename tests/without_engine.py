"""Run llmtune as after ``pip install llmtune``: llama-cpp-python not installed.

The child interpreter starts with ``-S`` (no site packages); its path is this
checkout's ``tui`` and a folder of links to this interpreter's installed
packages less llama-cpp-python (``llama_cpp`` and its dist-info). There,
``import llama_cpp`` fails and ``importlib.util.find_spec`` finds nothing,
exactly as when the binding was never installed; everything else is the same
packages at the same versions.
"""

from __future__ import annotations

import os
import site
import subprocess
import sys
from pathlib import Path

TUI = Path(__file__).resolve().parents[1] / "tui"

# Left out of the links: the binding, and llmtune's own install (this checkout's tui comes first).
_LEFT_OUT = ("llama_cpp", "llmtune", "_editable_impl_llmtune")


def link_site_without_engine(folder: Path) -> Path:
    """Fill ``folder`` (made if needed) with links to the installed packages, less
    llama-cpp-python."""
    folder.mkdir(parents=True, exist_ok=True)
    for site_dir in [*site.getsitepackages(), site.getusersitepackages()]:
        if not os.path.isdir(site_dir):
            continue
        for entry in sorted(os.listdir(site_dir)):
            if entry.startswith(_LEFT_OUT) or entry.endswith(".pth") or (folder / entry).exists():
                continue
            (folder / entry).symlink_to(os.path.join(site_dir, entry))
    return folder


def run_python(
    args: list[str], site_dir: Path | None, cwd: Path, timeout_s: float = 300
) -> subprocess.CompletedProcess[str]:
    """``python args`` with this checkout's llmtune: without llama-cpp-python when
    ``site_dir`` (from :func:`link_site_without_engine`), else with this interpreter's
    packages as installed."""
    if site_dir is None:
        command, path = [sys.executable, *args], str(TUI)
    else:
        command, path = [sys.executable, "-S", *args], os.pathsep.join([str(TUI), str(site_dir)])
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONHOME", "PYTHONSTARTUP")}
    env.pop("LLMTUNE_DEBUG", None)  # errors as users see them
    env["PYTHONPATH"] = path
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=timeout_s,
        stdin=subprocess.DEVNULL,
    )
