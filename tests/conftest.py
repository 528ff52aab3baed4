"""Shared fixtures: the demo model and a place for synthetic models."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))


@pytest.fixture(scope="session")
def demo_model() -> Path:
    """The real SmolLM2-135M-Instruct Q4_1 file (fetched by `make test`)."""
    from llmtune.model.demo import fetch_demo_model

    return fetch_demo_model()
