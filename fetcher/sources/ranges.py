"""A set of byte ranges [start, end), kept merged and sorted."""

from __future__ import annotations

import bisect
from collections.abc import Iterable


class RangeSet:
    def __init__(self, ranges: Iterable[tuple[int, int]] = ()) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []
        for start, end in ranges:
            self.add(start, end)

    def add(self, start: int, end: int) -> None:
        if start >= end:
            return
        # Every range touching [start, end) merges into one.
        low = bisect.bisect_left(self._ends, start)
        high = bisect.bisect_right(self._starts, end)
        if low < high:
            start = min(start, self._starts[low])
            end = max(end, self._ends[high - 1])
        self._starts[low:high] = [start]
        self._ends[low:high] = [end]

    def remove(self, start: int, end: int) -> None:
        """Take [start, end) out of the set."""
        if start >= end:
            return
        low = bisect.bisect_right(self._ends, start)
        high = bisect.bisect_left(self._starts, end)
        kept_starts: list[int] = []
        kept_ends: list[int] = []
        for s, e in zip(self._starts[low:high], self._ends[low:high], strict=True):
            if s < start:
                kept_starts.append(s)
                kept_ends.append(start)
            if e > end:
                kept_starts.append(end)
                kept_ends.append(e)
        self._starts[low:high] = kept_starts
        self._ends[low:high] = kept_ends

    def remove_below(self, position: int) -> None:
        while self._starts and self._ends[0] <= position:
            del self._starts[0], self._ends[0]
        if self._starts and self._starts[0] < position:
            self._starts[0] = position

    def contiguous_end(self, position: int) -> int:
        """The end of the range holding position, or position if none does."""
        index = bisect.bisect_right(self._starts, position) - 1
        if index >= 0 and self._ends[index] > position:
            return self._ends[index]
        return position

    def first_gap(self, start: int, end: int) -> tuple[int, int] | None:
        """The first stretch of [start, end) that the set does not cover."""
        position = start
        while position < end:
            covered = self.contiguous_end(position)
            if covered == position:
                index = bisect.bisect_right(self._starts, position)
                gap_end = self._starts[index] if index < len(self._starts) else end
                return position, min(gap_end, end)
            position = covered
        return None

    def total(self, start: int = 0) -> int:
        return sum(max(0, e - max(s, start)) for s, e in zip(self._starts, self._ends, strict=True))

    def as_list(self) -> list[tuple[int, int]]:
        return list(zip(self._starts, self._ends, strict=True))
