"""The offload pane: the GPU-layers slider, the settings llama.cpp takes, and
per device what the plan puts there, with the verdict, predicted speed and the
llama.cpp command line, all redrawn on every change."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Grid, Vertical, VerticalScroll
from textual.widgets import Static

from llmtune.fit.options import stepper_label, stepper_value
from llmtune.fit.plan import FitPlan
from llmtune.fit.settings import CACHE_TYPES, NGL_AUTO, Settings
from llmtune.model import ModelSpec
from llmtune.textsafe import inert
from llmtune.ui.panes.monitor import network_share
from llmtune.ui.widgets.devicebar import VERDICT_WORDS, DeviceBar
from llmtune.ui.widgets.slider import LayerSlider
from llmtune.ui.widgets.stepper import Choice, Stepper
from llmtune.units import format_bytes


@dataclass(frozen=True)
class PlanView:
    """Everything the plan-showing panes draw, computed once per change by the app."""

    spec: ModelSpec  # as planned (requantized for a what-if)
    plan: FitPlan
    settings: Settings  # as the user set them (n_gpu_layers may be -1: all)
    quant: str | None  # the what-if file type, None for the file as it is
    file_type: str  # the file's own
    hardware: str  # one line: what the plan is for
    command: str  # the equivalent llama-server command line
    has_gpu: bool


def context_choices(n_ctx_train: int, current: int) -> list[Choice[object]]:
    top = max(n_ctx_train, 4096)
    values = {v for v in (2**k for k in range(8, 21)) if v <= top}
    if n_ctx_train:
        values.add(n_ctx_train)
    values.add(current)
    return [
        Choice(v, f"{v:,}" + (" (trained)" if v == n_ctx_train else ""))
        for v in sorted(values)
        if v > 0
    ]


def _powers(low: int, high: int, current: int) -> list[Choice[object]]:
    values = {2**k for k in range(0, 15) if low <= 2**k <= high} | {current}
    return [Choice(v, f"{v:,}") for v in sorted(values)]


def thread_choices(current: int) -> list[Choice[object]]:
    logical = os.cpu_count() or 1
    values = sorted(set(range(1, logical + 1)) | {current} - {0})
    choices: list[Choice[object]] = [Choice(0, "auto")]
    return choices + [Choice(v, str(v)) for v in values]


def moe_choices(n_layer: int, current: int) -> list[Choice[object]]:
    values = sorted({0, *range(1, n_layer + 1), current} - {-1})
    return [
        *(Choice(v, "none" if v == 0 else f"first {v} layers") for v in values),
        Choice(-1, "all layers"),
    ]


ON_OFF: list[Choice[object]] = [Choice(False, "off"), Choice(True, "on")]


def offload_targets(p: FitPlan) -> str:
    """Where offloaded layers go, in words."""
    if not p.rpc_devices:
        return "the GPU" if len(p.local_gpus) < 2 else "the GPUs"
    hosts = len({d.endpoint for d in p.rpc_devices})
    remote = "an RPC host" if hosts == 1 else f"{hosts} RPC hosts"
    if not p.local_gpus:
        return remote
    return f"{remote} and {'the GPU' if len(p.local_gpus) == 1 else 'the GPUs'}"


def verdict_text(view: PlanView) -> Text:
    p = view.plan
    text = Text()
    word = VERDICT_WORDS[p.verdict]
    style = {"fits": "bold green", "tight": "bold yellow", "over": "bold red"}[p.verdict]
    text.append(word[0].upper() + word[1:], style)
    if view.has_gpu:
        text.append(f": {p.n_gpu_layers} of {p.n_layer + 1} layers on {offload_targets(p)}")
        text.append(f" (most that fit: {p.max_gpu_layers})")
    else:
        text.append(": everything on the CPU")
    text.append("\nPredicted ")
    if p.fits:
        text.append(f"{p.predicted.tg_tokens_per_s:,.1f} tokens/s", "bold")
        share = network_share(p.predicted.tg_network_s, p.predicted.tg_token_s)
        text.append(f" generating ({share}), " if share else " generating, ")
        text.append(f"{p.predicted.pp_tokens_per_s:,.0f} tokens/s", "bold")
        text.append(" reading the prompt")
    else:
        # A plan that does not fit runs at no speed: what it lacks instead.
        text.append("no speed: ")
        text.append(f"{format_bytes(p.short_bytes)} short", "bold red")
    text.append(
        f"\ncontext {p.n_ctx:,} · KV {view.settings.cache_type_k}/{view.settings.cache_type_v}"
    )
    text.append(f" · flash attention {'on' if p.flash_attn else 'off'}")
    total = sum(d.total_bytes for d in p.devices)
    text.append(f" · {format_bytes(total)} in all")
    return text


class OffloadPane(VerticalScroll):
    # Shown in the footer while this pane has focus (the app binds the same keys).
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("right_square_bracket", "app.layers(1)", "±layer", key_display="[ ]"),
        Binding("left_square_bracket", "app.layers(-1)", "-layer", show=False),
        Binding("equals_sign", "app.layers_auto", "auto", key_display="="),
        Binding("c", "app.copy_command", "Copy"),
    ]

    """Settings flow down (``show``); user changes go up as Slider/Stepper messages."""

    def compose(self) -> ComposeResult:
        # The answer first (slider, verdict, devices), then the settings that change it.
        yield Static("", id="offload-model", markup=False)
        yield LayerSlider(id="ngl")
        yield Static("", id="offload-verdict", markup=False)
        yield Vertical(id="offload-devices")
        cache_types: list[Choice[object]] = [Choice(t, t) for t in CACHE_TYPES]
        flash_attn: list[Choice[object]] = [Choice(v, v) for v in ("auto", "on", "off")]
        steppers: tuple[tuple[str, list[Choice[object]]], ...] = (
            ("n_ctx", []),  # the choices that depend on the model come in show()
            ("flash_attn", flash_attn),
            ("cache_type_k", cache_types),
            ("cache_type_v", cache_types),
            ("n_batch", []),
            ("n_ubatch", []),
            ("threads", []),
            ("n_parallel", []),
            ("kv_offload", ON_OFF),
            ("n_cpu_moe", []),
        )
        with Grid(id="offload-settings"):
            for key, choices in steppers:  # labels from the options table
                yield Stepper(stepper_label(key), choices, id=f"set-{key}")
        yield Static("", id="offload-notes", markup=False)
        yield Static("", id="offload-command", markup=False)

    def show(self, view: PlanView) -> None:
        p, s, spec = view.plan, view.settings, view.spec
        quant = view.quant or view.file_type
        what_if = " (what-if)" if view.quant else ""
        self.query_one("#offload-model", Static).update(
            f"{inert(spec.name, max_chars=60)} · {quant}{what_if} · {format_bytes(spec.file_bytes)}"
        )
        slider = self.query_one("#ngl", LayerSlider)
        slider.maximum = p.n_layer + 1
        slider.value = p.n_gpu_layers
        slider.fit_max = p.max_gpu_layers if view.has_gpu else None
        slider.auto = view.has_gpu and s.n_gpu_layers == NGL_AUTO
        slider.set_class(not view.has_gpu, "-no-gpu")
        slider.note = "" if view.has_gpu else "no GPU: g plans for one"
        self._stepper("n_ctx").set_choices(context_choices(spec.n_ctx_train, s.n_ctx), s.n_ctx)
        self._stepper("flash_attn").select(s.flash_attn)
        self._stepper("cache_type_k").select(s.cache_type_k)
        self._stepper("cache_type_v").select(s.cache_type_v)
        self._stepper("n_batch").set_choices(_powers(32, 8192, s.n_batch), s.n_batch)
        self._stepper("n_ubatch").set_choices(_powers(32, 4096, s.n_ubatch), s.n_ubatch)
        self._stepper("threads").set_choices(thread_choices(s.threads), s.threads)
        self._stepper("n_parallel").set_choices(_powers(1, 64, s.n_parallel), s.n_parallel)
        kv_offload = self._stepper("kv_offload")
        kv_offload.select(stepper_value("kv_offload", s))
        kv_offload.display = view.has_gpu
        moe = self._stepper("n_cpu_moe")
        moe.display = spec.n_expert > 0
        if spec.n_expert:
            moe.set_choices(moe_choices(p.n_layer, s.n_cpu_moe), s.n_cpu_moe)
        self._show_devices(p)
        self.query_one("#offload-verdict", Static).update(verdict_text(view))
        notes = self.query_one("#offload-notes", Static)
        notes.update("\n".join(f"• {inert(n, max_chars=300)}" for n in p.notes))
        notes.display = bool(p.notes)
        self.query_one("#offload-command", Static).update(
            Text(inert(view.command, max_chars=4000), style="dim")
        )

    def _stepper(self, name: str) -> Stepper:
        return self.query_one(f"#set-{name}", Stepper)

    def _show_devices(self, p: FitPlan) -> None:
        box = self.query_one("#offload-devices", Vertical)
        bars = list(box.query(DeviceBar))
        if len(bars) != len(p.devices):
            box.remove_children()
            box.mount_all(DeviceBar(d) for d in p.devices)
            return
        for bar, d in zip(bars, p.devices, strict=True):
            bar.plan = d
