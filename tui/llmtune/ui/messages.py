"""Messages that cross the app: what its threads found, for the UI thread.

The worker's events and the sampler's ticks are posted from their own threads
(the supervisor's reader, the sampler); the others from the app's thread
workers, each the result of one background task. Handlers run on the UI
thread, which alone touches widgets, the telemetry store and the worker
session. ``post_message`` is safe to call from any thread (Textual hands the
message to the app's event loop with ``call_soon_threadsafe``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from textual.message import Message

if TYPE_CHECKING:
    from llmtune.engine.calibration import Recorded
    from llmtune.hardware.bandwidth import HostBandwidth

from llmtune.engine.protocol import Event
from llmtune.fit.whatif import QuantRow
from llmtune.model.spec import ModelSpec
from llmtune.telemetry.sample import Sample
from llmtune.ui.planner import Planner


class WorkerEvent(Message):
    """One event from the llama.cpp worker, in the order it came."""

    def __init__(self, event: Event, generation: int) -> None:
        super().__init__()
        self.event = event
        # Which worker (the session's count of starts) sent it: events of a
        # worker that has since been replaced are dropped.
        self.generation = generation


class SampleArrived(Message):
    """One telemetry tick. A newer one replaces an older one still queued, so a
    busy UI never works through a backlog of stale frames."""

    def __init__(self, sample: Sample) -> None:
        super().__init__()
        self.sample = sample

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, SampleArrived)


@dataclass
class QuantWarmed(Message):
    """``planner`` has sized the model at every file type: the table can be made."""

    planner: Planner


@dataclass
class QuantRowsReady(Message):
    """The quantization table's rows, planned by ``planner`` (a replaced one's are dropped)."""

    planner: Planner
    rows: list[QuantRow]


@dataclass
class SiblingsFound(Message):
    """Other quantizations of the model at ``path`` beside it: ``{file type: path}``."""

    path: str
    found: dict[str, str]


@dataclass
class PromptRendered(Message):
    """The prompt with the chat template applied, for worker ``generation``."""

    text: str
    generation: int


@dataclass
class DemoFetched(Message):
    """The demo model is on disk at ``path``, or could not be fetched (``error``)."""

    path: str | None
    error: str | None = None


@dataclass
class ModelReady(Message):
    """A model's spec read in a thread (a URL or a Hub file, from its header), or
    why it could not be read (``error``)."""

    spec: ModelSpec | None
    error: str | None = None


@dataclass
class HistoryRead(Message):
    """The calibration history read on a thread, and what a run just changed
    (``record``: the host's new bandwidth record), for the monitor and the plans."""

    recorded: Recorded | None
    lines: list[str]
    record: HostBandwidth | None
