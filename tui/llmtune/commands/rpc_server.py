"""``llmtune rpc-server``: lend this machine's devices to a llama.cpp elsewhere, as
llama.cpp's ``ggml-rpc-server`` does (tools/rpc/rpc-server.cpp), supervised.

The server runs in a child process (:class:`llmtune.engine.rpc_host.RpcServerProcess`);
this command prints how to reach it once it answers, then waits until Ctrl-C or
SIGTERM stops it, or it dies.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import signal
import socket
import sys
from types import FrameType
from typing import TYPE_CHECKING

from llmtune.commands.common import warn
from llmtune.textsafe import inert
from llmtune.units import format_bytes

if TYPE_CHECKING:
    from llmtune.engine.rpc_host import RpcServerProcess


class _Terminated(Exception):
    """SIGTERM arrived: stop like Ctrl-C."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise _Terminated


def run(args: argparse.Namespace) -> int:
    from llmtune.engine import require_llama_cpp

    require_llama_cpp("rpc-server")
    from llmtune.engine.ggml_rpc import RPC_REBUILD_HINT, rpc_supported
    from llmtune.engine.rpc_host import (
        RpcServerProcess,
        bind_problem,
        check_bind_address,
        default_cache_dir,
        default_threads,
    )
    from llmtune.hardware.rpc import RpcError

    if not rpc_supported():
        raise RpcError(RPC_REBUILD_HINT, "llmtune rpc-server")
    if not 1 <= args.port <= 65535:
        raise RpcError(f"--port {args.port} is not between 1 and 65535", "llmtune rpc-server")
    if args.threads is not None and args.threads < 1:
        raise RpcError(f"--threads {args.threads} is not a positive number", "llmtune rpc-server")
    check_bind_address(args.host)
    problem = bind_problem(args.host, args.port)
    if problem:
        raise RpcError(f"cannot start an RPC server on {args.host}:{args.port}: {problem}")
    if not ipaddress.IPv4Address(args.host).is_loopback:
        # tools/rpc/rpc-server.cpp main warns the same way for any host but 127.0.0.1.
        warn(
            f"listening on {args.host}: llama.cpp's RPC server has no authentication and no "
            "encryption, and anyone who reaches this port can use this machine's memory and "
            "devices; use it only on a trusted network."
        )
    cache_dir = None
    if args.cache:
        path = default_cache_dir()
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RpcError(
                f"cannot create llama.cpp's RPC cache directory {path} ({exc.strerror or exc})"
            ) from exc
        cache_dir = str(path)

    server = RpcServerProcess(
        host=args.host,
        port=args.port,
        threads=default_threads() if args.threads is None else args.threads,
        cache_dir=cache_dir,
    )
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    stopped_by_user = False
    reason = ""
    try:
        server.start()
        _print_ready(server, args.json, cache_dir)
        while server.wait(0.5) is None:
            pass
        reason = server.exit_reason()
    except (KeyboardInterrupt, _Terminated):
        stopped_by_user = True
    finally:
        # A second Ctrl-C or SIGTERM while stopping must not leave the child behind.
        previous_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            server.stop()
        finally:
            signal.signal(signal.SIGINT, previous_int)
            signal.signal(signal.SIGTERM, previous)
    if stopped_by_user:
        print("stopped", file=sys.stderr if args.json else sys.stdout, flush=True)
        return 0
    print(f"llmtune: error: {inert(reason, max_chars=2000)}", file=sys.stderr, flush=True)
    return 1


def _print_ready(server: RpcServerProcess, as_json: bool, cache_dir: str | None) -> None:
    assert server.host_info is not None
    # start_server prints its devices in the order the protocol numbers them.
    names = server.server_devices
    devices: list[dict[str, str | int]] = []
    for device in server.host_info.devices:
        known = names[device.index] if device.index < len(names) else None
        devices.append(
            {
                "name": known.name if known else f"device {device.index}",
                "description": known.description if known else "",
                "free_bytes": device.free_bytes,
                "total_bytes": device.total_bytes,
            }
        )
    if as_json:
        line = {"endpoint": server.endpoint, "devices": devices, "pid": server.pid}
        sys.stdout.write(json.dumps(line, allow_nan=False) + "\n")
        sys.stdout.flush()
        return
    reach = server.endpoint
    if server.host == "0.0.0.0":
        reach = f"{socket.gethostname()}:{server.port}"
    lines = [
        f"llama.cpp RPC server listening on {server.endpoint} "
        f"(protocol {server.host_info.protocol_version}, pid {server.pid})",
    ]
    for d, device in zip(devices, server.host_info.devices, strict=True):
        free, total = format_bytes(device.free_bytes), format_bytes(device.total_bytes)
        lines.append(f"  {d['name']}: {d['description']} ({free} free of {total})")
    if cache_dir:
        lines.append(f"  tensor cache: {cache_dir}")
    lines += [
        "Use it from a llama.cpp client that can reach this address:",
        f"  llmtune fit MODEL --rpc {reach}",
        f"  llama-server -m MODEL --rpc {reach}",
        "Ctrl-C stops it.",
    ]
    print("\n".join(lines), flush=True)
