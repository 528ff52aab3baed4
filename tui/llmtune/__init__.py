"""llmtune: will this GGUF model run here, with which llama.cpp settings, and how fast?"""

from __future__ import annotations

__version__ = "0.1.0"
