"""Fixtures for the Textual tests: the demo model's spec, deterministic rendering."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from textual.widgets import Input, TextArea

from llmtune.model import ModelSpec, read_spec


@pytest.fixture(scope="session")
def demo_spec(demo_model: Path) -> ModelSpec:
    return read_spec(demo_model)


@pytest.fixture(autouse=True)
def no_cursor_blink(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A blinking cursor makes two renders of the same screen differ."""
    monkeypatch.setattr(Input, "cursor_blink", False)
    monkeypatch.setattr(TextArea, "cursor_blink", False)
    yield
