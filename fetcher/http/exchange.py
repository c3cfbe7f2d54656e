"""What every HTTP exchange of the fetcher shares: file identity, retry policy, paced reads."""

from __future__ import annotations

import contextlib
import email.utils
import random
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx

from fetcher.http.ratelimit import RateLimiter

CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
RETRYABLE_STATUS = {408, 429, 500, 502, 503, 504}
# A Retry-After longer than this moves on to the next origin instead of waiting.
MAX_RETRY_AFTER = 300.0


@dataclass(frozen=True)
class Identity:
    """What tells two responses apart as the same file."""

    length: int | None
    etag: str | None  # strong validators only; weak ones cannot vouch for byte ranges
    last_modified: str | None

    def same_file(self, other: Identity, *, compare_validators: bool) -> tuple[bool, str]:
        if self.length is None or other.length is None:
            return False, "the length is unknown"
        if self.length != other.length:
            return False, f"the length changed from {self.length} to {other.length}"
        if not compare_validators:
            return True, ""
        if self.etag and other.etag:
            if self.etag != other.etag:
                return False, f"the ETag changed from {self.etag} to {other.etag}"
        elif (
            self.last_modified
            and other.last_modified
            and (self.last_modified != other.last_modified)
        ):
            return (
                False,
                f"Last-Modified changed from {self.last_modified} to {other.last_modified}",
            )
        return True, ""


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


class Retryable(Exception):
    """A failure worth another try: connection, timeout, stall, 5xx, 408, 429, short body."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class OriginRefused(Exception):
    """A final answer from this origin (404, 403, ...): go to the next one."""


def strong_etag(response: httpx.Response) -> str | None:
    """The ETag if strong; a weak one cannot vouch for byte ranges."""
    etag = response.headers.get("etag")
    return None if not etag or etag.startswith("W/") else etag


@contextlib.contextmanager
def transport_errors_retryable() -> Iterator[None]:
    """httpx's connection and timeout errors, as the Retryable failures they are."""
    try:
        yield
    except httpx.TimeoutException as error:
        raise Retryable(f"timed out ({type(error).__name__})") from None
    except httpx.TransportError as error:
        raise Retryable(f"connection failed: {error or type(error).__name__}") from None


def paced_body(
    response: httpx.Response,
    limiter: RateLimiter,
    policy: RetryPolicy,
    check_stop: Callable[[], None],
) -> Iterator[bytes]:
    """The body as received, within the bandwidth cap; a stall raises Retryable."""
    window_start = time.monotonic()
    window_bytes = 0
    throttled = 0.0
    with transport_errors_retryable():
        for chunk in response.iter_raw():
            throttled += limiter.take(len(chunk))
            yield chunk
            check_stop()
            window_bytes += len(chunk)
            elapsed = time.monotonic() - window_start - throttled
            if elapsed >= policy.low_speed_time:
                if window_bytes / elapsed < policy.low_speed_limit:
                    raise Retryable(
                        f"stalled: {window_bytes} bytes in {elapsed:.0f}s, "
                        f"below {policy.low_speed_limit} bytes/s"
                    )
                window_start, window_bytes, throttled = time.monotonic(), 0, 0.0


def unsatisfied_length(response: httpx.Response) -> int | None:
    value = response.headers.get("content-range", "")
    if value.startswith("bytes */") and value[8:].isdigit():
        return int(value[8:])
    return None


def retry_after(response: httpx.Response) -> float | None:
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
