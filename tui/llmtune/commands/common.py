"""What every command shares: JSON on stdout, warnings and progress on stderr."""

from __future__ import annotations

import json
import os
import shutil
import sys
from typing import TYPE_CHECKING, Any

from llmtune.errors import ConfigError
from llmtune.textsafe import inert
from llmtune.units import format_bytes

if TYPE_CHECKING:
    # Types only: inspect reads a file and needs none of the hardware code.
    from llmtune.hardware.machine import Machine, MachineOptions
    from llmtune.model.source import Opened


def print_json(obj: dict[str, Any]) -> None:
    """The one JSON object a ``--json`` command prints."""
    sys.stdout.write(json.dumps(obj, indent=2, allow_nan=False) + "\n")


def text_width() -> int:
    """Columns for text output: the terminal's, at most 100."""
    return min(shutil.get_terminal_size((80, 24)).columns, 100)


def warn(text: str) -> None:
    print(f"llmtune: warning: {inert(text, max_chars=500)}", file=sys.stderr)


def warn_calibration(m: Machine) -> None:
    """An unusable calibration file is said on stderr whatever the output format."""
    for notice in m.notices:
        if notice.kind == "calibration":
            warn(notice.text)


def refuse_what_if(
    command: str, options: MachineOptions, quant: str | None, list_gpus: bool
) -> None:
    """bench and tune run the model here: other hardware is fit's business."""
    if options.what_if or quant or list_gpus:
        raise ConfigError(
            f"{command} runs the model on this machine; --gpu, --list-gpus, --ram, --host and "
            "--quant are for fit",
            f"llmtune {command}",
        )


class ProgressLine:
    """Progress on stderr: one rewritten line on a terminal, else a line per tenth."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.interactive = enabled and sys.stderr.isatty()
        self.tenths = -1

    def show(self, line: str, fraction: float) -> None:
        if not self.enabled:
            return
        if self.interactive:
            sys.stderr.write(f"\r\x1b[2K{line}")
            sys.stderr.flush()
        elif int(fraction * 10) > self.tenths:
            self.tenths = int(fraction * 10)
            print(line, file=sys.stderr, flush=True)

    def clear(self) -> None:
        if self.interactive:
            sys.stderr.write("\r\x1b[2K")
            sys.stderr.flush()


def traffic_note(opened: Opened) -> None:
    """What reading a remote header cost, on stderr (``LLMTUNE_QUIET`` hides it)."""
    t = opened.traffic
    if t is None or not t.requests or os.environ.get("LLMTUNE_QUIET"):
        return
    share = t.bytes_read * 100 / opened.spec.file_bytes if opened.spec.file_bytes else 0.0
    print(
        f"llmtune: read {format_bytes(t.bytes_read)} of {format_bytes(opened.spec.file_bytes)} "
        f"({share:.2f}%) in {t.requests} request{'s' if t.requests != 1 else ''}",
        file=sys.stderr,
    )
