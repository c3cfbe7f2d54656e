"""One token bucket shared by every connection, so --max-bandwidth caps the sum."""

from __future__ import annotations

import threading
import time


class TokenBucket:
    def __init__(self, rate: float, *, burst_seconds: float = 0.25) -> None:
        self.rate = rate
        self.capacity = max(rate * burst_seconds, 64 * 1024)
        self._tokens = 0.0
        self._stamp = time.monotonic()
        self._lock = threading.Lock()

    def take(self, count: int) -> float:
        """Account for count bytes received; sleep as long as the cap requires; return the wait."""
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            self._tokens -= count
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
        if wait:
            time.sleep(wait)
        return wait


class Unlimited:
    def take(self, count: int) -> float:
        return 0.0


RateLimiter = TokenBucket | Unlimited
