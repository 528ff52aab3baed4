"""A model's chat template, rendered for one user message in a sandbox.

Chat templates are Jinja code written by whoever made the file. They are only
ever rendered in Jinja's ``ImmutableSandboxedEnvironment`` (as llama-cpp-python
and transformers do): no attribute access to Python internals, no mutation,
ranges capped. The sandbox stops code from running but not a template from
looping for hours or filling memory (nested loops under its range cap, ``'x' *
10 ** 11``, huge powers), so rendering happens in a short-lived child
interpreter with a deadline and a memory limit; the app never waits longer than
``RENDER_TIMEOUT_S``. A template that fails, tries something the sandbox
forbids or runs out of time or memory gives ``None`` and the prompt is sent as
typed.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys

from llmtune.model.spec import ModelSpec

MAX_TEMPLATE_CHARS = 1 << 20
RENDER_TIMEOUT_S = 3.0  # a child starts and renders a real template in about 0.1 s
RENDER_MEMORY_BYTES = 1 << 30  # address space of the child, interpreter included
# The rendered prompt holds the messages once or twice and the template's own text.
OUTPUT_OVERHEAD_CHARS = 1 << 20

# Runs in ``python -I -S``: no site-packages, no user code, only Jinja found at
# the parent's paths. Limits come first so that nothing after can exceed them.
_CHILD = """
import json, sys
request = json.loads(sys.stdin.buffer.read())
try:
    import resource
    for kind, value in ((resource.RLIMIT_AS, request["memory_bytes"]),
                        (resource.RLIMIT_CPU, request["cpu_s"])):
        soft, hard = resource.getrlimit(kind)
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)
        resource.setrlimit(kind, (value, hard))
except (ImportError, ValueError, OSError):
    pass
sys.path[:0] = request["paths"]
from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

def raise_exception(message):
    raise TemplateError(message)

env = ImmutableSandboxedEnvironment(
    trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
)
env.globals["raise_exception"] = raise_exception
parts, size = [], 0
for part in env.from_string(request["template"]).generate(request["context"]):
    size += len(part)
    if size > request["max_chars"]:
        sys.exit(3)
    parts.append(part)
sys.stdout.write(json.dumps("".join(parts)))
"""


def render_chat(spec: ModelSpec, user_text: str, system: str | None = None) -> str | None:
    """The prompt the model expects for one user turn, ready for the assistant's
    answer; ``None`` when the file has no usable template."""
    template = spec.chat_template
    if not template or len(template) > MAX_TEMPLATE_CHARS or not sys.executable:
        return None
    paths = _jinja_paths()
    if paths is None:
        return None
    messages = []
    if system:
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": user_text})
    request = {
        "template": template,
        # llama.cpp adds BOS itself when the vocabulary asks for it.
        "context": {
            "messages": messages,
            "add_generation_prompt": True,
            "bos_token": "",
            "eos_token": "",
        },
        "max_chars": 2 * sum(len(m["content"]) for m in messages)
        + len(template)
        + OUTPUT_OVERHEAD_CHARS,
        "paths": paths,
        "memory_bytes": RENDER_MEMORY_BYTES,
        "cpu_s": math.ceil(RENDER_TIMEOUT_S) + 1,
    }
    try:
        done = subprocess.run(
            [sys.executable, "-I", "-S", "-c", _CHILD],
            input=json.dumps(request).encode("utf-8"),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            timeout=RENDER_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.SubprocessError, ValueError):  # the timeout kills the child
        return None
    if done.returncode != 0:
        return None
    try:
        rendered = json.loads(done.stdout)
    except ValueError:
        return None
    return rendered if isinstance(rendered, str) else None


def _jinja_paths() -> list[str] | None:
    """The folders holding jinja2 and markupsafe, for the child's ``sys.path``."""
    paths: list[str] = []
    for name in ("jinja2", "markupsafe"):
        try:
            found = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            return None
        if found is None or not found.submodule_search_locations:
            return None
        folder = os.path.dirname(list(found.submodule_search_locations)[0])
        if folder not in paths:
            paths.append(folder)
    return paths
