"""The offload pane: the slider and settings re-plan on every key, the bars and
the verdict follow, and settings llama.cpp would refuse change nothing."""

from __future__ import annotations

from pathlib import Path

from rendered import screen_text
from textual.widgets import Static
from ui_support import cpu_only, with_gpu

from llmtune.fit.plan import plan
from llmtune.fit.settings import Settings
from llmtune.model import ModelSpec, read_spec
from llmtune.ui.app import LlmtuneApp, make_app
from llmtune.ui.widgets.devicebar import DeviceBar
from llmtune.ui.widgets.slider import LayerSlider
from llmtune.ui.widgets.stepper import Stepper
from synth_arch import build_qwen3moe


def bars(app: LlmtuneApp) -> list[DeviceBar]:
    return list(app.query_one("#offload-devices").query(DeviceBar))


def shown(app: LlmtuneApp) -> str:
    return "\n".join(screen_text(app))


async def test_the_slider_moves_layers_between_gpu_and_host(demo_spec: ModelSpec) -> None:
    app = make_app(demo_spec, hardware=with_gpu())
    async with app.run_test(size=(100, 40)) as pilot:
        await pilot.pause()
        slider = app.query_one("#ngl", LayerSlider)
        assert app.focused is slider  # the offload pane opens with the slider in hand
        assert app.plan is not None
        assert app.plan.n_gpu_layers == 31 == app.plan.max_gpu_layers  # all 30 + output
        gpu, host = bars(app)
        all_on_gpu = gpu.plan
        assert all_on_gpu is not None and all_on_gpu.n_layers == 30 and all_on_gpu.has_output

        await pilot.press("pagedown")  # five layers fewer
        await pilot.pause()
        assert app.plan.n_gpu_layers == slider.value == 26
        assert gpu.plan is not None and host.plan is not None
        # -ngl counts the output layer: 26 is the output and the last 25 layers.
        assert gpu.plan.n_layers == 25 and gpu.plan.has_output
        assert gpu.plan.weights_bytes < all_on_gpu.weights_bytes
        # The same plan fit.plan makes for these settings, to the byte.
        expected = plan(demo_spec, app.hardware.devices, Settings(n_gpu_layers=26))
        assert [b.plan for b in bars(app)] == list(expected.devices)
        assert "GPU layers 26 of 31" in shown(app)
        assert "26 of 31 layers on the GPU" in shown(app)
        assert "-ngl 26" in str(app.query_one("#offload-command", Static).render())

        await pilot.press("left")
        await pilot.pause()
        assert app.plan.n_gpu_layers == 25
        await pilot.press("home")
        await pilot.pause()
        assert app.plan.n_gpu_layers == 0 and gpu.plan.weights_bytes == 0
        await pilot.press("end")
        await pilot.pause()
        assert app.plan.n_gpu_layers == 31
        # From any pane, [ and ] step one layer.
        await pilot.press("1", "left_square_bracket")
        await pilot.pause()
        assert app.plan.n_gpu_layers == 30


async def test_a_gpu_too_small_says_so_and_marks_the_most_that_fit(demo_spec: ModelSpec) -> None:
    # 160 MiB of VRAM, of which llama.cpp's --fit margin would keep 1 GiB free: with no
    # margin, the weights alone (92 MiB) fit but not with the KV cache and compute buffers.
    app = make_app(demo_spec, hardware=cpu_only())
    async with app.run_test(size=(100, 40)) as pilot:
        await pilot.pause()
        from llmtune.hardware.profiles import parse_gpu_spec

        app.set_what_if([parse_gpu_spec("160MiB")])
        # No CUDA runtime either: 160 MiB would not even hold its 457 MiB.
        app.change_settings(margin_bytes=0, gpu_runtime_bytes=0)
        await pilot.pause()
        # By default (--ngl auto) the plan is llama.cpp's fit: the most that fit.
        p = app.plan
        assert p is not None and p.verdict != "over" and p.n_gpu_layers == p.max_gpu_layers
        # Every layer asked for (the slider's end): it says what is missing.
        app.change_settings(n_gpu_layers=-1)
        await pilot.pause()
        p = app.plan
        assert p is not None and p.verdict == "over"
        assert 0 < p.max_gpu_layers < 31
        gpu = bars(app)[0]
        assert gpu.plan is not None and gpu.plan.verdict == "over"
        text = shown(app)
        assert "does not fit" in text and "short by" in text
        slider = app.query_one("#ngl", LayerSlider)
        assert slider.fit_max == p.max_gpu_layers
        assert f"most that fit {p.max_gpu_layers}" in text
        # Down to the marker, it fits.
        app.change_settings(n_gpu_layers=p.max_gpu_layers)
        await pilot.pause()
        assert app.plan is not None and app.plan.verdict != "over"
        assert "does not fit" not in shown(app)


async def test_settings_steppers_change_the_plan(demo_spec: ModelSpec) -> None:
    app = make_app(demo_spec, hardware=cpu_only())
    async with app.run_test(size=(100, 40)) as pilot:
        await pilot.pause()
        assert app.plan is not None
        kv_4k = app.plan.host.kv_bytes
        ctx = app.query_one("#set-n_ctx", Stepper)
        ctx.focus()
        await pilot.press("right")
        await pilot.pause()
        assert app.settings.n_ctx == 8192 and app.plan.n_ctx == 8192
        assert app.plan.host.kv_bytes == 2 * kv_4k
        assert "8,192" in shown(app)
        cache_k = app.query_one("#set-cache_type_k", Stepper)
        cache_k.focus()
        await pilot.press("right", "right")  # f16 -> bf16 -> q8_0
        await pilot.pause()
        assert app.settings.cache_type_k == "q8_0"
        assert app.plan.host.kv_bytes < 2 * kv_4k
        assert "-ctk q8_0" in str(app.query_one("#offload-command", Static).render())


async def test_a_setting_llama_cpp_refuses_changes_nothing(demo_spec: ModelSpec) -> None:
    app = make_app(demo_spec, hardware=cpu_only())
    async with app.run_test(size=(100, 40)) as pilot:
        await pilot.pause()
        app.change_settings(flash_attn="off")
        await pilot.pause()
        before = app.plan
        cache_v = app.query_one("#set-cache_type_v", Stepper)
        cache_v.focus()
        await pilot.press("end")  # q5_1: a quantized V cache needs flash attention
        await pilot.pause()
        assert app.settings.cache_type_v == "f16"
        assert app.plan == before
        assert cache_v.value == "f16"  # the stepper shows what is in force
        notices = [n.message for n in app._notifications]
        assert any("needs flash attention" in n for n in notices)


async def test_cpu_only_says_so_and_offers_gpu_profiles(demo_spec: ModelSpec) -> None:
    app = make_app(demo_spec, hardware=cpu_only())
    async with app.run_test(size=(100, 40)) as pilot:
        await pilot.pause()
        text = shown(app)
        assert "CPU only" in text and "g plans for one" in text
        slider = app.query_one("#ngl", LayerSlider)
        assert slider.has_class("-no-gpu") and app.focused is slider
        await pilot.press("right")  # nothing to offload to: a notice, and nothing changes
        await pilot.pause()
        assert app.plan is not None and app.plan.n_gpu_layers == 0 and app.active_pane == "offload"
        assert any("No GPU to offload to" in n.message for n in app._notifications)
        await pilot.press("g")
        await pilot.pause()
        await pilot.press(*"3090", "enter")
        await pilot.pause()
        assert app.hardware.what_if and app.hardware.what_if[0].profile == "rtx3090"
        assert app.plan is not None and app.plan.n_gpu_layers == 31
        assert not slider.has_class("-no-gpu")
        assert app.focused is slider  # back in hand: the arrows move it at once
        await pilot.press("left")
        await pilot.pause()
        assert app.plan.n_gpu_layers == 30
        assert "RTX 3090 (what-if)" in shown(app)
        # Back to this machine.
        await pilot.press("g")
        await pilot.pause()
        await pilot.press("home", "enter")
        await pilot.pause()
        assert not app.hardware.what_if and app.plan.n_gpu_layers == 0


async def test_moe_experts_on_the_cpu(tmp_path: Path) -> None:
    model = build_qwen3moe(tmp_path / "moe.gguf")
    app = make_app(read_spec(model.path), hardware=with_gpu())
    async with app.run_test(size=(100, 50)) as pilot:
        await pilot.pause()
        moe = app.query_one("#set-n_cpu_moe", Stepper)
        assert moe.display  # only MoE models offer it
        assert app.plan is not None
        gpu_all = app.plan.gpus[0].weights_bytes
        moe.focus()
        await pilot.press("end")  # experts of every layer stay on the CPU (--cpu-moe)
        await pilot.pause()
        assert app.settings.n_cpu_moe == -1
        assert app.plan.gpus[0].weights_bytes < gpu_all / 2
        assert "--cpu-moe" in str(app.query_one("#offload-command", Static).render())


async def test_dense_models_do_not_offer_moe_placement(demo_spec: ModelSpec) -> None:
    app = make_app(demo_spec, hardware=with_gpu())
    async with app.run_test(size=(100, 50)) as pilot:
        await pilot.pause()
        assert not app.query_one("#set-n_cpu_moe", Stepper).display


async def test_the_app_plans_a_what_if_host_like_fit(demo_spec: ModelSpec) -> None:
    """`llmtune MODEL --ram 256MiB --host ddr5-5600`: the same Machine fit plans on,
    said on the status line, and the plan does not fit that little RAM."""
    from llmtune.hardware.machine import MachineOptions, machine

    options = MachineOptions(ram="256MiB", host="ddr5-5600")
    app = make_app(demo_spec, hardware=machine(options, for_worker=True, probe_bandwidth=False))
    async with app.run_test(size=(160, 40)) as pilot:
        await pilot.pause()
        status = str(app.query_one("#status", Static).render())
        assert "planning for a machine with 256 MiB of RAM, CPU only (what-if)" in status
        assert app.plan is not None and app.plan.host.capacity_bytes == 256 << 20
        assert app.plan.verdict == "over"


async def test_equals_brings_the_layers_back_to_llama_cpps_fit(demo_spec: ModelSpec) -> None:
    # A card where the fit keeps some layers on the host: after the slider moves,
    # = returns to the choice llama.cpp's fit makes, from the slider or any pane.
    app = make_app(demo_spec, hardware=with_gpu("1700MiB"))
    async with app.run_test(size=(100, 40)) as pilot:
        await pilot.pause()
        slider = app.query_one("#ngl", LayerSlider)
        p = app.plan
        assert p is not None and p.fit is not None and p.fits
        auto_layers = p.n_gpu_layers
        assert 0 < auto_layers == p.max_gpu_layers < 31
        assert slider.auto and f"GPU layers {auto_layers} of 31 (auto)" in shown(app)
        await pilot.press("end")
        await pilot.pause()
        assert app.plan is not None and app.plan.n_gpu_layers == 31
        assert app.plan.verdict != "fits"  # inside the margin the fit keeps
        assert not slider.auto and "(auto)" not in shown(app)
        await pilot.press("equals_sign")
        await pilot.pause()
        assert app.plan.n_gpu_layers == auto_layers and app.plan.fits and slider.auto
        assert app.settings.n_gpu_layers == Settings().n_gpu_layers  # saved as auto
        await pilot.press("home", "1", "equals_sign")
        await pilot.pause()
        assert app.plan.n_gpu_layers == auto_layers
