"""Snapshots of the main views (`pytest --snapshot-update` rewrites them after a
deliberate change; look at the report before accepting one)."""

from __future__ import annotations

from collections.abc import Callable

from llmtune.model import ModelSpec
from llmtune.model.demo import DEMO_FILE
from llmtune.ui.app import make_app

# Where the demo model lives differs between machines; the snapshot shows this instead.
DEMO_PATH_LABEL = f"~/.cache/llmtune/models/{DEMO_FILE}"


def test_model_summary_80x24(snap_compare: Callable[..., bool], demo_spec: ModelSpec) -> None:
    app = make_app(demo_spec, path_label=DEMO_PATH_LABEL)
    assert snap_compare(app, terminal_size=(80, 24))
