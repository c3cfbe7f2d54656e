"""How many connections parallel ranges keep busy: as many as keep the decoder fed, no more.

A range ahead of the decoder costs a trip through the part file (written, read back, its
CRC32C twice); the range the decoder reads next costs nothing more than one stream does, its
bytes being handed over in memory. So ranges ahead are worth it only while the decoder waits
for bytes a connection is still bringing (a capped or distant origin), and not while the
decoder itself is the slower end (a fast origin, where one connection outruns it).

Window by window of the decoder's side, two shares of the time are measured: how long the
decoder waited for bytes a connection had already begun sending, with nothing queued in its
socket (waiting for a new request's first byte says nothing of throughput, and a connection
with bytes queued is short of CPU, which more connections would only share), and how long the
connection handing bytes over in memory waited for the decoder to take them. Above GROW_SHARE
of waiting for the network for GROW_AFTER windows in a row (once is an origin's hiccup), the
connections allowed double; when the decoder hardly waited
(below SHRINK_SHARE) and held the hand-over back for HELD_SHARE of SHRINK_AFTER windows in a
row, they halve: one connection outruns it (a single window of that is the decoder pausing,
for a checkpoint's flush say). Never below one nor above the count asked for. A decoder that
is only catching up through the ranges on disk changes nothing: they were worth fetching.
"""

from __future__ import annotations

WINDOW_SECONDS = 0.1
GROW_SHARE = 0.2
SHRINK_SHARE = 0.02
HELD_SHARE = 0.2
SHRINK_AFTER = 3
GROW_AFTER = 2


class Governor:
    def __init__(self, most: int, start: int, *, window: float = WINDOW_SECONDS) -> None:
        self.most = most
        self.limit = max(1, min(start, most))
        self._window = window
        self._since: float | None = None
        self._waited = 0.0
        self._held = 0.0
        self._calm = 0  # windows in a row that said one connection fewer would do
        self._hungry = 0  # windows in a row that said more would help

    def waited(self, seconds: float) -> None:
        """The decoder's side waited this long for bytes a connection was sending."""
        self._waited += seconds

    def held_back(self, seconds: float) -> None:
        """The connection handing bytes over waited this long for the decoder to take them."""
        self._held += seconds

    def tick(self, now: float) -> bool:
        """At the end of each window, the limit for the next; True when it changed."""
        if self._since is None:
            self._since = now
            return False
        elapsed = now - self._since
        if elapsed < self._window:
            return False
        waited, held = self._waited / elapsed, self._held / elapsed
        self._since, self._waited, self._held = now, 0.0, 0.0
        before = self.limit
        self._calm = self._calm + 1 if waited < SHRINK_SHARE and held > HELD_SHARE else 0
        self._hungry = self._hungry + 1 if waited > GROW_SHARE else 0
        if self._hungry >= GROW_AFTER:
            self._hungry = 0
            self.limit = min(self.most, self.limit * 2)
        elif self._calm >= SHRINK_AFTER:
            self._calm = 0
            self.limit = max(1, self.limit // 2)
        return self.limit != before
