"""Planning needs no llama.cpp: llmtune installed without the engine extra.

In a child interpreter where llama-cpp-python is not installed
(tests/without_engine.py), inspect, fit (with its options) and the demo model answer
as they do with the binding; bench, quantize and tune fail with one line
saying how to add it, exit status 2 and no traceback. The app's planning
panes: tests/ui/test_panes_without_engine.py.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from without_engine import TUI, link_site_without_engine, run_python

MISSING_LINE = (
    "llmtune: error: {what} needs llama.cpp, and llama-cpp-python is not installed: "
    "pip install 'llmtune[engine]' adds it (in a checkout, make run and make test install it)"
)


@pytest.fixture(scope="module")
def site_without_engine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return link_site_without_engine(tmp_path_factory.mktemp("site-without-llama-cpp"))


def _llmtune(args: list[str], site_dir: Path | None, cwd: Path) -> Any:
    return run_python(["-m", "llmtune.cli", *args], site_dir, cwd)


_PROBE = """
import importlib.util, json, sys
result = {"find_spec": importlib.util.find_spec("llama_cpp") is not None}
try:
    import llama_cpp
    result["import"] = "imported"
except ImportError as err:
    result["import"] = type(err).__name__
import gguf, textual, llmtune
from llmtune.engine import llama_cpp_installed
from llmtune.hardware.detect import llama_system_info, supports_gpu_offload
result["installed"] = llama_cpp_installed()
result["system_info"] = llama_system_info()
result["offload"] = supports_gpu_offload()
result["llmtune"] = llmtune.__file__
print(json.dumps(result))
"""


def test_the_binding_is_really_absent_there(site_without_engine: Path, tmp_path: Path) -> None:
    """Guard against a vacuous pass: the other tests' child has no llama_cpp to find."""
    proc = run_python(["-c", _PROBE], site_without_engine, tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["find_spec"] is False
    assert result["import"] == "ModuleNotFoundError"
    assert result["installed"] is False
    assert result["llmtune"] == str(TUI / "llmtune" / "__init__.py")
    # hardware.detect stays silent: the build is unknown, not "CPU-only".
    assert result["system_info"] is None and result["offload"] is None
    assert proc.stderr == ""


def _without(value: Any, key: str) -> Any:
    """``value`` with every ``key`` dropped, at any depth."""
    if isinstance(value, dict):
        return {k: _without(v, key) for k, v in value.items() if k != key}
    if isinstance(value, list):
        return [_without(v, key) for v in value]
    return value


def _comparable_plan(stdout: str) -> Any:
    """A plan of this machine less what differs between two runs or needs the binding
    to know: the RAM free at that moment, and a CPU-only-build note."""
    plan = _without(json.loads(stdout), "free_bytes")
    plan["notes"] = [n for n in plan.get("notes", []) if "CPU-only" not in n]
    return plan


@pytest.mark.parametrize(
    "args",
    [
        ["inspect", "DEMO", "--json"],
        ["inspect", "DEMO"],
        ["fit", "DEMO", "--json"],
        ["fit", "DEMO", "--quant", "Q4_K_M", "--json"],
        ["fit", "DEMO", "--ctx", "max", "--cache-type-k", "q8_0", "--json"],
        ["fit", "DEMO", "--gpu", "rtx3060-12g", "--ram", "16GiB", "--quant", "Q4_K_M"],
        ["fit", "DEMO", "--gpu", "12GiB", "--ram", "16GiB", "--quant", "all", "--json"],
        ["fit", "--list-gpus"],
    ],
    ids=lambda args: " ".join(args),
)
def test_planning_answers_as_with_the_binding(
    args: list[str], demo_model: Path, site_without_engine: Path, tmp_path: Path
) -> None:
    argv = [str(demo_model) if a == "DEMO" else a for a in args]
    without = _llmtune(argv, site_without_engine, tmp_path)
    assert without.returncode == 0, without.stderr
    assert "Traceback" not in without.stderr
    assert without.stdout.strip()
    with_binding = _llmtune(argv, None, tmp_path)
    assert with_binding.returncode == 0, with_binding.stderr
    if "--json" in args and "--ram" not in args and args[0] == "fit":
        assert _comparable_plan(without.stdout) == _comparable_plan(with_binding.stdout)
    else:
        assert without.stdout == with_binding.stdout


def test_the_demo_model_module(demo_model: Path, site_without_engine: Path, tmp_path: Path) -> None:
    proc = run_python(["-m", "llmtune.model.demo"], site_without_engine, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(demo_model)


@pytest.mark.parametrize(
    ("what", "args"),
    [
        ("bench", ["bench", "DEMO"]),
        ("bench", ["bench", "DEMO", "--json"]),
        ("quantize", ["quantize", "DEMO", "--to", "Q8_0", "-o", "OUT"]),
        ("tune", ["tune", "DEMO"]),
        ("tune", ["tune", "DEMO", "--json"]),
        ("rpc-server", ["rpc-server"]),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else v,
)
def test_running_llama_cpp_says_how_to_add_it(
    what: str, args: list[str], demo_model: Path, site_without_engine: Path, tmp_path: Path
) -> None:
    out = tmp_path / "demo.Q8_0.gguf"
    argv = [{"DEMO": str(demo_model), "OUT": str(out)}.get(a, a) for a in args]
    proc = _llmtune(argv, site_without_engine, tmp_path)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr == MISSING_LINE.format(what=what) + "\n"
    assert os.listdir(tmp_path) == []  # quantize wrote nothing, not even a partial file


def test_the_apps_load_and_quantize_say_it_too(
    monkeypatch: pytest.MonkeyPatch, demo_model: Path, tmp_path: Path
) -> None:
    """The app starts its worker through Supervisor.start and checks a quantization
    with prepare_quantize: both raise the one line, and no process starts."""
    from llmtune.engine import EngineMissingError
    from llmtune.engine.quantize import prepare_quantize
    from llmtune.engine.supervisor import Supervisor

    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import llama_cpp raises ImportError
    sup = Supervisor()
    with pytest.raises(EngineMissingError) as raised:
        sup.start()
    assert f"llmtune: error: {raised.value.one_line()}" == MISSING_LINE.format(
        what="running a model"
    )
    assert sup.pid is None and not sup.alive
    with pytest.raises(EngineMissingError) as raised:
        prepare_quantize(demo_model, "Q8_0", tmp_path / "out.gguf")
    assert raised.value.what.startswith("quantize needs llama.cpp")
