"""The app never reaches the network: with this machine's hardware detection,
the real sampler, saved settings and the llama.cpp worker, a session that visits
every pane, loads the demo model, generates an answer through its chat template,
opens the hand-off and the picker records no socket connection, name lookup or
URL request in the app's process (audit hooks, tests/audit.py; the worker and
the template renderer are checked with strace in tests/engine/test_security_engine.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from ui_support import whole_session

from audit import NETWORK_EVENTS, PROCESS_EVENTS, recording
from llmtune.hardware.machine import machine
from llmtune.model import ModelSpec
from llmtune.ui.app import AppOptions, default_sampler_factory, make_app


async def test_a_whole_session_never_reaches_the_network(
    demo_spec: ModelSpec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMTUNE_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # the picker looks through an empty home
    with recording(NETWORK_EVENTS | PROCESS_EVENTS) as events:
        app = make_app(
            demo_spec,
            hardware=machine(for_worker=True),
            options=AppOptions(persist=True, interval_s=0.2),
            sampler_factory=default_sampler_factory,
        )
        async with app.run_test(size=(120, 40)) as pilot:
            await whole_session(app, pilot)
    network = [e for e in events if e.name in NETWORK_EVENTS]
    started = [e for e in events if e.name in PROCESS_EVENTS]
    assert network == []
    assert started  # the worker and the chat-template renderer did start: the hook was on
