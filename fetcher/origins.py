"""Reading one ordered byte stream from a list of origins that serve the same file.

The source URL comes first, then each mirror. A connection error, timeout, stall, 5xx, 408, 429 or
a body cut short is retried with exponential backoff and jitter (Retry-After honoured), and the
stream continues from the byte already reached with a Range request, on the same origin or the
next one, provided that origin serves the same file (same length, and the same ETag where both
have one). Otherwise the consumer is told to start over from byte 0.
"""

from __future__ import annotations

import email.utils
import logging
import random
import re
import threading
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field

import httpx

from fetcher.errors import Interrupted, SourceUnreachable
from fetcher.ratelimit import RateLimiter
from fetcher.urls import redact

log = logging.getLogger("model-fetch")

_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
_RETRYABLE_STATUS = {408, 429, 500, 502, 503, 504}
# A Retry-After longer than this moves on to the next origin instead of waiting.
_MAX_RETRY_AFTER = 300.0


@dataclass(frozen=True)
class Identity:
    """What tells two responses apart as the same file."""

    length: int | None
    etag: str | None  # strong validators only; weak ones cannot vouch for byte ranges
    last_modified: str | None

    def same_file(self, other: Identity, *, compare_etags: bool) -> tuple[bool, str]:
        if self.length is None or other.length is None:
            return False, "the length is unknown"
        if self.length != other.length:
            return False, f"the length changed from {self.length} to {other.length}"
        if compare_etags and self.etag and other.etag and self.etag != other.etag:
            return False, f"the ETag changed from {self.etag} to {other.etag}"
        return True, ""


@dataclass(frozen=True)
class StartOver:
    """Tells the consumer that the bytes it has seen are void: reset and expect byte 0."""

    reason: str


@dataclass
class RetryPolicy:
    retries: int = 5
    base_wait: float = 0.5
    max_wait: float = 30.0
    read_timeout: float = 30.0
    low_speed_limit: int = 1024
    low_speed_time: float = 60.0

    def backoff(self, failures: int) -> float:
        ceiling = min(self.max_wait, self.base_wait * 2 ** (failures - 1))
        return random.uniform(ceiling / 2, ceiling)  # noqa: S311 - jitter, not security


class _Retryable(Exception):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class _AskAgainFromStart(Exception):
    """The origin answered a range of another file: ask it again for the whole file."""


class _AlreadyComplete(Exception):
    """A 416 whose Content-Range says the file ends exactly where we are: nothing is missing."""


class _OriginRefused(Exception):
    """A final answer from this origin (404, 403, ...): go to the next one."""


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
        urls: list[str],
        client: httpx.Client,
        policy: RetryPolicy,
        limiter: RateLimiter,
        stop: threading.Event,
        *,
        trust_digest: bool,
        start: int = 0,
        identity: Identity | None = None,
    ) -> None:
        self._urls = urls
        self._client = client
        self._policy = policy
        self._limiter = limiter
        self._stop = stop
        # With a digest to check at the end, a matching length is enough to continue on a mirror
        # whose server computes ETags differently; the digest catches any mix-up.
        self._compare_etags = not trust_digest
        self.stats = StreamStats()
        # A resumed run carries on from start, provided the file is still the one it had.
        self._position = start
        self._identity = identity
        self._identity_url = urls[0] if identity else ""

    def chunks(self) -> Iterator[bytes | StartOver]:
        """The file's bytes in order; StartOver voids everything yielded before it."""
        failures_by_origin: list[str] = []
        for url in self._urls:
            gave_up = yield from self._from_origin(url)
            if gave_up is None:
                return
            failures_by_origin.append(gave_up)
        raise SourceUnreachable(failures_by_origin)

    def _from_origin(self, url: str) -> Generator[bytes | StartOver, None, str | None]:
        """Stream from one origin with retries: None once complete, else why it was left."""
        shown = redact(url)
        failures = 0
        while True:
            self._check_stop()
            try:
                yield from self._attempt(url)
                return None
            except _AskAgainFromStart:
                continue
            except _AlreadyComplete:
                log.warning(
                    "origin %s announced more bytes than the file holds; all %d are here",
                    shown, self._position,
                )  # fmt: skip
                return None
            except _OriginRefused as refusal:
                log.warning("origin %s refused: %s; trying the next origin", shown, refusal)
                return f"{shown}: {refusal}"
            except _Retryable as error:
                failures += 1
                if failures > self._policy.retries or (
                    error.retry_after is not None and error.retry_after > _MAX_RETRY_AFTER
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

    def _attempt(self, url: str) -> Iterator[bytes | StartOver]:
        for item in self._read(url, self._position, self._identity, self._identity_url):
            if isinstance(item, StartOver):
                self._position, self._identity = 0, None
                yield item
            elif isinstance(item, Identity):
                self._identity, self._identity_url = item, url
                self.stats.identity = item
            else:
                self._position += len(item)
                yield item

    def _check_stop(self) -> None:
        if self._stop.is_set():
            raise Interrupted(0, "a stop request")

    def _read(
        self, url: str, position: int, identity: Identity | None, identity_url: str
    ) -> Iterator[bytes | Identity | StartOver]:
        headers: dict[str, str] = {}
        if position:
            headers["Range"] = f"bytes={position}-"
            if identity and url == identity_url and (identity.etag or identity.last_modified):
                headers["If-Range"] = identity.etag or identity.last_modified or ""
        self.stats.requests += 1
        try:
            with self._client.stream("GET", url, headers=headers) as response:
                served = self._check_response(response, position)
                if identity is not None:
                    same, why = identity.same_file(served, compare_etags=self._compare_etags)
                    if not same:
                        self.stats.notes.append(f"started over: {why}")
                        log.warning(
                            "origin %s serves a different file (%s); starting over from byte 0",
                            redact(url), why,
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
                        redact(url), skip,
                    )  # fmt: skip
                self.stats.origin = redact(url)
                yield from self._body(response, skip, position, served)
        except httpx.TimeoutException as error:
            raise _Retryable(f"timed out ({type(error).__name__})") from None
        except httpx.TransportError as error:
            raise _Retryable(f"connection failed: {error or type(error).__name__}") from None

    def _check_response(self, response: httpx.Response, position: int) -> Identity:
        status = response.status_code
        if status in _RETRYABLE_STATUS:
            raise _Retryable(f"HTTP {status}", _retry_after(response))
        if status == 416 and position and _unsatisfied_length(response) == position:
            raise _AlreadyComplete
        if status not in (200, 206):
            raise _OriginRefused(f"HTTP {status}")
        etag = response.headers.get("etag")
        if etag and etag.startswith("W/"):
            etag = None
        length: int | None
        if status == 206:
            match = _CONTENT_RANGE.match(response.headers.get("content-range", ""))
            if not match or int(match.group(1)) != position or match.group(3) == "*":
                raise _Retryable(
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
        policy = self._policy
        window_start = time.monotonic()
        window_bytes = 0
        throttled = 0.0
        for received in response.iter_raw():
            chunk = received
            if skip:
                if len(chunk) <= skip:
                    skip -= len(chunk)
                    continue
                chunk = chunk[skip:]
                skip = 0
            self.stats.bytes_received += len(chunk)
            throttled += self._limiter.take(len(chunk))
            position += len(chunk)
            yield chunk
            self._check_stop()
            window_bytes += len(chunk)
            elapsed = time.monotonic() - window_start - throttled
            if elapsed >= policy.low_speed_time:
                if window_bytes / elapsed < policy.low_speed_limit:
                    raise _Retryable(
                        f"stalled: {window_bytes} bytes in {elapsed:.0f}s, "
                        f"below {policy.low_speed_limit} bytes/s"
                    )
                window_start, window_bytes, throttled = time.monotonic(), 0, 0.0
        if served.length is not None and position < served.length:
            raise _Retryable(f"body ended at byte {position} of {served.length}")


def _unsatisfied_length(response: httpx.Response) -> int | None:
    value = response.headers.get("content-range", "")
    if value.startswith("bytes */") and value[8:].isdigit():
        return int(value[8:])
    return None


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if not value:
        return None
    if value.strip().isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
