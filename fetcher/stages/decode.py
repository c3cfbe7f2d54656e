"""Decompressors with one shape: feed() pushes bounded chunks to emit(); finish() checks the end.

Output is pushed in chunks of at most OUTPUT_CHUNK bytes as it is produced, so memory stays flat
whatever the compression ratio (a zstd bomb of zeros decodes in constant memory). Each decoder
knows whether it stands at a member/frame boundary, the points where a later run can restart it.
"""

from __future__ import annotations

import bz2
from collections.abc import Callable
from typing import IO, Protocol, cast

import lz4.frame
import zstandard

from fetcher.errors import CorruptArchive
from fetcher.formats import SNIFF_COMPRESSION_BYTES, Compression, detect_compression, preview
from fetcher.stages.gzip_member import GzipMembers
from fetcher.stages.midstream import MidState, RestoreWanted, never_wanted
from fetcher.stages.xz_blocks import XzStreams
from fetcher.state.checkpoint import StateError

NAMES = {
    Compression.ZSTD: "zstd",
    Compression.GZIP: "gzip",
    Compression.XZ: "xz",
    Compression.BZIP2: "bzip2",
    Compression.LZ4: "lz4",
    Compression.NONE: "uncompressed",
}

OUTPUT_CHUNK = 1 << 20

Emit = Callable[[memoryview], None]
# Called with an offset into the data being fed, after every byte before it has been decoded
# and emitted: a point where a fresh decoder could take over.
OnBoundary = Callable[[int], None]
Chunk = bytes | bytearray | memoryview


def _ignore_boundary(offset: int) -> None:
    return None


class Decoder(Protocol):
    def feed(self, data: Chunk) -> None: ...

    def finish(self) -> None:
        """Raise CorruptArchive if the input ended inside a frame or member."""

    @property
    def at_boundary(self) -> bool:
        """True when every byte fed so far belongs to complete frames or members."""

    def mid_state(self) -> MidState | None:
        """Inside an on_boundary call: the state to carry on from there, None at a frame or
        member boundary (where a fresh decoder takes over)."""


class IdentityDecoder:
    """Every byte is a boundary; the caller checks at_boundary after each feed."""

    def __init__(
        self,
        emit: Emit,
        on_boundary: OnBoundary = _ignore_boundary,
        restore_wanted: RestoreWanted = never_wanted,
    ) -> None:
        self._emit = emit

    def feed(self, data: Chunk) -> None:
        view = memoryview(data)
        for start in range(0, len(view), OUTPUT_CHUNK):
            self._emit(view[start : start + OUTPUT_CHUNK])

    def finish(self) -> None:
        return None

    @property
    def at_boundary(self) -> bool:
        return True

    def mid_state(self) -> MidState | None:
        return None


class _ZstdFrameScanner:
    """Walks zstd frame and block headers (RFC 8878) without decoding, to find frame ends.

    The library's stream writer decodes across frames but cannot say where one ended, and the
    end of the last frame is how a truncated stream is told apart from a complete one.
    """

    _MAGIC = 0xFD2FB528
    _SKIPPABLE_MASK = 0xFFFFFFF0
    _SKIPPABLE_MAGIC = 0x184D2A50

    def __init__(self) -> None:
        self._pending = bytearray()  # header bytes collected but not yet parsed
        self._need = 4  # bytes wanted in _pending before the next parse step
        self._skip = 0  # content bytes to pass over before the next header
        self._step = self._frame_magic
        self.frames = 0
        self.in_frame = False
        self._checksum_len = 0
        self._cursor = 0
        self._ends: list[int] = []

    def feed(self, data: Chunk) -> list[int]:
        """Scan data; return the offsets within it at which a frame ended."""
        view = memoryview(data)
        self._ends = []
        pos = 0
        while pos < len(view):
            if self._skip:
                taken = min(self._skip, len(view) - pos)
                self._skip -= taken
                pos += taken
                self._cursor = pos
                if not self._skip and self._step == self._frame_done:
                    self._frame_done()
                continue
            wanted = self._need - len(self._pending)
            piece = view[pos : pos + wanted]
            self._pending += piece
            pos += len(piece)
            self._cursor = pos
            if len(self._pending) == self._need:
                self._step()
        return self._ends

    def _take(self, need: int, step: Callable[[], None]) -> None:
        self._pending.clear()
        self._need = need
        self._step = step

    def _frame_magic(self) -> None:
        magic = int.from_bytes(self._pending[:4], "little")
        self.in_frame = True
        if magic & self._SKIPPABLE_MASK == self._SKIPPABLE_MAGIC:
            self._take(4, self._skippable_size)
        elif magic == self._MAGIC:
            self._take(1, self._frame_descriptor)
        else:
            raise CorruptArchive(
                f"zstd stream: bad frame magic {magic:#010x} after {self.frames} frame(s)",
                "the file is not zstd, or it is damaged",
            )

    def _skippable_size(self) -> None:
        size = int.from_bytes(self._pending[:4], "little")
        self._take(0, self._frame_done)
        self._skip = size
        if not size:
            self._frame_done()

    def _frame_descriptor(self) -> None:
        descriptor = self._pending[0]
        fcs_flag = descriptor >> 6
        single_segment = (descriptor >> 5) & 1
        dict_flag = descriptor & 3
        self._checksum_len = 4 if (descriptor >> 2) & 1 else 0
        fcs_len = (0 if not single_segment else 1, 2, 4, 8)[fcs_flag]
        rest = (0 if single_segment else 1) + (0, 1, 2, 4)[dict_flag] + fcs_len
        if rest:
            self._take(rest, self._block_header_next)
        else:
            self._block_header_next()

    def _block_header_next(self) -> None:
        self._take(3, self._block_header)

    def _block_header(self) -> None:
        header = int.from_bytes(self._pending[:3], "little")
        last = header & 1
        block_type = (header >> 1) & 3
        size = header >> 3
        if block_type == 3:
            raise CorruptArchive("zstd stream: reserved block type", "the file is damaged")
        content = 1 if block_type == 1 else size
        if last:
            self._take(0, self._frame_done)
            self._skip = content + self._checksum_len
            if not self._skip:
                self._frame_done()
        else:
            self._take(3, self._block_header)
            self._skip = content

    def _frame_done(self) -> None:
        self.frames += 1
        self.in_frame = False
        self._ends.append(self._cursor)
        self._take(4, self._frame_magic)


class _EmitWriter:
    """The file-like object the zstd stream writer pushes decoded chunks into."""

    def __init__(self, emit: Emit) -> None:
        self._emit = emit

    def write(self, data: bytes) -> int:
        self._emit(memoryview(data))
        return len(data)


class ZstdDecoder:
    """Single- and multi-frame zstd, skippable frames included (pzstd writes them)."""

    def __init__(
        self,
        emit: Emit,
        on_boundary: OnBoundary = _ignore_boundary,
        restore_wanted: RestoreWanted = never_wanted,
    ) -> None:
        self._scanner = _ZstdFrameScanner()
        self._on_boundary = on_boundary
        self._writer = zstandard.ZstdDecompressor().stream_writer(
            cast(IO[bytes], _EmitWriter(emit)), write_size=OUTPUT_CHUNK
        )

    def feed(self, data: Chunk) -> None:
        view = memoryview(data)
        start = 0
        for end in self._scanner.feed(view):
            self._write(view[start:end])
            self._on_boundary(end)
            start = end
        if start < len(view):
            self._write(view[start:])

    def _write(self, piece: memoryview) -> None:
        try:
            self._writer.write(piece)
        except zstandard.ZstdError as error:
            raise CorruptArchive(
                f"zstd stream is corrupt: {error}", "the file is damaged"
            ) from None

    def finish(self) -> None:
        if self._scanner.in_frame or self._scanner.frames == 0:
            raise CorruptArchive(
                f"zstd stream ended inside frame {self._scanner.frames + 1}",
                "the download was cut short or the file is damaged",
            )

    @property
    def at_boundary(self) -> bool:
        return not self._scanner.in_frame

    def mid_state(self) -> MidState | None:
        return None


class _MemberDecoder:
    """Concatenated streams (bzip2, as pbzip2 writes), one stdlib object each."""

    name = ""

    def __init__(
        self,
        emit: Emit,
        on_boundary: OnBoundary = _ignore_boundary,
        restore_wanted: RestoreWanted = never_wanted,
    ) -> None:
        self._emit = emit
        self._on_boundary = on_boundary
        self._current: _StdlibDecompressor | None = None
        self.members = 0

    def _new(self) -> _StdlibDecompressor:
        raise NotImplementedError

    def feed(self, data: Chunk) -> None:
        buffer = bytes(data)
        while buffer:
            if self._current is None:
                buffer = buffer.lstrip(b"\0")  # padding between streams
                if not buffer:
                    return
                self._current = self._new()
            try:
                buffer = self._drain(self._current, buffer)
            except (OSError, EOFError) as error:
                raise CorruptArchive(
                    f"{self.name} stream is corrupt in member {self.members + 1}: {error}",
                    "the file is damaged",
                ) from None
            if self._current.eof:
                self.members += 1
                self._current = None
                self._on_boundary(len(data) - len(buffer))

    def _drain(self, decompressor: _StdlibDecompressor, data: bytes) -> bytes:
        """Decode data in bounded pieces; return the bytes after the member end, if any."""
        output = decompressor.decompress(data, OUTPUT_CHUNK)
        while True:
            if output:
                self._emit(memoryview(output))
            if decompressor.eof or decompressor.needs_input:
                break
            output = decompressor.decompress(b"", OUTPUT_CHUNK)
        return decompressor.unused_data if decompressor.eof else b""

    def finish(self) -> None:
        if self._current is not None or self.members == 0:
            raise CorruptArchive(
                f"{self.name} stream ended inside member {self.members + 1}",
                "the download was cut short or the file is damaged",
            )

    @property
    def at_boundary(self) -> bool:
        return self._current is None

    def mid_state(self) -> MidState | None:
        return None


class GzipDecoder(GzipMembers):
    """Concatenated gzip members, restartable at deflate block ends inside one."""

    def __init__(
        self,
        emit: Emit,
        on_boundary: OnBoundary = _ignore_boundary,
        restore_wanted: RestoreWanted = never_wanted,
    ) -> None:
        super().__init__(emit, on_boundary, restore_wanted, output_chunk=OUTPUT_CHUNK)


def resume_gzip(
    state: MidState,
    emit: Emit,
    on_boundary: OnBoundary = _ignore_boundary,
    restore_wanted: RestoreWanted = never_wanted,
) -> GzipDecoder:
    """A gzip decoder fed from the compressed byte state was taken at; StateError if unfit."""
    decoder = GzipDecoder(emit, on_boundary, restore_wanted)
    decoder.restore(state)
    return decoder


class XzDecoder(XzStreams):
    """Concatenated xz streams, restartable at block starts where block headers carry sizes."""

    def __init__(
        self,
        emit: Emit,
        on_boundary: OnBoundary = _ignore_boundary,
        restore_wanted: RestoreWanted = never_wanted,
    ) -> None:
        super().__init__(emit, on_boundary, restore_wanted, output_chunk=OUTPUT_CHUNK)


def resume_xz(
    state: MidState,
    emit: Emit,
    on_boundary: OnBoundary = _ignore_boundary,
    restore_wanted: RestoreWanted = never_wanted,
) -> XzDecoder:
    """An xz decoder fed from the block start state was taken at; StateError if unfit."""
    decoder = XzDecoder(emit, on_boundary, restore_wanted)
    decoder.restore(state)
    return decoder


class Bzip2Decoder(_MemberDecoder):
    name = "bzip2"

    def _new(self) -> _StdlibDecompressor:
        return bz2.BZ2Decompressor()


class Lz4Decoder:
    """Concatenated lz4 frames (skippable ones too); lz4.frame checks the block and content
    checksums a frame declares."""

    def __init__(
        self,
        emit: Emit,
        on_boundary: OnBoundary = _ignore_boundary,
        restore_wanted: RestoreWanted = never_wanted,
    ) -> None:
        self._emit = emit
        self._on_boundary = on_boundary
        self._current: lz4.frame.LZ4FrameDecompressor | None = None
        self.frames = 0

    def feed(self, data: Chunk) -> None:
        buffer = bytes(data)
        while buffer:
            if self._current is None:
                self._current = lz4.frame.LZ4FrameDecompressor()
            frame = self._current
            try:
                output = frame.decompress(buffer, OUTPUT_CHUNK)
                while True:
                    if output:
                        self._emit(memoryview(output))
                    if frame.eof or frame.needs_input:
                        break
                    output = frame.decompress(b"", OUTPUT_CHUNK)
            except RuntimeError as error:  # what the binding raises for every LZ4F error
                raise CorruptArchive(
                    f"lz4 stream is corrupt in frame {self.frames + 1}: {error}",
                    "the file is damaged",
                ) from None
            if not frame.eof:
                return
            buffer = frame.unused_data or b""
            self.frames += 1
            self._current = None
            self._on_boundary(len(data) - len(buffer))

    def finish(self) -> None:
        if self._current is not None or self.frames == 0:
            raise CorruptArchive(
                f"lz4 stream ended inside frame {self.frames + 1}",
                "the download was cut short or the file is damaged",
            )

    @property
    def at_boundary(self) -> bool:
        return self._current is None

    def mid_state(self) -> MidState | None:
        return None


class _StdlibDecompressor(Protocol):
    @property
    def eof(self) -> bool: ...

    @property
    def unused_data(self) -> bytes: ...

    @property
    def needs_input(self) -> bool: ...

    def decompress(self, data: bytes, max_length: int = ..., /) -> bytes: ...


_DECODERS: dict[Compression, Callable[[Emit, OnBoundary, RestoreWanted], Decoder]] = {
    Compression.NONE: IdentityDecoder,
    Compression.ZSTD: ZstdDecoder,
    Compression.GZIP: GzipDecoder,
    Compression.XZ: XzDecoder,
    Compression.BZIP2: Bzip2Decoder,
    Compression.LZ4: Lz4Decoder,
}


# Decoders that carry on from inside a frame or member, by the codec name in their MidState.
_RESUMERS: dict[
    str, tuple[Compression, Callable[[MidState, Emit, OnBoundary, RestoreWanted], Decoder]]
] = {
    "gzip": (Compression.GZIP, resume_gzip),
    "xz": (Compression.XZ, resume_xz),
}


def make_decoder(
    compression: Compression,
    emit: Emit,
    on_boundary: OnBoundary = _ignore_boundary,
    restore_wanted: RestoreWanted = never_wanted,
) -> Decoder:
    return _DECODERS[compression](emit, on_boundary, restore_wanted)


def resume_decoder(
    compression: Compression,
    state: MidState,
    emit: Emit,
    on_boundary: OnBoundary = _ignore_boundary,
    restore_wanted: RestoreWanted = never_wanted,
) -> Decoder:
    """A decoder carrying on from inside a frame or member; StateError if state is not one."""
    found = _RESUMERS.get(state.codec)
    if found is None or found[0] is not compression:
        raise StateError(f"a {state.codec} decoder state cannot resume {NAMES[compression]} data")
    return found[1](state, emit, on_boundary, restore_wanted)


class AutoDecoder:
    """Picks the decoder from --format or, for auto, from the stream's first bytes."""

    def __init__(
        self,
        compression: Compression | None,
        on_detect: Callable[[Compression], Emit],
        on_boundary: OnBoundary = _ignore_boundary,
        restore_wanted: RestoreWanted = never_wanted,
        mid_state: MidState | None = None,
    ) -> None:
        """mid_state: carry on inside a frame or member (compression must then be given),
        where there is no magic number to look at."""
        self._compression = compression
        self._on_detect = on_detect
        self._on_boundary = on_boundary
        self._restore_wanted = restore_wanted
        self._head_offset = 0  # bytes of the current feed that were held back as the head
        self._head = bytearray()
        self._inner: Decoder | None = None
        if mid_state is not None:
            assert compression is not None
            self._inner = resume_decoder(
                compression, mid_state, on_detect(compression), self._boundary, restore_wanted
            )

    def feed(self, data: Chunk) -> None:
        if self._inner is None:
            held = len(self._head)
            self._head += data
            if len(self._head) < SNIFF_COMPRESSION_BYTES:
                return
            self._head_offset = held  # boundary offsets below count from the held-back head
            data = self._start()
            assert self._inner is not None
            self._inner.feed(data)
            self._head_offset = 0
            return
        self._inner.feed(data)

    def _boundary(self, offset: int) -> None:
        if offset >= self._head_offset:
            self._on_boundary(offset - self._head_offset)

    def _start(self) -> bytes:
        found = detect_compression(bytes(self._head))
        wanted = self._compression
        if wanted is not None and wanted is not Compression.NONE and found is not wanted:
            raise CorruptArchive(
                f"the stream should be {NAMES[wanted]} data but starts with "
                f"{preview(bytes(self._head))}",
                "check the URL (an error page?) and what the origin serves, or give the "
                "--format it has",
            )
        compression = wanted or found
        self._inner = make_decoder(
            compression, self._on_detect(compression), self._boundary, self._restore_wanted
        )
        head = bytes(self._head)
        self._head.clear()
        return head

    @property
    def started(self) -> bool:
        return self._inner is not None

    def finish(self) -> None:
        if self._inner is None:
            head = self._start()  # a stream shorter than any magic number
            assert self._inner is not None
            self._inner.feed(head)
        self._inner.finish()

    @property
    def at_boundary(self) -> bool:
        return self._inner is None or self._inner.at_boundary

    def mid_state(self) -> MidState | None:
        return None if self._inner is None else self._inner.mid_state()

    @property
    def lookback_bytes(self) -> int:
        """How far behind the data being fed a boundary may still be reported."""
        return getattr(self._inner, "lookback_bytes", 0)
