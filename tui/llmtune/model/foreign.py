"""Naming what a file that is not GGUF looks like, to say more than "wrong magic"."""

from __future__ import annotations


def describe_foreign(head: bytes) -> str:
    """Name what a non-GGUF file looks like, to say more than 'wrong magic'."""
    if head[:4] == b"PK\x03\x04":
        return "a zip archive (PyTorch .bin/.pt checkpoints are zip files), not GGUF"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "a Python pickle (an old PyTorch checkpoint), not GGUF"
    if len(head) >= 10 and head[8:10] == b'{"':
        return "a safetensors file, not GGUF: convert it with llama.cpp's convert_hf_to_gguf.py"
    if head[:4] == b"FUGG":
        return "a big-endian GGUF file, which llama.cpp cannot load on this machine"
    if head[:4] in (b"ggjt", b"ggml", b"ggmf", b"tjgg", b"lmgg", b"fmgg"):
        return "a pre-GGUF GGML file, which current llama.cpp no longer loads"
    if head[:1] in (b"{", b"["):
        return "a JSON file, not GGUF"
    if head[:5] == b"<!DOC" or head[:5].lower() == b"<html":
        return "an HTML page (a failed download?), not GGUF"
    if head.startswith(b"version https://git-lfs"):
        return "a Git LFS pointer, not the model itself: run git lfs pull"
    shown = head[:4].hex(" ")
    return f"not a GGUF file: it starts with bytes {shown}, not 'GGUF'"
