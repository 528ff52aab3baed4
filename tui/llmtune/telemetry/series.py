"""A bounded time series: a preallocated ring buffer of (timestamp, value) pairs.

Not thread-safe, by design: the sampler thread hands immutable ``Sample``
objects to the UI thread, and only the UI thread appends to and reads a
``Series`` (STYLE.md, "no deque is shared between threads").
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterator
from dataclasses import dataclass

_NAN = math.nan


@dataclass(frozen=True)
class SeriesView:
    """An immutable copy of a series (oldest first), unaffected by later appends.

    ``values[i]`` is ``None`` where the sample was missing (a probe failed).
    """

    times: tuple[float, ...]
    values: tuple[float | None, ...]

    def __len__(self) -> int:
        return len(self.times)

    def present(self) -> tuple[float, ...]:
        """The values that are not missing, for a graph that cannot draw gaps."""
        return tuple(v for v in self.values if v is not None)


class Series:
    """The newest ``capacity`` points of a time series.

    Memory is fixed at construction (two float64 arrays of ``capacity``), so it
    does not grow with uptime; ``append`` is O(1). Timestamps must not go
    backwards (the sampler uses a monotonic clock). A missing value is stored
    as NaN and read back as ``None``. UI thread only (see the module docstring).
    """

    __slots__ = ("_capacity", "_count", "_head", "_times", "_values")

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"a series needs a capacity of at least 1, not {capacity}")
        self._capacity = capacity
        self._times = array("d", [0.0]) * capacity
        self._values = array("d", [_NAN]) * capacity
        self._head = 0  # where the next point goes
        self._count = 0

    @property
    def capacity(self) -> int:
        return self._capacity

    def __len__(self) -> int:
        return self._count

    def append(self, timestamp: float, value: float | None) -> None:
        """Add a point, overwriting the oldest once the buffer is full."""
        if self._count and timestamp < self._times[self._head - 1]:
            raise ValueError(
                f"timestamp {timestamp} is older than the newest point {self._times[self._head - 1]}"
            )
        head = self._head
        self._times[head] = timestamp
        self._values[head] = _NAN if value is None else value
        head += 1
        self._head = 0 if head == self._capacity else head
        if self._count < self._capacity:
            self._count += 1

    def clear(self) -> None:
        self._head = 0
        self._count = 0

    def _newest_first(self) -> Iterator[int]:
        """Buffer indices from the newest point back to the oldest."""
        i = self._head
        for _ in range(self._count):
            i = (i - 1) if i else self._capacity - 1
            yield i

    @property
    def last_time(self) -> float | None:
        return self._times[self._head - 1] if self._count else None

    @property
    def last(self) -> float | None:
        """The newest value (``None`` when empty or when the newest is missing)."""
        if not self._count:
            return None
        value = self._values[self._head - 1]
        return None if math.isnan(value) else value

    def view(self, window_s: float | None = None) -> SeriesView:
        """The points (oldest first), or only those within ``window_s`` of the newest."""
        if not self._count:
            return SeriesView((), ())
        if self._count < self._capacity:
            times = self._times[: self._count]
            values = self._values[: self._count]
        else:
            times = self._times[self._head :] + self._times[: self._head]
            values = self._values[self._head :] + self._values[: self._head]
        start = 0
        if window_s is not None:
            cutoff = times[-1] - window_s
            start = len(times) - self._count_within(cutoff)
        return SeriesView(
            tuple(times[start:]),
            tuple(None if math.isnan(v) else v for v in values[start:]),
        )

    def latest(self, n: int) -> tuple[float | None, ...]:
        """The newest ``n`` values, oldest first (``None`` where missing): what a
        graph of ``n`` columns draws, without copying the whole buffer each tick."""
        count = min(max(0, n), self._count)
        out: list[float | None] = [None] * count
        i = self._head
        for k in range(count - 1, -1, -1):
            i = (i - 1) if i else self._capacity - 1
            value = self._values[i]
            out[k] = None if math.isnan(value) else value
        return tuple(out)

    def _count_within(self, cutoff: float) -> int:
        n = 0
        for i in self._newest_first():
            if self._times[i] < cutoff:
                break
            n += 1
        return n

    def _window_values(self, window_s: float | None) -> Iterator[float]:
        cutoff = -math.inf
        if window_s is not None and self._count:
            cutoff = self._times[self._head - 1] - window_s
        for i in self._newest_first():
            if self._times[i] < cutoff:
                break
            value = self._values[i]
            if not math.isnan(value):
                yield value

    def min(self, window_s: float | None = None) -> float | None:
        """The smallest value present (over the last ``window_s`` seconds), or ``None``."""
        return min(self._window_values(window_s), default=None)

    def max(self, window_s: float | None = None) -> float | None:
        """The largest value present (over the last ``window_s`` seconds), or ``None``."""
        return max(self._window_values(window_s), default=None)
