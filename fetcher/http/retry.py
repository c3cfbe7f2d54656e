"""Which failures are worth another try, and how long to wait before it."""

from __future__ import annotations

import contextlib
import email.utils
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx

RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
# A Retry-After longer than this moves on to the next origin instead of waiting.
MAX_RETRY_AFTER = 300.0


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


@contextlib.contextmanager
def transport_errors_retryable() -> Iterator[None]:
    """httpx's connection and timeout errors, as the Retryable failures they are."""
    try:
        yield
    except httpx.TooManyRedirects:
        raise OriginRefused("it redirects in a loop (more than 10 redirects)") from None
    except httpx.TimeoutException as error:
        detail = str(error)
        if not detail or detail == "timed out":
            detail = type(error).__name__
        raise Retryable(f"timed out ({detail})") from None
    except httpx.TransportError as error:
        raise Retryable(f"connection failed: {error or type(error).__name__}") from None


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
