"""Events a llama.cpp worker sends, for tests that script a worker instead of running one."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from llmtune.engine.logparse import Buffer
from llmtune.engine.protocol import Loaded

# The demo model (135M parameters, 30 layers) loaded on the CPU at a 2048 context.
LOADED = Loaded(
    buffers=(Buffer("model", "CPU", 100 << 20, 5243, "100.00"),),
    load_s=0.25,
    context_s=0.05,
    n_ctx=2048,
    n_ctx_seq=2048,
    n_batch=2048,
    n_ubatch=512,
    n_seq_max=1,
    n_threads=4,
    model_bytes=100 << 20,
    n_params=135_000_000,
    n_layer=30,
)


def loaded(**changes: Any) -> Loaded:
    """``LOADED`` with some fields changed."""
    return replace(LOADED, **changes)


def until(sup: Any, *kinds: type, timeout_s: float = 30.0) -> list[Any]:
    """A real supervisor's events up to and including the first of ``kinds``
    (fails the test when none comes within ``timeout_s``)."""
    seen: list[Any] = []
    while True:
        event = sup.next_event(timeout_s)
        assert event is not None, f"no {[k.__name__ for k in kinds]} within {timeout_s} s: {seen}"
        seen.append(event)
        if isinstance(event, kinds):
            return seen
