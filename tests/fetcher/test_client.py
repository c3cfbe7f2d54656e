"""The shared HTTP client: what it trusts and sends, and the read size it gives httpcore."""

from __future__ import annotations

import httpcore

from fetcher.http.client import READ_SIZE, make_client
from tests.support.origin import Origin


def test_bodies_are_read_in_large_pieces_through_httpcore() -> None:
    # If httpcore renames or drops the attribute, this fails instead of the fetcher silently
    # going back to 64 KiB reads.
    with make_client(ca_bundle=None, authorization=None, read_timeout=5, connect_timeout=5):
        assert httpcore.HTTP11Connection.READ_NUM_BYTES == READ_SIZE
    with Origin() as origin:
        body = bytes(range(256)) * 8192  # 2 MiB
        origin.add("/f", body)
        with (
            make_client(
                ca_bundle=None, authorization=None, read_timeout=5, connect_timeout=5
            ) as client,
            client.stream("GET", origin.url("/f")) as response,
        ):
            pieces = [len(piece) for piece in response.iter_raw()]
    assert sum(pieces) == len(body)
    assert max(pieces) > 64 * 1024  # more than httpcore's own 64 KiB per read


def test_the_authorization_header_and_identity_encoding_are_sent() -> None:
    with Origin() as origin:
        origin.add("/f", b"x")
        with make_client(
            ca_bundle=None, authorization="Bearer t", read_timeout=5, connect_timeout=5
        ) as client:
            assert client.get(origin.url("/f")).content == b"x"
        (request,) = origin.requests
    assert request.authorization == "Bearer t"
    headers = {name.lower(): value for name, value in request.headers.items()}
    assert headers["accept-encoding"] == "identity"
