"""Security, from inside the process (audit hooks, tests/audit.py): reading,
inspecting and planning a model opens its files read-only and maps them
read-only; a split model's shard names, whatever its metadata says, never lead
outside the model's folder; inspect, fit and the model picker never reach the
network; chat templates are Jinja code only model/chat.py's sandboxed child
renders. The worker and the app are checked in tests/engine/test_security_engine.py
and tests/ui/test_no_network.py.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from gguf_edit import value_at

from audit import FILE_EVENTS, NETWORK_EVENTS, recording
from llmtune import cli
from llmtune.errors import GGUFError
from llmtune.fit.plan import offload_curve, plan
from llmtune.fit.report import plan_text
from llmtune.fit.whatif import quant_rows
from llmtune.hardware.host import host_device
from llmtune.hardware.profiles import parse_gpu_spec
from llmtune.model import GGUFArray, read_spec
from llmtune.model.describe import inspect_dict, inspect_text
from llmtune.model.discover import find_models, sibling_quantizations
from mounts import read_only_or_skip
from synth import llama_like

PACKAGE = Path(__file__).resolve().parents[2] / "tui" / "llmtune"
DEVICES = (parse_gpu_spec("rtx3060-12g"), host_device(ram_bytes=64 << 30, bandwidth_gbps=50.0))


@pytest.fixture
def split_model(tmp_path: Path) -> list[Path]:
    (tmp_path / "split").mkdir()
    return llama_like(tmp_path / "split" / "m.gguf", n_layer=2, split_max_tensors=8)


@pytest.fixture(autouse=True)
def _dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMTUNE_CONFIG_DIR", str(tmp_path / "config"))


def everything_llmtune_does_with(path: Path) -> None:
    """Read, inspect, plan and what-if a model, as inspect, fit and the app do."""
    spec = read_spec(path)
    inspect_dict(spec)
    inspect_text(spec)
    for value in spec.metadata.values():
        if isinstance(value, GGUFArray):
            value.values(limit=5)  # lazy arrays open the file again
    plan_text(spec, plan(spec, DEVICES))
    offload_curve(spec, DEVICES)
    quant_rows(spec, DEVICES)
    sibling_quantizations(path)


# ---- read-only ------------------------------------------------------------------


def test_models_are_opened_and_mapped_read_only(demo_model: Path, split_model: Path) -> None:
    models = [demo_model, split_model[1]]
    for model in models:
        everything_llmtune_does_with(model)  # imports and caches first
    model_files = {str(demo_model.resolve()), *(str(p.resolve()) for p in split_model)}

    with recording(FILE_EVENTS) as events:
        for model in models:
            everything_llmtune_does_with(model)

    opened = [e for e in events if e.path in model_files]
    maps = [e for e in events if e.name == "mmap.__new__"]
    assert {e.path for e in opened} == model_files  # the hook saw every file
    assert maps  # and the maps
    assert not [e for e in opened if e.writes]
    assert not [e for e in maps if e.writes]
    assert not [e for e in events if e.name in ("os.truncate", "os.remove", "os.rename")]


@pytest.fixture
def read_only_models(tmp_path: Path, split_model: Path) -> Iterator[Path]:
    folder = split_model[0].parent
    with read_only_or_skip(folder):
        yield folder


def test_inspect_and_fit_work_on_a_read_only_mount(read_only_models: Path) -> None:
    model = read_only_models / "m-00001-of-00003.gguf"
    for command in (["inspect", str(model)], ["fit", str(model), "--gpu", "rtx3060-12g"]):
        result = subprocess.run(
            [sys.executable, "-m", "llmtune.cli", *command, "--json"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)


# ---- shard names stay in the model's folder ----------------------------------------


def _patched(path: Path, key: str, fmt: str, value: int) -> None:
    import struct

    data = bytearray(path.read_bytes())
    struct.pack_into("<" + fmt, data, value_at(bytes(data), key), value)
    path.write_bytes(bytes(data))


def test_shard_names_never_lead_outside_the_model_folder(tmp_path: Path) -> None:
    """The other shards sit one folder up, under the names llmtune would derive;
    the shard opened, its name and its split keys are crafted every way. Reading
    fails or succeeds, but opens only files in the folder of the path given."""
    outside = tmp_path / "outside"
    outside.mkdir()
    shards = llama_like(outside / "m.gguf", n_layer=2, split_max_tensors=8)
    folder = outside / "models"
    folder.mkdir()
    cases: list[Path] = []
    first = folder / "m-00001-of-00003.gguf"
    first.write_bytes(shards[0].read_bytes())  # shards 2 and 3 only outside
    cases.append(first)
    link = folder / "link-00001-of-00003.gguf"
    link.symlink_to(shards[0])  # siblings are looked for beside the link, not its target
    cases.append(link)
    dots = folder / "..-00001-of-00003.gguf"  # a name part, not a parent folder
    dots.write_bytes(shards[0].read_bytes())
    cases.append(dots)
    many = folder / "m-00001-of-65535.gguf"  # a split.count as large as its u16 allows
    many.write_bytes(shards[0].read_bytes())
    _patched(many, "split.count", "H", 65535)
    cases.append(many)
    second = folder / "m-00002-of-00003.gguf"  # claims to be the first
    second.write_bytes(shards[1].read_bytes())
    _patched(second, "split.no", "H", 0)
    cases.append(second)
    for case in cases:  # warm: imports and caches
        with pytest.raises(GGUFError):
            read_spec(case)

    with recording(FILE_EVENTS) as events:
        for case in cases:
            with pytest.raises(GGUFError):
                everything_llmtune_does_with(case)

    opened = {e.path for e in events if e.name == "open"}
    assert str(first) in opened and str(many) in opened
    assert {os.path.dirname(path) for path in opened if path} == {str(folder)}


# ---- no network -----------------------------------------------------------------


def test_the_hook_sees_a_lookup() -> None:
    """The control: the recorder does see the network when it is used."""
    with recording(NETWORK_EVENTS) as events:
        try:
            socket.getaddrinfo("localhost", 80)
        except OSError:
            pass
    assert [e.name for e in events] == ["socket.getaddrinfo"]


def test_inspect_fit_and_the_picker_never_reach_the_network(
    demo_model: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # An empty cache: fit on this machine measures the host's bandwidth and keeps it.
    monkeypatch.setenv("LLMTUNE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    commands = [
        ["inspect", str(demo_model)],
        ["inspect", str(demo_model), "--json"],
        ["fit", str(demo_model)],
        ["fit", str(demo_model), "--json", "--ctx", "max"],
        ["fit", str(demo_model), "--gpu", "rtx3060-12g", "--quant", "all"],
        ["fit", "--list-gpus"],
    ]
    with recording(NETWORK_EVENTS) as events:
        for command in commands:
            assert cli.main(command) == 0, capsys.readouterr().err
        find_models([tmp_path])
    assert events == []
    assert (tmp_path / "cache" / "host_bandwidth.json").is_file()  # fit did run on this machine


# ---- chat templates ---------------------------------------------------------------


def test_only_the_sandboxed_child_renders_templates() -> None:
    """No module of llmtune but model/chat.py mentions Jinja, and there only inside
    the child's source (an ImmutableSandboxedEnvironment); nothing asks llama.cpp
    or llama-cpp-python to apply a chat template (their own template engines)."""
    chat = PACKAGE / "model" / "chat.py"
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        if path != chat:
            # fit/serverline.py reads llama-server's command line, whose switches
            # include --jinja: a flag's name to skip, not a template engine.
            text_checked = text.replace('"--jinja", "--no-jinja"', "")
            assert "jinja" not in text_checked.lower(), path
        for engine_call in (
            "chat_apply_template",
            "create_chat_completion",
            "Jinja2ChatFormatter",
            "chat_handler",
        ):
            assert engine_call not in text, (path, engine_call)
    source = chat.read_text(encoding="utf-8")
    child = source.split('_CHILD = """', 1)[1].split('"""', 1)[0]
    assert "ImmutableSandboxedEnvironment(" in child
    assert "Environment(" not in child.replace("ImmutableSandboxedEnvironment(", "")
    outside = source.replace(child, "")
    assert "import jinja2" not in outside and "from jinja2" not in outside
