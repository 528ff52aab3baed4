"""The status line under the panes: the most urgent first, cut at the terminal's width."""

from __future__ import annotations

from llmtune.engine.session import Session
from llmtune.hardware.machine import Machine


def status_line(session: Session, error: str | None, hardware: Machine) -> tuple[str, bool]:
    """The line, and whether it reports a failure (a dead worker, an error)."""
    parts: list[str] = []
    dead = session.state == "dead"
    if dead:
        parts.append(session.line())
    if error:
        parts.append(error)
    if hardware.rpc:
        # The hosts the plan leans on come before this machine's own notices.
        parts.append(hardware.describe())
    if hardware.notice:
        parts.append(hardware.notice)
    if not hardware.rpc and (hardware.is_what_if or not parts):
        parts.append(hardware.describe())
        if hardware.host_line:  # the bandwidth CPU speeds are planned with, and its date
            parts.append(hardware.host_line)
    return " · ".join(parts), dead or error is not None
