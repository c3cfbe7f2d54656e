"""`--connections auto`: one connection first, parallel ranges once it proves to be the wait.

A fast origin (a LAN cache, loopback, a nearby store) serves one connection faster than the
decoder can use it, and parallel ranges would only add threads and the on-disk window's copy.
A capped origin (a CDN edge, an object store, anything far away) serves each connection slowly,
and there many ranges at once are what make the download fast. Which one this is shows on the
first connection: window by window, it is measured how long the stream's thread sat idle
waiting for bytes from the socket (wall time inside the read less the thread's own CPU time,
which on a fast origin is most of it: parsing HTTP in Python, and less the time it waited for
a CPU, which on a busy machine is no sign of a slow origin). When idle waiting is most of the
window, the other connections start at once on ranges ahead of the stream, which goes on
bringing the bytes the decoder reads next up to the first of them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Generator, Iterator
from pathlib import Path

from fetcher.sources.ranged import ParallelDownload
from fetcher.sources.stream import MirroredStream
from fetcher.state.checkpoint import HeldRange
from fetcher.units import human_bytes

log = logging.getLogger("model-fetch")

WINDOW_SECONDS = 0.2
# Share of a window spent idle, waiting for the socket, above which more connections help.
NETWORK_BOUND = 0.5
# Under --max-bandwidth, a stream this close to the cap has nothing to gain from more.
NEAR_THE_CAP = 0.8
_SCHEDSTAT = Path("/proc/thread-self/schedstat")


class GrowingDownload:
    def __init__(
        self,
        stream: MirroredStream,
        parallel_from: Callable[[int, Iterator[bytes]], ParallelDownload],
        *,
        start: int,
        length: int,
        connections: int,
        max_bandwidth: float | None,
        window: float = WINDOW_SECONDS,
    ) -> None:
        self._stream = stream
        self._parallel_from = parallel_from
        self._start = start
        self._length = length
        self._connections = connections
        self._max_bandwidth = max_bandwidth
        self._window = window
        self._parallel: ParallelDownload | None = None
        self._lock = threading.Lock()

    def chunks(self) -> Iterator[bytes]:
        stream = self._stream.chunks()
        handed_over = False
        try:
            position = yield from self._stream_while_it_keeps_up(stream)
            if position is None:
                return
            # The parallel download gathers what the stream hands over; batching it here
            # as well would only keep those bytes from the decoder longer.
            self._stream.hand_over_as_read()
            with self._lock:
                self._parallel = self._parallel_from(position, stream)
            handed_over = True  # the stream is the parallel download's to read and close now
            yield from self._parallel.chunks()
        finally:
            if not handed_over:
                stream.close()  # closes the response at once

    def _stream_while_it_keeps_up(
        self, stream: Generator[bytes, None, None]
    ) -> Generator[bytes, None, int | None]:
        """Stream; None once the whole file came this way, else the byte to go parallel from."""
        position = self._start
        window_start, window_bytes, waited = time.monotonic(), 0, 0.0
        first = True
        while True:
            asked, asked_busy = time.monotonic(), _busy()
            item = next(stream, None)
            waited += (time.monotonic() - asked) - (_busy() - asked_busy)
            if item is None:
                return None
            position += len(item)
            window_bytes += len(item)
            if first:  # connecting and the first byte's latency say nothing of throughput
                first, window_bytes, waited = False, 0, 0.0
                window_start = time.monotonic()
            yield item
            now = time.monotonic()
            if now - window_start < self._window:
                continue
            if position < self._length and self._network_is_the_wait(
                waited, now - window_start, window_bytes
            ):
                log.info(
                    "one connection brings %s/s and waited idle for the network %.0f%% of "
                    "the time: going on from byte %d over %d connections",
                    human_bytes(int(window_bytes / (now - window_start))),
                    100 * waited / (now - window_start),
                    position,
                    self._connections,
                )
                return position
            log.debug(
                "one connection brings %s/s, idle for the network %.0f%% of the time",
                human_bytes(int(window_bytes / (now - window_start))),
                100 * waited / (now - window_start),
            )
            window_start, window_bytes, waited = now, 0, 0.0

    def _network_is_the_wait(self, waited: float, elapsed: float, received: int) -> bool:
        if waited / elapsed <= NETWORK_BOUND:
            return False
        return not (
            self._max_bandwidth and received / elapsed >= NEAR_THE_CAP * self._max_bandwidth
        )

    def holdings(self) -> list[HeldRange]:
        parallel = self._parallel
        return parallel.holdings() if parallel else []

    def release_below(self, position: int) -> None:
        parallel = self._parallel
        if parallel:
            parallel.release_below(position)

    def close(self) -> None:
        with self._lock:
            parallel = self._parallel
        if parallel:
            parallel.close()


def _busy() -> float:
    """Seconds this thread ran or waited for a CPU to run on (Linux's schedstat); its CPU time
    elsewhere."""
    try:
        ran, queued, _ = _SCHEDSTAT.read_bytes().split()
        return (int(ran) + int(queued)) / 1e9
    except (OSError, ValueError):
        return time.thread_time()
