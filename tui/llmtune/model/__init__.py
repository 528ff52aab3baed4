"""GGUF model files: header reader, ModelSpec, ggml type table, split files."""

from __future__ import annotations

from llmtune.model.gguf_file import GGUFArray, GGUFFile, GGUFString, TensorInfo, read_gguf
from llmtune.model.spec import LayerGroup, ModelSpec, TypeStats, read_spec

__all__ = [
    "GGUFArray",
    "GGUFFile",
    "GGUFString",
    "LayerGroup",
    "ModelSpec",
    "TensorInfo",
    "TypeStats",
    "read_gguf",
    "read_spec",
]
