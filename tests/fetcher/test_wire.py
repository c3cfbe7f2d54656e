"""Bodies read straight off the connection: the exact bytes, whatever framing the origin uses.

The parser is the real h11 and the origins are real sockets; only the property tests cut a
response into reads by hand, as a socket may.
"""

from __future__ import annotations

import hashlib
import itertools
import socket
import ssl
import threading
from pathlib import Path

import h11
import httpcore
import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fetcher.http.body import paced_body
from fetcher.http.client import make_client
from fetcher.http.exchange import open_response
from fetcher.http.ratelimit import TokenBucket, Unlimited
from fetcher.http.retry import Retryable, RetryPolicy
from fetcher.http.target import Target
from fetcher.http.wire import WireStream, bodies_kept_from_parser, direct_body
from tests.support.origin import Origin, TLSOrigin
from tests.webhook.certs import issue, make_authority

REQUEST = b"GET /m HTTP/1.1\r\nHost: o\r\n\r\n"


class _Reads(httpcore.NetworkStream):
    """A connection whose reads return the given pieces in turn (as a socket may cut them)."""

    def __init__(self, pieces: list[bytes]) -> None:
        self._pieces = list(pieces)

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        if not self._pieces:
            return b""
        piece = self._pieces.pop(0)
        if len(piece) > max_bytes:
            self._pieces.insert(0, piece[max_bytes:])
            piece = piece[:max_bytes]
        return piece

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        return None

    def close(self) -> None:
        return None


def _cut(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


def _head_through_h11(wire: WireStream) -> h11.Response:
    """What httpcore does: write the request, feed h11 reads until the final head is out."""
    parser = h11.Connection(h11.CLIENT)
    wire.write(parser.send(h11.Request(method="GET", target="/m", headers=[("Host", "o")])))
    parser.send(h11.EndOfMessage())
    while True:
        event = parser.next_event()
        if event is h11.NEED_DATA:
            parser.receive_data(wire.read(256 * 1024))
            continue
        if isinstance(event, h11.Response):
            assert parser.trailing_data == (b"", False), "the parser holds body bytes"
            return event
        assert isinstance(event, h11.InformationalResponse), event


def _response_head(length: int, *, line_end: bytes, interim: int) -> bytes:
    heads = [b"HTTP/1.1 100 Continue" + line_end * 2] * interim
    heads.append(
        line_end.join([b"HTTP/1.1 200 OK", b"Content-Length: %d" % length, b'ETag: "e"', b"", b""])
    )
    return b"".join(heads)


bodies = st.one_of(
    st.binary(max_size=300),
    st.sampled_from([b"\n\n", b"\r\n\r\n", b"\n\r\nHTTP/1.1 200 OK\r\n\r\n", b"\r\n" * 40]),
)


@settings(max_examples=300, deadline=None)
@given(
    body=bodies,
    line_end=st.sampled_from([b"\r\n", b"\n"]),
    interim=st.integers(0, 2),
    cuts=st.lists(st.integers(0, 10_000), max_size=12),
)
def test_the_parser_gets_exactly_the_head_and_the_body_is_what_follows_it(
    body: bytes, line_end: bytes, interim: int, cuts: list[int]
) -> None:
    response = _response_head(len(body), line_end=line_end, interim=interim) + body
    wire = WireStream(_Reads(_cut(response, cuts)))
    head = _head_through_h11(wire)
    assert head.status_code == 200
    assert wire.at_head_end
    received = b""
    while len(received) < len(body):
        piece = wire.read_body(1 << 20, None)
        assert piece, "the body ended early"
        received += piece
    assert received == body


@settings(max_examples=100, deadline=None)
@given(body=bodies, cuts=st.lists(st.integers(0, 10_000), max_size=12))
def test_a_body_read_by_the_parser_itself_marks_the_connection_as_no_longer_at_a_head_end(
    body: bytes, cuts: list[int]
) -> None:
    response = _response_head(len(body), line_end=b"\r\n", interim=0) + body + b"X"
    wire = WireStream(_Reads(_cut(response, cuts)))
    _head_through_h11(wire)
    wire.read(1 << 20)  # the parser reads on, past the head
    assert not wire.at_head_end


def _range_head(length: int, *, line_end: bytes, interim: int) -> bytes:
    heads = [b"HTTP/1.1 100 Continue" + line_end * 2] * interim
    lines = [
        b"HTTP/1.1 206 Partial Content",
        b"Content-Range: bytes 0-%d/999999" % max(0, length - 1),
        b"content-length: %d" % length,
        b'ETag: "e"',
    ]
    heads.append(line_end.join([*lines, b"", b""]))
    return b"".join(heads)


def _exchange(parser: h11.Connection, wire: WireStream) -> tuple[h11.Response, bytes]:
    """One request and its kept-back body on a reused h11 connection, as httpcore runs it."""
    wire.write(parser.send(h11.Request(method="GET", target="/m", headers=[("Host", "o")])))
    parser.send(h11.EndOfMessage())
    while not isinstance(event := parser.next_event(), h11.Response):
        if event is h11.NEED_DATA:
            parser.receive_data(wire.read(256 * 1024))
        else:
            assert isinstance(event, h11.InformationalResponse), event
    assert parser.trailing_data == (b"", False), "the parser holds body bytes"
    assert wire.kept_length is not None
    body = b""
    while len(body) < wire.kept_length:
        piece = wire.read_body(min(1 << 20, wire.kept_length - len(body)), None)
        assert piece, "the body ended early"
        body += piece
    assert parser.next_event() == h11.EndOfMessage(), "the parser was told of a body"
    parser.start_next_cycle()
    return event, body


@settings(max_examples=300, deadline=None)
@given(
    first=bodies,
    second=bodies,
    line_end=st.sampled_from([b"\r\n", b"\n"]),
    interim=st.integers(0, 2),
    cuts=st.lists(st.integers(0, 10_000), max_size=12),
)
def test_kept_back_range_bodies_leave_the_connection_at_the_next_answer(
    first: bytes, second: bytes, line_end: bytes, interim: int, cuts: list[int]
) -> None:
    answers = b"".join(
        _range_head(len(body), line_end=line_end, interim=interim) + body
        for body in (first, second)
    )
    wire = WireStream(_Reads(_cut(answers, cuts)))
    parser = h11.Connection(h11.CLIENT)
    with bodies_kept_from_parser():
        for body in (first, second):
            head, received = _exchange(parser, wire)
            assert head.status_code == 206
            assert dict(head.headers)[b"content-length"] == b"0"
            assert received == body
    assert not wire.get_extra_info("is_readable"), "bytes of the answers are left unread"
    assert wire.read(1) == b""


@pytest.mark.parametrize(
    "head",
    [
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", id="not-206"),
        pytest.param(
            b"HTTP/1.1 206 Partial Content\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Length: 5\r\n\r\n",
            id="chunked-and-a-length",
        ),
        pytest.param(b"HTTP/1.1 206 Partial Content\r\nConnection: close\r\n\r\n", id="no-length"),
        pytest.param(
            b"HTTP/1.1 206 Partial Content\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
            id="two-lengths",
        ),
        pytest.param(
            b"HTTP/1.1 206 Partial Content\r\nContent-Length: +5\r\n\r\n", id="signed-length"
        ),
    ],
)
def test_a_head_that_is_not_a_plain_range_answer_reaches_the_parser_unchanged(head: bytes) -> None:
    wire = WireStream(_Reads([head + b"hello"]))
    with bodies_kept_from_parser():
        wire.write(REQUEST)
        assert wire.read(256 * 1024) == head
    assert wire.kept_length is None


def _trickle(head: bytes) -> list[bytes]:
    return [head[i : i + 1] for i in range(len(head))]


def test_a_kept_head_sent_a_byte_at_a_time_is_read_whole_and_its_body_exact() -> None:
    body = b"\r\n\r\n" + bytes(range(256))
    wire = WireStream(
        _Reads([*_trickle(_range_head(len(body), line_end=b"\r\n", interim=1)), body])
    )
    parser = h11.Connection(h11.CLIENT)
    with bodies_kept_from_parser():
        head, received = _exchange(parser, wire)
    assert head.status_code == 206
    assert received == body


def test_a_head_longer_than_httpcore_allows_is_left_to_the_parser() -> None:
    filler = b"".join(b"X-Filler-%d: %s\r\n" % (n, b"y" * 100) for n in range(1100))
    head = b"HTTP/1.1 206 Partial Content\r\nContent-Length: 5\r\n" + filler + b"\r\n"
    wire = WireStream(_Reads([head + b"hello"]))
    with bodies_kept_from_parser():
        wire.write(REQUEST)
        handed = b""
        while not wire.at_head_end:
            handed += wire.read(256 * 1024)
    assert handed == head
    assert wire.kept_length is None  # the parser reads this body itself


def test_a_head_kept_whole_still_meets_the_read_timeout() -> None:
    class _Slow(_Reads):
        def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
            if timeout is not None and timeout <= 0:
                raise AssertionError("read with no time left")
            self.calls = getattr(self, "calls", 0) + 1
            if self.calls > 3:
                raise httpcore.ReadTimeout("timed out")  # what the socket does once time is up
            return super().read(max_bytes, timeout)

    wire = WireStream(_Slow(_trickle(_range_head(5, line_end=b"\r\n", interim=0))))
    with bodies_kept_from_parser():
        wire.write(REQUEST)
        with pytest.raises(httpcore.ReadTimeout):
            wire.read(256 * 1024, timeout=5)


# --- against real sockets ---------------------------------------------------------------


class _Scripted:
    """A loopback server that answers each connection with the next canned bytes, then
    closes it (after reading the request head, so the client never sees a reset)."""

    def __init__(self, answers: list[bytes]) -> None:
        self._answers = list(answers)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.connections = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}/m"

    def _serve(self) -> None:
        while self._answers:
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return
            with connection:
                self.connections += 1
                request = b""
                while b"\r\n\r\n" not in request:
                    more = connection.recv(65536)
                    if not more:
                        break
                    request += more
                connection.sendall(self._answers.pop(0))
                connection.shutdown(socket.SHUT_WR)
                while connection.recv(65536):
                    pass

    def close(self) -> None:
        self._listener.close()


def _client() -> httpx.Client:
    return make_client(ca_bundle=None, authorization=None, read_timeout=10, connect_timeout=10)


def _policy() -> RetryPolicy:
    return RetryPolicy(retries=0, read_timeout=10)


def _body(url: str, *, limiter: TokenBucket | Unlimited | None = None) -> tuple[bytes, bool]:
    """The body paced_body gives for url, and whether it was read off the connection."""
    with _client() as client, open_response(client, Target(url, url), {}, 10) as response:
        direct = direct_body(response) is not None
        pieces = paced_body(response, limiter or Unlimited(), _policy(), lambda: None, direct=True)
        return b"".join(pieces), direct


BODY = bytes(range(256)) * 12 + b"\n\n\r\n\r\nHTTP/1.1 200 OK\r\n\r\n" + b"tail"


@pytest.mark.parametrize(
    ("answer", "expected_direct"),
    [
        pytest.param(
            b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(BODY) + BODY,
            True,
            id="crlf-head",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\nContent-Length: %d\n\n" % len(BODY) + BODY, True, id="bare-lf-head"
        ),
        pytest.param(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(BODY) + BODY,
            True,
            id="interim-heads-in-the-same-packet",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(BODY) + BODY + b"EXTRA" * 99,
            True,
            id="bytes-past-the-content-length",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"%x\r\n" % len(BODY)
            + BODY
            + b"\r\n0\r\n\r\n",
            False,
            id="chunked",
        ),
        pytest.param(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + BODY, False, id="no-length"),
    ],
)
def test_every_framing_gives_the_body_exactly(answer: bytes, expected_direct: bool) -> None:
    server = _Scripted([answer])
    try:
        body, direct = _body(server.url)
    finally:
        server.close()
    assert body == BODY
    assert direct is expected_direct


def test_a_body_cut_short_is_retryable_and_says_how_far_it_got() -> None:
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (len(BODY) + 10) + BODY
    server = _Scripted([answer])
    try:
        said = f"received {len(BODY)} bytes, expected {len(BODY) + 10}"
        with pytest.raises(Retryable, match=said):
            _body(server.url)
    finally:
        server.close()


def test_under_a_bandwidth_cap_pieces_stay_within_the_burst() -> None:
    payload = hashlib.sha256(b"x").digest() * 40_000  # 1.25 MiB
    with Origin() as origin:
        origin.add("/m", payload)
        limiter = TokenBucket(4 << 20)
        target = Target(origin.url("/m"), "origin")
        with _client() as client, open_response(client, target, {}, 10) as response:
            pieces = list(paced_body(response, limiter, _policy(), lambda: None, direct=True))
    assert b"".join(pieces) == payload
    assert max(len(p) for p in pieces) <= limiter.capacity


def test_each_directly_read_response_gets_a_fresh_connection_and_the_next_one_is_whole() -> None:
    # The parser never saw the first body, so its connection must not carry the second
    # request; reusing it would hand the second response's parser the first one's leftovers.
    with Origin() as origin:
        origin.add("/m", BODY)
        with _client() as client:
            for _ in range(3):
                with open_response(client, Target(origin.url("/m"), "origin"), {}, 10) as response:
                    assert direct_body(response) is not None
                    pieces = paced_body(response, Unlimited(), _policy(), lambda: None, direct=True)
                    assert b"".join(pieces) == BODY
    assert [r.status for r in origin.requests] == [200, 200, 200]


def _serving_context(directory: Path) -> ssl.SSLContext:
    """An origin's TLS context, its certificate from a new CA written to directory/ca.crt."""
    authority = make_authority()
    serving = issue(authority)
    (directory / "origin.crt").write_bytes(serving.cert_pem)
    (directory / "origin.key").write_bytes(serving.key_pem)
    (directory / "ca.crt").write_bytes(authority.pem())
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(directory / "origin.crt", directory / "origin.key")
    return context


def test_https_bodies_are_read_directly_too(tmp_path: Path) -> None:
    context = _serving_context(tmp_path)
    payload = hashlib.sha256(b"tls").digest() * 100_000  # 3.2 MB, many TLS records
    with TLSOrigin(context) as origin:
        origin.add("/m", payload)
        with (
            make_client(
                ca_bundle=tmp_path / "ca.crt",
                authorization=None,
                read_timeout=10,
                connect_timeout=10,
            ) as client,
            open_response(client, Target(origin.url("/m"), "origin"), {}, 10) as response,
        ):
            assert direct_body(response) is not None
            body = b"".join(paced_body(response, Unlimited(), _policy(), lambda: None, direct=True))
    assert hashlib.sha256(body).digest() == hashlib.sha256(payload).digest()


def _ranges(client: httpx.Client, url: str, spans: list[tuple[int, int]]) -> list[bytes]:
    bodies = []
    for first, last in spans:
        headers = {"Range": f"bytes={first}-{last}"}
        with (
            bodies_kept_from_parser(),
            open_response(client, Target(url, "origin"), headers, 10) as response,
        ):
            assert response.status_code == 206
            assert direct_body(response) is not None, "the range went through the parser"
            pieces = paced_body(response, Unlimited(), _policy(), lambda: None, direct=True)
            bodies.append(b"".join(pieces))
    return bodies


PAYLOAD = hashlib.sha256(b"ranges").digest() * 20_000  # 640 KB


def test_ranges_read_off_the_connection_share_one_connection_and_come_out_exact() -> None:
    spans = [(0, 99_999), (100_000, 100_000), (100_001, 400_000), (400_001, len(PAYLOAD) - 1)]
    with Origin() as origin, _client() as client:
        origin.add("/m", PAYLOAD)
        bodies = _ranges(client, origin.url("/m"), spans)
        assert [r.status for r in origin.requests] == [206] * len(spans)
        assert len({r.connection for r in origin.requests}) == 1
    assert bodies == [PAYLOAD[a : b + 1] for a, b in spans]


def test_a_range_left_half_read_closes_its_connection_and_the_next_one_is_exact() -> None:
    with Origin() as origin, _client() as client:
        origin.add("/m", PAYLOAD)
        url = origin.url("/m")
        with (
            bodies_kept_from_parser(),
            open_response(client, Target(url, "origin"), {"Range": "bytes=0-599999"}, 10) as half,
        ):
            pieces = paced_body(half, Unlimited(), _policy(), lambda: None, direct=True)
            assert next(pieces)  # then left, as a stop request or a kill leaves it
        assert _ranges(client, url, [(1000, 1999)]) == [PAYLOAD[1000:2000]]
        assert len({r.connection for r in origin.requests}) == 2


def test_https_ranges_keep_their_connection_too(tmp_path: Path) -> None:
    context = _serving_context(tmp_path)
    spans = [(0, 299_999), (300_000, len(PAYLOAD) - 1)]
    with (
        TLSOrigin(context) as origin,
        make_client(
            ca_bundle=tmp_path / "ca.crt", authorization=None, read_timeout=10, connect_timeout=10
        ) as client,
    ):
        origin.add("/m", PAYLOAD)
        bodies = _ranges(client, origin.url("/m"), spans)
        assert len({r.connection for r in origin.requests}) == 1
    assert bodies == [PAYLOAD[a : b + 1] for a, b in spans]
