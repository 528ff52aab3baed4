"""The llama-cpp-python hand-off, run for real: the snippet llmtune prints loads
the demo model with the same context the worker creates for the same plan."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmtune.engine.config import RunConfig
from llmtune.engine.protocol import Failed, Loaded
from llmtune.engine.supervisor import Supervisor
from llmtune.fit.handoff import plan_handoff
from llmtune.fit.plan import plan
from llmtune.fit.settings import Settings
from llmtune.hardware.host import host_device
from llmtune.model import read_spec


def test_llama_snippet_builds_the_planned_context(demo_model: Path) -> None:
    import llama_cpp

    spec = read_spec(demo_model)
    settings = Settings(
        n_ctx=1024, n_batch=256, n_ubatch=128, cache_type_k="q8_0", cache_type_v="q8_0", threads=2
    )
    fit_plan = plan(spec, [host_device()], settings)
    h = plan_handoff(str(demo_model), fit_plan)

    namespace: dict[str, Any] = {}
    exec(h.llama_snippet.replace("llm = Llama(", "llm = Llama(verbose=False,"), namespace)
    llm = namespace["llm"]
    try:
        ctx = llm._ctx.ctx
        from_snippet = (
            llama_cpp.llama_n_ctx(ctx),
            llama_cpp.llama_n_batch(ctx),
            llama_cpp.llama_n_ubatch(ctx),
            llm.context_params.type_k,
            llm.context_params.type_v,
            llm.context_params.flash_attn_type,
            llm.context_params.swa_full,
            llm.n_threads,
        )
    finally:
        llm.close()

    sup = Supervisor()
    try:
        sup.start()
        sup.load(RunConfig.from_settings(demo_model, fit_plan.settings))
        while True:
            event = sup.next_event(60)
            assert event is not None
            if isinstance(event, (Loaded, Failed)):
                break
    finally:
        sup.shutdown()
    assert isinstance(event, Loaded), event
    kv = event.log.kv_caches[0] if event.log.kv_caches else None
    assert kv is not None and (kv.type_k, kv.type_v) == ("q8_0", "q8_0")
    assert from_snippet == (
        event.n_ctx,
        event.n_batch,
        event.n_ubatch,
        8,  # GGML_TYPE_Q8_0
        8,
        llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED,  # a quantized V cache needs it
        False,
        event.n_threads,
    )
