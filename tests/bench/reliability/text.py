"""Hostile text: what a model file's strangers can put in front of a user.

Metadata values and keys, the chat template, the file's name and (through
``general.name``, which llama.cpp prints while loading) llama.cpp's own log
lines carry terminal escape sequences (colour, window title, clipboard OSC 52,
8-bit CSI), Rich and Textual markup (styles, links, click actions),
bidirectional controls, NUL and other C0/C1 controls, and a megabyte-long
string. Each model goes through every place text is shown:

- ``llmtune inspect``, ``fit`` and ``bench``, human and ``--json`` output;
- every pane of the app (pilot), with the model loaded in the worker so the
  monitor shows llama.cpp's log, in the tabs and the narrow layout;
- the real app on a pseudo-terminal: the bytes that reach the terminal.

Inert means: no control or bidi character reaches stdout or the screen (the
newline aside), no hostile escape sequence appears in the terminal's byte
stream, and no markup in the text gives the screen a style or link.
Megabyte strings are cut in what people read (``--json`` carries them whole,
escaped: it is data for programs). Target: all inert.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import unicodedata
from pathlib import Path

from reliability import Section
from reliability.terminal import AppInTerminal

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # tests/: synth
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "ui"))  # rendered

PAYLOADS: dict[str, str] = {
    "CSI colour": "\x1b[31mRED\x1b[0m",
    "OSC window title": "\x1b]0;pwned\x07",
    "OSC 52 clipboard": "\x1b]52;c;ZXZpbA==\x07",
    "8-bit CSI": "\x9b31mC1",
    "C0 controls": "bell\x07back\x08cr\rtab\tNUL\x00",
    "Rich markup": "[bold red]LOUD[/] [link=https://evil.example]x[/link]",
    "Textual action": "[@click=app.quit]quit[/]",
    "bidi override": "\u202egnp.exe\u2066x\u2069",
}
# What must never appear in the terminal's byte stream.
RAW_SEQUENCES = (b"\x1b]0;pwned", b"\x1b]52;c;ZXZpbA==", b"\x1b[31mRED", b"\xc2\x9b31m")
MEGABYTE = "M" * 1_000_000
RUN = [sys.executable, "-m", "llmtune.cli"]


def controls(text: str) -> list[str]:
    """Control, format (bidi) and surrogate characters other than the newline."""
    return [
        repr(ch)
        for ch in text
        if ch != "\n" and unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Zl", "Zp")
    ]


def hostile_model(folder: Path, name: str, payload: str) -> Path:
    from synth import llama_like

    template = (
        "{% for m in messages %}" + payload + "{{ m.content }}{% endfor %}"
        "{% if add_generation_prompt %}assistant:{% endif %}"
    )
    (path,) = llama_like(
        folder / f"{name}{payload[:12]}.gguf".replace("/", "_"),
        n_layer=2,
        name=f"{payload} {name}",
        extra_kv=[
            ("general.description", payload * 3),
            (f"general.{payload[:6]}key", payload),
            ("general.long", MEGABYTE),
            ("tokenizer.chat_template", template),
        ],
    )
    return path


def check_cli(section_counts: dict[str, int], failures: list[str], path: Path) -> None:
    env = dict(os.environ, COLUMNS="100")
    runs = [
        ["inspect", str(path)],
        ["inspect", str(path), "--json"],
        ["fit", str(path), "--gpu", "rtx3060-12g"],
        ["fit", str(path), "--json"],
        [
            "bench",
            str(path),
            "--prompt-tokens",
            "8",
            "--gen-tokens",
            "4",
            "--repeat",
            "1",
            "--no-calibrate",
        ],  # fmt: skip
    ]
    for args in runs:
        done = subprocess.run(
            [*RUN, *args], capture_output=True, text=True, env=env, timeout=300,
            errors="surrogateescape",
        )  # fmt: skip
        section_counts["cli outputs"] += 1
        for stream, text in (("stdout", done.stdout), ("stderr", done.stderr)):
            bad = controls(text)
            if bad:
                failures.append(f"{args[0]} {stream}: {bad[:3]}")
            # --json is data for programs: the string in full, escaped by JSON itself.
            if len(text) > 200_000 and "--json" not in args:
                failures.append(f"{args[0]} {stream}: {len(text):,} characters (the megabyte)")
        if "--json" in args and done.returncode == 0:
            json.loads(done.stdout)  # one JSON object, and nothing raw in it


async def check_app(counts: dict[str, int], failures: list[str], path: Path, load: bool) -> None:
    from rendered import screen_strips

    from llmtune.model import read_spec
    from llmtune.ui.app import make_app
    from llmtune.ui.panes.quant import QuantPane

    for size, keys in (((100, 40), "12345"), ((50, 40), "0")):
        app = make_app(read_spec(path))
        async with app.run_test(size=size) as pilot:
            await pilot.pause()
            if load and size == (100, 40):
                await pilot.press("a")
                deadline = time.monotonic() + 60
                while app.worker_state != "loaded" and time.monotonic() < deadline:
                    await pilot.pause(0.1)
            deadline = time.monotonic() + 20
            while not app.query_one(QuantPane).rows and time.monotonic() < deadline:
                await pilot.pause(0.1)
            for key in keys:
                await pilot.press("escape", key)
                await pilot.pause()
                counts["app screens"] += 1
                for strip in screen_strips(app):
                    bad = controls(strip.text)
                    if bad:
                        failures.append(f"app pane {key} at {size}: {bad[:3]}")
                        break
                    for segment in strip:
                        style = segment.style
                        if style is None or not segment.text.strip():
                            continue
                        if style.link or (style.meta and "@click" in style.meta):
                            failures.append(f"app pane {key}: a link or action from markup")
                        if "LOUD" in segment.text and style.color and style.color.name == "red":
                            failures.append(f"app pane {key}: markup coloured the text")
            if not app.is_running:
                failures.append("the app quit: an action in the text ran")


def check_terminal(counts: dict[str, int], failures: list[str], path: Path) -> None:
    with tempfile.TemporaryDirectory() as config:
        env = dict(os.environ, LLMTUNE_CONFIG_DIR=config)
        with AppInTerminal([str(path)], columns=100, rows=40, env=env) as app:
            app.wait_for("Offload", 30)
            for key in "1234530":
                app.send(key)
                time.sleep(0.4)
            raw = app.output_bytes()
    counts["terminal streams"] += 1
    for sequence in RAW_SEQUENCES:
        if sequence in raw:
            failures.append(f"terminal received {sequence!r}")


def run() -> Section:
    section = Section("hostile text: metadata, templates, file names, llama.cpp logs")
    counts = {"cli outputs": 0, "app screens": 0, "terminal streams": 0}
    failures: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for i, (label, payload) in enumerate(PAYLOADS.items()):
            path = hostile_model(folder, f"m{i}", payload)
            before = len(failures)
            check_cli(counts, failures, path)
            asyncio.run(check_app(counts, failures, path, load=i % 2 == 0))
            check_terminal(counts, failures, path)
            if len(failures) > before:
                section.notes.append(f"{label}: {failures[before]}")
    total = sum(counts.values())
    section.add(
        f"{len(PAYLOADS)} payloads in name, keys, values, template, file name, logs",
        f"{total - len(failures)} of {total} outputs inert "
        f"({counts['cli outputs']} CLI, {counts['app screens']} app screens, "
        f"{counts['terminal streams']} terminal byte streams)",
        "all inert",
        not failures,
    )
    section.add(
        "a megabyte-long metadata string",
        "cut in every output" if not any("megabyte" in f for f in failures) else "not cut",
        "cut",
        not any("megabyte" in f for f in failures),
    )
    return section
