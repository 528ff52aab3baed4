"""The core never imports Textual (DESIGN.md, "Layout").

``model``, ``fit``, ``hardware``, ``engine`` and ``telemetry`` must work in a
worker process, a script or a test without the UI. Every module under them,
plus ``llmtune.cli`` (which must defer the UI until the app is opened), is
imported in a fresh interpreter, one at a time, and ``sys.modules`` is checked
for ``textual`` after each, so a failure names the module that pulled it in.
"""

from __future__ import annotations

import json
import subprocess
import sys

CORE_PACKAGES = (
    "llmtune.model",
    "llmtune.fit",
    "llmtune.hardware",
    "llmtune.engine",
    "llmtune.telemetry",
)

# Run in a fresh interpreter: this test process has Textual loaded already.
_CHILD = """
import importlib, importlib.util, json, pkgutil, sys

result = {"missing": [], "imported": [], "textual_from": None}
for package in sys.argv[1:]:
    if importlib.util.find_spec(package) is None:
        result["missing"].append(package)
        continue
    names = [package]
    module = importlib.import_module(package)
    if hasattr(module, "__path__"):
        names += sorted(m.name for m in pkgutil.walk_packages(module.__path__, package + "."))
    for name in names:
        importlib.import_module(name)
        result["imported"].append(name)
        if result["textual_from"] is None and "textual" in sys.modules:
            result["textual_from"] = name
print(json.dumps(result))
"""


def _import_in_child(*packages: str) -> dict[str, object]:
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, *packages],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, f"importing {packages} failed:\n{proc.stderr}"
    result: dict[str, object] = json.loads(proc.stdout.splitlines()[-1])
    return result


def test_core_packages_and_cli_do_not_import_textual() -> None:
    result = _import_in_child(*CORE_PACKAGES, "llmtune.cli", "llmtune.clipboard")
    imported = result["imported"]
    assert isinstance(imported, list)
    assert "llmtune.model" in imported and "llmtune.cli" in imported
    assert "llmtune.clipboard" in imported  # the app's OSC 52 helper is core code
    assert result["textual_from"] is None, (
        f"importing {result['textual_from']} loads textual; the core must not import the UI"
    )


def test_the_check_sees_textual_when_it_is_imported() -> None:
    """Guard against a vacuous pass: the UI package does load Textual."""
    result = _import_in_child("llmtune.ui")
    assert result["textual_from"] is not None
