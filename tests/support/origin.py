"""A real threaded HTTP/1.1 origin on 127.0.0.1 for tests, with injectable faults.

The fetcher talks to this server over real sockets, so timeouts, dropped connections and
keep-alive behave as they do against nginx or S3. Typical use::

    with Origin() as origin:
        origin.add("/model.tar.zst", payload, faults=Faults(drop_after=1000))
        fetch(origin.url("/model.tar.zst"))
        assert [r.status for r in origin.requests] == [200, 206]

Behaviour, in the order the server decides it for each request to a known path:

1. ``Faults.statuses``: the next queued status is popped; anything but 200 is answered at once
   (with ``Retry-After`` for 429 and 503 when ``Faults.retry_after`` is set).
2. ``Faults.not_found`` -> 404; ``Faults.redirect_to`` -> 302 with ``Location``;
   ``Faults.require_authorization`` -> 401 unless the ``Authorization`` header equals it.
3. ``If-Match`` (strong comparison, ``*`` matches) -> 412 on mismatch; without ``If-Match``,
   ``If-Unmodified-Since`` -> 412 when the path's ``Last-Modified`` is later than that date
   (neither when ``Faults.ignore_preconditions``).
4. ``Range`` (single range ``a-b``, ``a-``, ``-n``) -> 206 or 416, unless ``Faults.ranges`` is
   False, ``If-Range`` does not match (full 200), or the header is malformed or asks for several
   ranges (ignored, full 200), as RFC 9110 allows.
5. Body faults on GET: ``drop_after``, ``stall_after``, ``lie_content_length``,
   ``drip_bytes_per_s``, ``first_byte_delay``.

6. ``Origin.on_body_progress`` hooks (progress-driven faults): before each body write to a
   watched path, from the handler thread, the hook gets the body bytes sent for that path
   since it was set, summed over all connections; returning False closes the connection
   instead of writing. ``Origin.kill_after`` sets one that SIGKILLs a client process once
   that many bytes have gone out, so a test kills at an exact point of the transfer whatever
   the machine's speed. A watched path is written in pieces of at most 64 KiB, so the hook
   is asked often enough to act within that many bytes of its threshold.

Unknown paths answer 404. Every request is logged in ``Origin.requests``. ``Origin.add_file``
serves a file from disk (mapped, not read into memory), for payloads too large to hold.
"""

from __future__ import annotations

import contextlib
import copy
import enum
import hashlib
import http.server
import mmap
import os
import re
import select
import signal
import socket
import ssl
import struct
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from email.utils import formatdate, parsedate_to_datetime
from pathlib import Path
from types import TracebackType
from typing import Literal
from urllib.parse import urlsplit

__all__ = ["AUTO", "BodyHook", "Faults", "KillSwitch", "Origin", "RequestRecord", "TLSOrigin"]


class _Auto(enum.Enum):
    AUTO = "auto"


AUTO: Literal[_Auto.AUTO] = _Auto.AUTO
"""Default for ``Origin.add``'s ``etag`` and ``last_modified``: derive one from the data."""

_CHUNK = 256 * 1024
_WATCHED_CHUNK = 64 * 1024
_DRIP_TICK_S = 0.02
_POLL_S = 0.02


@dataclass
class Faults:
    """What one path does wrong. The origin keeps its own copy; counters run down in that copy.

    ``*_times`` counters: how many GET responses get that fault before the path behaves again;
    ``None`` means every response. Only responses whose body is longer than the cut-off count.
    """

    ranges: bool = True
    """False: ignore ``Range`` and ``If-Range``, answer 200 with the full body, no
    ``Accept-Ranges``."""
    chunked: bool = False
    """Send the body with ``Transfer-Encoding: chunked`` and no ``Content-Length`` (a
    dropped answer then lacks its last chunk)."""
    ranges_only_for_the_probe: bool = False
    """Answer ``bytes=0-0`` with a 206 and any other range with 200 and the full body, as
    some caches do for a one-byte range only."""
    drop_after: int | None = None
    """Close the connection after sending this many body bytes of the response."""
    drop_times: int | None = 1
    drop_reset: bool = False
    """Drop with a TCP reset (client sees ECONNRESET) instead of an orderly FIN (client sees a
    short body)."""
    statuses: list[int] = field(default_factory=list)
    """Queue of statuses for the next requests; 200 in the queue means "answer normally"."""
    retry_after: str | None = None
    """``Retry-After`` value sent with queued 429 and 503 answers."""
    drip_bytes_per_s: float | None = None
    """Send the body at this rate (to trigger stall or low-speed timeouts)."""
    stall_after: int | None = None
    """Send this many body bytes, then hang without closing until the client goes away or the
    origin stops."""
    stall_times: int | None = None
    lie_content_length: int | None = None
    """Announce this ``Content-Length``, send the real body, then close the connection."""
    lie_times: int | None = None
    etag_changes_after: int | None = None
    """After this many requests to the path (counted since ``add``/``set_faults``), every
    further request sees a new strong ETag, as if the file were replaced each time. The bytes
    stay the same; use ``Origin.add`` to really replace them."""
    not_found: bool = False
    redirect_to: str | None = None
    """Answer 302 with this ``Location``."""
    require_authorization: str | None = None
    """Answer 401 unless the request's ``Authorization`` header is exactly this."""
    first_byte_delay: float = 0.0
    """Seconds to wait before sending the status line (time-to-first-byte)."""
    extra_headers: list[tuple[str, str]] = field(default_factory=list)
    """Sent with every answer that carries the file (e.g. a ``Content-Encoding`` it should not
    have)."""
    endless_zeros: bool = False
    """After the body, send zero bytes for ever, without ``Content-Length``, until the client
    leaves: a body no client can read to its end."""
    trickle_head_bytes_per_s: float | None = None
    """Send the status line and headers at this rate, a byte at a time."""
    ignore_preconditions: bool = False
    """Answer as if ``If-Match`` and ``If-Unmodified-Since`` were not sent, as some caches and
    old servers do: only the validators on the answer tell the client what it got."""


BodyHook = Callable[[int], bool]
"""Called before each body write to a watched path with the body bytes sent for the path since
the hook was set (all connections); True lets the write go ahead, False closes the connection
instead. Calls are serialized, one at a time, so a hook may keep state without a lock."""


@dataclass
class KillSwitch:
    """A ``BodyHook`` that SIGKILLs ``pid`` once ``after_bytes`` body bytes have been sent.

    It kills synchronously, before the write that would cross the threshold, and from then
    on closes every connection to the path unwritten: the client dies busy, having been sent
    at most ``after_bytes`` plus one write per connection already under way.
    """

    pid: int
    after_bytes: int
    fired_at: int | None = None
    """Body bytes sent when it fired; None while it has not."""
    signal_number: int = signal.SIGKILL
    """Another signal (SIGTERM) asks the process to stop on its own: the transfer then goes
    on, unhindered, so the process stops at its pace and writes what it writes on a stop."""

    @property
    def fired(self) -> bool:
        return self.fired_at is not None

    def __call__(self, sent: int) -> bool:
        gentle = self.signal_number != signal.SIGKILL
        if self.fired_at is not None:
            return gentle
        if sent < self.after_bytes:
            return True
        with contextlib.suppress(ProcessLookupError):  # it exited on its own meanwhile
            os.kill(self.pid, self.signal_number)
        self.fired_at = sent
        return gentle


@dataclass
class _Watch:
    hook: BodyHook
    sent: int = 0
    """Body bytes let through since the hook was set, counted when the write is allowed."""


@dataclass
class RequestRecord:
    """One request as the origin saw and answered it. ``Origin.requests`` hands out copies."""

    method: str
    path: str
    range: str | None
    if_range: str | None
    if_match: str | None
    authorization: str | None
    connection: int
    """Serial number of the TCP connection the request arrived on (keep-alive, parallelism)."""
    headers: dict[str, str] = field(default_factory=dict)
    status: int = 0
    """Status sent; 0 when the connection ended before a status line was sent."""
    body_bytes: int = 0
    """Body bytes written to the socket."""
    fault: str | None = None
    """Body fault applied: ``drop``, ``stall``, ``lie`` or ``None``."""
    done: bool = False

    @property
    def has_authorization(self) -> bool:
        return self.authorization is not None


@dataclass
class _File:
    data: bytes | mmap.mmap
    etag: str | None
    last_modified: str | None
    faults: Faults
    count: int = 0


@dataclass
class _Plan:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    cut: int | None = None
    fault: str | None = None
    reset: bool = False
    drip: float | None = None
    delay: float = 0.0
    close: bool = False
    endless_zeros: bool = False
    trickle_head: float | None = None
    chunked: bool = False


class _Unsatisfiable:
    pass


_UNSATISFIABLE = _Unsatisfiable()


def _strong_etag(data: bytes) -> str:
    return '"' + hashlib.sha256(data).hexdigest()[:20] + '"'


_RANGE = re.compile(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", re.IGNORECASE)


def _parse_range(value: str, total: int) -> tuple[int, int] | _Unsatisfiable | None:
    """Parse one ``bytes=`` range into ``(start, end_exclusive)``; None means ignore the header.

    Malformed values and multi-range requests are ignored (RFC 9110 lets a server do that).
    """
    match = _RANGE.fullmatch(value)
    if match is None or match.group(1) == match.group(2) == "":
        return None
    first, last = match.group(1), match.group(2)
    if not first:  # suffix range: the last N bytes
        suffix = int(last)
        satisfiable = suffix > 0 and total > 0
        return (max(0, total - suffix), total) if satisfiable else _UNSATISFIABLE
    start = int(first)
    if last and int(last) < start:
        return None
    if start >= total:
        return _UNSATISFIABLE
    return (start, total if not last else min(int(last) + 1, total))


def _etag_in_list(header: str, etag: str | None) -> bool:
    """Strong comparison of ``etag`` against an ``If-Match`` list (``*`` matches anything)."""
    if header.strip() == "*":
        return True
    if etag is None:
        return False
    return any(tag.strip() == etag for tag in header.split(","))


def _if_range_matches(value: str, etag: str | None, last_modified: str | None) -> bool:
    value = value.strip()
    if value.startswith('"'):
        return etag is not None and value == etag
    if value.startswith("W/"):
        return False  # weak validators never satisfy If-Range
    if last_modified is None:
        return False
    try:
        return parsedate_to_datetime(value) == parsedate_to_datetime(last_modified)
    except (TypeError, ValueError):
        return False


def _modified_since(last_modified: str | None, value: str) -> bool:
    """Whether ``last_modified`` is later than the ``If-Unmodified-Since`` date ``value``.

    An unparsable date, or none to compare, makes the precondition not apply (RFC 9110).
    """
    if last_modified is None:
        return False
    try:
        return parsedate_to_datetime(last_modified) > parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return False


def _take(times: int | None) -> tuple[bool, int | None]:
    """Consume one use of a ``*_times`` counter: (applies, remaining)."""
    if times is None:
        return True, None
    if times <= 0:
        return False, times
    return True, times - 1


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, origin: Origin, host: str) -> None:
        self.origin = origin
        super().__init__((host, 0), _Handler)

    def shutdown_request(self, request: socket.socket | tuple[bytes, socket.socket]) -> None:
        if isinstance(request, socket.socket) and self.origin._take_reset(request):
            # SO_LINGER 0 is set: a bare close sends RST; shutdown() would send FIN first.
            self.close_request(request)
            return
        super().shutdown_request(request)

    def handle_error(
        self, request: socket.socket | tuple[bytes, socket.socket], client_address: object
    ) -> None:
        exc = sys.exc_info()[1]
        if exc is None or isinstance(exc, ConnectionError | TimeoutError):
            return
        if isinstance(exc, OSError) and self.origin._stopping.is_set():
            return
        self.origin._record_error(exc)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "test-origin/1"
    disable_nagle_algorithm = True
    timeout = 60

    @property
    def origin(self) -> Origin:
        server = self.server
        assert isinstance(server, _Server)
        return server.origin

    def setup(self) -> None:
        super().setup()
        self.conn_id = self.origin._register(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        finally:
            self.origin._unregister(self.connection)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the request log is ``Origin.requests``."""

    def do_GET(self) -> None:
        self._serve(head=False)

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def _serve(self, *, head: bool) -> None:
        origin = self.origin
        record = RequestRecord(
            method=self.command,
            path=urlsplit(self.path).path,
            range=self.headers.get("Range"),
            if_range=self.headers.get("If-Range"),
            if_match=self.headers.get("If-Match"),
            authorization=self.headers.get("Authorization"),
            connection=self.conn_id,
            headers={k.lower(): v for k, v in self.headers.items()},
        )
        origin._begin(record)
        try:
            plan = origin._plan(record)
            self._send(record, plan, head=head)
        except OSError:
            self.close_connection = True
        finally:
            origin._end(record)

    def _send(self, record: RequestRecord, plan: _Plan, *, head: bool) -> None:
        origin = self.origin
        if plan.delay > 0 and origin._stopping.wait(plan.delay):
            self.close_connection = True
            return
        if not self._send_head(plan):
            return
        origin._set_status(record, plan.status)
        if head or not self._send_body(record, plan):
            return
        if plan.endless_zeros:
            self._zeros_for_ever(record)
            return
        if plan.fault == "stall":
            self._hang()
        if plan.fault is not None:
            self.close_connection = True
            if plan.reset:
                origin._mark_reset(self.connection)
            else:
                self.connection.shutdown(socket.SHUT_RDWR)

    def _send_head(self, plan: _Plan) -> bool:
        if plan.trickle_head is not None:
            return self._trickle_head(plan)
        self.send_response(plan.status)
        for name, value in plan.headers:
            self.send_header(name, value)
        if plan.close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        return True

    def _send_body(self, record: RequestRecord, plan: _Plan) -> bool:
        """The planned body; False when the connection is to be dropped instead."""
        origin = self.origin
        body = memoryview(plan.body)
        limit = len(body) if plan.cut is None else plan.cut
        chunk = _CHUNK if plan.drip is None else max(1, int(plan.drip * _DRIP_TICK_S))
        pos = 0
        while pos < limit:
            if origin._stopping.is_set():
                self.close_connection = True
                return False
            n = min(chunk, limit - pos)
            allowed = origin._may_write(record.path, n)
            if allowed is None:
                self.close_connection = True
                return False
            n = allowed
            if plan.chunked:
                self.wfile.write(b"%x\r\n" % n + body[pos : pos + n] + b"\r\n")
            else:
                self.wfile.write(body[pos : pos + n])
            pos += n
            origin._add_bytes(record, n)
            if plan.drip is not None and origin._stopping.wait(n / plan.drip):
                self.close_connection = True
                return False
        if plan.chunked and plan.cut is None:
            self.wfile.write(b"0\r\n\r\n")
        return True

    def _trickle_head(self, plan: _Plan) -> bool:
        """The head a byte at a time; False when the client left or the origin stops."""
        lines = [f"HTTP/1.1 {plan.status} Status", *(f"{n}: {v}" for n, v in plan.headers)]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode()
        assert plan.trickle_head is not None
        for at in range(len(head)):
            try:
                self.wfile.write(head[at : at + 1])
                self.wfile.flush()
            except OSError:
                self.close_connection = True
                return False
            if self.origin._stopping.wait(1 / plan.trickle_head):
                self.close_connection = True
                return False
        return True

    def _zeros_for_ever(self, record: RequestRecord) -> None:
        zeros = bytes(_CHUNK)
        self.close_connection = True
        while not self.origin._stopping.is_set():
            try:
                self.wfile.write(zeros)
            except OSError:
                return
            self.origin._add_bytes(record, len(zeros))

    def _hang(self) -> None:
        """Keep the connection open, sending nothing, until the client leaves or we stop."""
        sock = self.connection
        while not self.origin._stopping.is_set():
            readable, _, _ = select.select([sock], [], [], _POLL_S)
            if not readable:
                continue
            try:
                peeked = sock.recv(1, socket.MSG_PEEK)
            except OSError:
                return
            if not peeked:
                return
            time.sleep(_POLL_S)  # the client sent more; it is still there


class Origin:
    """A threaded HTTP/1.1 server on 127.0.0.1 (random port) serving in-memory files."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self._host = host
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._files: dict[str, _File] = {}
        self._log: list[RequestRecord] = []
        self._in_flight = 0
        self._conn_serial = 0
        self._active: dict[socket.socket, threading.Thread] = {}
        self._resets: set[socket.socket] = set()
        self._errors: list[BaseException] = []
        self._stopping = threading.Event()
        self._watches: dict[str, _Watch] = {}
        self._hook_lock = threading.Lock()  # serializes hook calls; never held with _lock
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # lifecycle

    def start(self) -> Origin:
        if self._server is not None:
            raise RuntimeError("origin already started")
        self._server = _Server(self, self._host)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.01},
            name=f"origin:{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop at once: close the listener and every open connection, stalled or not."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout)
        with self._lock:
            active = list(self._active.items())
        for sock, _ in active:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + timeout
        for _, thread in active:
            thread.join(max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> Origin:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        if exc_type is None and self._errors:
            raise AssertionError(f"origin handler failed: {self._errors[0]!r}") from self._errors[0]

    # addresses

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("origin is not running")
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://{self._host}:{self.port}"

    def url(self, path: str) -> str:
        return self.base_url + (path if path.startswith("/") else "/" + path)

    # content

    def add(
        self,
        path: str,
        data: bytes,
        *,
        etag: str | Literal[_Auto.AUTO] | None = AUTO,
        last_modified: str | Literal[_Auto.AUTO] | None = AUTO,
        faults: Faults | None = None,
    ) -> None:
        """Serve ``data`` at ``path``, replacing what was there (and resetting its faults).

        ``etag``: a quoted entity tag, ``None`` for no ``ETag`` header, or AUTO for a strong one
        derived from the bytes. ``last_modified``: an HTTP date, ``None``, or AUTO for now.
        """
        path = self._norm(path)
        data = bytes(data)
        tag = _strong_etag(data) if isinstance(etag, _Auto) else etag
        date = formatdate(usegmt=True) if isinstance(last_modified, _Auto) else last_modified
        entry = _File(data, tag, date, copy.deepcopy(faults) if faults else Faults())
        with self._lock:
            self._files[path] = entry

    def add_file(
        self,
        path: str,
        file: Path,
        *,
        etag: str | None = None,
        last_modified: str | Literal[_Auto.AUTO] | None = AUTO,
        faults: Faults | None = None,
    ) -> None:
        """Serve the bytes of ``file`` at ``path``, mapped rather than read into memory.

        Like ``add``, except that no ETag is derived unless one is given (hashing a large file
        takes long). The file must not change while it is served.
        """
        with file.open("rb") as handle:
            data = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        date = formatdate(usegmt=True) if isinstance(last_modified, _Auto) else last_modified
        entry = _File(data, etag, date, copy.deepcopy(faults) if faults else Faults())
        with self._lock:
            self._files[self._norm(path)] = entry

    def remove(self, path: str) -> None:
        with self._lock:
            self._files.pop(self._norm(path), None)

    def set_faults(self, path: str, faults: Faults | None) -> None:
        """Replace the faults of a served path; its request count starts again from zero."""
        with self._lock:
            entry = self._files[self._norm(path)]
            entry.faults = copy.deepcopy(faults) if faults else Faults()
            entry.count = 0

    def etag(self, path: str) -> str | None:
        """The ETag the next request to ``path`` will see."""
        with self._lock:
            entry = self._files[self._norm(path)]
            return self._current_etag(entry, entry.count + 1)

    # progress hooks

    def on_body_progress(self, path: str, hook: BodyHook | None) -> None:
        """Call ``hook`` before each body write to ``path`` (see ``BodyHook``); None removes it.

        The count starts from zero at every call. Hooks run on handler threads and must be
        quick; they may read the origin (``bytes_sent``, ``requests``) but not set hooks.
        """
        path = self._norm(path)
        with self._hook_lock:
            if hook is None:
                self._watches.pop(path, None)
            else:
                self._watches[path] = _Watch(hook)

    def kill_after(
        self, path: str, after_bytes: int, pid: int, signal_number: int = signal.SIGKILL
    ) -> KillSwitch:
        """SIGKILL ``pid`` (or send it ``signal_number``) once ``after_bytes`` more body bytes
        of ``path`` have been sent."""
        switch = KillSwitch(pid, after_bytes, signal_number=signal_number)
        self.on_body_progress(path, switch)
        return switch

    # request log

    @property
    def requests(self) -> list[RequestRecord]:
        """Copies of every logged request, oldest first."""
        with self._lock:
            return [replace(r, headers=dict(r.headers)) for r in self._log]

    def bytes_sent(self, path: str | None = None) -> int:
        """Body bytes sent, for one path or in total."""
        want = None if path is None else self._norm(path)
        with self._lock:
            return sum(r.body_bytes for r in self._log if want is None or r.path == want)

    def clear_log(self) -> None:
        with self._lock:
            self._log.clear()

    def wait_idle(self, timeout: float = 5.0) -> None:
        """Wait until no response is being written (the log is then final for them)."""
        with self._idle:
            if not self._idle.wait_for(lambda: self._in_flight == 0, timeout):
                raise TimeoutError(f"{self._in_flight} request(s) still in flight")

    @property
    def errors(self) -> list[BaseException]:
        """Unexpected handler exceptions (client disconnects are not errors)."""
        with self._lock:
            return list(self._errors)

    # handler side

    @staticmethod
    def _norm(path: str) -> str:
        return path if path.startswith("/") else "/" + path

    @staticmethod
    def _current_etag(entry: _File, count: int) -> str | None:
        after = entry.faults.etag_changes_after
        if entry.etag is None or after is None or count <= after:
            return entry.etag
        return entry.etag[:-1] + f'-{count - after}"'

    def _register(self, sock: socket.socket) -> int:
        with self._lock:
            self._conn_serial += 1
            self._active[sock] = threading.current_thread()
            return self._conn_serial

    def _unregister(self, sock: socket.socket) -> None:
        with self._lock:
            self._active.pop(sock, None)

    def _mark_reset(self, sock: socket.socket) -> None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        with self._lock:
            self._resets.add(sock)

    def _take_reset(self, sock: socket.socket) -> bool:
        with self._lock:
            if sock in self._resets:
                self._resets.discard(sock)
                return True
            return False

    def _record_error(self, exc: BaseException) -> None:
        with self._lock:
            self._errors.append(exc)
        traceback.print_exception(exc, file=sys.stderr)

    def _begin(self, record: RequestRecord) -> None:
        with self._lock:
            self._log.append(record)
            self._in_flight += 1

    def _end(self, record: RequestRecord) -> None:
        with self._idle:
            record.done = True
            self._in_flight -= 1
            self._idle.notify_all()

    def _set_status(self, record: RequestRecord, status: int) -> None:
        with self._lock:
            record.status = status

    def _may_write(self, path: str, n: int) -> int | None:
        """How many of the next ``n`` body bytes of ``path`` to write; None: close instead."""
        with self._hook_lock:
            watch = self._watches.get(path)
            if watch is None:
                return n
            if not watch.hook(watch.sent):
                return None
            n = min(n, _WATCHED_CHUNK)
            watch.sent += n
            return n

    def _add_bytes(self, record: RequestRecord, n: int) -> None:
        with self._lock:
            record.body_bytes += n

    def _plan(self, record: RequestRecord) -> _Plan:
        with self._lock:
            entry = self._files.get(record.path)
            if entry is None:
                return self._simple(404)
            entry.count += 1
            early = self._plan_refusal(entry, record)
            if early is not None:
                return early
            etag = self._current_etag(entry, entry.count)
            validators: list[tuple[str, str]] = []
            if etag is not None:
                validators.append(("ETag", etag))
            if entry.last_modified is not None:
                validators.append(("Last-Modified", entry.last_modified))
            if self._precondition_fails(entry, record, etag):
                return self._simple(412, validators)
            return self._plan_body(entry, record, etag, validators)

    @staticmethod
    def _precondition_fails(entry: _File, record: RequestRecord, etag: str | None) -> bool:
        if entry.faults.ignore_preconditions:
            return False
        if record.if_match is not None:
            return not _etag_in_list(record.if_match, etag)
        since = record.headers.get("if-unmodified-since")
        return since is not None and _modified_since(entry.last_modified, since)

    def _plan_refusal(self, entry: _File, record: RequestRecord) -> _Plan | None:
        """Queued statuses, 404, redirect and 401: answers that never carry the file."""
        f = entry.faults
        if f.statuses:
            status = f.statuses.pop(0)
            if status != 200:
                extra = []
                if status in (429, 503) and f.retry_after is not None:
                    extra.append(("Retry-After", f.retry_after))
                return self._simple(status, extra)
        if f.not_found:
            return self._simple(404)
        if f.redirect_to is not None:
            return self._simple(302, [("Location", f.redirect_to)])
        if f.require_authorization is not None and record.authorization != f.require_authorization:
            return self._simple(401, [("WWW-Authenticate", 'Bearer realm="origin"')])
        return None

    def _plan_body(
        self,
        entry: _File,
        record: RequestRecord,
        etag: str | None,
        validators: list[tuple[str, str]],
    ) -> _Plan:
        f = entry.faults
        data = entry.data
        total = len(data)
        status, start, end = 200, 0, total
        headers = [("Content-Type", "application/octet-stream"), *validators]
        if f.ranges:
            headers.append(("Accept-Ranges", "bytes"))
            wanted = record.range is not None and (
                record.if_range is None
                or _if_range_matches(record.if_range, etag, entry.last_modified)
            )
            if f.ranges_only_for_the_probe and record.range != "bytes=0-0":
                wanted = False
            parsed = _parse_range(record.range, total) if wanted and record.range else None
            if isinstance(parsed, _Unsatisfiable):
                return self._simple(416, [*headers[1:], ("Content-Range", f"bytes */{total}")])
            if parsed is not None:
                status, (start, end) = 206, parsed
                headers.append(("Content-Range", f"bytes {start}-{end - 1}/{total}"))
        body = data[start:end]
        headers.extend(f.extra_headers)
        plan = _Plan(status, headers, body, drip=f.drip_bytes_per_s, delay=f.first_byte_delay)
        plan.trickle_head = f.trickle_head_bytes_per_s
        length = len(body)
        if record.method == "GET":
            self._plan_fault(f, plan, length)
        if f.endless_zeros:
            plan.endless_zeros = plan.close = True  # no length: the body ends when we close
            record.fault = plan.fault
            return plan
        if f.chunked:
            plan.chunked = True
            headers.append(("Transfer-Encoding", "chunked"))
            record.fault = plan.fault
            return plan
        announced = length if plan.fault != "lie" else f.lie_content_length
        headers.append(("Content-Length", str(announced)))
        record.fault = plan.fault
        return plan

    @staticmethod
    def _plan_fault(f: Faults, plan: _Plan, length: int) -> None:
        if f.drop_after is not None and f.drop_after < length:
            applies, f.drop_times = _take(f.drop_times)
            if applies:
                plan.fault, plan.cut, plan.reset = "drop", f.drop_after, f.drop_reset
                return
        if f.stall_after is not None and f.stall_after < length:
            applies, f.stall_times = _take(f.stall_times)
            if applies:
                plan.fault, plan.cut = "stall", f.stall_after
                return
        if f.lie_content_length is not None and f.lie_content_length != length:
            applies, f.lie_times = _take(f.lie_times)
            if applies:
                plan.fault = "lie"

    @staticmethod
    def _simple(status: int, headers: list[tuple[str, str]] | None = None) -> _Plan:
        try:
            phrase = http.HTTPStatus(status).phrase
        except ValueError:
            phrase = "Status"
        body = b"" if status == 416 else f"{status} {phrase}\n".encode()
        all_headers = [
            *(headers or []),
            ("Content-Type", "text/plain"),
            ("Content-Length", str(len(body))),
        ]
        return _Plan(status, all_headers, body)


class TLSOrigin(Origin):
    """The test origin behind HTTPS, with a certificate from a CA of its own."""

    def __init__(self, context: ssl.SSLContext) -> None:
        super().__init__()
        self._tls = context

    def start(self) -> TLSOrigin:
        super().start()
        server = self._server
        assert server is not None
        # Same file descriptor, so the serving loop started above accepts TLS from now on.
        server.socket = self._tls.wrap_socket(server.socket, server_side=True)
        return self

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.port}"
