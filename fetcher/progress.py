"""Progress for people: a bar on a terminal, otherwise a log line every few seconds."""

from __future__ import annotations

import logging
import sys
import time
from typing import TextIO

from fetcher.units import human_bytes

log = logging.getLogger("model-fetch")


def _eta(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    def __init__(self, *, bar: bool, interval: float = 5.0, stream: TextIO = sys.stderr) -> None:
        self._bar = bar
        self._interval = 0.2 if bar else interval
        self._stream = stream
        self._start = time.monotonic()
        self._next = self._start + self._interval
        self.total: int | None = None
        self._drawn = False

    def update(self, done: int, extracted: int) -> None:
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + self._interval
        elapsed = max(now - self._start, 1e-6)
        rate = done / elapsed
        if self.total:
            percent = min(100.0, 100.0 * done / self.total)
            eta = _eta((self.total - done) / rate) if rate else "?"
            summary = (
                f"{percent:5.1f}% {human_bytes(done)} of {human_bytes(self.total)}, "
                f"{rate / 1e6:.1f} MB/s, ETA {eta}, {human_bytes(extracted)} extracted"
            )
        else:
            percent = 0.0
            summary = (
                f"{human_bytes(done)}, {rate / 1e6:.1f} MB/s, {human_bytes(extracted)} extracted"
            )
        if self._bar:
            width = 30
            filled = int(width * percent / 100)
            self._stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {summary}\033[K")
            self._stream.flush()
            self._drawn = True
        else:
            log.info(
                "progress: %s",
                summary,
                extra={"fields": {"bytes": done, "total": self.total, "extracted": extracted}},
            )

    def close(self) -> None:
        if self._drawn:
            self._stream.write("\n")
            self._stream.flush()
            self._drawn = False
