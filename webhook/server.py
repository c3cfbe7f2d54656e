"""uvicorn serving the app over TLS that reloads, and stopping gracefully on SIGTERM.

uvicorn runs on uvloop with the httptools parser: uvloop's TLS transport and event loop and the
compiled HTTP parser cost a fraction of asyncio's and h11's pure-Python ones per request. Both
are named outright rather than left to "auto", so a missing one fails the start instead of
silently serving at a fraction of the speed. Each connection writes through a transport that
sends a response's head and body as one TLS record (CoalescingTransport).

On SIGTERM uvicorn stops accepting connections, lets requests already received finish (up to
`shutdown_timeout`), closes idle keep-alive connections and returns.
"""

from __future__ import annotations

import asyncio
import signal
import ssl
from collections.abc import Callable, Iterable
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from webhook.app import create_app
from webhook.core.settings import Settings
from webhook.logs import configure_logging
from webhook.tls import ReloadingTLS

# kube-apiserver keeps connections to webhooks open; closing them too eagerly races its reuse.
KEEP_ALIVE_SECONDS = 75


def build_server(settings: Settings, tls: ReloadingTLS, host: str, port: int) -> uvicorn.Server:
    def ssl_context(_: uvicorn.Config, __: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
        return tls.server_context

    config = uvicorn.Config(
        create_app(settings),
        host=host,
        port=port,
        ssl_context_factory=ssl_context,
        log_config=None,
        access_log=False,
        server_header=False,
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
        timeout_graceful_shutdown=int(settings.shutdown_timeout),
        lifespan="on",
        loop="uvloop",
        http=CoalescingHttpToolsProtocol,
        # The apiserver calls the webhook directly; there is no proxy whose headers to trust.
        proxy_headers=False,
    )
    return uvicorn.Server(config)


class CoalescingTransport(asyncio.Transport):
    """A transport whose writes made in one step of the event loop leave together.

    uvicorn writes a response's head and its body separately; over TLS each write is its own
    record and its own send, which cost about as much again as the rest of the HTTP layer. Here
    a write is held until the loop's next step, so that head and body (both sent before the app
    yields) go out as one record in one system call. Everything else passes straight through;
    closing sends what is held first, aborting drops it.
    """

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._held:
            self._loop.call_soon(self._flush)
        self._held.append(bytes(data))

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        for data in list_of_data:
            self.write(data)

    def _flush(self) -> None:
        if not self._held:
            return
        data = self._held[0] if len(self._held) == 1 else b"".join(self._held)
        self._held.clear()
        if not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def abort(self) -> None:
        self._held.clear()
        self._transport.abort()

    def write_eof(self) -> None:
        self._flush()
        self._transport.write_eof()

    def can_write_eof(self) -> bool:
        return self._transport.can_write_eof()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._transport.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._transport.get_protocol()

    def is_reading(self) -> bool:
        return self._transport.is_reading()

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._transport.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._held))

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._transport.get_write_buffer_limits()


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, writing through a CoalescingTransport."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CoalescingTransport(transport, self.loop))


def serve(settings: Settings, host: str, port: int, cert_file: Path, key_file: Path) -> int:
    configure_logging(settings.log_level)
    tls = ReloadingTLS(cert_file, key_file, settings.cert_reload_interval)
    server = build_server(settings, tls, host, port)
    # uvicorn re-raises the signal it handled once it has drained; exiting 0 then (or at once, if
    # SIGTERM arrives before uvicorn is listening) makes a normal rollout look normal.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    tls.start()
    try:
        server.run()
    finally:
        tls.stop()
    return 0 if server.started else 1


def _exit_cleanly(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)
