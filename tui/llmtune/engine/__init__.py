"""The llama.cpp worker: RunConfig, protocol messages, supervisor, worker main, log parser.

llama-cpp-python is an extra (``llmtune[engine]``): planning never needs it, so
whatever starts llama.cpp calls :func:`require_llama_cpp` first and the user
reads one line saying how to add it instead of a worker dying on an import.
"""

from __future__ import annotations

import importlib.util
import sys

from llmtune.errors import LlmtuneError

ENGINE_INSTALL_HINT = (
    "pip install 'llmtune[engine]' adds it (in a checkout, make run and make test install it)"
)


class EngineMissingError(LlmtuneError):
    """llama-cpp-python is not installed: planning works, running a model does not."""


def llama_cpp_installed() -> bool:
    """Whether ``import llama_cpp`` can find the binding, without loading its library."""
    if "llama_cpp" in sys.modules:
        return sys.modules["llama_cpp"] is not None
    try:
        return importlib.util.find_spec("llama_cpp") is not None
    except (ImportError, ValueError):
        return False


def require_llama_cpp(what: str) -> None:
    """Raise :class:`EngineMissingError` naming ``what`` when llama-cpp-python is absent."""
    if not llama_cpp_installed():
        raise EngineMissingError(
            f"{what} needs llama.cpp, and llama-cpp-python is not installed: {ENGINE_INSTALL_HINT}"
        )
