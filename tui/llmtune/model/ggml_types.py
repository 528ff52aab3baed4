"""ggml tensor types and llama.cpp file types, taken from the ``gguf`` package.

The table of block sizes is not retyped here: it is read from
``gguf.constants`` (``GGML_QUANT_SIZES``, ``GGMLQuantizationType``,
``LlamaFileType``). That module is loaded on its own, without running
``gguf/__init__``, because the package's init imports numpy and its reader and
writer, which costs ~200 ms on every ``llmtune inspect``.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from types import ModuleType


def _load_gguf_constants() -> ModuleType:
    spec = importlib.util.find_spec("gguf")
    if spec is not None and spec.origin:
        path = os.path.join(os.path.dirname(spec.origin), "constants.py")
        file_spec = importlib.util.spec_from_file_location("llmtune._gguf_constants", path)
        if file_spec is not None and file_spec.loader is not None:
            module = importlib.util.module_from_spec(file_spec)
            try:
                file_spec.loader.exec_module(module)
                return module
            except Exception:  # pragma: no cover - fall back to the normal import
                pass
    import gguf.constants  # pragma: no cover

    return gguf.constants  # pragma: no cover


_C = _load_gguf_constants()


@dataclass(frozen=True)
class GGMLType:
    """One ggml tensor type: how many weights share a block and its size."""

    id: int
    name: str
    block_size: int
    type_size: int

    @property
    def bits_per_weight(self) -> float:
        return self.type_size * 8 / self.block_size

    def row_bytes(self, n_elements: int) -> int:
        """Bytes of ``n_elements`` weights (ggml_row_size); must be whole blocks."""
        return n_elements // self.block_size * self.type_size


GGML_TYPES: dict[int, GGMLType] = {
    int(t): GGMLType(int(t), t.name, block, size)
    for t, (block, size) in _C.GGML_QUANT_SIZES.items()
}
GGML_TYPE_BY_NAME: dict[str, GGMLType] = {t.name: t for t in GGML_TYPES.values()}

# llama.cpp's names for file types (llama_model_ftype_name): "Q4_K_M", not 15.
FILE_TYPE_NAMES: dict[int, str] = {}
for _ft in _C.LlamaFileType:
    if _ft.name == "GUESSED":
        continue
    FILE_TYPE_NAMES[int(_ft)] = _ft.name.removeprefix("MOSTLY_").removeprefix("ALL_")
FILE_TYPE_BY_NAME: dict[str, int] = {name: num for num, name in FILE_TYPE_NAMES.items()}
FILE_TYPE_GUESSED = int(_C.LlamaFileType.GUESSED)

# GGUF metadata value types.
VALUE_TYPE_NAMES: dict[int, str] = {int(t): t.name for t in _C.GGUFValueType}


def file_type_name(file_type: int) -> str:
    """llama.cpp's name for a ``general.file_type`` value."""
    guessed = bool(file_type & FILE_TYPE_GUESSED)
    base = FILE_TYPE_NAMES.get(file_type & ~FILE_TYPE_GUESSED, f"unknown ({file_type})")
    return f"{base} (guessed)" if guessed else base


def ggml_type_name(type_id: int) -> str:
    t = GGML_TYPES.get(type_id)
    return t.name if t is not None else f"type {type_id}"
