"""llama.cpp's own tools, built from the llama.cpp that llmtune runs.

``make tools`` (``python -m llmtune.engine.tools``) builds ``llama-fit-params``,
``llama-bench``, ``llama-server``, ``llama-perplexity``, ``llama-quantize`` and
``ggml-rpc-server`` from the llama.cpp vendored in the pinned llama-cpp-python
(its source distribution, which pip fetches or finds in its cache), with the
RPC backend on, into the user cache, once; then prints their folder. These are
the anchors llmtune is measured against: the fit it reproduces, the speeds and
buffers it predicts, the quantizer and perplexity it wraps.

The build uses llama.cpp's CMake as its CI does, without tests, examples, the
web UI or network access (``LLAMA_USE_PREBUILT_UI`` off); on x86_64 without the
AMX kernels, as the worker's llama-cpp-python (see the Makefile).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import TextIO

from llmtune.errors import LlmtuneError
from llmtune.paths import cache_dir

LLAMA_CPP_PYTHON_VERSION = "0.3.36"  # the pin in pyproject.toml
TOOLS = (
    "llama-fit-params",
    "llama-bench",
    "llama-server",
    "llama-perplexity",
    "llama-quantize",
    "ggml-rpc-server",
)
CMAKE_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DGGML_RPC=ON",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_SERVER=ON",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DLLAMA_BUILD_APP=OFF",
    "-DLLAMA_OPENSSL=OFF",
    # The tools find their libraries beside them ($ORIGIN), not in the build tree.
    "-DCMAKE_BUILD_RPATH_USE_ORIGIN=ON",
)


class ToolsError(LlmtuneError):
    """llama.cpp's tools could not be built."""


def _flags() -> tuple[str, ...]:
    extra: tuple[str, ...] = ()
    if platform.machine() in ("x86_64", "AMD64"):
        # ggml-org/llama.cpp#20824: the AMX kernels crash on the first prompt.
        extra = ("-DCMAKE_C_FLAGS=-mno-amx-int8", "-DCMAKE_CXX_FLAGS=-mno-amx-int8")
    return (*CMAKE_FLAGS, *extra)


def tools_dir() -> Path:
    """Where the tools of this llama.cpp are (built or not)."""
    return cache_dir() / "tools" / f"llama.cpp-llama-cpp-python-{LLAMA_CPP_PYTHON_VERSION}" / "bin"


def tool(name: str) -> Path | None:
    """The path of one tool when it is built, else None."""
    path = tools_dir() / name
    return path if path.is_file() and os.access(path, os.X_OK) else None


def built() -> bool:
    """Every tool is there and starts (its libraries are found)."""
    if not all(tool(name) is not None for name in TOOLS):
        return False
    probe = subprocess.run([str(tools_dir() / "llama-fit-params"), "--help"], capture_output=True)
    return probe.returncode == 0


def _sdist(into: Path, log: list[str]) -> Path:
    """llama-cpp-python's source distribution (pip's cache, else PyPI)."""
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
           f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}", "-d", str(into)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    log.append(proc.stdout + proc.stderr)
    found = sorted(into.glob("llama_cpp_python-*.tar.gz"))
    if proc.returncode != 0 or not found:
        raise ToolsError(
            f"could not fetch llama-cpp-python {LLAMA_CPP_PYTHON_VERSION}'s source with pip: "
            + (proc.stderr.strip().splitlines() or ["no source distribution"])[-1]
        )
    return found[0]


def _extract_llama_cpp(sdist: Path, into: Path) -> Path:
    """Only ``vendor/llama.cpp`` of the source distribution, without its models."""
    with tarfile.open(sdist) as tar:
        members = []
        for m in tar.getmembers():
            parts = Path(m.name).parts
            if (
                len(parts) > 2
                and parts[1:3] == ("vendor", "llama.cpp")
                and "models" not in parts[3:4]
            ):
                members.append(m)
        tar.extractall(into, members=members, filter="data")
    roots = list(into.glob("*/vendor/llama.cpp"))
    if not roots:
        raise ToolsError(f"{sdist.name} holds no vendor/llama.cpp")
    return roots[0]


def build(jobs: int | None = None, out: TextIO = sys.stderr) -> Path:
    """Build the tools unless they are there; returns their folder. Raises ToolsError."""
    target = tools_dir()
    if built():
        return target
    for program in ("cmake",):
        if shutil.which(program) is None:
            raise ToolsError(f"building llama.cpp's tools needs {program}, which is not installed")
    jobs = jobs or os.cpu_count() or 2
    log: list[str] = []
    work_root = target.parent
    work_root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work_root, prefix=".build-") as tmp:
        work = Path(tmp)
        print(
            f"llama.cpp's tools: fetching llama-cpp-python {LLAMA_CPP_PYTHON_VERSION}'s source...",
            file=out,
            flush=True,
        )
        source = _extract_llama_cpp(_sdist(work / "sdist", log), work / "src")
        build_dir = work / "build"
        generator = ["-G", "Ninja"] if shutil.which("ninja") else []
        print(
            f"llama.cpp's tools: building {', '.join(TOOLS)} ({jobs} jobs; about 9 minutes on 2 cores)...",
            file=out,
            flush=True,
        )
        steps = [
            ["cmake", "-S", str(source), "-B", str(build_dir), *generator, *_flags()],
            ["cmake", "--build", str(build_dir), "--target", *TOOLS, "-j", str(jobs)],
        ]
        for step in steps:
            proc = subprocess.run(step, capture_output=True, text=True)
            log.append(proc.stdout[-20000:] + proc.stderr[-20000:])
            if proc.returncode != 0:
                (work_root / "build.log").write_text("\n".join(log))
                tail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:] or [
                    "no output"
                ]
                raise ToolsError(
                    f"building llama.cpp's tools failed ({step[1]} {step[2] if len(step) > 2 else ''}): "
                    f"{tail[0]}; the log is {work_root / 'build.log'}"
                )
        staged = work / "bin"
        shutil.copytree(build_dir / "bin", staged, symlinks=True)
        if target.exists():
            shutil.rmtree(target)
        staged.rename(target)  # whole or not at all: a cancelled build leaves no half folder
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m llmtune.engine.tools",
        description=__doc__.splitlines()[0] if __doc__ else None,
    )
    parser.add_argument(
        "--jobs", type=int, default=None, help="parallel compile jobs (default: every core)"
    )
    args = parser.parse_args(argv)
    try:
        folder = build(args.jobs)
    except LlmtuneError as exc:
        print(f"llmtune: error: {exc.one_line()}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("llmtune: stopped; nothing was kept", file=sys.stderr)
        return 130
    print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
