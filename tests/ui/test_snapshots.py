"""Snapshots of the main views at fixed data (`pytest --snapshot-update` rewrites
them after a deliberate change; look at the report before accepting one).

The machine is fixed (32 GiB of host RAM, planning for an RTX 3060 12GB), no
sampler runs and the model's path is a fixed label, so nothing here depends on
the machine that runs the tests.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from textual.pilot import Pilot
from ui_support import wait_for, with_gpu

from llmtune.model import ModelSpec
from llmtune.model.demo import DEMO_FILE
from llmtune.ui.app import LlmtuneApp, make_app
from llmtune.ui.panes.quant import QuantPane

DEMO_PATH_LABEL = f"~/.cache/llmtune/models/{DEMO_FILE}"


def demo_app(spec: ModelSpec) -> LlmtuneApp:
    return make_app(spec, path_label=DEMO_PATH_LABEL, hardware=with_gpu())


def showing(key: str) -> Callable[[Pilot[None]], object]:
    async def run_before(pilot: Pilot[None]) -> None:
        app = pilot.app
        assert isinstance(app, LlmtuneApp)
        await wait_for(pilot, lambda: bool(app.query_one(QuantPane).rows))
        if key:
            await pilot.press(key)
        await pilot.pause()

    return run_before


@pytest.mark.parametrize(
    ("key", "size"),
    [
        ("1", (80, 24)),
        ("2", (80, 24)),
        ("3", (80, 24)),
        ("", (120, 40)),
        ("", (50, 40)),
    ],
    ids=["model-80x24", "quant-80x24", "offload-80x24", "wide-120x40", "gauges-50x40"],
)
def test_main_views(
    snap_compare: Callable[..., bool], demo_spec: ModelSpec, key: str, size: tuple[int, int]
) -> None:
    assert snap_compare(demo_app(demo_spec), terminal_size=size, run_before=showing(key))
