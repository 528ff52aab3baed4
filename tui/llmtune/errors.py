"""One error hierarchy whose messages are written for users.

Every error carries *what* went wrong and *where* (a path, an offset, a key);
the command line prints them as ``llmtune: error: <what> (<where>)``.
"""

from __future__ import annotations


class LlmtuneError(Exception):
    """Base of every error llmtune reports to a user."""

    def __init__(self, what: str, where: str = "") -> None:
        super().__init__(what if not where else f"{what} ({where})")
        self.what = what
        self.where = where

    def one_line(self) -> str:
        """The message on one line, with control characters made visible."""
        from llmtune.textsafe import inert

        text = self.what if not self.where else f"{self.what} ({self.where})"
        return inert(text, max_chars=2000)


class GGUFError(LlmtuneError):
    """A model file that cannot be read as GGUF."""


class FitError(LlmtuneError):
    """Settings the estimator cannot plan for."""


class WorkerError(LlmtuneError):
    """The llama.cpp worker failed."""


class ConfigError(LlmtuneError):
    """A setting or option given by the user is invalid."""


class RemoteError(LlmtuneError):
    """A model on the Hugging Face Hub or at a URL that cannot be reached or read."""
