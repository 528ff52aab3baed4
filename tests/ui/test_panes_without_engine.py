"""The app's planning panes work where llama-cpp-python is not installed.

A pilot in a child interpreter without the binding (tests/without_engine.py)
opens the demo model and shows the model, quantization and offload panes;
llama_cpp is never imported. Loading a model there is the engine's error
(tests/unit/test_without_engine.py has its line).
"""

from __future__ import annotations

import json
from pathlib import Path

from without_engine import link_site_without_engine, run_python

_PILOT = """
import asyncio, json, sys

from llmtune.hardware.host import host_device
from llmtune.model import read_spec
from llmtune.ui.app import make_app
from llmtune.hardware.machine import Machine
from llmtune.units import GIB


def screen(app):
    return "\\n".join(strip.text for strip in app.screen._compositor.render_strips())


async def main():
    spec = read_spec(sys.argv[1])
    hardware = Machine((host_device(ram_bytes=32 * GIB, bandwidth_gbps=51.2),))
    app = make_app(spec, hardware=hardware)
    shown = {}
    async with app.run_test(size=(120, 40)) as pilot:
        for key, pane, ready in (
            ("1", "model", "272 tensors"),
            ("2", "quant", "Q4_K_M"),
            ("3", "offload", "GPU layers 0 of 31"),
        ):
            await pilot.press(key)
            for _ in range(1200):  # a hang guard, not a speed target
                await pilot.pause(0.05)
                if ready in screen(app):
                    break
            shown[pane] = screen(app)
    print(json.dumps({"shown": shown, "llama_cpp": "llama_cpp" in sys.modules}))


asyncio.run(main())
"""


def test_the_planning_panes_without_llama_cpp(demo_model: Path, tmp_path: Path) -> None:
    site_dir = link_site_without_engine(tmp_path / "site")
    proc = run_python(["-c", _PILOT, str(demo_model)], site_dir, tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.splitlines()[-1])
    shown = result["shown"]
    assert "layers 30" in shown["model"] and "272 tensors" in shown["model"]
    assert "Q4_K_M" in shown["quant"] and "Q8_0" in shown["quant"]
    assert "GPU layers 0 of 31" in shown["offload"]
    assert "Fits: everything on the CPU" in shown["offload"]
    assert result["llama_cpp"] is False
