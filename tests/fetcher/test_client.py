"""The shared HTTP client: what it trusts and sends, and the read size it gives httpcore."""

from __future__ import annotations

from pathlib import Path

import httpcore
import pytest

from fetcher.cli import main
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


NOT_PEM = {
    "not PEM at all": b"this is not a certificate\n",
    "an empty file": b"",
    "a PEM block that is not a certificate": (
        b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n"
    ),
}


@pytest.mark.parametrize("content", NOT_PEM.values(), ids=NOT_PEM.keys())
@pytest.mark.parametrize("source", ["--ca-bundle", "SSL_CERT_FILE"])
def test_a_trust_file_without_a_certificate_exits_2_naming_it(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    content: bytes,
    source: str,
) -> None:
    bundle = tmp_path / "ca.pem"
    bundle.write_bytes(content)
    args = ["https://127.0.0.1:9/m.tar.zst", "-o", str(tmp_path / "out")]
    if source == "--ca-bundle":
        args += ["--ca-bundle", str(bundle)]
    else:
        monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
    assert main(args) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith(f"model-fetch: error: {source} {bundle}: no CA certificate")
    assert "give a file of PEM certificates" in lines[-1]
    assert "internal error" not in lines[-1]
