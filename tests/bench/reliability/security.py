"""Security: what llmtune does with a model it did not make, seen from outside.

- Model-supplied code: hostile chat templates (reaching Python internals to run
  a command, reading files through include/import/extends or globals, changing
  the messages, loops and output that would never end, recursion) through the
  app's renderer (``model.chat.render_chat``): each must give no template, run
  nothing (a marker file is never created) and return within its deadline; and
  the worker loads and generates from a model whose template is hostile.
- Files read-only and no network: ``strace -f`` (every process: llmtune, the
  llama.cpp worker, the template renderer) over ``inspect``, ``fit`` on this
  machine, ``bench``, ``quantize`` and a scripted app session (load, generate
  through the chat template, hand-off, picker). Counted: opens of the model
  files and whether any could write; sockets that could reach another machine
  (AF_INET, AF_INET6, AF_PACKET) and connections to any socket at all.
- Split shards: crafted shard names and split keys (the other shards one folder
  up under the names llmtune derives, a symlinked shard, a ``..`` name part, a
  split count of 65,535, a shard claiming another's number): every file opened
  must be in the folder of the path given.
- A model on a read-only mount: inspect, fit and bench work.
"""

from __future__ import annotations

import logging
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TESTS = HERE.parents[1]
for _path in (TESTS / "bench", TESTS, TESTS / "unit", TESTS / "ui"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from mounts import MountUnavailable, is_read_only, read_only  # noqa: E402
from reliability import Section  # noqa: E402
from strace_log import network  # noqa: E402
from strace_log import opens as strace_opens  # noqa: E402
from strace_log import writable as opened_for_writing  # noqa: E402

_TRACED = "socket,socketpair,connect,sendto,sendmsg,bind,openat,open,creat,truncate"

# Code execution, file and environment reads, mutation, and templates that never end.
TEMPLATES: dict[str, str] = {
    "cycler globals, popen": "{{ cycler.__init__.__globals__.os.popen('touch MARKER').read() }}",
    "joiner globals, system": "{{ joiner.__init__.__globals__.os.system('touch MARKER') }}",
    "namespace builtins, import": (
        "{{ namespace.__init__.__globals__.__builtins__.__import__('os').system('touch MARKER') }}"
    ),
    "subclasses, Popen": (
        "{% for c in ''.__class__.__mro__[1].__subclasses__() %}"
        "{% if c.__name__ == 'Popen' %}{{ c(['touch', 'MARKER']).wait() }}{% endif %}"
        "{% endfor %}"
    ),
    "format string": "{{ '{0.__init__.__globals__[os].system}'.format(cycler) }}",
    "self globals": "{{ self.__init__.__globals__.__builtins__ }}",
    "include a file": "{% include '/etc/passwd' %}",
    "import a file": "{% import '/etc/passwd' as p %}{{ p }}",
    "extends a file": "{% extends '/etc/passwd' %}",
    "open through globals": "{{ cycler.__init__.__globals__.open('/etc/passwd').read() }}",
    "environment": "{{ lipsum.__globals__['os'].environ }}",
    "append to messages": "{% set x = messages.append(1) %}{{ messages }}",
    "huge range": "{% for i in range(10 ** 9) %}x{% endfor %}",
    "nested ranges": (
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    ),
    "huge output": "{% for i in range(100000) %}{{ 'x' * 100000 }}{% endfor %}",
    "huge string": "{{ 'x' * 10 ** 11 }}",
    "huge power": "{{ (10 ** 100000) ** 100000 }}",
    "recursion": "{% macro f(n) %}{{ f(n) ~ f(n) }}{% endmacro %}{{ f(0) }}",
}


def _strace(args: list[str], log: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["strace", "-f", "--seccomp-bpf", "-e", f"trace={_TRACED}", "-o", str(log)] + args,
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )


APP_SESSION = textwrap.dedent(
    """
    import asyncio, sys
    sys.path[:0] = [{tests!r}, {ui!r}]
    from ui_support import whole_session
    from llmtune.model import read_spec
    from llmtune.hardware.machine import machine
    from llmtune.ui.app import AppOptions, default_sampler_factory, make_app

    async def main():
        app = make_app(read_spec({model!r}), hardware=machine(for_worker=True),
                       options=AppOptions(persist=True, interval_s=0.2),
                       sampler_factory=default_sampler_factory)
        async with app.run_test(size=(120, 40)) as pilot:
            await whole_session(app, pilot)

    asyncio.run(main())
    """
)


def traced_runs(section: Section, model: str, work: Path) -> None:
    if shutil.which("strace") is None:
        section.add("files read-only, no network (strace)", "strace is not installed", "", False)
        return
    from synth import llama_like

    (f16,) = llama_like(work / "tiny-F16.gguf")
    env = {
        **os.environ,
        "LLMTUNE_CONFIG_DIR": str(work / "config"),
        "LLMTUNE_CACHE_DIR": str(work / "cache"),  # empty: fit on this machine probes
        "HOME": str(work / "home"),
        "COLUMNS": "100",
    }
    cli = [sys.executable, "-m", "llmtune.cli"]
    runs = {
        "inspect": (cli + ["inspect", model], {model}),
        "fit (this machine)": (cli + ["fit", model], {model}),
        "fit --ctx max": (cli + ["fit", model, "--ctx", "max"], {model}),
        "fit --quant all": (
            cli + ["fit", model, "--quant", "all", "--gpu", "rtx3060-12g"],
            {model},
        ),
        "bench": (
            cli + ["bench", model, "--prompt-tokens", "64", "--gen-tokens", "16", "--repeat", "1"],
            {model},
        ),
        "quantize": (cli + ["quantize", str(f16), "--to", "Q8_0"], {str(f16)}),
        "app session": (
            [
                sys.executable,
                "-c",
                APP_SESSION.format(tests=str(TESTS), ui=str(TESTS / "ui"), model=model),
            ],
            {model},
        ),
    }
    opens = processes = writable = 0
    remote: list[str] = []
    connects: list[str] = []
    failed: list[str] = []
    for what, (args, files) in runs.items():
        log = work / f"strace-{len(section.notes)}.log"
        t0 = time.monotonic()
        done = _strace(args, log, env)
        if done.returncode != 0 or not log.exists():
            failed.append(f"{what}: exit {done.returncode} {done.stderr.strip()[-200:]!r}")
            continue
        lines = log.read_text(errors="replace").splitlines()
        found = strace_opens(lines, files)
        opens += len(found)
        processes += len({m["pid"] for m in found})
        writable += len(opened_for_writing(found))
        r, c = network(lines)
        remote += [f"{what}: {line}" for line in r]
        connects += [f"{what}: {line}" for line in c]
        section.notes.append(
            f"strace {what}: {len(found)} opens of the model in {len({m['pid'] for m in found})} "
            f"processes, {len(r)} network sockets, {len(c)} connects ({time.monotonic() - t0:.0f} s)"
        )
    names = ", ".join(runs)
    section.add(
        f"model files opened by every process (strace -f: {names})",
        f"{opens} opens in {processes} processes, {writable} could write",
        "0 could write",
        writable == 0 and opens > 0 and not failed,
    )
    section.add(
        "network: sockets that could reach another machine, connections to any socket",
        f"{len(remote)} and {len(connects)} (the worker talks over a socketpair)",
        "0 and 0",
        not remote and not connects and not failed,
    )
    section.notes.extend(failed)
    section.notes.extend((remote + connects)[:5])


def templates(section: Section, work: Path) -> None:
    from llmtune.model import read_spec
    from llmtune.model.chat import RENDER_TIMEOUT_S, render_chat
    from synth import llama_like

    ran = none = 0
    worst_s = 0.0
    for i, (what, payload) in enumerate(TEMPLATES.items()):
        marker = work / f"template-ran-{i}"
        (path,) = llama_like(
            work / f"template-{i}.gguf",
            n_layer=1,
            extra_kv=[("tokenizer.chat_template", payload.replace("MARKER", str(marker)))],
        )
        t0 = time.monotonic()
        rendered = render_chat(read_spec(path), "Hello")
        worst_s = max(worst_s, time.monotonic() - t0)
        none += rendered is None
        ran += marker.exists()
        if rendered is not None:
            section.notes.append(f"template {what!r} rendered: {rendered[:80]!r}")
    n = len(TEMPLATES)
    section.add(
        f"hostile chat templates through the app's renderer ({n}: code, files, environment, "
        "mutation, endless loops and output)",
        f"{none} of {n} gave no template, {ran} ran anything; slowest {worst_s:.1f} s",
        f"all none, 0 ran, each < {RENDER_TIMEOUT_S + 0.5:.1f} s",
        none == n and ran == 0 and worst_s < RENDER_TIMEOUT_S + 0.5,
    )


def worker_template(section: Section, work: Path) -> None:
    from gguf import GGUFValueType as V

    from llmtune.engine.config import RunConfig
    from llmtune.engine.protocol import Exited, Failed, Generate, Loaded, Stats
    from llmtune.engine.supervisor import Supervisor
    from synth import llama_like

    logging.getLogger("gguf").setLevel(logging.ERROR)  # overriding token_type is meant
    marker = work / "worker-template-ran"
    template = TEMPLATES["cycler globals, popen"] + TEMPLATES["subclasses, Popen"]
    types = [2, 3, 3] + [1] * 509  # <s> and </s> are control tokens
    (path,) = llama_like(
        work / "hostile-template.gguf",
        n_layer=2,
        n_vocab=512,
        extra_kv=[
            ("tokenizer.chat_template", template.replace("MARKER", str(marker))),
            ("tokenizer.ggml.token_type", (types, V.ARRAY, V.INT32)),
        ],
    )
    sup = Supervisor()
    outcome = "no answer"
    try:
        sup.start()
        sup.load(RunConfig.of(str(path), n_ctx=256, threads=2))
        deadline = time.monotonic() + 120
        sent = False
        while time.monotonic() < deadline:
            event = sup.next_event(1.0)
            if isinstance(event, Loaded) and not sent:
                sup.send(Generate("<s>", max_tokens=4, ignore_eos=True))
                sent = True
            elif isinstance(event, Stats):
                outcome = f"generated {event.n_gen} tokens"
                break
            elif isinstance(event, (Failed, Exited)):
                outcome = f"failed: {event}"
                break
    finally:
        sup.shutdown()
    section.add(
        "the worker loads and generates from a model with a hostile chat template",
        f"{outcome}; template ran: {'yes' if marker.exists() else 'no'}",
        "generates; never runs it",
        outcome.startswith("generated") and not marker.exists(),
    )


def shards(section: Section, work: Path) -> None:
    from gguf_edit import value_at

    from audit import FILE_EVENTS, recording
    from llmtune.errors import LlmtuneError
    from llmtune.model import read_spec
    from synth import llama_like

    outside = work / "outside"
    outside.mkdir()
    parts = llama_like(outside / "m.gguf", n_layer=2, split_max_tensors=8)
    folder = outside / "models"
    folder.mkdir()

    def shard(name: str, source: Path, **patches: int) -> Path:
        path = folder / name
        data = bytearray(source.read_bytes())
        for key, value in patches.items():
            struct.pack_into("<H", data, value_at(bytes(data), key.replace("_", ".")), value)
        path.write_bytes(bytes(data))
        return path

    cases = [
        shard("m-00001-of-00003.gguf", parts[0]),
        shard("..-00001-of-00003.gguf", parts[0]),
        shard("m-00001-of-65535.gguf", parts[0], split_count=65535),
        shard("m-00002-of-00003.gguf", parts[1], split_no=0),
        shard("x-00003-of-00003.gguf", parts[2]),
        shard("y-00001-of-00002.gguf", parts[0], split_count=2),
    ]
    link = folder / "link-00001-of-00003.gguf"
    link.symlink_to(parts[0])
    cases.append(link)
    refused = 0
    with recording(FILE_EVENTS) as events:
        for case in cases:
            try:
                read_spec(case)
            except LlmtuneError:
                refused += 1
    opened = {e.path for e in events if e.name == "open" and e.path}
    escaped = sorted(p for p in opened if os.path.dirname(p) != str(folder))
    section.add(
        f"crafted shard names and split keys ({len(cases)}; the real shards one folder up)",
        f"{refused} refused; {len(opened)} files opened, {len(escaped)} outside the folder",
        "0 outside",
        bool(opened) and not escaped,
    )
    section.notes.extend(f"opened outside: {p}" for p in escaped[:3])


def read_only_mount(section: Section, model: str, work: Path) -> None:
    folder = work / "ro-model"
    folder.mkdir()
    copy = folder / Path(model).name
    shutil.copyfile(model, copy)
    env = {**os.environ, "LLMTUNE_CONFIG_DIR": str(work / "ro-config")}
    try:
        with read_only(folder):
            if not is_read_only(folder):
                section.add("a model on a read-only mount", "not read-only here", "", False)
                return
            cli = [sys.executable, "-m", "llmtune.cli"]
            results = []
            for args in (
                ["inspect", str(copy)],
                ["fit", str(copy), "--gpu", "rtx3060-12g"],
                ["bench", str(copy), "--prompt-tokens", "16", "--gen-tokens", "4", "--repeat", "1"],
            ):
                done = subprocess.run(
                    cli + args, capture_output=True, text=True, timeout=600, env=env
                )
                results.append((args[0], done.returncode))
    except MountUnavailable as exc:
        section.add("a model on a read-only mount", f"not measured: {exc}", "", False)
        return
    section.add(
        "a model on a read-only bind mount: inspect, fit, bench",
        ", ".join(f"{what} exit {rc}" for what, rc in results),
        "all exit 0",
        all(rc == 0 for _, rc in results),
    )


def run() -> Section:
    from llmtune.model.demo import fetch_demo_model

    section = Section("Security")
    model = str(fetch_demo_model())
    with tempfile.TemporaryDirectory(prefix="llmtune-security-") as folder:
        work = Path(folder)
        templates(section, work)
        worker_template(section, work)
        shards(section, work)
        read_only_mount(section, model, work)
        traced_runs(section, model, work)
    return section
