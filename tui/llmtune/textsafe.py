"""Make untrusted text (model metadata, file names, llama.cpp logs) inert.

Model files are written by strangers. A metadata string can hold terminal
escape sequences (which would move the cursor, retitle the window or worse),
bidirectional overrides that reorder what a user reads, NUL bytes and
megabytes of text. Everything llmtune shows from a model goes through
:func:`inert` first, so nothing in it is ever interpreted by the terminal.
Rich/Textual markup is a separate concern: the UI renders these strings as
plain ``Text`` objects, never as markup.
"""

from __future__ import annotations

import unicodedata

# Bidirectional controls and other invisible format characters that can make
# a string display differently from what it is (CVE-2021-42574 "Trojan Source").
_FORMAT_CONTROLS = frozenset(
    "\u061c\u200b\u200c\u200d\u200e\u200f\u202a\u202b\u202c\u202d\u202e"
    "\u2060\u2061\u2062\u2063\u2064\u2066\u2067\u2068\u2069\ufeff\ufff9\ufffa\ufffb"
)


def _escape_char(ch: str) -> str:
    code = ord(ch)
    if ch == "\n":
        return "\\n"
    if ch == "\t":
        return "\\t"
    if ch == "\r":
        return "\\r"
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def _needs_escape(ch: str) -> bool:
    if ch in _FORMAT_CONTROLS:
        return True
    category = unicodedata.category(ch)
    # Cc: C0/C1 controls and DEL; Cf: every invisible format character, not only
    # the bidirectional ones above (U+070F, U+00AD, tag characters...); Cs: lone
    # surrogates; Co: private use is shown.
    return category in ("Cc", "Cf", "Cs", "Zl", "Zp")


def inert(text: str, max_chars: int | None = 400, keep_newlines: bool = False) -> str:
    """Return *text* with every control character shown as a visible escape.

    ``max_chars`` cuts long text (with a note of how much was cut) so that a
    megabyte-long string cannot flood a terminal or a widget.
    """
    cut = 0
    if max_chars is not None and len(text) > max_chars:
        cut = len(text) - max_chars
        text = text[:max_chars]
    if text.isprintable() and not any(ch in _FORMAT_CONTROLS for ch in text):
        out = text
    else:
        parts: list[str] = []
        for ch in text:
            if keep_newlines and ch == "\n":
                parts.append(ch)
            elif _needs_escape(ch):
                parts.append(_escape_char(ch))
            else:
                parts.append(ch)
        out = "".join(parts)
    if cut:
        out += f"… (+{cut:,} chars)"
    return out
