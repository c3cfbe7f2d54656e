"""Where a frame's decoded bytes pass: counted, hashed for the content checksum, and while a
restore point is being prepared, their tail kept as the history a resumed decoder needs."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from fetcher.stages.zstd.xxh64 import Xxh64


class FrameOutput:
    """The file-like object the library's stream writer pushes decoded chunks into."""

    def __init__(self, emit: Callable[[memoryview], None]) -> None:
        self._emit = emit
        self.produced = 0  # bytes of the current frame's output so far
        self.hasher: Xxh64 | None = None
        self._tail: deque[bytes] | None = None
        self._kept = 0
        self._limit = 0
        self._until: int | None = None

    def begin_frame(self, hasher: Xxh64 | None, produced: int = 0) -> None:
        self.hasher = hasher
        self.produced = produced
        if self._tail is not None:
            self._tail.clear()
            self._kept = 0

    def write(self, data: bytes) -> int:
        if self.hasher is not None:
            self.hasher.update(data)
        self.produced += len(data)
        if self._tail is not None:
            self._tail.append(data)  # the library hands over a fresh bytes object: no copy
            self._kept += len(data)
            while self._kept - len(self._tail[0]) >= self._limit:
                self._kept -= len(self._tail.popleft())
            if self._until is not None and self.produced > self._until:
                self._tail = None  # holding a large window alive costs memory traffic
        self._emit(memoryview(data))
        return len(data)

    def keep_tail(self, limit: int, *, until: int | None = None) -> None:
        """From now on keep the last limit bytes of the frame's output; with until, only as
        long as the frame's output is no longer than that."""
        if self._tail is None:
            self._tail = deque()
            self._kept = 0
        self._limit = limit
        self._until = until

    def seed(self, history: bytes) -> None:
        """Start the tail with output decoded before (by an earlier run), not emitted again."""
        assert self._tail is not None
        if history:
            self._tail.append(history)
            self._kept += len(history)

    @property
    def history_complete(self) -> bool:
        """Whether the kept tail is all a match could still reach back into."""
        return self._tail is not None and self._kept >= min(self._limit, self.produced)

    def history(self) -> bytes:
        assert self._tail is not None
        joined = b"".join(self._tail)
        return joined[len(joined) - min(self._limit, self.produced) :]
