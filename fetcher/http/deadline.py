"""A deadline on the head of every response: connecting, TLS, the status line and headers.

httpx's timeouts apply to each socket operation, so an origin that trickles its headers a
byte at a time never trips them, and the next mirror is never tried. Here every read and
write of a request's head gets at most what is left of one budget, started when the
request is sent (or when its connection is made, if it needed a new one); once the head has
arrived the body is the stall detector's business (fetcher.http.body). The deadline is kept
per thread, as each request of the synchronous client runs on one thread from start to end.
"""

from __future__ import annotations

import contextlib
import ssl
import threading
import time
import typing
from collections.abc import Iterator

import httpcore
import httpx

from fetcher.http.wire import WireStream

_local = threading.local()


def _remaining(timeout: float | None) -> float | None:
    deadline: float | None = getattr(_local, "deadline", None)
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise _too_late()
    return left if timeout is None else min(timeout, left)


def _too_late() -> httpcore.ReadTimeout:
    return httpcore.ReadTimeout(
        f"the response did not arrive within {_local.budget:g}s: the origin is too slow to "
        "answer, or trickles its headers"
    )


def _past_deadline() -> bool:
    deadline: float | None = getattr(_local, "deadline", None)
    return deadline is not None and time.monotonic() >= deadline


@contextlib.contextmanager
def _said_when_late() -> Iterator[None]:
    """A timeout that the deadline imposed is reported as the deadline's."""
    try:
        yield
    except httpcore.TimeoutException:
        if _past_deadline():
            raise _too_late() from None
        raise


@contextlib.contextmanager
def head_deadline(budget: float) -> Iterator[None]:
    """Within this block, the response head must arrive within budget seconds."""
    _local.budget = budget
    _local.deadline = time.monotonic() + budget
    try:
        yield
    finally:
        _local.deadline = None


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        if getattr(_local, "deadline", None) is None:  # the body: no deadline, no detour
            return self._inner.read(max_bytes, timeout)
        with _said_when_late():
            return self._inner.read(max_bytes, _remaining(timeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if getattr(_local, "deadline", None) is None:
            self._inner.write(buffer, timeout)
            return
        with _said_when_late():
            self._inner.write(buffer, _remaining(timeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        with _said_when_late():
            inner = self._inner.start_tls(ssl_context, server_hostname, _remaining(timeout))
        return _DeadlineStream(inner)

    def get_extra_info(self, info: str) -> typing.Any:
        return self._inner.get_extra_info(info)


class DeadlineBackend(httpcore.NetworkBackend):
    def __init__(self, inner: httpcore.NetworkBackend) -> None:
        self._inner = inner

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        stream = WireStream(
            self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        )
        if getattr(_local, "deadline", None) is not None:
            # Connecting has a timeout of its own; the head's budget starts once connected.
            _local.deadline = time.monotonic() + _local.budget
        return _DeadlineStream(stream)

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        stream = self._inner.connect_unix_socket(path, timeout, socket_options)
        return _DeadlineStream(WireStream(stream))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def deadline_transport(verify: ssl.SSLContext) -> httpx.HTTPTransport:
    """httpx's own transport, its connections made through the deadline backend."""
    transport = httpx.HTTPTransport(verify=verify)
    pool = transport._pool  # httpx builds the pool without a way to name its backend
    pool._network_backend = DeadlineBackend(pool._network_backend)
    return transport
