"""A zip archive read as it streams: local headers as they arrive, entries out to a SafeTree.

stream-unzip does the format (headers, data descriptors, zip64, stored, deflate, deflate64,
bzip2, ZipCrypto and WinZip AES, each entry's CR-32 or authentication code); it pulls chunks
from an iterable, so it runs in a Handoff that the push-based stages feed. What it cannot say
is where an entry ended in the stream, which a restart needs: the reader knows only how many
bytes it handed over. The end lies in the last slice handed over, so the local headers that
start there are tried (stream-unzip parses each): when exactly one of them is the next entry's,
that is where the next entry starts, and a later run can start stream-unzip there.

What only the central directory at the end holds, the unix mode and whether an entry is a
symlink, is applied when the stream ends (zipdir.py), after checking that it lists the very
entries the local headers gave.
"""

from __future__ import annotations

import warnings
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import stream_inflate
import stream_unzip

from fetcher.errors import CorruptArchive, FetchError, UnsafeArchive, UsageError
from fetcher.formats import preview
from fetcher.stages.handoff import Handoff
from fetcher.stages.tree import SafeTree
from fetcher.stages.zipdir import apply_central_directory, names_digest
from fetcher.state.checkpoint import StateError, ZipState

# WinZip AES fixes its key derivation (PBKDF2-HMAC-SHA1, 1000 rounds): not a choice to warn of.
warnings.filterwarnings("ignore", "PBKDF2 without", DeprecationWarning)

# What stream-unzip is handed at a time (its own read size): an entry ends inside the last one.
SLICE = 64 * 1024
# Besides the slice, up to 16 bytes of a data descriptor it read ahead and handed back.
_LOOKBACK = SLICE + 64
# The central directory is held in memory to be checked: ~100 bytes an entry.
MAX_TRAILER = 256 << 20
_ENCODING = "utf-8"
_ERRORS = "surrogateescape"
_METHODS: dict[int, str] = {14: "lzma", 93: "zstd", 95: "xz", 98: "ppmd", 1: "shrink", 6: "implode"}


@dataclass(frozen=True)
class Boundary:
    """The previous entry is complete and the next one starts at position."""

    position: int
    state: ZipState


class _Slicer:
    """The chunks stream-unzip pulls, cut to SLICE and counted; what follows an entry's end
    is kept (by reference) until the next entry starts, or to the end: the central directory."""

    def __init__(self, chunks: Iterator[bytes], start: int) -> None:
        self._chunks = chunks
        self.position = start  # of the next byte handed over
        self.chunk_start = start  # of the chunk being cut
        self._recent: deque[tuple[int, bytes]] = deque()  # at least the last _LOOKBACK bytes
        self._recent_bytes = 0
        self._before: list[tuple[int, bytes]] = []  # the recent pieces when an entry ended
        self._after: list[bytes] | None = []  # the pieces since, while collecting
        self._after_bytes = 0
        self._mark = start

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._chunks:
            self.chunk_start = self.position
            for start in range(0, len(chunk), SLICE):
                piece = chunk[start : start + SLICE]
                self._keep(piece)
                self.position += len(piece)
                yield piece

    def _keep(self, piece: bytes) -> None:
        if self._after is not None:
            self._after_bytes += len(piece)
            if self._after_bytes > MAX_TRAILER:
                raise CorruptArchive(
                    f"more than {MAX_TRAILER} bytes follow the last zip entry",
                    "the archive is damaged or has something appended; refusing it",
                )
            self._after.append(piece)
        self._recent.append((self.position, piece))
        self._recent_bytes += len(piece)
        while self._recent_bytes - len(self._recent[0][1]) >= _LOOKBACK:
            self._recent_bytes -= len(self._recent.popleft()[1])

    def entry_ended(self) -> None:
        """Keep what follows from here: the next entry's header, or the central directory."""
        self._mark = self.position
        self._before = list(self._recent)
        self._after = []
        self._after_bytes = 0

    def entry_started(self, *, keep: bool) -> tuple[int, bytes]:
        """Stop keeping; with keep, the bytes from _LOOKBACK before the end on, and where."""
        collected = self.collected() if keep else (self._mark, b"")
        self._before, self._after = [], None
        return collected

    def collected(self) -> tuple[int, bytes]:
        low = self._mark - _LOOKBACK
        pieces = [(at, piece) for at, piece in self._before if at + len(piece) > low]
        start = max(pieces[0][0], low) if pieces else self._mark
        head = b"".join(piece[max(start - at, 0) :] for at, piece in pieces)
        return start, head + b"".join(self._after or ())


class ZipReader:
    """Reads entries into tree; entries and names say how far an earlier run got."""

    def __init__(
        self,
        tree: SafeTree,
        on_boundary: Callable[[Boundary], None],
        *,
        password: bytes | None,
        start: int = 0,
        resumed: ZipState | None = None,
    ) -> None:
        self._tree = tree
        self._password = password
        self._start = start
        self.entries = resumed.entries if resumed else 0
        self._names = resumed.names if resumed else b""
        self._expect = resumed.next_name if resumed else None
        self._seen: list[bytes] = []  # names read by this run, for a precise message
        self._state: ZipState | None = None
        self._sizes: list[int] = []  # the bytes each of those entries held
        self._handoff: Handoff[Boundary, tuple[int, bytes]] = Handoff(
            self._read, self._on_event(on_boundary), name="model-fetch-unzip"
        )

    def _on_event(self, forward: Callable[[Boundary], None]) -> Callable[[Boundary], None]:
        def handle(boundary: Boundary) -> None:
            self._state = boundary.state
            try:
                forward(boundary)
            finally:
                self._state = None

        return handle

    def write(self, data: memoryview) -> None:
        self._handoff.push(bytes(data))

    def close(self) -> None:
        trailer_at, trailer = self._handoff.close()
        apply_central_directory(
            self._tree,
            trailer,
            trailer_at=trailer_at,
            entries=self.entries,
            names=self._names,
            seen=self._seen,
            sizes=self._sizes,
        )

    def release(self) -> None:
        self._handoff.release()

    def state(self) -> ZipState:
        """Valid only while a Boundary is being handled (the reader waits there)."""
        if self._state is None:
            raise AssertionError("a zip stream is restorable only at an entry boundary")
        return self._state

    # --- on the reader's thread ------------------------------------------------------------

    def _read(
        self, chunks: Iterator[bytes], pause: Callable[[Boundary], None]
    ) -> tuple[int, bytes]:
        slicer = _Slicer(chunks, self._start)
        entries = stream_unzip.stream_unzip(slicer, password=self._password, chunk_size=SLICE)
        ended_at: int | None = None  # position when the last entry ended, if it did here
        paused_in = -1  # the chunk a boundary was offered in: one a chunk is plenty
        while True:
            try:
                name, size, content = next(entries)
            except StopIteration:
                break
            except stream_unzip.UnzipError as error:
                raise self._translate(error, None, slicer) from None
            offer = ended_at is not None and paused_in != slicer.chunk_start
            header_from, collected = slicer.entry_started(keep=offer)
            self._check_expected(name)
            if offer:
                assert ended_at is not None
                at = _next_header(
                    collected, header_from, ended_at, name=name, size=size, password=self._password
                )
                if at is not None and at >= slicer.chunk_start:
                    paused_in = slicer.chunk_start
                    pause(Boundary(at, ZipState(self.entries, self._names, name)))
            self._extract(name, size, content, slicer)
            slicer.entry_ended()
            ended_at = slicer.position
        return slicer.collected()

    def _check_expected(self, name: bytes) -> None:
        expected, self._expect = self._expect, None
        if expected is not None and name != expected:
            raise StateError(
                f"the zip entry at the checkpoint is {_text(name)!r}, not the "
                f"{_text(expected)!r} it recorded"
            )

    def _extract(
        self, raw: bytes, size: int | None, content: Iterator[bytes], slicer: _Slicer
    ) -> None:
        self.entries += 1
        self._names = names_digest(self._names, raw)
        self._seen.append(raw)
        self._sizes.append(0)
        name = _text(raw)
        tree = self._tree
        try:
            if name.endswith("/"):
                tree.make_dir(name.rstrip("/") or name, 0o755, None)
                for _ in content:
                    raise UnsafeArchive(name, "a directory entry holds data")
                return
            tree.begin_file(name, 0o644, size or 0, self.entries)
            for piece in content:
                view = memoryview(piece)
                tree.check_cap(len(view), name)
                tree.write(view)
                self._sizes[-1] += len(view)
            tree.end_file(None)
        except stream_unzip.UnzipError as error:
            raise self._translate(error, name, slicer) from None
        except stream_inflate.StreamInflateError as error:
            raise CorruptArchive(
                f"zip entry {name!r} is corrupt: deflate64 data does not decode ({error})",
                "the file is damaged",
            ) from None

    def _translate(
        self, error: stream_unzip.UnzipError, name: str | None, slicer: _Slicer
    ) -> FetchError:
        after = f"entry {self.entries + 1}" + (
            f" (after {_text(self._seen[-1])!r})" if self._seen else ""
        )
        which = repr(name) if name is not None else after.removeprefix("entry ")
        if isinstance(error, stream_unzip.MissingPasswordError):
            return UsageError(
                f"zip {after} is encrypted and no password was given",
                "add --password-from env:NAME or file:PATH",
            )
        if isinstance(error, stream_unzip.IncorrectPasswordError):
            return CorruptArchive(
                f"wrong password for zip entry {which}", "check what --password-from names"
            )
        if isinstance(error, stream_unzip.UnsupportedFeatureError):
            return UnsafeArchive(_unsupported_name(error, after), _unsupported(error))
        if isinstance(error, stream_unzip.UnexpectedSignatureError) and not self._seen:
            return CorruptArchive(
                "the stream should be a zip archive but starts with "
                f"{preview(slicer.collected()[1])}",
                "check the URL (an error page?) or give the --format it has",
            )
        what = next(
            (what for kind, what in _DAMAGE if isinstance(error, kind)),
            f"is corrupt ({type(error).__name__})",
        )
        if isinstance(error, stream_unzip.TruncatedDataError) and name is None:
            what = "was cut short: the stream ended in its local header"
        if isinstance(error, stream_unzip.CRC32IntegrityError) and self._password is not None:
            what += " (or the password is wrong)"  # ZipCrypto checks a password by one byte
        return CorruptArchive(
            f"zip entry {which} {what}", "the download was cut short or the archive is damaged"
        )


_DAMAGE: tuple[tuple[type[stream_unzip.UnzipError], str], ...] = (
    (stream_unzip.CRC32IntegrityError, "fails its CRC-32 check"),
    (stream_unzip.HMACIntegrityError, "fails its AES authentication code"),
    (stream_unzip.SizeIntegrityError, "is not the size its header says"),
    (stream_unzip.TruncatedDataError, "was cut short: the stream ended inside it"),
    (stream_unzip.UnexpectedSignatureError, "is not followed by a valid zip record"),
    (stream_unzip.DeflateError, "does not decode: its deflate data is damaged"),
    (stream_unzip.BZ2Error, "does not decode: its bzip2 data is damaged"),
)


def _unsupported_name(error: stream_unzip.UnsupportedFeatureError, after: str) -> str:
    if isinstance(error, stream_unzip.NotStreamUnzippable) and error.args:
        return _text(error.args[0])
    return after


def _unsupported(error: stream_unzip.UnsupportedFeatureError) -> str:
    if isinstance(error, stream_unzip.UnsupportedCompressionTypeError):
        method = error.args[0] if error.args else -1
        return (
            f"compression method {method} ({_METHODS.get(method, 'unknown')}) is not one "
            "stream-unzip reads (stored, deflate, deflate64, bzip2); repack the zip with one "
            "of those, or as .tar.zst"
        )
    if isinstance(error, stream_unzip.NotStreamUnzippable):
        return (
            "a stored entry whose size is only in its data descriptor cannot be read as it "
            "streams; rebuild the zip with deflate, or from files rather than a pipe"
        )
    return f"it uses a zip feature not supported ({type(error).__name__})"


def _next_header(
    collected: bytes, collected_from: int, ended_at: int,
    *, name: bytes, size: int | None, password: bytes | None,
) -> int | None:  # fmt: skip
    """Where the entry just announced starts, if only one local header before ended_at is it."""
    found: list[int] = []
    low = max(ended_at - _LOOKBACK, collected_from)
    at = collected.find(b"PK\x03\x04", low - collected_from)
    while at >= 0 and collected_from + at <= ended_at:
        if _header_is(collected[at:], name, size, password):
            found.append(collected_from + at)
            if len(found) > 1:
                return None  # data that holds a copy of the header: no safe restart here
        at = collected.find(b"PK\x03\x04", at + 1)
    return found[0] if found else None


def _header_is(data: bytes, name: bytes, size: int | None, password: bytes | None) -> bool:
    entries = stream_unzip.stream_unzip((data,), password=password, chunk_size=SLICE)
    try:
        found, found_size, _ = next(entries)
    except (stream_unzip.UnzipError, StopIteration):
        return False
    finally:
        entries.close()
    return found == name and found_size == size


def _text(raw: bytes) -> str:
    """Entry names as the bytes stored: on disk they are those bytes again (surrogateescape)."""
    return raw.decode(_ENCODING, _ERRORS)
