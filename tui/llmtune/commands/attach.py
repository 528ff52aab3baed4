"""``llmtune attach [URL]``: watch a llama-server that is already running, beside its plan.

With no URL, the llama-server processes of this machine are listed
(:func:`llmtune.engine.attach_local.find_servers`) and one is chosen. On a
terminal, without ``--json`` or ``--samples``, the app's attach screen opens;
otherwise one line (or one JSON object) per interval, ``--samples N`` of them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

from llmtune.engine.attach import Attacher, AttachError, ServerSample, normalise_url
from llmtune.engine.attach_local import LocalProcess, LocalServer, find_servers, server_for_url
from llmtune.engine.attach_plan import ServerPlan, plan_server
from llmtune.errors import ConfigError
from llmtune.hardware.machine import MachineOptions
from llmtune.telemetry.sampler import MIN_INTERVAL_S, next_deadline
from llmtune.textsafe import inert
from llmtune.units import format_bytes


def choose_server(
    url: str | None, pid: int | None, interactive: bool
) -> tuple[str, LocalServer | None]:
    """The URL to attach to and, when it runs here, its process."""
    if url is not None and pid is None:
        url = normalise_url(url)
        return url, server_for_url(url, _quiet_find())
    servers = find_servers()
    if pid is not None:
        match = [s for s in servers if s.pid == pid]
        if not match:
            raise AttachError(f"no llama-server with pid {pid} runs here", "--pid")
        return (normalise_url(url) if url else match[0].url), match[0]
    if not servers:
        raise AttachError(
            "no llama-server runs on this machine (that this user can see); give its URL, "
            "e.g. llmtune attach http://127.0.0.1:8080",
            "llmtune attach",
        )
    if len(servers) == 1:
        return servers[0].url, servers[0]
    listed = "; ".join(s.label for s in servers)
    if not interactive:
        raise AttachError(f"{len(servers)} llama-servers run here ({inert(listed)}); "
                          "choose one with --pid or its URL", "llmtune attach")  # fmt: skip
    for i, s in enumerate(servers, 1):
        print(f"{i}. {inert(s.label, max_chars=200)}")
    for _ in range(3):
        answer = input(f"Attach to which (1-{len(servers)})? ").strip()
        if answer.isdigit() and 1 <= int(answer) <= len(servers):
            chosen = servers[int(answer) - 1]
            return chosen.url, chosen
    raise AttachError("no server chosen", "llmtune attach")


def _quiet_find() -> list[LocalServer]:
    try:
        return find_servers()
    except Exception:
        return []  # psutil may not list processes here: attach over HTTP alone


def run(args: argparse.Namespace, given: Mapping[str, Any], options: MachineOptions) -> int:
    interval = args.interval
    if not interval or interval != interval or interval < MIN_INTERVAL_S or interval > 3600:
        raise ConfigError(f"the interval must be {MIN_INTERVAL_S} to 3600 seconds", "--interval")
    if args.samples is not None and args.samples < 1:
        raise ConfigError("--samples must be 1 or more", "--samples")
    api_key = args.api_key or os.environ.get("LLAMA_API_KEY") or None
    use_app = sys.stdout.isatty() and not args.json and args.samples is None
    if use_app and args.url is None and args.pid is None:
        return _app(None, None, api_key, interval, given, args.model, options)
    interactive = sys.stdin.isatty() and sys.stdout.isatty() and not args.json
    url, local = choose_server(args.url, args.pid, interactive)
    if use_app:
        return _app(url, local, api_key, interval, given, args.model, options)
    return watch(url, local, api_key, interval, args.samples, args.json, given, args.model, options)


def _app(
    url: str | None,
    local: LocalServer | None,
    api_key: str | None,
    interval: float,
    given: Mapping[str, Any],
    model: str | None,
    options: MachineOptions,
) -> int:
    from llmtune.ui.screens.attach import AttachApp, AttachTarget

    target = AttachTarget(url, local, api_key, interval, dict(given), model, options)
    AttachApp(target).run()
    return 0


def make_attacher(
    url: str, local: LocalServer | None, api_key: str | None, interval: float
) -> Attacher:
    process = LocalProcess(local.pid) if local is not None else None
    return Attacher(url, api_key=api_key, interval_s=interval, process=process)


def watch(
    url: str,
    local: LocalServer | None,
    api_key: str | None,
    interval: float,
    samples: int | None,
    as_json: bool,
    given: Mapping[str, Any],
    model: str | None,
    options: MachineOptions,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Print one sample per interval, ``samples`` of them (None: until Ctrl-C)."""
    attacher = make_attacher(url, local, api_key, interval)
    server_plan: ServerPlan | None = None
    planned_model: str | None = None
    last_message = ""
    deadline = attacher.clock()
    count = 0
    try:
        while samples is None or count < samples:
            sample = attacher.tick()
            count += 1
            if sample.state == "ok" and (server_plan is None or sample.model != planned_model):
                server_plan = plan_server(sample, local, model=model, given=given, options=options)
                planned_model = sample.model
                if not as_json:
                    print(plan_line(server_plan), flush=True)
            if as_json:
                obj = {
                    **sample.to_json(),
                    "predicted": server_plan.to_json() if server_plan else None,
                }
                sys.stdout.write(json.dumps(obj, allow_nan=False) + "\n")
                sys.stdout.flush()
            else:
                if sample.message != last_message and sample.state != "ok":
                    print(
                        f"llmtune: {inert(sample.message, max_chars=300)}",
                        file=sys.stderr,
                        flush=True,
                    )
                last_message = sample.message
                print(sample_line(sample, server_plan), flush=True)
            if samples is not None and count >= samples:
                break
            now = attacher.clock()
            deadline = next_deadline(deadline, now, interval)
            sleep(max(0.0, deadline - now))
    except KeyboardInterrupt:
        pass
    finally:
        attacher.close()
    return 0


def plan_line(p: ServerPlan) -> str:
    """The plan in one line: where it came from, the verdict, the predicted levels."""
    head = f"plan from {p.source}: "
    if p.plan is None:
        return head + f"none ({p.problem})"
    q = p.plan
    vram = ", ".join(format_bytes(b) for b in p.gpu_bytes) or "no GPU"
    notes = "".join(f"\n  note: {n}" for n in p.notes)
    return (
        f"{head}{q.verdict} · -ngl {q.n_gpu_layers} · ctx {q.n_ctx:,} · "
        f"{p.settings.n_parallel} slots · predicted tg {q.predicted.tg_tokens_per_s:,.1f} t/s, "
        f"pp {q.predicted.pp_tokens_per_s:,.0f} t/s, VRAM {vram}, host {format_bytes(p.host_bytes or 0)}"
        f"{notes}"
    )


def _tps(value: float | None) -> str:
    return "–" if value is None else f"{value:,.1f}"


def sample_line(s: ServerSample, p: ServerPlan | None) -> str:
    """One sample on one line."""
    clock = time.strftime("%H:%M:%S")
    if s.state != "ok":
        return f"{clock} {s.state:<9} {inert(s.message, max_chars=200)}"
    parts = [
        f"{clock} ok",
        f"tg {_tps(s.tg_tokens_per_s)} t/s",
        f"pp {_tps(s.pp_tokens_per_s)} t/s",
    ]
    if p is not None and p.tg_tokens_per_s is not None:
        parts[1] += f" (plan {p.tg_tokens_per_s:,.1f})"
    proc = s.process
    if proc.rss_bytes is not None:
        rss = f"RSS {format_bytes(proc.rss_bytes)}"
        if p is not None and p.host_bytes is not None:
            rss += f" (plan {format_bytes(p.host_bytes)})"
        parts.append(rss)
    held = [b for b in proc.vram_bytes if b is not None]
    if held:
        parts.append("VRAM " + "+".join(format_bytes(b) for b in held))
    parts.append(f"slots {s.busy_slots}/{len(s.slots)} busy")
    fills = [f"{s_.kv_fill:.0%}" for s_ in s.slots if s_.kv_fill is not None]
    if fills:
        parts.append("KV " + " ".join(fills))
    if s.requests_processing is not None:
        parts.append(f"requests {s.requests_processing}+{s.requests_deferred or 0} deferred")
    return " · ".join(parts)
