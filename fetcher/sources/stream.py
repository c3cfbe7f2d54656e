"""Reading one ordered byte stream from a list of origins that serve the same file.

The source URL comes first, then each mirror. A connection error, timeout, stall, 5xx, 408, 429 or
a body cut short is retried with exponential backoff and jitter (Retry-After honoured), and the
stream continues from the byte already reached with a Range request, on the same origin or the
next one, provided that origin serves the same file (same length, and the same ETag where both
have one). Otherwise the consumer is told to start over from byte 0.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field

import httpx

from fetcher.errors import Interrupted
from fetcher.http.exchange import (
    CONTENT_RANGE,
    MAX_RETRY_AFTER,
    RETRYABLE_STATUS,
    Identity,
    OriginRefused,
    Retryable,
    RetryPolicy,
    paced_body,
    retry_after,
    strong_etag,
    transport_errors_retryable,
    unsatisfied_length,
)
from fetcher.http.ratelimit import RateLimiter
from fetcher.http.stores import StoreRefused, Target, refusal, unreachable

log = logging.getLogger("model-fetch")


@dataclass(frozen=True)
class StartOver:
    """Tells the consumer that the bytes it has seen are void: reset and expect byte 0."""

    reason: str


class _AskAgainFromStart(Exception):
    """The origin answered a range of another file: ask it again for the whole file."""


class _AlreadyComplete(Exception):
    """A 416 whose Content-Range says the file ends exactly where we are: nothing is missing."""


@dataclass
class StreamStats:
    bytes_received: int = 0
    requests: int = 0
    origin: str = ""
    identity: Identity | None = None
    notes: list[str] = field(default_factory=list)


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
    ) -> None:
        self._targets = targets
        self._client = client
        self._policy = policy
        self._limiter = limiter
        self._stop = stop
        # With a digest to check at the end, a matching length is enough to continue on a mirror
        # whose server computes ETags differently; the digest catches any mix-up.
        self._compare_validators = not trust_digest
        self.stats = StreamStats()
        # A resumed run carries on from start, provided the file is still the one it had.
        self._position = start
        self._identity = identity
        self._identity_url = targets[0].url if identity else ""

    def chunks(self) -> Generator[bytes | StartOver, None, None]:
        """The file's bytes in order; StartOver voids everything yielded before it."""
        failures_by_origin: list[str] = []
        for target in self._targets:
            gave_up = yield from self._from_origin(target)
            if gave_up is None:
                return
            failures_by_origin.append(gave_up)
        raise unreachable(failures_by_origin)

    def _from_origin(self, target: Target) -> Generator[bytes | StartOver, None, str | None]:
        """Stream from one origin with retries: None once complete, else why it was left."""
        shown = target.shown
        failures = 0
        while True:
            self._check_stop()
            try:
                yield from self._attempt(target)
                return None
            except _AskAgainFromStart:
                continue
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

    def _attempt(self, target: Target) -> Iterator[bytes | StartOver]:
        for item in self._read(target, self._position, self._identity, self._identity_url):
            if isinstance(item, StartOver):
                self._position, self._identity = 0, None
                yield item
            elif isinstance(item, Identity):
                self._identity, self._identity_url = item, target.url
                self.stats.identity = item
            else:
                self._position += len(item)
                yield item

    def holdings(self) -> list[tuple[int, int]]:
        return []  # nothing is kept on disk: a restart asks the origin again

    def release_below(self, position: int) -> None:
        return None

    def sync(self) -> None:
        return None

    def close(self) -> None:
        return None

    def _check_stop(self) -> None:
        if self._stop.is_set():
            raise Interrupted(0, "a stop request")

    def _read(
        self, target: Target, position: int, identity: Identity | None, identity_url: str
    ) -> Iterator[bytes | Identity | StartOver]:
        url = target.url
        headers: dict[str, str] = {}
        if position:
            headers["Range"] = f"bytes={position}-"
            if identity and url == identity_url and (identity.etag or identity.last_modified):
                headers["If-Range"] = identity.etag or identity.last_modified or ""
        self.stats.requests += 1
        with (
            transport_errors_retryable(),
            self._client.stream("GET", url, headers=headers, auth=target.auth) as response,
        ):
            served = self._check_response(target, response, position)
            if identity is not None:
                same, why = identity.same_file(served, compare_validators=self._compare_validators)
                if not same:
                    self.stats.notes.append(f"started over: {why}")
                    log.warning(
                        "origin %s serves a different file (%s); starting over from byte 0",
                        target.shown, why,
                    )  # fmt: skip
                    yield StartOver(why)
                    if response.status_code == 206:
                        raise _AskAgainFromStart
                    position = 0
            yield served
            skip = position if response.status_code == 200 else 0
            if skip:
                log.warning(
                    "origin %s ignored the Range request; reading past %d bytes already had",
                    target.shown, skip,
                )  # fmt: skip
            self.stats.origin = target.shown
            yield from self._body(response, skip, position, served)

    def _check_response(self, target: Target, response: httpx.Response, position: int) -> Identity:
        status = response.status_code
        if status in RETRYABLE_STATUS:
            raise Retryable(f"HTTP {status}", retry_after(response))
        if status == 416 and position and unsatisfied_length(response) == position:
            raise _AlreadyComplete
        if status not in (200, 206):
            raise refusal(target, response)
        etag = strong_etag(response)
        length: int | None
        if status == 206:
            match = CONTENT_RANGE.match(response.headers.get("content-range", ""))
            if not match or int(match.group(1)) != position or match.group(3) == "*":
                raise Retryable(
                    f"bad Content-Range {response.headers.get('content-range')!r} "
                    f"for a request from byte {position}"
                )
            length = int(match.group(3))
        else:
            declared = response.headers.get("content-length")
            length = int(declared) if declared and declared.isdigit() else None
        return Identity(length, etag, response.headers.get("last-modified"))

    def _body(
        self, response: httpx.Response, skip: int, position: int, served: Identity
    ) -> Iterator[bytes]:
        for received in paced_body(response, self._limiter, self._policy, self._check_stop):
            chunk = received
            if skip:
                if len(chunk) <= skip:
                    skip -= len(chunk)
                    continue
                chunk = chunk[skip:]
                skip = 0
            self.stats.bytes_received += len(chunk)
            position += len(chunk)
            yield chunk
        if served.length is not None and position < served.length:
            raise Retryable(f"body ended at byte {position} of {served.length}")
