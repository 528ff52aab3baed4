"""Reading `strace -f` logs: which files a process opened and how, and which
sockets it made. Shared by the security tests and the reliability report."""

from __future__ import annotations

import re

SYSCALL = re.compile(r"^(?P<pid>\d+) +(?P<call>\w+)\((?P<args>.*)\) += (?P<result>-?\d+)")
WRITE_FLAGS = ("O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC", "O_APPEND")
_NETWORK_CALLS = ("socket", "connect", "sendto", "sendmsg", "bind")
_NETWORK_FAMILIES = ("AF_INET", "AF_INET6", "AF_PACKET")


def opens(lines: list[str], paths: set[str]) -> list[re.Match[str]]:
    """The open calls of any of ``paths`` (``m.string`` is the whole line)."""
    found = []
    for line in lines:
        m = SYSCALL.match(line)
        if (
            m
            and m["call"] in ("openat", "open", "creat")
            and any(f'"{p}"' in m["args"] for p in paths)
        ):
            found.append(m)
    return found


def writable(found: list[re.Match[str]]) -> list[re.Match[str]]:
    """Those of ``found`` opened for writing."""
    return [m for m in found if any(flag in m["args"] for flag in WRITE_FLAGS)]


def network(lines: list[str]) -> tuple[list[str], list[str]]:
    """(sockets that could reach another machine, connections to any socket)."""
    remote, connects = [], []
    for line in lines:
        m = SYSCALL.match(line)
        if not m:
            continue
        if m["call"] in _NETWORK_CALLS and any(f in m["args"] for f in _NETWORK_FAMILIES):
            remote.append(line)
        if m["call"] == "connect":
            connects.append(line)
    return remote, connects
