"""Messages that cross the app: events from the worker and samples from the sampler.

Both are posted from threads (the supervisor's reader, the sampler); handlers
run on the UI thread, which alone touches widgets and the telemetry store.
"""

from __future__ import annotations

from textual.message import Message

from llmtune.engine.protocol import Event
from llmtune.telemetry.sample import Sample


class WorkerEvent(Message):
    """One event from the llama.cpp worker, in the order it came."""

    def __init__(self, event: Event, generation: int) -> None:
        super().__init__()
        self.event = event
        # Which worker (the app's count of starts) sent it: events of a worker
        # that has since been replaced are dropped.
        self.generation = generation


class SampleArrived(Message):
    """One telemetry tick. A newer one replaces an older one still queued, so a
    busy UI never works through a backlog of stale frames."""

    def __init__(self, sample: Sample) -> None:
        super().__init__()
        self.sample = sample

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, SampleArrived)
