"""`model-webhook serve`'s server, run in a thread on a loopback port, and a TLS client for it."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509

from tests.webhook.certs import Authority
from webhook.core.settings import Settings
from webhook.server import build_server
from webhook.tls import ReloadingTLS


@dataclass
class RunningServer:
    port: int
    tls: ReloadingTLS


@contextmanager
def running_server(
    cert_file: Path, key_file: Path, settings: Settings | None = None, interval: float = 0.05
) -> Iterator[RunningServer]:
    settings = settings or Settings()
    tls = ReloadingTLS(cert_file, key_file, interval)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = build_server(settings, tls, "127.0.0.1", port)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    tls.start()
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.01)
    try:
        yield RunningServer(port, tls)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        tls.stop()
        sock.close()


def client_context(authority: Authority) -> ssl.SSLContext:
    return ssl.create_default_context(cadata=authority.pem().decode())


def connect(port: int, context: ssl.SSLContext) -> http.client.HTTPSConnection:
    return http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)


def post_json(connection: http.client.HTTPConnection, path: str, body: Any) -> tuple[int, Any]:
    connection.request(
        "POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"}
    )
    reply = connection.getresponse()
    return reply.status, json.loads(reply.read())


def peer_serial(port: int, context: ssl.SSLContext, server_name: str | None = None) -> int:
    """The serial number of the certificate a new connection is shown."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=server_name or "127.0.0.1") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number
