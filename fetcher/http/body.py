"""Reading a response body within the bandwidth cap, and noticing when it stalls."""

from __future__ import annotations

import array
import fcntl
import socket
import termios
import time
from collections.abc import Callable, Iterator

import httpx

from fetcher.http.ratelimit import RateLimiter, TokenBucket
from fetcher.http.retry import Retryable, RetryPolicy, transport_errors_retryable
from fetcher.http.wire import PIECE_BYTES, direct_body


def paced_body(
    response: httpx.Response,
    limiter: RateLimiter,
    policy: RetryPolicy,
    check_stop: Callable[[], None],
    *,
    direct: bool = False,
) -> Iterator[bytes]:
    """The body as received, within the bandwidth cap; a stall raises Retryable.

    direct: read it off the connection where that is sound (fetcher.http.wire). The
    connection then closes, unless the request was sent within bodies_kept_from_parser().
    """
    window_start = time.monotonic()
    window_bytes = 0
    throttled = 0.0
    pieces = (direct and direct_body(response, _piece_bytes(limiter))) or response.iter_raw()
    with transport_errors_retryable():
        for chunk in pieces:
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


def _piece_bytes(limiter: RateLimiter) -> int:
    """Under a bandwidth cap, pieces no larger than its burst, so the pacing stays smooth."""
    if isinstance(limiter, TokenBucket):
        return max(64 << 10, min(PIECE_BYTES, int(limiter.capacity)))
    return PIECE_BYTES


# A reader that has this much queued in its socket is short of CPU, not of network.
QUEUED_BYTES = 64 << 10


def unread_bytes(response: httpx.Response) -> int | None:
    """Bytes that reached this response's socket and nobody has read yet; None when unknown.

    Read from any thread while another reads the body: a reader that is waiting with bytes
    queued waits for a CPU, not for the network.
    """
    stream = response.extensions.get("network_stream")
    sock = stream.get_extra_info("socket") if stream is not None else None
    if not isinstance(sock, socket.socket):
        return None
    queued = array.array("i", [0])
    try:
        fcntl.ioctl(sock.fileno(), termios.FIONREAD, queued)
    except (OSError, ValueError):  # closed meanwhile
        return None
    return queued[0]
