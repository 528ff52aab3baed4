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


@pytest.fixture(scope="session", autouse=True)
def _private_config_dir(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Tests never read or write the user's own calibration and settings."""
    os.environ["LLMTUNE_CONFIG_DIR"] = str(tmp_path_factory.mktemp("config"))


@pytest.fixture(scope="session", autouse=True)
def _machine_probed() -> None:
    """This machine's bandwidth and CPU kernels probed once (the first session on a
    machine pays a few seconds), so private caches can start from them
    (machine_probes.seed_probes)."""
    from machine_probes import ensure_probed

    ensure_probed()
