"""One ordered byte stream from a list of origins that serve the same file.

The source URL comes first, then each mirror. A connection error, timeout, stall, 5xx, 408, 429
or a body cut short is retried with exponential backoff and jitter (Retry-After honoured), and
the stream continues from the byte already reached with a Range request, on the same origin or
the next one, provided that origin serves the same file (same length, and the same validators
where both have them). Otherwise SourceChanged is raised and the fetch starts over.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Generator, Iterator

import httpx

from fetcher.errors import Interrupted
from fetcher.http.body import paced_body, unread_bytes
from fetcher.http.exchange import (
    Identity,
    NotSatisfiable,
    PreconditionFailed,
    open_response,
    read_answer,
)
from fetcher.http.ratelimit import RateLimiter
from fetcher.http.retry import (
    MAX_RETRY_AFTER,
    OriginRefused,
    Retryable,
    RetryPolicy,
    transport_errors_retryable,
)
from fetcher.http.stores import StoreRefused, unreachable
from fetcher.http.target import Target
from fetcher.sources import SourceChanged, SourceStats

log = logging.getLogger("model-fetch")

# Network reads (256 KiB) are handed on joined into pieces of about this size: fewer hand-overs
# between threads for the same bytes. A slow origin's bytes go on after at most _BATCH_SECONDS.
_BATCH_BYTES = 1 << 20
_BATCH_SECONDS = 0.05


class _AlreadyComplete(Exception):
    """A 416 whose length says the file ends exactly where we are: nothing is missing."""


class MirroredStream:
    def __init__(
        self,
        targets: list[Target],
        client: httpx.Client,
        policy: RetryPolicy,
        limiter: RateLimiter,
        stop: threading.Event,
        *,
        trust_digest: bool,
        start: int = 0,
        identity: Identity | None = None,
        stats: SourceStats | None = None,
    ) -> None:
        self._targets = targets
        self._client = client
        self._policy = policy
        self._limiter = limiter
        self._stop = stop
        # With a digest to check at the end, a matching length is enough to continue on a mirror
        # whose server computes ETags differently; the digest catches any mix-up.
        self._compare_validators = not trust_digest
        self.stats = stats or SourceStats()
        # A resumed run carries on from start, provided the file is still the one it had.
        self._position = start
        self._identity = identity
        self._identity_url = targets[0].url if identity else ""
        self._straight = False
        self._reading: httpx.Response | None = None  # the response whose body is being read

    def chunks(self) -> Generator[bytes, None, None]:
        return _batched(self._unbatched(), lambda: self._straight, self._more_queued)

    def _more_queued(self) -> bool:
        """Whether the next read will find bytes already here (unknown counts as yes): if
        not, what was read goes on now instead of waiting with it on a stalled origin."""
        response = self._reading
        if response is None:
            return False
        queued = unread_bytes(response)
        return queued is None or queued > 0

    def hand_over_as_read(self) -> None:
        """From now on each read goes on at once: whoever reads these chunks batches them."""
        self._straight = True

    def close(self) -> None:
        return None

    def _unbatched(self) -> Generator[bytes, None, None]:
        if self._identity is not None and self._position == self._identity.length:
            return  # resumed with every byte here (killed while finishing): nothing to ask
        failures_by_origin: list[str] = []
        for target in self._targets:
            gave_up = yield from self._from_origin(target)
            if gave_up is None:
                return
            failures_by_origin.append(gave_up)
        raise unreachable(failures_by_origin)

    def _from_origin(self, target: Target) -> Generator[bytes, None, str | None]:
        """Stream from one origin with retries: None once complete, else why it was left."""
        shown = target.shown
        failures = 0
        while True:
            self._check_stop()
            try:
                yield from self._read(target)
                return None
            except _AlreadyComplete:
                log.warning(
                    "origin %s announced more bytes than the file holds; all %d are here",
                    shown, self._position,
                )  # fmt: skip
                return None
            except StoreRefused as refused:
                log.warning("%s; trying the next origin", refused)
                return str(refused)
            except OriginRefused as refused:
                log.warning("origin %s refused: %s; trying the next origin", shown, refused)
                return f"{shown}: {refused}"
            except Retryable as error:
                failures += 1
                if failures > self._policy.retries or (
                    error.retry_after is not None and error.retry_after > MAX_RETRY_AFTER
                ):
                    log.warning("origin %s failed: %s; trying the next origin", shown, error)
                    return f"{shown}: {error} (after {failures} attempts)"
                wait = error.retry_after
                if wait is None:
                    wait = self._policy.backoff(failures)
                log.warning(
                    "origin %s: %s at byte %d; retry %d/%d in %.1fs",
                    shown, error, self._position, failures, self._policy.retries, wait,
                )  # fmt: skip
                if self._stop.wait(wait):
                    self._check_stop()

    def _check_stop(self) -> None:
        if self._stop.is_set():
            raise Interrupted(0, "a stop request")

    def _read(self, target: Target) -> Iterator[bytes]:
        position, identity = self._position, self._identity
        headers: dict[str, str] = {}
        if position:
            headers["Range"] = f"bytes={position}-"
            if identity and target.url == self._identity_url:
                validator = identity.etag or identity.last_modified
                if validator:
                    headers["If-Range"] = validator
        self.stats.requests += 1
        with (
            transport_errors_retryable(),
            open_response(self._client, target, headers, self._policy.read_timeout) as response,
        ):
            try:
                served = read_answer(response, target, first=position, last=None)
            except NotSatisfiable as refused:
                if position and refused.length == position:
                    raise _AlreadyComplete from None
                raise OriginRefused(f"HTTP 416 for bytes={position}-") from None
            except PreconditionFailed:
                raise OriginRefused("HTTP 412 to a request without preconditions") from None
            if identity is not None:
                same, why = identity.same_file(
                    served.identity, compare_validators=self._compare_validators
                )
                if not same:
                    raise SourceChanged(f"{target.shown} serves another file: {why}")
            self._identity, self._identity_url = served.identity, target.url
            self.stats.identity = served.identity
            self.stats.origin = target.shown
            skip = position - served.start
            if skip:
                log.warning(
                    "origin %s ignored the Range request; reading past %d bytes already had",
                    target.shown, skip,
                )  # fmt: skip
            yield from self._body(response, skip, served.identity.length)

    def _body(self, response: httpx.Response, skip: int, length: int | None) -> Iterator[bytes]:
        body = paced_body(response, self._limiter, self._policy, self._check_stop, direct=True)
        self._reading = response
        try:
            yield from self._skipping(body, skip)
        finally:
            self._reading = None
        if length is not None and self._position < length:
            raise Retryable(f"body ended at byte {self._position} of {length}")

    def _skipping(self, body: Iterator[bytes], skip: int) -> Iterator[bytes]:
        for received in body:
            chunk = received
            if skip:
                if len(chunk) <= skip:
                    skip -= len(chunk)
                    continue
                chunk, skip = chunk[skip:], 0
            self.stats.bytes_received += len(chunk)
            self._position += len(chunk)
            yield chunk


def _batched(
    chunks: Generator[bytes, None, None],
    straight: Callable[[], bool],
    more_queued: Callable[[], bool],
) -> Generator[bytes, None, None]:
    pending: list[bytes] = []
    size = 0
    started = 0.0
    try:
        for item in chunks:
            if not pending:
                started = time.monotonic()
            pending.append(item)
            size += len(item)
            if (
                size >= _BATCH_BYTES
                or time.monotonic() - started >= _BATCH_SECONDS
                or straight()
                or not more_queued()
            ):
                yield b"".join(pending)
                pending, size = [], 0
        if pending:
            yield b"".join(pending)
    finally:
        chunks.close()  # closes the response at once when the consumer stops early
