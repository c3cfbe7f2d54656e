"""uvicorn serving the app over TLS that reloads, and stopping gracefully on SIGTERM.

uvicorn runs on uvloop with the httptools parser: uvloop's TLS transport and event loop and the
compiled HTTP parser cost a fraction of asyncio's and h11's pure-Python ones per request. Both
are named outright rather than left to "auto", so a missing one fails the start instead of
silently serving at a fraction of the speed.

On SIGTERM uvicorn stops accepting connections, lets requests already received finish (up to
`shutdown_timeout`), closes idle keep-alive connections and returns.
"""

from __future__ import annotations

import signal
import ssl
from collections.abc import Callable
from pathlib import Path
from types import FrameType

import uvicorn

from webhook.app import create_app
from webhook.logs import configure_logging
from webhook.settings import Settings
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
        http="httptools",
        # The apiserver calls the webhook directly; there is no proxy whose headers to trust.
        proxy_headers=False,
    )
    return uvicorn.Server(config)


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
