"""Parallel ranged GETs into the part file, requested in the order the decoder needs them.

Each connection takes the first missing stretch of the file that nobody is fetching (cut at
--chunk-size), from the origin with the fewest requests in flight, so mirrors share the work.
No new range is requested while the bytes downloaded but not yet decoded reach --max-disk-buffer,
except the one the decoder is waiting for. A failing origin is set aside with backoff; its
range goes back to the pool and is finished by whichever connection takes it next.

Every range must come from the file being assembled: each origin's first answer fixes its
validators (the probe's for the origin that answered it), later ones are sent as a precondition
(If-Match with a strong ETag, else If-Unmodified-Since with the Last-Modified date) and checked
again on the answer; a mismatch raises SourceChanged, which starts the fetch over.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx

from fetcher.errors import Interrupted
from fetcher.http.body import paced_body
from fetcher.http.exchange import (
    Identity,
    NotSatisfiable,
    PreconditionFailed,
    open_response,
    read_answer,
)
from fetcher.http.ratelimit import RateLimiter
from fetcher.http.retry import OriginRefused, Retryable, RetryPolicy, transport_errors_retryable
from fetcher.http.stores import given_up_line, unreachable
from fetcher.http.target import Target
from fetcher.sources import SourceChanged, SourceStats
from fetcher.sources.partfile import PartFile
from fetcher.sources.ranges import RangeSet

log = logging.getLogger("model-fetch")

READ_SIZE = 1 << 20


@dataclass
class _Origin:
    target: Target
    etag: str | None = None
    last_modified: str | None = None  # compared only when there is no strong ETag
    failures: int = 0
    set_aside_until: float = 0.0
    in_flight: int = 0
    gave_up: str | None = None

    @property
    def shown(self) -> str:
        return self.target.shown


class ParallelDownload:
    def __init__(
        self,
        targets: list[Target],
        client: httpx.Client,
        *,
        policy: RetryPolicy,
        limiter: RateLimiter,
        stop: threading.Event,
        part: PartFile,
        identity: Identity,
        identity_origin: int,
        connections: int,
        chunk_size: int,
        buffer: int,
        have: RangeSet,
        start: int,
        stats: SourceStats | None = None,
    ) -> None:
        assert identity.length is not None
        self._origins = [_Origin(target) for target in targets]
        self._origins[identity_origin].etag = identity.etag
        self._origins[identity_origin].last_modified = identity.last_modified
        self._client = client
        self._policy = policy
        self._limiter = limiter
        self._stop = stop
        self._part = part
        self._length = identity.length
        self._connections = connections
        self._chunk = chunk_size
        self._buffer = buffer
        if not part.kept and have.total():
            # A recreated part file is all holes: what the checkpoint says it held is gone.
            log.warning(
                "the download window %s was recreated; fetching again the %d bytes the "
                "checkpoint said it held",
                part.path, have.total(),
            )  # fmt: skip
            have = RangeSet()
        self._have = have
        self._in_flight: list[tuple[int, int]] = []
        self._consumed = start
        self._released = start
        # One lock, two conditions: bytes arriving wake only the consumer, and only what can
        # change a dispatch decision (consumed, released, a range done, an origin set aside)
        # wakes the idle workers. One condition for both woke every thread per 64 KiB read.
        self._lock = threading.RLock()
        self._arrived = threading.Condition(self._lock)
        self._changed = threading.Condition(self._lock)
        self._error: BaseException | None = None
        self._closing = False
        self.stats = stats or SourceStats()
        self.stats.identity = identity

    # --- consumer side ---------------------------------------------------------------------

    def chunks(self) -> Iterator[bytes]:
        workers = [
            threading.Thread(target=self._work, name=f"model-fetch-range-{n}", daemon=True)
            for n in range(self._connections)
        ]
        self.stats.connections = max(self.stats.connections, self._connections)
        for worker in workers:
            worker.start()
        try:
            position = self._consumed
            while position < self._length:
                end = self._wait_for(position)
                data = self._part.read_at(position, min(end, position + READ_SIZE) - position)
                position += len(data)
                with self._lock:
                    # Counted before the decoder sees them: a checkpoint taken while it works
                    # through these bytes may release the window up to any point within them.
                    self._consumed = position
                    self._changed.notify_all()
                yield data
        finally:
            with self._lock:
                self._closing = True
                self._wake_everyone()
            for worker in workers:
                worker.join(timeout=10)

    def _wake_everyone(self) -> None:
        self._arrived.notify_all()
        self._changed.notify_all()

    def _wait_for(self, position: int) -> int:
        with self._lock:
            while True:
                if self._error is not None:
                    raise self._error
                end = self._have.contiguous_end(position)
                if end > position:
                    return end
                if self._stop.is_set():
                    raise Interrupted(0, "a stop request")
                self._arrived.wait(0.5)

    def holdings(self) -> list[tuple[int, int]]:
        with self._lock:
            return self._have.as_list()

    def release_below(self, position: int) -> None:
        """Hand back the window's space below position, which no restart will read again."""
        with self._lock:
            start, self._released = self._released, max(self._released, position)
            self._have.remove_below(self._released)
            self._changed.notify_all()
        if self._released > start:
            self._part.release(start, self._released)

    def sync(self) -> None:
        self._part.sync()

    def close(self) -> None:
        self._part.close()

    # --- workers -----------------------------------------------------------------------------

    def _work(self) -> None:
        try:
            while True:
                assignment = self._next_assignment()
                if assignment is None:
                    return
                task, origin = assignment
                try:
                    self._fetch(origin, task)
                    origin.failures = 0
                except Retryable as error:
                    self._set_aside(origin, error)
                except OriginRefused as refused:
                    self._give_up(origin, given_up_line(origin.shown, refused))
                finally:
                    with self._lock:
                        self._in_flight = [r for r in self._in_flight if r[1] != task[1]]
                        origin.in_flight -= 1
                        self._changed.notify_all()
        except BaseException as error:  # handed to the consumer, which reports it
            with self._lock:
                self._error = self._error or error
                self._wake_everyone()

    def _next_assignment(self) -> tuple[tuple[int, int], _Origin] | None:
        with self._lock:
            while True:
                if self._closing or self._error is not None or self._stop.is_set():
                    return None
                if self._have.first_gap(self._consumed, self._length) is None:
                    return None
                task = self._dispatchable()
                if task is not None:
                    origin_or_wait = self._pick_origin()
                    if isinstance(origin_or_wait, _Origin):
                        self._in_flight.append(task)
                        origin_or_wait.in_flight += 1
                        return task, origin_or_wait
                    self._changed.wait(origin_or_wait)
                else:
                    self._changed.wait(0.5)

    def _dispatchable(self) -> tuple[int, int] | None:
        """The first missing range nobody fetches, if the window allows it."""
        # The decoder is starved when nothing is held at its position; that range goes unless
        # the decoded bytes still awaiting a checkpoint fill the window on their own.
        starved = self._have.contiguous_end(self._consumed) == self._consumed
        position = self._consumed
        while position < self._length:
            gap = self._have.first_gap(position, self._length)
            if gap is None:
                return None
            start, end = gap
            covering = next((r for r in self._in_flight if r[0] <= start < r[1]), None)
            if covering is not None:
                position = covering[1]
                continue
            grid_end = (start // self._chunk + 1) * self._chunk
            later = [r[0] for r in self._in_flight if r[0] > start]
            end = min(end, grid_end, *later)
            # What the window holds on disk: decoded bytes a checkpoint may still need, bytes
            # not yet decoded, and bytes on their way.
            held = self._consumed - self._released + self._have.total(self._consumed)
            pending = held + sum(e - s for s, e in self._in_flight)
            behind = self._consumed - self._released  # decoded, awaiting a checkpoint
            if pending < self._buffer or (
                starved and start == self._consumed and behind < self._buffer
            ):
                return start, end
            return None
        return None

    def _pick_origin(self) -> _Origin | float:
        """The least busy usable origin, or how long to wait for one to come back."""
        usable = [o for o in self._origins if o.gave_up is None]
        if not usable:
            self._error = unreachable([o.gave_up or o.shown for o in self._origins])
            self._wake_everyone()
            return 0.0
        now = time.monotonic()
        ready = [o for o in usable if o.set_aside_until <= now]
        if not ready:
            return min(o.set_aside_until for o in usable) - now
        return min(ready, key=lambda o: (o.in_flight, self._origins.index(o)))

    def _set_aside(self, origin: _Origin, error: Retryable) -> None:
        with self._lock:
            origin.failures += 1
            if origin.failures > self._policy.retries:
                self._give_up(origin, f"{origin.shown}: {error} (after {origin.failures} attempts)")
                return
            wait = error.retry_after
            if wait is None:
                wait = self._policy.backoff(origin.failures)
            origin.set_aside_until = time.monotonic() + wait
        log.warning(
            "origin %s: %s; set aside for %.1fs (%d/%d), its range goes to another connection",
            origin.shown, error, wait, origin.failures, self._policy.retries,
        )  # fmt: skip

    def _give_up(self, origin: _Origin, why: str) -> None:
        with self._lock:
            origin.gave_up = why
            self._changed.notify_all()
        log.warning("leaving origin %s", why)

    def _fetch(self, origin: _Origin, task: tuple[int, int]) -> None:
        start, end = task
        headers = {"Range": f"bytes={start}-{end - 1}"}
        if origin.etag:
            headers["If-Match"] = origin.etag
        elif origin.last_modified:
            headers["If-Unmodified-Since"] = origin.last_modified
        with self._lock:
            self.stats.requests += 1
        with (
            transport_errors_retryable(),
            open_response(
                self._client, origin.target, headers, self._policy.read_timeout
            ) as response,
        ):
            self._check(origin, response, start, end)
            position = start
            check_stop = self._check_stop
            for data in paced_body(response, self._limiter, self._policy, check_stop):
                piece = data[: end - position]
                self._part.write_at(position, piece)
                with self._lock:
                    self._have.add(position, position + len(piece))
                    self.stats.bytes_received += len(piece)
                    self._arrived.notify()
                position += len(piece)
            if position < end:
                raise Retryable(f"body ended at byte {position} of a range ending at {end}")
            with self._lock:
                self.stats.origin = origin.shown

    def _check(self, origin: _Origin, response: httpx.Response, start: int, end: int) -> None:
        try:
            served = read_answer(response, origin.target, first=start, last=end - 1)
        except PreconditionFailed:
            validator = (
                f"ETag {origin.etag}" if origin.etag else f"Last-Modified {origin.last_modified}"
            )
            raise SourceChanged(
                f"{origin.shown} no longer serves the file with {validator}"
            ) from None
        except NotSatisfiable as refused:
            raise SourceChanged(
                f"{origin.shown} has no bytes from {start} (it reports {refused.length})"
            ) from None
        if served.status == 200:
            raise OriginRefused("it ignores Range requests, which parallel fetching needs")
        found = served.identity
        if found.length != self._length:
            raise SourceChanged(f"{origin.shown} serves {found.length} bytes, not {self._length}")
        if origin.etag and found.etag:
            if found.etag != origin.etag:
                raise SourceChanged(
                    f"{origin.shown} changed its ETag from {origin.etag} to {found.etag}"
                )
        elif (
            origin.last_modified
            and found.last_modified
            and found.last_modified != origin.last_modified
        ):
            # Without a strong ETag on both sides the date is all that tells two files apart.
            raise SourceChanged(
                f"{origin.shown} changed its Last-Modified from {origin.last_modified} "
                f"to {found.last_modified}"
            )
        if origin.etag is None:
            origin.etag = found.etag
        if origin.last_modified is None:
            origin.last_modified = found.last_modified

    def _check_stop(self) -> None:
        if self._stop.is_set() or self._closing:
            raise Interrupted(0, "a stop request")
