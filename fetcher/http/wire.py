"""Reading a response body straight off the connection, past the HTTP client's parser.

httpx parses a body through h11 and httpcore, which copy every byte three times in Python
(h11 appends each read to a buffer, slices it, httpcore turns the slice into ``bytes``) and
hold the GIL for each step; for a model archive that is most of the network thread's own work
and time the decoder and the file writes wait for the GIL. A body sent with a Content-Length
and no Transfer-Encoding is just the next Content-Length bytes on the connection, so it can
be read there directly, in large pieces with no copy at all.

That is only sound when the parser holds none of those bytes already. ``WireStream`` sits
between httpcore and the socket and, while a response head is awaited (from a request's
write until a final, non-1xx head has gone by), hands the parser nothing past the blank line
that ends a head; it keeps the rest for the next read. It remembers whether the last bytes it
handed over ended exactly there, and only then may ``direct_body`` take over. The connection
is closed afterwards (the parser never saw the body, so httpcore will not reuse it).

Ranges want their connections kept: on a distant origin a TCP and TLS handshake per range
costs more than the parsing does. A request sent within ``bodies_kept_from_parser()`` has a
206 answer's head handed over whole, its Content-Length told to the parser as 0 and the real
one kept here; ``direct_body`` reads that many bytes, then lets the parser finish its empty
body, so httpcore returns the connection to its pool at a clean boundary. A connection whose
body was not read to the end says it is readable, which is how httpcore learns that an idle
connection is unusable: it closes it instead of sending another request on it.
"""

from __future__ import annotations

import contextlib
import re
import ssl
import threading
import time
import typing
from collections.abc import Iterator

import httpcore
import httpx

# What ends a head for h11: a line feed, an optional carriage return, a line feed.
HEAD_END = re.compile(rb"\n\r?\n")
WIRE = "model-fetch-wire"  # the get_extra_info key that finds the WireStream under a stream
PIECE_BYTES = 1 << 20
HEAD_BYTES = 100 << 10  # httpcore's own limit on a head; one longer is left to the parser
_local = threading.local()


@contextlib.contextmanager
def bodies_kept_from_parser() -> Iterator[None]:
    """Requests sent within this block, on this thread, keep a 206 body from the parser."""
    _local.keep_body = True
    try:
        yield
    finally:
        _local.keep_body = False


class WireStream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner
        self._pending = b""  # received after a head's end, not yet read by anyone
        self._awaiting_head = False
        self._tail = b""  # the last bytes of the head so far, for an end split across reads
        self._status = b""  # the head's first bytes, to tell an interim 1xx from the final one
        self.at_head_end = False  # the parser has been given exactly up to a final head's end
        self._keep_body = False  # the request was sent within bodies_kept_from_parser()
        self.kept_length: int | None = None  # the Content-Length the parser was told is 0
        self._body_left = 0  # of it, not read yet

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._awaiting_head, self._tail, self._status = True, b"", b""
        self.at_head_end = False
        self._keep_body = getattr(_local, "keep_body", False)
        self.kept_length, self._body_left = None, 0
        self._inner.write(buffer, timeout)

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        if self._awaiting_head and self._keep_body:
            return self._whole_head(timeout)
        data = self._next(max_bytes, timeout)
        if not data:
            return data
        if not self._awaiting_head:
            self.at_head_end = False
            return data
        return self._up_to_head_end(data)

    def _up_to_head_end(self, data: bytes) -> bytes:
        if len(self._status) < 12:
            self._status += data[: 12 - len(self._status)]
        seen = self._tail + data
        found = HEAD_END.search(seen)
        if found is None:
            self._tail = seen[-2:]
            return data
        cut = found.end() - len(self._tail)
        self._pending = data[cut:] + self._pending
        interim = self._status[9:10] == b"1"  # "HTTP/1.1 1xx": another head follows
        self._awaiting_head = interim
        self.at_head_end = not interim
        self._tail, self._status = b"", b""
        return data[:cut]

    def _whole_head(self, timeout: float | None) -> bytes:
        """The next head, read whole (its Content-Length may need rewriting) within timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        received = bytearray()
        searched = 0  # an origin sending a byte at a time costs one pass over the head, not n
        while HEAD_END.search(received, searched) is None:
            searched = max(0, len(received) - 2)
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise httpcore.ReadTimeout("timed out")
            data = self._next(HEAD_BYTES, left)
            if not data:
                return bytes(received)  # the origin closed: the parser reports what it got
            received += data
            if len(received) > HEAD_BYTES:
                self._keep_body = False  # the parser refuses it, or reads it itself
                break
        head = self._up_to_head_end(bytes(received))
        if self.at_head_end and self._keep_body:
            head, self.kept_length = _hide_length(head)
            self._body_left = self.kept_length or 0
        return head

    def read_body(self, max_bytes: int, timeout: float | None) -> bytes:
        """The next bytes after the head, bypassing the parser (see direct_body)."""
        self.at_head_end = False
        data = self._next(max_bytes, timeout)
        self._body_left = max(0, self._body_left - len(data))
        return data

    def _next(self, max_bytes: int, timeout: float | None) -> bytes:
        """What was kept from past a head's end first, then the connection's next bytes."""
        if self._pending:
            data, self._pending = self._pending[:max_bytes], self._pending[max_bytes:]
            return data
        return self._inner.read(max_bytes, timeout)

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        if self._pending:  # a proxy that sent bytes after its CONNECT answer, before TLS
            raise httpcore.ConnectError("the proxy sent data before the TLS handshake")
        return WireStream(self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> typing.Any:
        if info == WIRE:
            return self
        if info == "is_readable" and (self._pending or self._body_left):
            return True  # unread bytes of the last answer: httpcore must not reuse this
        return self._inner.get_extra_info(info)


def _hide_length(head: bytes) -> tuple[bytes, int | None]:
    """A 206 head with its one Content-Length told as 0, and the real length; else unchanged."""
    lines = head.split(b"\n")
    if lines[0][9:12] != b"206":
        return head, None
    names = [line.split(b":", 1)[0].lower() for line in lines[1:]]
    if b"transfer-encoding" in names or names.count(b"content-length") != 1:
        return head, None
    at = names.index(b"content-length") + 1
    name, value = lines[at].split(b":", 1)
    value = value.strip(b" \t\r")
    if not value.isdigit() or lines[at + 1][:1] in (b" ", b"\t"):  # malformed, or folded on
        return head, None
    lines[at] = name + b": 0" + (b"\r" if lines[at].endswith(b"\r") else b"")
    return b"\n".join(lines), int(value)


def direct_body(response: httpx.Response, piece_bytes: int = PIECE_BYTES) -> Iterator[bytes] | None:
    """The body read off the connection in pieces of up to piece_bytes; None where unsound.

    Unsound, and left to httpx: a chunked or length-less body, a connection that did not come
    through a WireStream, or one whose parser may already hold body bytes.
    """
    stream = response.extensions.get("network_stream")
    wire = stream.get_extra_info(WIRE) if stream is not None else None
    if not isinstance(wire, WireStream) or not wire.at_head_end:
        return None
    timeout = response.request.extensions.get("timeout", {}).get("read")
    if wire.kept_length is not None:
        return _pieces_then_reuse(response, wire, wire.kept_length, piece_bytes, timeout)
    if "transfer-encoding" in response.headers:
        return None
    declared = response.headers.get("content-length", "")
    if not declared.isdigit():
        return None
    return _pieces(wire, int(declared), piece_bytes, timeout)


def _pieces_then_reuse(
    response: httpx.Response,
    wire: WireStream,
    length: int,
    piece_bytes: int,
    timeout: float | None,
) -> Iterator[bytes]:
    yield from _pieces(wire, length, piece_bytes, timeout)
    response.read()  # the parser's empty body: it ends the exchange, and the pool takes it back


def _pieces(
    wire: WireStream, length: int, piece_bytes: int, timeout: float | None
) -> Iterator[bytes]:
    # One read per piece, handed on at once: a socket that holds a whole piece gives it with
    # no copy, and whoever reads these pieces batches small ones (holding them here as well
    # held back bytes a kill then lost, and made resumes start further back).
    received = 0
    while received < length:
        data = _read(wire, min(piece_bytes, length - received), timeout, received, length)
        received += len(data)
        yield data


def _read(wire: WireStream, want: int, timeout: float | None, received: int, length: int) -> bytes:
    try:
        data = wire.read_body(want, timeout)
    except httpcore.TimeoutException as error:
        raise httpx.ReadTimeout(str(error) or "timed out") from None
    except httpcore.NetworkError as error:
        raise httpx.ReadError(str(error) or type(error).__name__) from None
    if not data:
        raise httpx.RemoteProtocolError(
            "peer closed connection without sending complete message body: "
            f"received {received} bytes, expected {length}"
        )
    return data
