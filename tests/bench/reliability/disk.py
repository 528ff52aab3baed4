"""Files on disk: llmtune's own files damaged, unreadable or unwritable, and a
disk that fills while quantizing.

- Saved settings (``settings.json``), this machine's calibration
  (``calibration.json``) and the bandwidth cache (``host_bandwidth.json``), each
  corrupt in seven ways (bad syntax, cut short, not UTF-8, nested 100,000 deep,
  the wrong JSON type, over the size limit, a folder in its place): the app
  (a pilot with this machine's hardware and saved settings) starts, plans and
  says so; ``llmtune fit`` on this machine plans, with one warning line for the
  calibration; the bandwidth cache is measured again and replaced.
- The config folder read-only (a read-only bind mount: root ignores
  permissions), under a regular file, and on a full tmpfs: the app keeps
  working and says the settings were not saved; ``llmtune bench`` still
  measures; the files that were there are unchanged and nothing is left beside
  them.
- Quantizing a synthetic F16 model (49 MiB; its Q8_0 file is 26 MiB) onto an
  8 MiB tmpfs: ``llmtune quantize`` refuses before writing; with that check
  bypassed (as if another program filled the disk after it), llama.cpp's writes
  fail mid-file. Measured: the message, what is left on the tmpfs, the source's
  SHA-256 before and after, leftover worker processes, and a quantization to a
  disk with room afterwards.

Where mounting is not allowed, the full disk is the worker's file-size limit
(RLIMIT_FSIZE, the stand-in tests/engine/test_quantize.py uses) and the
read-only rows say they were not measured.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
TESTS = HERE.parents[1]
for _path in (TESTS / "bench", TESTS, TESTS / "ui"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from mounts import MountUnavailable, fill, is_read_only, read_only, small_tmpfs  # noqa: E402
from reliability import Section  # noqa: E402

QUANT_DISK_BYTES = 8 << 20
CORRUPT: dict[str, bytes | None] = {
    "bad syntax": b"{ not json",
    "cut short": b'{"version": 1, "models": {"/m/a.gguf": {"n_ctx": 20',
    "not UTF-8": b"\xff\xfe{}",
    "nested 100,000 deep": b"[" * 100_000 + b"]" * 100_000,
    "wrong JSON type": b'["a list"]',
    "over the size limit": b'{"version": 1}' + b" " * (5 << 20),
    "a folder in its place": None,
}


@contextmanager
def env(**values: str) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _write_corrupt(path: Path, content: bytes | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _snapshot(folder: Path) -> dict[str, str]:
    return {
        p.name: (_sha256(p) if p.is_file() else "dir")
        for p in sorted(folder.iterdir())
        if p.name != "filler"
    }


def _cli(args: list[str], **extra_env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llmtune.cli", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **extra_env},
    )


# ---- the app --------------------------------------------------------------------


def app_session(model: str, change: bool = True) -> dict[str, Any]:
    """Run the app (pilot) on ``model`` with this machine's hardware and saved
    settings; change a setting (a save follows). What it showed and planned."""
    from ui_support import wait_for

    from llmtune.hardware.machine import machine
    from llmtune.model import read_spec
    from llmtune.ui.app import AppOptions, make_app

    async def session() -> dict[str, Any]:
        app = make_app(
            read_spec(model),
            hardware=machine(for_worker=True),
            options=AppOptions(persist=True),
        )
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.pause()
            planned = app.plan is not None
            defaults = app.settings
            if change:
                app.change_settings(n_ctx=2048)
                await pilot.pause(1.0)  # past the save's debounce
                try:
                    await wait_for(
                        pilot, lambda: app.plan is not None and app.plan.n_ctx == 2048, 10
                    )
                except AssertionError:
                    planned = False
        return {
            "planned": planned,
            "defaults": defaults,
            # What the app said: its notifications and its status line (machine notices).
            "notices": [n.message for n in app._notifications] + [str(app.status.render())],
        }

    try:
        return asyncio.run(session())
    except Exception as exc:  # the app itself failed: that is the finding
        return {"planned": False, "defaults": None, "notices": [], "error": repr(exc)}


# ---- corrupt files ------------------------------------------------------------------


def corrupt_settings(section: Section, model: str, work: Path) -> None:
    from llmtune import config_store
    from llmtune.fit.settings import Settings

    good = 0
    problems: list[str] = []
    for what, content in CORRUPT.items():
        config = work / f"settings-{len(problems)}-{good}"
        _write_corrupt(config / config_store.FILE_NAME, content)
        with env(LLMTUNE_CONFIG_DIR=str(config)):
            seen = app_session(model)
        noticed = any("settings" in n.lower() and "defaults" in n.lower() for n in seen["notices"])
        if seen["planned"] and seen["defaults"] == Settings() and noticed:
            good += 1
        else:
            problems.append(f"settings {what}: {seen}")
    section.add(
        f"saved settings corrupt ({len(CORRUPT)} ways): the app starts on defaults, says so",
        f"{good} of {len(CORRUPT)}",
        "all",
        good == len(CORRUPT),
    )
    section.notes.extend(problems[:4])


def corrupt_calibration(section: Section, model: str, work: Path, bandwidth_cache: Path) -> None:
    from llmtune.engine import calibration

    cli_good = app_good = app_noticed = 0
    problems: list[str] = []
    for i, (what, content) in enumerate(CORRUPT.items()):
        config = work / f"calibration-{i}"
        _write_corrupt(config / calibration.FILE_NAME, content)
        done = _cli(
            ["fit", model, "--json"],
            LLMTUNE_CONFIG_DIR=str(config),
            LLMTUNE_CACHE_DIR=str(bandwidth_cache),
        )
        warnings = [line for line in done.stderr.splitlines() if "calibration" in line]
        try:
            planned = json.loads(done.stdout)["predicted"]["tg_tokens_per_s"] > 0
        except (ValueError, KeyError):
            planned = False
        if done.returncode == 0 and planned and len(warnings) == 1:
            cli_good += 1
        else:
            problems.append(
                f"fit, calibration {what}: exit {done.returncode} {done.stderr[:200]!r}"
            )
        with env(LLMTUNE_CONFIG_DIR=str(config), LLMTUNE_CACHE_DIR=str(bandwidth_cache)):
            seen = app_session(model, change=False)
        app_good += bool(seen["planned"])
        app_noticed += any("calibration" in n.lower() for n in seen["notices"])
        if not seen["planned"]:
            problems.append(f"app, calibration {what}: {seen}")
    n = len(CORRUPT)
    section.add(
        f"calibration corrupt ({n} ways): fit on this machine plans, one warning line",
        f"{cli_good} of {n}",
        "all",
        cli_good == n,
    )
    section.add(
        f"calibration corrupt ({n} ways): the app starts on default speeds, says so",
        f"starts {app_good} of {n}, says so {app_noticed} of {n}",
        "all, all",
        app_good == n and app_noticed == n,
    )
    if app_noticed < n:
        section.notes.append("the app did not say that the calibration file was unusable")
    section.notes.extend(problems[:4])


def corrupt_bandwidth_cache(section: Section, model: str, work: Path) -> None:
    from llmtune.hardware import bandwidth

    good = 0
    problems: list[str] = []
    for i, (what, content) in enumerate(CORRUPT.items()):
        cache = work / f"bandwidth-{i}"
        _write_corrupt(cache / bandwidth.CACHE_FILE, content)
        config = str(work / f"bandwidth-config-{i}")
        first = _cli(
            ["fit", model, "--json"], LLMTUNE_CACHE_DIR=str(cache), LLMTUNE_CONFIG_DIR=config
        )
        replaced = (cache / bandwidth.CACHE_FILE).is_file()
        with env(LLMTUNE_CACHE_DIR=str(cache)):
            cached = bandwidth.cached_host_bandwidth_gbps() if replaced else None
        # A folder in its place cannot be replaced (llmtune deletes no folder): it measures
        # again each time, and says nothing (a cache, not a setting).
        if first.returncode == 0 and first.stderr == "" and (cached or content is None):
            good += 1
        else:
            problems.append(f"bandwidth cache {what}: exit {first.returncode}, cached {cached}")
    section.add(
        f"bandwidth cache corrupt ({len(CORRUPT)} ways): fit plans, measures again, replaces it",
        f"{good} of {len(CORRUPT)}",
        "all",
        good == len(CORRUPT),
    )
    section.notes.extend(problems[:4])


# ---- unwritable config --------------------------------------------------------------


def unwritable_config(section: Section, model: str, work: Path, bandwidth_cache: Path) -> None:
    from llmtune import config_store

    results: list[str] = []
    met = True

    def check(what: str, config: Path, keep: Path | None) -> None:
        nonlocal met
        before = _snapshot(keep) if keep is not None else None
        with env(LLMTUNE_CONFIG_DIR=str(config), LLMTUNE_CACHE_DIR=str(bandwidth_cache)):
            seen = app_session(model)
        said = any("not saved" in n for n in seen["notices"])
        bench = _cli(
            ["bench", model, "--prompt-tokens", "16", "--gen-tokens", "4", "--repeat", "1"]
            + ["--json"],
            LLMTUNE_CONFIG_DIR=str(config),
            LLMTUNE_CACHE_DIR=str(bandwidth_cache),
        )
        unchanged = before is None or _snapshot(keep) == before  # type: ignore[arg-type]
        ok = seen["planned"] and said and bench.returncode == 0 and unchanged
        met = met and ok
        results.append(
            f"{what}: app {'plans' if seen['planned'] else 'FAILED'}, "
            f"{'says not saved' if said else 'SAYS NOTHING'}; bench exit {bench.returncode}; "
            f"files {'unchanged' if unchanged else 'CHANGED'}"
        )

    blocker = work / "a-file"
    blocker.write_text("")
    check("config folder under a regular file", blocker / "llmtune", None)

    ro = work / "ro-config"
    ro.mkdir()
    (ro / config_store.FILE_NAME).write_text(
        json.dumps({"version": 1, "last_model": model, "models": {}})
    )
    try:
        with read_only(ro):
            if is_read_only(ro):
                check("config folder read-only (bind mount)", ro, ro)
            else:
                results.append("read-only bind mount: not read-only here, not measured")
                met = False
    except MountUnavailable as exc:
        results.append(f"read-only config folder: not measured ({exc})")
        met = False

    try:
        with small_tmpfs(work / "full-config", 256 << 10) as full:
            (full / config_store.FILE_NAME).write_text(
                json.dumps({"version": 1, "last_model": model, "models": {}})
            )
            fill(full)
            check("config folder on a full disk (tmpfs)", full, full)
    except MountUnavailable as exc:
        results.append(f"full config disk: not measured ({exc})")
        met = False
    section.add(
        "config folder unwritable (3 ways): app plans and says not saved; bench runs; "
        "files unchanged",
        "; ".join(results),
        "all",
        met,
    )


# ---- quantizing onto a disk that fills ------------------------------------------------


def full_disk_quantize(section: Section, work: Path) -> None:
    import psutil

    from llmtune.engine import quantize as q
    from llmtune.engine.quantize import QuantizeStep, prepare_quantize, run_quantize
    from llmtune.errors import LlmtuneError
    from llmtune.model import read_spec
    from synth import llama_like

    source_dir = work / "source"
    source_dir.mkdir()
    (source,) = llama_like(
        source_dir / "big-F16.gguf", n_layer=8, n_embd=512, n_head=8, n_head_kv=4, n_ff=1536,
        n_vocab=512, fill=b"\x3c\x01",
    )  # fmt: skip
    before = _sha256(source)
    mounted = True
    disk = work / "disk"
    try:
        ctx = small_tmpfs(disk, QUANT_DISK_BYTES)
        disk = ctx.__enter__()
    except MountUnavailable as exc:
        mounted = False
        disk.mkdir()
        section.notes.append(
            f"no tmpfs here ({exc}): the full disk is the worker's RLIMIT_FSIZE of "
            f"{QUANT_DISK_BYTES >> 20} MiB"
        )
    try:
        if mounted:
            refused = _cli(["quantize", str(source), "--to", "Q8_0", "-o", str(disk)])
            one_line = refused.stderr.count("\n") == 1 and "llmtune: error: " in refused.stderr
            section.add(
                f"quantize a {source.stat().st_size >> 20} MiB F16 model onto an "
                f"{QUANT_DISK_BYTES >> 20} MiB tmpfs: refused before writing",
                f"exit {refused.returncode}, {refused.stderr.strip()[16:170]!r}; "
                f"files left {len(os.listdir(disk))}",
                "exit 2, one line, nothing written",
                refused.returncode == 2 and one_line and not os.listdir(disk),
            )
        # The check bypassed, as if the disk had filled after it.
        real_check = q.check_disk
        q.check_disk = lambda job, file_bytes, free: file_bytes  # type: ignore[assignment]
        steps = 0
        message = ""
        t0 = time.monotonic()
        try:
            job = prepare_quantize(source, "Q8_0", disk)
            limit = None if mounted else QUANT_DISK_BYTES
            for update in run_quantize(job, file_size_limit_bytes=limit):
                steps += isinstance(update, QuantizeStep)
        except LlmtuneError as exc:
            message = exc.one_line()
        finally:
            q.check_disk = real_check
        seconds = time.monotonic() - t0
        left = [p for p in os.listdir(disk)]
        workers = [
            c
            for c in psutil.Process().children(recursive=True)
            if c.is_running() and c.status() != psutil.STATUS_ZOMBIE
        ]
        said_full = "disk is full" in message or "could not write" in message
        section.add(
            "the disk fills mid-write (up-front check bypassed)",
            f"failed after {steps} tensors in {seconds:.1f} s: {message[:120]!r}; files left "
            f"{len(left)}; workers left {len(workers)}",
            "one line saying the disk is full, nothing left",
            steps > 1 and said_full and "\n" not in message and not left and not workers,
        )
        roomy = work / "roomy"
        roomy.mkdir()
        result = list(run_quantize(prepare_quantize(source, "Q8_0", roomy)))[-1]
        written = read_spec(result.output)  # type: ignore[union-attr]
        after = _sha256(source)
        section.add(
            "afterwards: quantize to a disk with room; the source model",
            f"wrote {written.file_type_name} ({written.file_bytes >> 20} MiB); source SHA-256 "
            f"{'unchanged' if after == before else 'CHANGED'} ({before[:12]}…)",
            "works; unchanged",
            written.file_type_name == "Q8_0" and after == before,
        )
    finally:
        if mounted:
            ctx.__exit__(None, None, None)


def run() -> Section:
    from llmtune.hardware import bandwidth
    from llmtune.model.demo import fetch_demo_model

    section = Section("Files on disk")
    model = str(fetch_demo_model())
    with tempfile.TemporaryDirectory(prefix="llmtune-disk-") as folder:
        work = Path(folder)
        # This machine's bandwidth, measured once: the app and fit then plan without probing.
        cache = work / "bandwidth-cache"
        with env(LLMTUNE_CACHE_DIR=str(cache)):
            bandwidth.host_bandwidth_gbps(probe=True)
        with env(LLMTUNE_CACHE_DIR=str(cache)):
            corrupt_settings(section, model, work)
        corrupt_calibration(section, model, work, cache)
        corrupt_bandwidth_cache(section, model, work)
        unwritable_config(section, model, work, cache)
        full_disk_quantize(section, work)
    return section
