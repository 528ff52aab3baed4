"""Copy text to the user's clipboard through the terminal: OSC 52.

``ESC ] 52 ; c ; <base64 of the UTF-8 text> ESC \\`` asks the terminal itself
to set the clipboard, so it works over SSH, where llmtune cannot reach the
local clipboard (xterm's "Operating System Commands", ``Ps = 5 2``). Most
terminals accept it (some only after a setting allows it).

Inside tmux the sequence is wrapped in tmux's passthrough, ``ESC P tmux ;``
... ``ESC \\`` with every ESC inside doubled, which tmux hands to the outer
terminal when ``allow-passthrough`` is on. (With ``set-clipboard on`` tmux
would take the plain sequence too, but not with its default, ``external``.)

Pure functions returning strings: the app writes the result to its terminal.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Mapping

ESC = "\x1b"
ST = ESC + "\\"  # String Terminator


def osc52(text: str, *, tmux: bool | None = None, env: Mapping[str, str] | None = None) -> str:
    """The escape sequence that puts ``text`` on the clipboard.

    ``tmux``: wrap for tmux passthrough; None decides from ``$TMUX`` in ``env``
    (default: this process's environment).
    """
    payload = base64.b64encode(text.encode("utf-8")).decode("ascii")
    sequence = f"{ESC}]52;c;{payload}{ST}"
    if tmux is None:
        tmux = bool((os.environ if env is None else env).get("TMUX"))
    if tmux:
        return tmux_passthrough(sequence)
    return sequence


def tmux_passthrough(sequence: str) -> str:
    """``sequence`` wrapped so tmux passes it to the outer terminal unchanged."""
    return f"{ESC}Ptmux;{sequence.replace(ESC, ESC + ESC)}{ST}"
