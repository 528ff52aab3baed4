"""The import contracts in pyproject.toml hold, and lint-imports sees them broken.

``make lint`` runs ``lint-imports``; this runs the same contracts in a child
process (import-linter adds the working directory to ``sys.path`` and builds
its graph from whichever ``llmtune`` imports first), once on this checkout and
once on a copy of the package with one violation of each contract planted,
so a contract that silently stopped checking fails here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "tui" / "llmtune"
CONTRACTS = {
    "core-without-ui": "The core never imports the UI (llmtune.ui, Textual, Rich)",
    "fit-without-engine": "fit plans without the engine",
    "model-without-fit": "model reads files without fit",
}

_CHILD = """
import sys
from importlinter.cli import lint_imports

sys.exit(lint_imports(config_filename=sys.argv[1], no_cache=True, no_logo=True))
"""


def _lint_imports(source_root: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(source_root))
    return subprocess.run(
        [sys.executable, "-c", _CHILD, str(ROOT / "pyproject.toml")],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=300,
    )


def test_the_contracts_hold() -> None:
    proc = _lint_imports(PACKAGE.parent, ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in CONTRACTS.values():
        assert f"{name} KEPT" in proc.stdout
    assert f"Contracts: {len(CONTRACTS)} kept, 0 broken." in proc.stdout


def _append(path: Path, text: str) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(text)


def test_a_broken_contract_fails(tmp_path: Path) -> None:
    """Each kind of import the contracts mean to catch, planted in a copy."""
    copy = tmp_path / "src" / "llmtune"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    # An import inside a function still loads the module when it runs.
    _append(copy / "telemetry" / "series.py", "\n\ndef _planted() -> None:\n    import rich\n")
    _append(copy / "fit" / "quant.py", "\n\nimport llmtune.engine.bench\n")
    # A type-only import is still a dependency.
    _append(
        copy / "model" / "spec.py",
        "\n\nfrom typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n"
        "    from llmtune.fit.plan import FitPlan\n",
    )
    proc = _lint_imports(copy.parent, tmp_path)
    assert proc.returncode != 0, proc.stdout + proc.stderr
    for name in CONTRACTS.values():
        assert f"{name} BROKEN" in proc.stdout
    assert f"Contracts: 0 kept, {len(CONTRACTS)} broken." in proc.stdout
    assert "llmtune.telemetry.series -> rich" in proc.stdout
    assert "llmtune.fit.quant -> llmtune.engine.bench" in proc.stdout
    assert "llmtune.model.spec -> llmtune.fit.plan" in proc.stdout
