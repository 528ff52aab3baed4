"""The prompt the app sends (``llmtune.model.chat.render_chat``): the model's own
chat template, rendered where a hostile template can neither run code nor hang
the app. Templates are written into small synthetic GGUF files, as a model
maker would ship them."""

from __future__ import annotations

import threading
from pathlib import Path

import jinja2
import pytest

from llmtune.model import ModelSpec, read_spec
from llmtune.model.chat import render_chat
from synth import llama_like

SMOLLM_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# Longer than any test should take: a render still running then is a hang.
HANG_GUARD_S = 120


def spec_with(tmp_path: Path, template: str | None, name: str = "model.gguf") -> ModelSpec:
    extra = [] if template is None else [("tokenizer.chat_template", template)]
    (path,) = llama_like(tmp_path / name, n_layer=2, extra_kv=extra)
    return read_spec(path)


def render_or_fail(spec: ModelSpec, text: str, system: str | None = None) -> str | None:
    """render_chat, failing the test (instead of hanging the suite) if it never returns."""
    result: list[str | None] = []
    worker = threading.Thread(
        target=lambda: result.append(render_chat(spec, text, system)), daemon=True
    )
    worker.start()
    worker.join(HANG_GUARD_S)
    assert not worker.is_alive(), "render_chat hung"
    assert len(result) == 1, "render_chat raised"
    return result[0]


def test_the_demo_model_gets_smollm2s_chatml(demo_model: Path) -> None:
    spec = read_spec(demo_model)

    assert render_chat(spec, "What is 2+2?") == (
        f"<|im_start|>system\n{SMOLLM_SYSTEM}<|im_end|>\n"
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert render_chat(spec, "Hi", system="Answer in French.") == (
        "<|im_start|>system\nAnswer in French.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_what_the_user_types_is_text_not_template_code(tmp_path: Path) -> None:
    spec = spec_with(tmp_path, CHATML)
    typed = "{{ 7 * 7 }} {% for x in range(3) %}x{% endfor %} <|im_end|>"

    assert render_chat(spec, typed) == (
        f"<|im_start|>user\n{typed}<|im_end|>\n<|im_start|>assistant\n"
    )


def test_a_model_without_a_chat_template_gets_the_text_as_typed(tmp_path: Path) -> None:
    assert render_chat(spec_with(tmp_path, None), "Hello") is None
    assert render_chat(spec_with(tmp_path, "", name="empty.gguf"), "Hello") is None


def test_templates_may_stop_a_loop_early_as_transformers_allows(tmp_path: Path) -> None:
    # Recent templates find the last user turn with {% break %} (jinja2.ext.loopcontrols).
    template = (
        "{% for message in messages %}"
        "{% if message['role'] == 'system' %}{% continue %}{% endif %}"
        "[{{ message['content'] }}]{% break %}"
        "{% endfor %}"
    )
    spec = spec_with(tmp_path, template)

    assert render_chat(spec, "question", system="rules") == "[question]"


def test_raise_exception_in_a_template_means_no_template(tmp_path: Path) -> None:
    # Mistral-style templates refuse a system turn this way.
    template = (
        "{% if messages[0]['role'] == 'system' %}"
        "{{ raise_exception('System role not supported') }}"
        "{% endif %}"
        "{% for message in messages %}[INST] {{ message['content'] }} [/INST]{% endfor %}"
    )
    spec = spec_with(tmp_path, template)

    assert render_chat(spec, "Hello") == "[INST] Hello [/INST]"
    assert render_chat(spec, "Hello", system="Be brief.") is None


# Server-side template injection payloads; each would reach os or subprocess in
# an ordinary Jinja environment.
ESCAPES = {
    "cycler-globals": "{{ cycler.__init__.__globals__.os.popen('touch MARKER').read() }}",
    "joiner-globals": "{{ joiner.__init__.__globals__.os.system('touch MARKER') }}",
    "namespace-globals": (
        "{{ namespace.__init__.__globals__.__builtins__.__import__('os').system('touch MARKER') }}"
    ),
    "subclasses": (
        "{% for c in ''.__class__.__mro__[1].__subclasses__() %}"
        "{% if c.__name__ == 'Popen' %}{{ c(['touch', 'MARKER']).wait() }}{% endif %}"
        "{% endfor %}"
    ),
}


@pytest.mark.parametrize("payload", list(ESCAPES.values()), ids=list(ESCAPES))
def test_a_hostile_template_runs_nothing_and_gives_none(tmp_path: Path, payload: str) -> None:
    control = tmp_path / "control-ran"
    marker = tmp_path / "sandbox-ran"
    template_for = lambda path: payload.replace("MARKER", str(path))  # noqa: E731
    # The same payload outside the sandbox does run: the test can see it happen.
    jinja2.Environment().from_string(template_for(control)).render(messages=[])
    assert control.exists()

    spec = spec_with(tmp_path, template_for(marker))

    assert render_or_fail(spec, "Hello") is None
    assert not marker.exists()


@pytest.mark.parametrize(
    "template",
    [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
        "{% set x = messages.append(1) %}{{ messages }}",
        "{% set x = messages[0].update({'content': 'injected'}) %}{{ messages }}",
        "{{ messages.__class__.__base__ }}",
        "{{ self.__init__.__globals__ }}",
        "{{ '{0.__init__.__globals__[os].environ}'.format(cycler) }}",
    ],
    ids=["subclasses", "globals", "append", "update", "class", "self-globals", "format"],
)
def test_reaching_python_internals_or_changing_the_messages_gives_none(
    tmp_path: Path, template: str
) -> None:
    assert render_or_fail(spec_with(tmp_path, template), "Hello") is None


@pytest.mark.parametrize(
    "template",
    [
        "{% for i in range(10 ** 9) %}x{% endfor %}",
        # Each range is under the sandbox's MAX_RANGE; together 10**10 turns.
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        # Under MAX_RANGE with 100 KB a turn: 10 GB of prompt.
        "{% for i in range(100000) %}{{ 'x' * 100000 }}{% endfor %}",
        "{{ 'x' * 10 ** 11 }}",
        "{{ (10 ** 100000) ** 100000 }}",
        "{{ lipsum(n=10 ** 7) }}",
        "{% macro f(n) %}{{ f(n) ~ f(n) }}{% endmacro %}{{ f(0) }}",
        "{% for m in messages recursive %}{{ loop(messages * 2) }}{% endfor %}",
    ],
    ids=[
        "one-huge-range",
        "nested-ranges",
        "huge-output",
        "huge-string",
        "huge-power",
        "lipsum",
        "recursion",
        "recursive-loop",
    ],
)
def test_a_template_that_would_run_forever_gives_none(tmp_path: Path, template: str) -> None:
    assert render_or_fail(spec_with(tmp_path, template), "Hello") is None


@pytest.mark.parametrize(
    "template",
    [
        "{% include 'SECRET' %}",
        "{% import 'SECRET' as s %}{{ s }}",
        "{% from 'SECRET' import x %}{{ x }}",
        "{% extends 'SECRET' %}",
        "{{ self._TemplateReference__context.environment.loader.get_source(None, 'SECRET') }}",
        "{{ cycler.__init__.__globals__.open('SECRET').read() }}",
        "{{ lipsum.__globals__['os'].environ }}",
    ],
    ids=["include", "import", "from", "extends", "loader", "open", "environ"],
)
def test_a_template_cannot_read_files_or_the_environment(tmp_path: Path, template: str) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("the secret")
    # Outside a sandbox, with a loader, the same include does read it.
    loader = jinja2.Environment(loader=jinja2.FileSystemLoader("/"))
    assert loader.from_string("{% include 'SECRET' %}".replace("SECRET", str(secret))).render() == (
        "the secret"
    )

    rendered = render_or_fail(spec_with(tmp_path, template.replace("SECRET", str(secret))), "Hi")

    assert rendered is None
