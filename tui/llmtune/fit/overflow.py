"""Layer overflow: which of a layer's FFN tensors leave the layer's device, and for where.

llama.cpp's fit (common/fit.cpp ``set_ngl_tensor_split_tbo``) keeps a MoE
layer's attention on its device and sends part of its FFN elsewhere with tensor
buffer overrides (``-ot PATTERN=BUFT``): the experts of a "dense-only" layer go
to the CPU, and of the first dense-only layer of a device either the experts
or more of the FFN go to the CPU or to the next device. A
:data:`LayerOverflow` says that of one layer: its index, what stays on its
device (fit.cpp ``common_layer_fraction_t``) and the buffer type the rest goes
to, named as llama.cpp names it (``CPU``, ``CUDA1``, ``RPC0[host:port]``:
``ggml_backend_buft_name``, what ``-ot`` takes and llama-fit-params prints).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

# fit.cpp ``get_overflow_pattern``: per fraction (what of the layer stays), the
# tensors of the layer that go, after ``blk\.N\.``.
FRACTIONS: dict[str, str] = {
    "ATTN": "ffn_(gate|up|gate_up|down).*",  # only attention stays
    "UP": "ffn_(gate|gate_up|down).*",  # attention and the up projection stay
    "GATE": "ffn_down.*",  # everything but the down projection stays
    "MOE": "ffn_(up|down|gate_up|gate)_(ch|)exps",  # everything but the experts stays
}
FRACTION_NAMES = tuple(FRACTIONS)
CPU_BUFT = "CPU"  # ggml-backend.cpp: the CPU buffer type's name

LayerOverflow = tuple[int, str, str]  # (layer, fraction that stays, buffer type of the rest)


def overflow_pattern(il: int, fraction: str) -> str:
    """fit.cpp ``get_overflow_pattern``: the tensors of layer ``il`` that go."""
    return f"blk\\.{il}\\." + FRACTIONS[fraction]


def override_list(overflow: Sequence[LayerOverflow]) -> tuple[tuple[str, str], ...]:
    """(pattern, buffer type) per entry, in order: llama.cpp's tensor buffer overrides."""
    return tuple((overflow_pattern(il, fraction), buft) for il, fraction, buft in overflow)


def override_arg(overflow: Sequence[LayerOverflow]) -> str:
    """``-ot``'s value (common/arg.cpp ``parse_tensor_buffer_overrides``)."""
    return ",".join(f"{pattern}={buft}" for pattern, buft in override_list(overflow))


def moved_bytes(il: int, tensors: Sequence[tuple[str, int]]) -> tuple[int, ...]:
    """Per fraction (:data:`FRACTION_NAMES`' order), the bytes of layer ``il``'s
    ``(name, bytes)`` tensors that go (regex_search, as llama-model.cpp
    ``load_tensors`` matches an override's pattern against a tensor's name)."""
    out = []
    for fraction in FRACTION_NAMES:
        pattern = re.compile(overflow_pattern(il, fraction))
        out.append(sum(size for name, size in tensors if pattern.search(name)))
    return tuple(out)
