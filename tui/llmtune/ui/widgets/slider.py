"""LayerSlider: the n_gpu_layers control, 0 to n_layer + 1, with a marker at the most that fit.

Keys: left/right step 1, PageUp/PageDown 5, Home/End to the ends; a click on
the track jumps there. The slider only reports what the user asked for (a
``Changed`` message); the app decides and sets ``value`` back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from rich.text import Text
from textual import events
from textual.binding import Binding, BindingType
from textual.message import Message
from textual.reactive import reactive
from textual.widget import Widget

from llmtune.fit.settings import NGL_AUTO

TRACK = "━"
REST = "─"
THUMB = "●"
FIT_MARK = "┃"


class LayerSlider(Widget, can_focus=True):
    """How many layers go to the GPU (llama.cpp's ``-ngl``; the output layer counts)."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("left", "step(-1)", "Fewer layers", show=False),
        Binding("right", "step(1)", "More layers", show=False),
        Binding("pagedown", "step(-5)", "-5 layers", show=False),
        Binding("pageup", "step(5)", "+5 layers", show=False),
        Binding("home", "to(0)", "No layers", show=False),
        Binding("end", "to_end", "All layers", show=False),
        Binding("equals_sign", "auto", "auto", key_display="="),
    ]

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "layer-slider--track",
        "layer-slider--rest",
        "layer-slider--thumb",
        "layer-slider--fit",
        "layer-slider--over",
        "layer-slider--label",
    }

    DEFAULT_CSS = """
    LayerSlider {
        height: 2;
        width: 1fr;
    }
    LayerSlider > .layer-slider--track { color: $primary; }
    LayerSlider > .layer-slider--rest { color: $foreground 40%; }
    LayerSlider > .layer-slider--thumb { color: $accent; text-style: bold; }
    LayerSlider:focus > .layer-slider--thumb { color: $accent; text-style: bold reverse; }
    LayerSlider > .layer-slider--fit { color: $success; text-style: bold; }
    LayerSlider > .layer-slider--over { color: $error; }
    LayerSlider > .layer-slider--label { text-style: bold; }
    LayerSlider.-no-gpu { opacity: 60%; }
    """

    value: reactive[int] = reactive(0)
    maximum: reactive[int] = reactive(1)
    fit_max: reactive[int | None] = reactive(None)
    # Said instead of the counts when there is nothing to offload to.
    note: reactive[str] = reactive("")
    # The count is llama.cpp's fit's choice (--ngl auto), not a number the user set.
    auto: reactive[bool] = reactive(False)

    @dataclass
    class Changed(Message):
        """The user asked for ``value`` layers on the GPU (``NGL_AUTO``: the fit's choice)."""

        slider: LayerSlider
        value: int

        @property
        def control(self) -> LayerSlider:
            return self.slider

    def __init__(
        self,
        value: int = 0,
        maximum: int = 1,
        *,
        id: str | None = None,
        classes: str | None = None,
    ) -> None:
        super().__init__(id=id, classes=classes)
        self.set_reactive(LayerSlider.maximum, max(0, maximum))
        self.set_reactive(LayerSlider.value, min(max(0, value), max(0, maximum)))

    def _request(self, value: int) -> None:
        value = min(max(0, value), self.maximum)
        if value != self.value:
            self.post_message(self.Changed(self, value))

    def action_step(self, delta: int) -> None:
        self._request(self.value + delta)

    def action_to(self, value: int) -> None:
        self._request(value)

    def action_to_end(self) -> None:
        self._request(self.maximum)

    def action_auto(self) -> None:
        if not self.auto:
            self.post_message(self.Changed(self, NGL_AUTO))

    def _track_width(self) -> int:
        return max(4, self.size.width - 2)

    def on_click(self, event: events.Click) -> None:
        if event.y != 1 or self.maximum <= 0:
            return
        width = self._track_width()
        x = min(max(0, event.x - 1), width - 1)
        self._request(round(x * self.maximum / (width - 1)))

    def position(self, value: int) -> int:
        """The track column of ``value`` (0-based, within the track)."""
        width = self._track_width()
        if self.maximum <= 0:
            return 0
        return round(value * (width - 1) / self.maximum)

    def render(self) -> Text:
        style = self.get_component_rich_style
        width = self._track_width()
        fit = self.fit_max
        label = Text(no_wrap=True, overflow="ellipsis")
        label.append(f"GPU layers {self.value}", style("layer-slider--label"))
        label.append(f" of {self.maximum}")
        if self.auto and not self.note:
            label.append(" (auto)")
        if self.note:
            label.append(f"   {self.note}")
        elif fit is not None:
            label.append("   most that fit ")
            label.append(f"{fit}", style("layer-slider--fit"))
        track = Text(" ")
        thumb = self.position(self.value)
        fit_at = self.position(fit) if fit is not None else None
        for x in range(width):
            if x == thumb:
                track.append(THUMB, style("layer-slider--thumb"))
            elif x == fit_at:
                track.append(FIT_MARK, style("layer-slider--fit"))
            elif x < thumb:
                over = fit is not None and fit_at is not None and x > fit_at
                track.append(TRACK, style("layer-slider--over" if over else "layer-slider--track"))
            else:
                track.append(REST, style("layer-slider--rest"))
        label.append("\n")
        label.append_text(track)
        return label
