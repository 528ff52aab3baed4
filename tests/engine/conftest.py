"""Fixtures of the engine tests: a real worker's supervisor, shut down after each test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from llmtune.engine.supervisor import Supervisor


@pytest.fixture
def sup() -> Iterator[Supervisor]:
    s = Supervisor()
    yield s
    s.shutdown()
