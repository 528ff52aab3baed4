"""Security across every process llmtune starts, seen from outside with strace:
``llmtune bench`` (the llama.cpp worker loads and runs the demo model) and
``llmtune quantize`` (llama.cpp's quantizer reads the source) open the model
files read-only and create no network socket; and the worker loads a model
whose chat template is hostile Jinja and generates without running it.
Skipped where strace is missing or may not trace.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from gguf import GGUFValueType as V

from llmtune.engine.config import RunConfig
from llmtune.engine.protocol import Exited, Failed, Generate, Loaded, Stats
from llmtune.engine.supervisor import Supervisor
from strace_log import SYSCALL, WRITE_FLAGS, network, opens
from synth import llama_like

TIMEOUT_S = 300


def traced(args: list[str], tmp_path: Path) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Run ``llmtune ARGS`` under ``strace -f`` (every child too); its syscall lines."""
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed")
    log = tmp_path / "strace.log"
    env = {
        **os.environ,
        "LLMTUNE_CONFIG_DIR": str(tmp_path / "config"),
        "LLMTUNE_CACHE_DIR": str(tmp_path / "cache"),
    }
    calls = "socket,socketpair,connect,sendto,sendmsg,bind,openat,open,creat,truncate"
    result = subprocess.run(
        ["strace", "-f", "--seccomp-bpf", "-e", f"trace={calls}", "-o", str(log)]
        + [sys.executable, "-m", "llmtune.cli", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        env=env,
    )
    if not log.exists() or "PTRACE" in result.stderr or "Operation not permitted" in result.stderr:
        pytest.skip(f"strace cannot trace here: {result.stderr.strip()[:200]}")
    return result, log.read_text(errors="replace").splitlines()


def opens_of(lines: list[str], paths: set[str]) -> list[str]:
    return [m.string for m in opens(lines, paths)]


def network_sockets(lines: list[str]) -> list[str]:
    """Sockets that could reach another machine: anything but AF_UNIX pairs."""
    return network(lines)[0]


def test_bench_opens_the_model_read_only_in_every_process_and_no_socket(
    demo_model: Path, tmp_path: Path
) -> None:
    result, lines = traced(
        ["bench", str(demo_model), "--prompt-tokens", "16", "--gen-tokens", "4", "--repeat", "1"]
        + ["--json"],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    opens = opens_of(lines, {str(demo_model)})
    pids = {line.split()[0] for line in opens}
    assert len(pids) >= 2, opens  # llmtune read the header, the worker loaded the model
    assert not [line for line in opens if any(flag in line for flag in WRITE_FLAGS)], opens
    assert network_sockets(lines) == []
    assert any(
        SYSCALL.match(line) and "socketpair(AF_UNIX" in line for line in lines
    )  # the control


def test_quantize_reads_the_source_read_only_and_no_socket(tmp_path: Path) -> None:
    (source,) = llama_like(tmp_path / "tiny-F16.gguf")
    out = tmp_path / "tiny-Q8_0.gguf"
    result, lines = traced(["quantize", str(source), "--to", "Q8_0", "-o", str(out)], tmp_path)
    assert result.returncode == 0, result.stderr
    opens = opens_of(lines, {str(source)})
    assert len({line.split()[0] for line in opens}) >= 2, opens  # llmtune and llama.cpp
    assert not [line for line in opens if any(flag in line for flag in WRITE_FLAGS)], opens
    # The control: strace does see a file opened for writing, the partial output.
    partial = re.compile(re.escape(f'"{out}.') + r'\d+\.partial".*O_WRONLY')
    assert any(partial.search(line) for line in lines)
    assert network_sockets(lines) == []


# Each would write MARKER through os or subprocess if any Jinja environment but a
# sandbox rendered it (tests/unit/test_chat.py shows they do, outside one).
HOSTILE_TEMPLATE = (
    "{{ cycler.__init__.__globals__.os.popen('touch MARKER').read() }}"
    "{% for c in ''.__class__.__mro__[1].__subclasses__() %}"
    "{% if c.__name__ == 'Popen' %}{{ c(['touch', 'MARKER']).wait() }}{% endif %}"
    "{% endfor %}"
    "{% for message in messages %}{{ message['content'] }}{% endfor %}"
)


def test_the_worker_loads_and_generates_without_running_the_chat_template(
    tmp_path: Path,
) -> None:
    marker = tmp_path / "template-ran"
    template = HOSTILE_TEMPLATE.replace("MARKER", str(marker))
    n_vocab = 512
    token_types = [2, 3, 3] + [1] * (n_vocab - 3)  # <unk>; <s> and </s> are control tokens
    (model,) = llama_like(
        tmp_path / "hostile.gguf",
        n_layer=2,
        n_vocab=n_vocab,
        extra_kv=[
            ("tokenizer.chat_template", template),
            ("tokenizer.ggml.token_type", (token_types, V.ARRAY, V.INT32)),
        ],
    )
    sup = Supervisor()
    try:
        sup.start()
        sup.load(RunConfig.of(str(model), n_ctx=256, threads=2))
        loaded = _until(sup, Loaded, Failed)
        assert isinstance(loaded, Loaded), loaded
        # The vocabulary has no byte tokens: "<s>" is parsed as a special token.
        sup.send(Generate("<s>", max_tokens=4, ignore_eos=True))
        stats = _until(sup, Stats, Failed)
        assert isinstance(stats, Stats), stats
    finally:
        sup.shutdown()
    assert not marker.exists()


def _until(sup: Supervisor, *kinds: type) -> object:
    while True:
        event = sup.next_event(60.0)
        assert event is not None, f"no {kinds} within 60 s"
        if isinstance(event, kinds) or isinstance(event, Exited):
            return event
