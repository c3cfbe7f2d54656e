"""Parallel ranged GETs, requested in the order the decoder needs them.

Each connection takes the first missing stretch of the file that nobody is fetching (cut at
--chunk-size), from the origin with the fewest requests in flight, so mirrors share the work.
The bytes the decoder reads next are handed to it in memory, as one stream's are: the
connection bringing them waits while MEMORY_BYTES of them are still unread. Only bytes that
arrive ahead of the decoder go through the part file (each run of them with its CRC32C, see
spill.py), and ranges ahead are requested only while the Governor allows another connection
and the window on disk stays under --max-disk-buffer. A failing origin is set aside with
backoff; its range goes back to the pool and is finished by whichever connection takes it next.

Every range must come from the file being assembled: each origin's first answer fixes its
validators (the probe's for the origin that answered it), later ones are sent as a precondition
(If-Match with a strong ETag, else If-Unmodified-Since with the Last-Modified date) and checked
again on the answer; a mismatch raises SourceChanged, which starts the fetch over.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import httpx

from fetcher.errors import Interrupted
from fetcher.http.body import QUEUED_BYTES, paced_body, unread_bytes
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
from fetcher.http.wire import bodies_kept_from_parser
from fetcher.sources import RangesIgnored, SourceChanged, SourceStats
from fetcher.sources.governor import Governor
from fetcher.sources.partfile import PartFile, PartFileClosed
from fetcher.sources.ranges import RangeSet
from fetcher.sources.spill import SpillRun, matches
from fetcher.state.checkpoint import HeldRange

log = logging.getLogger("model-fetch")

READ_SIZE = 1 << 20
# Bytes handed over in memory that the decoder has not taken yet, at most (one piece beyond).
MEMORY_BYTES = 4 << 20
# How long the decoder's side waits for a READ_SIZE piece to fill: enough for a fast origin
# (1 MiB takes 2 ms on loopback), too little to hold back a slow one's bytes.
BATCH_SECONDS = 0.01


@dataclass
class _Origin:
    target: Target
    etag: str | None = None
    last_modified: str | None = None  # compared only when there is no strong ETag
    failures: int = 0
    set_aside_until: float = 0.0
    in_flight: int = 0
    asked: int = 0  # ranges requested from it so far
    gave_up: str | None = None
    ignores_ranges: bool = False  # answered a range with the whole file

    @property
    def shown(self) -> str:
        return self.target.shown


@dataclass
class _Task:
    """A range one connection brings: [start, end), received up to position."""

    start: int
    end: int
    position: int
    spill: SpillRun = field(default_factory=SpillRun)
    response: httpx.Response | None = None  # while its body is being read

    @property
    def begun(self) -> bool:
        return self.position > self.start


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
        held: Sequence[HeldRange],
        start: int,
        head: Iterator[bytes] | None = None,
        stats: SourceStats | None = None,
    ) -> None:
        """head: a stream already open at start, kept on as the first connection."""
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
        # A stream that proved to be the wait goes on over all of them; otherwise the range
        # the decoder reads next and one ahead, until the first window tells whether more help.
        self._governor = Governor(connections, connections if head is not None else 2)
        self._chunk = chunk_size
        self._buffer = buffer
        held = [r for r in held if r.start >= start]
        if not part.kept and held:
            # A recreated part file is all holes: what the checkpoint says it held is gone.
            log.warning(
                "the download window %s was recreated; fetching again the %d bytes the "
                "checkpoint said it held",
                part.path, sum(r.end - r.start for r in held),
            )  # fmt: skip
            held = []
        # Received and not yet released: in memory at the decoder's position, or on disk.
        self._have = RangeSet((r.start, r.end) for r in held)
        self._disk = RangeSet((r.start, r.end) for r in held)
        self._memory: dict[int, bytes] = {}
        self._held_since: float | None = None  # since when the hand-over waits for the decoder
        self._memory_since = 0.0  # when the oldest piece there arrived
        self._memory_bytes = 0
        self._held = {r.start: r for r in held}  # what the part file holds, with CRC32Cs
        # Held by an earlier run: checked against its CRC32C when the decoder gets to it.
        self._unchecked = dict(self._held)
        self._unchecked_starts = sorted(self._unchecked)
        self._mismatch_logged = False
        self._in_flight: list[_Task] = []
        self._consumed = start
        self._released = start
        self._head = head
        # One lock, three conditions: bytes arriving wake only the consumer, the consumer
        # taking bytes from memory wakes only the connection handing them over, and only what
        # can change a dispatch decision (released, a range done or dropped, the connections
        # allowed, an origin set aside) wakes the idle workers; the decoder moving on within
        # bytes already here changes none. One condition for all woke every thread per read.
        self._lock = threading.RLock()
        self._arrived = threading.Condition(self._lock)
        self._drained = threading.Condition(self._lock)
        self._changed = threading.Condition(self._lock)
        self._error: BaseException | None = None
        self._closing = False
        self.stats = stats or SourceStats()
        self.stats.identity = identity

    # --- consumer side ---------------------------------------------------------------------

    def chunks(self) -> Iterator[bytes]:
        threads = [
            threading.Thread(target=self._work, name=f"model-fetch-range-{n}", daemon=True)
            for n in range(self._connections)
        ]
        if self._head is not None:
            threads.append(self._head_thread(self._head))
        for thread in threads:
            thread.start()
        try:
            position = self._consumed
            while position < self._length:
                data = self._take(position)
                position += len(data)
                yield data
        finally:
            self._stop_connections()
            for thread in threads:
                thread.join(timeout=10)

    def _stop_connections(self) -> None:
        with self._lock:
            self._closing = True
            self._wake_everyone()

    def _wake_everyone(self) -> None:
        self._arrived.notify_all()
        self._drained.notify_all()
        self._changed.notify_all()

    def _take(self, position: int) -> bytes:
        """The next bytes from position: handed over in memory, else read from the part file."""
        while True:
            with self._lock:
                unchecked = self._wait_for(position)
                if unchecked is None:
                    self._gather(position)
                    data = self._from_memory(position)
                    if data is not None:
                        return data
                    end = min(self._disk.contiguous_end(position), position + READ_SIZE)
                    index = bisect.bisect_right(self._unchecked_starts, position)
                    if index < len(self._unchecked_starts):
                        end = min(end, self._unchecked_starts[index])
            if unchecked is None:
                data = self._part.read_at(position, end - position)
            else:
                data = self._part.read_at(unchecked.start, unchecked.end - unchecked.start)
                if not matches(unchecked, data):
                    self._discard(unchecked)
                    continue
            with self._lock:
                if unchecked is not None:
                    self._unchecked.pop(unchecked.start, None)
                    self._unchecked_starts.remove(unchecked.start)
                # Counted before the decoder sees them: a checkpoint taken while it works
                # through these bytes may release the window up to any point within them.
                self._consumed = position + len(data)
            return data

    def _wait_for(self, position: int) -> HeldRange | None:
        """Until bytes are there at position; the earlier run's range there, if it is one."""
        waited_since: float | None = None
        try:
            while True:
                if self._error is not None:
                    raise self._error
                if position in self._memory or self._disk.contiguous_end(position) > position:
                    return self._unchecked.get(position)
                if self._stop.is_set():
                    raise Interrupted(0, "a stop request")
                coming = next(
                    (t for t in self._in_flight if t.begun and t.start <= position < t.end), None
                )
                now = time.monotonic()
                if waited_since is not None:
                    self._governor.waited(now - waited_since)
                waited_since = now if coming and self._network_is_the_wait(coming) else None
                self._govern(now)
                self._arrived.wait(0.5)
        finally:
            now = time.monotonic()
            if waited_since is not None:
                self._governor.waited(now - waited_since)
            self._govern(now)

    @staticmethod
    def _network_is_the_wait(task: _Task) -> bool:
        """Whether waiting for this range is waiting for the network: not if its socket holds
        bytes its connection has had no CPU to read yet (more connections would not help)."""
        response = task.response
        queued = unread_bytes(response) if response is not None else None
        return queued is None or queued < QUEUED_BYTES

    def _govern(self, now: float) -> None:
        if self._held_since is not None:  # a hand-over waiting now: its share so far
            self._governor.held_back(now - self._held_since)
            self._held_since = now
        if self._governor.tick(now):
            log.debug("parallel ranges: up to %d connections", self._governor.limit)
            self._changed.notify_all()

    def _gather(self, position: int) -> None:
        """Give the connection handing bytes over up to BATCH_SECONDS to make READ_SIZE of them:
        the decoder's side then handles a few large pieces instead of many reads' worth, as
        one stream's batching gives it."""
        if position not in self._memory:
            return
        deadline = self._memory_since + BATCH_SECONDS
        while True:
            end = position
            while end - position < READ_SIZE and (piece := self._memory.get(end)) is not None:
                end += len(piece)
            if end - position >= READ_SIZE or self._error is not None or self._closing:
                return
            if not any(t.start <= end < t.end for t in self._in_flight):
                return  # nobody is bringing the bytes that follow
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._arrived.wait(remaining)

    def _from_memory(self, position: int) -> bytes | None:
        pieces: list[bytes] = []
        size = 0
        while size < READ_SIZE and (piece := self._memory.pop(position + size, None)):
            pieces.append(piece)
            size += len(piece)
        if not pieces:
            return None
        self._memory_bytes -= size
        self._consumed = position + size
        self._drained.notify_all()
        # Copied, so that a connection's pieces die here, in the order they came: each thread
        # allocates from a heap of its own, which keeps the most it ever held at once.
        return b"".join(pieces) if len(pieces) > 1 else memoryview(pieces[0]).tobytes()

    def _discard(self, held: HeldRange) -> None:
        """An earlier run's range whose bytes no longer match: fetched again."""
        with self._lock:
            if not self._mismatch_logged:
                self._mismatch_logged = True
                log.warning(
                    "bytes %d-%d held in the download window %s do not match the CRC32C they "
                    "were written with (lost in a crash?): fetching them again",
                    held.start, held.end - 1, self._part.path,
                )  # fmt: skip
            self._unchecked.pop(held.start, None)
            self._unchecked_starts.remove(held.start)
            self._held.pop(held.start, None)
            self._have.remove(held.start, held.end)
            self._disk.remove(held.start, held.end)
            self._changed.notify_all()

    def holdings(self) -> list[HeldRange]:
        with self._lock:
            return sorted(self._held.values(), key=lambda r: r.start)

    def release_below(self, position: int) -> None:
        """Hand back the window's space below position, which no restart will read again."""
        with self._lock:
            start, self._released = self._released, max(self._released, position)
            self._have.remove_below(self._released)
            self._disk.remove_below(self._released)
            for held in [r for r in self._held.values() if r.end <= self._released]:
                del self._held[held.start]
            self._changed.notify_all()
        if self._released > start:
            self._part.release(start, self._released)

    def close(self) -> None:
        self._stop_connections()
        self._part.close()

    # --- connections -------------------------------------------------------------------------

    def _deliver(self, task: _Task, piece: bytes, *, counted: bool = False) -> None:
        """The bytes at task.position: to the decoder in memory if it reads them next (waiting
        while it has enough there), else to the part file."""
        size = len(piece)
        position = task.position
        with self._lock:
            while position == self._have.contiguous_end(self._consumed):
                if self._memory_bytes < MEMORY_BYTES or not self._memory:
                    if not self._memory:
                        self._memory_since = time.monotonic()
                    self._memory[position] = piece
                    self._memory_bytes += size
                    self._received(task, size, counted)
                    return
                self._check_stop()
                # Counted as it goes (the decoder's side credits it at every window, see
                # _govern), and also while the decoder reads ranges from disk: on a fast
                # origin that is most of what it does, the connection ahead spilling every
                # range it fetches meanwhile.
                self._held_since = time.monotonic()
                self._drained.wait(0.5)
                self._governor.held_back(time.monotonic() - self._held_since)
                self._held_since = None
        # Ahead of the decoder: nobody blocks on these, so they go through the part file.
        changed = task.spill.extend(position, piece)
        self._part.write_at(position, piece)
        with self._lock:
            self._disk.add(position, position + size)
            self.stats.window_bytes += size
            for held in changed:
                self._held[held.start] = held
            self._received(task, size, counted)

    def _received(self, task: _Task, size: int, counted: bool) -> None:
        self._have.add(task.position, task.position + size)
        task.position += size
        if not counted:
            self.stats.bytes_received += size
        self._arrived.notify()

    def _head_thread(self, head: Iterator[bytes]) -> threading.Thread:
        """The stream that was open before going parallel brings bytes up to the first range
        the other connections take: from the grid line after where it is."""
        position = self._consumed
        end = min(self._length, (position // self._chunk + 1) * self._chunk)
        task = _Task(position, end, position)
        self._in_flight.append(task)
        return threading.Thread(
            target=self._feed_head, args=(head, task), name="model-fetch-stream", daemon=True
        )

    def _feed_head(self, head: Iterator[bytes], task: _Task) -> None:
        try:
            for data in head:
                self._deliver(task, data[: task.end - task.position], counted=True)
                if task.position >= task.end or self._closing:
                    break
        except (Interrupted, PartFileClosed):
            pass
        except SourceChanged as error:
            with self._lock:
                self._error = self._error or error
                self._wake_everyone()
        except Exception as error:  # its range goes back to the pool
            if not self._closing:  # once closing, the stream is being torn down on purpose
                log.warning(
                    "the stream stopped at byte %d (%s); its range goes to another connection",
                    task.position, error,
                )  # fmt: skip
        finally:
            close = getattr(head, "close", None)
            if close is not None:
                close()  # closes the response: the ranges take over from here
            with self._lock:
                self._in_flight.remove(task)
                self._changed.notify_all()

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
                    if self._closing:
                        return
                    self._set_aside(origin, error)
                except OriginRefused as refused:
                    self._give_up(origin, given_up_line(origin.shown, refused))
                finally:
                    with self._lock:
                        self._in_flight.remove(task)
                        origin.in_flight -= 1
                        self._changed.notify_all()
        except BaseException as error:  # handed to the consumer, which reports it
            with self._lock:
                self._error = self._error or error
                self._wake_everyone()

    def _next_assignment(self) -> tuple[_Task, _Origin] | None:
        with self._lock:
            while True:
                if self._closing or self._error is not None or self._stop.is_set():
                    return None
                if self._have.first_gap(self._consumed, self._length) is None:
                    if not self._unchecked:
                        return None  # every byte still to be read is here and vouched for
                    # An earlier run's ranges are checked only as the decoder reaches them:
                    # one that fails its CRC32C is fetched again, by a connection still here.
                    self._changed.wait(0.5)
                    continue
                span = self._dispatchable()
                if span is not None:
                    origin_or_wait = self._pick_origin()
                    if isinstance(origin_or_wait, _Origin):
                        task = _Task(span[0], span[1], span[0])
                        self._in_flight.append(task)
                        self.stats.connections = max(self.stats.connections, len(self._in_flight))
                        origin_or_wait.in_flight += 1
                        origin_or_wait.asked += 1
                        return task, origin_or_wait
                    self._changed.wait(origin_or_wait)
                else:
                    self._changed.wait(0.5)

    def _dispatchable(self) -> tuple[int, int] | None:
        """The first missing range nobody fetches, if the decoder reads it next (it is handed
        over in memory) or if the connections and the window on disk allow one more ahead."""
        position = self._consumed
        while position < self._length:
            gap = self._have.first_gap(position, self._length)
            if gap is None:
                return None
            start, end = gap
            covering = next((t for t in self._in_flight if t.start <= start < t.end), None)
            if covering is not None:
                position = covering.end
                continue
            grid_end = (start // self._chunk + 1) * self._chunk
            later = [t.start for t in self._in_flight if t.start > start]
            end = min(end, grid_end, *later)
            if start == self._have.contiguous_end(self._consumed):
                return start, end
            if len(self._in_flight) >= self._governor.limit:
                return None
            # The window on disk: what it holds (decoded bytes a checkpoint may still need
            # among them) and what the ranges under way may still add.
            coming = sum(t.end - t.position for t in self._in_flight)
            if self._disk.total() + coming < self._buffer:
                return start, end
            return None
        return None

    def _pick_origin(self) -> _Origin | float:
        """The least busy usable origin, or how long to wait for one to come back."""
        usable = [o for o in self._origins if o.gave_up is None]
        if not usable:
            ignoring = [o.shown for o in self._origins if o.ignores_ranges]
            self._error = (
                RangesIgnored(f"{ignoring[0]} answered a range with the whole file")
                if ignoring
                else unreachable([o.gave_up or o.shown for o in self._origins])
            )
            self._wake_everyone()
            return 0.0
        now = time.monotonic()
        ready = [o for o in usable if o.set_aside_until <= now]
        if not ready:
            return min(o.set_aside_until for o in usable) - now
        # Then the one asked least: mirrors share the work even over one connection at a time.
        return min(ready, key=lambda o: (o.in_flight, o.asked, self._origins.index(o)))

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

    def _fetch(self, origin: _Origin, task: _Task) -> None:
        start, end = task.start, task.end
        headers = {"Range": f"bytes={start}-{end - 1}"}
        if origin.etag:
            headers["If-Match"] = origin.etag
        elif origin.last_modified:
            headers["If-Unmodified-Since"] = origin.last_modified
        with self._lock:
            self.stats.requests += 1
        with (
            transport_errors_retryable(),
            bodies_kept_from_parser(),  # read off the connection, which stays for the next range
            open_response(
                self._client, origin.target, headers, self._policy.read_timeout
            ) as response,
        ):
            self._check(origin, response, start, end)
            check_stop = self._check_stop
            task.response = response
            body = paced_body(response, self._limiter, self._policy, check_stop, direct=True)
            for data in body:
                self._deliver(task, data[: end - task.position])
            task.response = None
            if task.position < end:
                raise Retryable(f"body ended at byte {task.position} of a range ending at {end}")
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
            origin.ignores_ranges = True
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
