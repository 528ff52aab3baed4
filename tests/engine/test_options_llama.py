"""The options table against the installed llama-cpp-python: every C parameter
the worker sets is a field of its llama.h struct, and every ``Llama(...)``
keyword of the hand-off is one ``Llama`` takes (no model is loaded)."""

from __future__ import annotations

import inspect

from llmtune.fit.options import OPTIONS


def test_c_parameters_are_fields_of_the_llama_h_structs() -> None:
    import llama_cpp

    structs = {
        "model": llama_cpp.llama_model_params,
        "context": llama_cpp.llama_context_params,
    }
    fields = {kind: {name for name, *_ in s._fields_} for kind, s in structs.items()}
    named = [(o.c.struct, o.c.name) for o in OPTIONS if o.c is not None]
    assert len(named) >= 15
    missing = [(kind, name) for kind, name in named if name not in fields[kind]]
    assert not missing
    # The two the worker builds as C arrays are fields too.
    assert {"tensor_split", "tensor_buft_overrides"} <= fields["model"]


def test_llama_keywords_are_parameters_of_llama() -> None:
    from llama_cpp import Llama

    parameters = inspect.signature(Llama.__init__).parameters
    keys = [k for o in OPTIONS if o.python is not None for k in o.python.keys]
    assert len(keys) >= 14
    assert [k for k in keys if k not in parameters] == []
