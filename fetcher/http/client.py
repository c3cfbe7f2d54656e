"""The one HTTP client every origin of a fetch shares: trust, headers, timeouts, read size."""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import certifi
import httpcore
import httpx

from fetcher.errors import UsageError
from fetcher.http.deadline import deadline_transport
from fetcher.http.retry import OriginRefused
from fetcher.urls import redact

# httpcore reads a body 64 KiB per socket read, and each read costs a trip through h11,
# httpcore and httpx in Python, holding the GIL. Model archives are large, so larger reads
# cut that per-byte cost by a factor: on loopback, one connection went from 4.3 s to 3.1 s
# for 1.4 GiB, four from 5.9 s to 4.6 s (docs/benchmarks.md). Larger still gained little more
# and added a MiB of memory per connection. (The single stream's body skips this stack
# altogether: fetcher.http.wire reads it off the connection.)
READ_SIZE = 256 * 1024
MAX_REDIRECTS = 10


def _read_in_larger_pieces() -> None:
    connection = getattr(httpcore, "HTTP11Connection", None)
    if connection is not None and getattr(connection, "READ_NUM_BYTES", 0) < READ_SIZE:
        connection.READ_NUM_BYTES = READ_SIZE


def make_client(
    *,
    ca_bundle: Path | None,
    authorization: str | None,
    read_timeout: float,
    connect_timeout: float,
    transport: httpx.BaseTransport | None = None,
) -> httpx.Client:
    """The client; tests hand in a transport (httpx.MockTransport) instead of sockets."""
    _read_in_larger_pieces()
    context = _trusting(os.environ.get("SSL_CERT_FILE"), "SSL_CERT_FILE")
    if ca_bundle:
        _load(context, ca_bundle, "--ca-bundle")
    headers = {"User-Agent": "model-fetch/0.1", "Accept-Encoding": "identity"}
    if authorization:
        headers["Authorization"] = authorization
    return httpx.Client(
        verify=context,
        headers=headers,
        follow_redirects=True,
        max_redirects=MAX_REDIRECTS,
        event_hooks={"response": [refuse_downgrade]},
        timeout=httpx.Timeout(read_timeout, connect=connect_timeout),
        trust_env=True,  # HTTPS_PROXY and NO_PROXY, as clusters behind a proxy need
        transport=transport or deadline_transport(context),
    )


def refuse_downgrade(response: httpx.Response) -> None:
    """A redirect may never take an https request to plain http, where anyone can read it."""
    if not response.is_redirect or response.request.url.scheme != "https":
        return
    location = response.headers.get("location", "")
    target = response.request.url.join(location)
    if target.scheme != "https":
        raise OriginRefused(
            f"it redirects to {redact(str(target))}, which is not https; an https source is "
            "never followed to plain http"
        )


def _trusting(cafile: str | None, what: str) -> ssl.SSLContext:
    """A context trusting cafile (named by what, in the error) or else certifi's roots."""
    if not cafile:
        return ssl.create_default_context(cafile=certifi.where())
    try:
        return ssl.create_default_context(cafile=cafile)
    except (ssl.SSLError, OSError) as error:
        raise _unreadable(what, cafile, error) from None


def _load(context: ssl.SSLContext, cafile: Path, what: str) -> None:
    try:
        context.load_verify_locations(cafile=str(cafile))
    except (ssl.SSLError, OSError) as error:
        raise _unreadable(what, str(cafile), error) from None


def _unreadable(what: str, cafile: str, error: Exception) -> UsageError:
    reason = getattr(error, "reason", None) or getattr(error, "strerror", None) or error
    return UsageError(
        f"{what} {cafile}: no CA certificate could be read from it ({reason})",
        "give a file of PEM certificates (-----BEGIN CERTIFICATE-----)",
    )
