"""Parallel ranged GETs into the part file, requested in the order the decoder needs them.

Each connection takes the first missing stretch of the file that nobody is fetching (cut at
--chunk-size), from the origin with the fewest requests in flight, so mirrors share the work.
No new range is requested while the bytes downloaded but not yet decoded reach --max-disk-buffer,
except the one the decoder is waiting for. A failing origin is set aside with backoff; its
range goes back to the pool and is finished by whichever connection takes it next.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx

from fetcher.errors import Interrupted, SourceUnreachable
from fetcher.objectstores import StoreRefused, Target, refusal
from fetcher.origins import StreamStats
from fetcher.partfile import PartFile
from fetcher.ranges import RangeSet
from fetcher.ratelimit import RateLimiter
from fetcher.responses import (
    CONTENT_RANGE,
    RETRYABLE_STATUS,
    Identity,
    OriginRefused,
    Retryable,
    RetryPolicy,
    paced_body,
    retry_after,
    strong_etag,
    transport_errors_retryable,
)

log = logging.getLogger("model-fetch")

READ_SIZE = 1 << 20


class SourceChanged(Exception):
    """An origin now serves another file than the one being assembled."""


@dataclass
class _Origin:
    target: Target
    etag: str | None = None
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
    ) -> None:
        assert identity.length is not None
        self._origins = [_Origin(target) for target in targets]
        self._origins[identity_origin].etag = identity.etag
        self._client = client
        self._policy = policy
        self._limiter = limiter
        self._stop = stop
        self._part = part
        self._length = identity.length
        self._connections = connections
        self._chunk = chunk_size
        self._buffer = buffer
        self._have = have
        self._in_flight: list[tuple[int, int]] = []
        self._consumed = start
        self._released = start
        self._cond = threading.Condition()
        self._error: BaseException | None = None
        self._closing = False
        self.stats = StreamStats(identity=identity)

    # --- consumer side ---------------------------------------------------------------------

    def chunks(self) -> Iterator[bytes]:
        workers = [
            threading.Thread(target=self._work, name=f"model-fetch-range-{n}", daemon=True)
            for n in range(self._connections)
        ]
        for worker in workers:
            worker.start()
        try:
            position = self._consumed
            while position < self._length:
                if not self._holds(position):
                    yield b""  # about to wait: whoever batches must pass on what it holds
                end = self._wait_for(position)
                data = self._part.read_at(position, min(end, position + READ_SIZE) - position)
                position += len(data)
                with self._cond:
                    # Counted before the decoder sees them: a checkpoint taken while it works
                    # through these bytes may release the window up to any point within them.
                    self._consumed = position
                    self._cond.notify_all()
                yield data
        finally:
            with self._cond:
                self._closing = True
                self._cond.notify_all()
            for worker in workers:
                worker.join(timeout=10)

    def _holds(self, position: int) -> bool:
        with self._cond:
            return self._have.contiguous_end(position) > position

    def _wait_for(self, position: int) -> int:
        with self._cond:
            while True:
                if self._error is not None:
                    raise self._error
                end = self._have.contiguous_end(position)
                if end > position:
                    return end
                if self._stop.is_set():
                    raise Interrupted(0, "a stop request")
                self._cond.wait(0.5)

    def holdings(self) -> list[tuple[int, int]]:
        with self._cond:
            return self._have.as_list()

    def release_below(self, position: int) -> None:
        """Hand back the window's space below position, which no restart will read again."""
        with self._cond:
            start, self._released = self._released, max(self._released, position)
            self._have.remove_below(self._released)
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
                except StoreRefused as refused:
                    self._give_up(origin, str(refused))
                except OriginRefused as refused:
                    self._give_up(origin, f"{origin.shown}: {refused}")
                finally:
                    with self._cond:
                        self._in_flight = [r for r in self._in_flight if r[1] != task[1]]
                        origin.in_flight -= 1
                        self._cond.notify_all()
        except BaseException as error:  # handed to the consumer, which reports it
            with self._cond:
                self._error = self._error or error
                self._cond.notify_all()

    def _next_assignment(self) -> tuple[tuple[int, int], _Origin] | None:
        with self._cond:
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
                    self._cond.wait(origin_or_wait)
                else:
                    self._cond.wait(0.5)

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
            attempts = [o.gave_up or o.shown for o in self._origins]
            hints = [a for a in attempts if a.startswith(("s3://", "gs://"))]
            self._error = SourceUnreachable(attempts, hints[-1] if hints else "")
            self._cond.notify_all()
            return 0.0
        now = time.monotonic()
        ready = [o for o in usable if o.set_aside_until <= now]
        if not ready:
            return min(o.set_aside_until for o in usable) - now
        return min(ready, key=lambda o: (o.in_flight, self._origins.index(o)))

    def _set_aside(self, origin: _Origin, error: Retryable) -> None:
        with self._cond:
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
        with self._cond:
            origin.gave_up = why
            self._cond.notify_all()
        log.warning("leaving origin %s", why)

    def _fetch(self, origin: _Origin, task: tuple[int, int]) -> None:
        start, end = task
        headers = {"Range": f"bytes={start}-{end - 1}"}
        if origin.etag:
            headers["If-Match"] = origin.etag
        with self._cond:
            self.stats.requests += 1
        with (
            transport_errors_retryable(),
            self._client.stream(
                "GET", origin.target.url, headers=headers, auth=origin.target.auth
            ) as response,
        ):
            self._check(origin, response, start, end)
            position = start
            check_stop = self._check_stop
            for data in paced_body(response, self._limiter, self._policy, check_stop):
                piece = data[: end - position]
                self._part.write_at(position, piece)
                with self._cond:
                    self._have.add(position, position + len(piece))
                    self.stats.bytes_received += len(piece)
                    self._cond.notify_all()
                position += len(piece)
            if position < end:
                raise Retryable(f"body ended at byte {position} of a range ending at {end}")

    def _check(self, origin: _Origin, response: httpx.Response, start: int, end: int) -> None:
        status = response.status_code
        if status in RETRYABLE_STATUS:
            raise Retryable(f"HTTP {status}", retry_after(response))
        if status == 412:
            raise SourceChanged(f"{origin.shown} no longer has ETag {origin.etag}")
        if status == 200:
            raise OriginRefused("it ignores Range requests, which parallel fetching needs")
        if status != 206:
            raise refusal(origin.target, response)
        match = CONTENT_RANGE.match(response.headers.get("content-range", ""))
        if not match or (int(match.group(1)), int(match.group(2))) != (start, end - 1):
            raise Retryable(
                f"Content-Range {response.headers.get('content-range')!r} does not answer "
                f"bytes={start}-{end - 1}"
            )
        if match.group(3) != str(self._length):
            raise SourceChanged(f"{origin.shown} serves {match.group(3)} bytes, not {self._length}")
        etag = strong_etag(response)
        if origin.etag is None:
            origin.etag = etag
        elif etag and etag != origin.etag:
            raise SourceChanged(f"{origin.shown} changed its ETag from {origin.etag} to {etag}")

    def _check_stop(self) -> None:
        if self._stop.is_set() or self._closing:
            raise Interrupted(0, "a stop request")


@dataclass(frozen=True)
class Probe:
    identity: Identity
    ranges: bool
    origin: int  # index of the origin that answered


def probe(targets: list[Target], client: httpx.Client) -> Probe | None:
    """Ask each origin once for byte 0: the file's identity and whether Range works.

    None when none answers at once; the streaming path then retries and reports each origin.
    """
    for index, target in enumerate(targets):
        try:
            with client.stream(
                "GET", target.url, headers={"Range": "bytes=0-0"}, auth=target.auth
            ) as response:
                status = response.status_code
                etag = strong_etag(response)
                modified = response.headers.get("last-modified")
                if status == 206:
                    match = CONTENT_RANGE.match(response.headers.get("content-range", ""))
                    if match and match.group(3) != "*":
                        return Probe(Identity(int(match.group(3)), etag, modified), True, index)
                elif status == 200:
                    declared = response.headers.get("content-length", "")
                    length = int(declared) if declared.isdigit() else None
                    return Probe(Identity(length, etag, modified), False, index)
        except (httpx.TransportError, OriginRefused):
            continue  # the streaming path retries it and reports why
    return None
