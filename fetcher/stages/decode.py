"""Decompressors with one shape: feed() pushes bounded chunks to emit(); finish() checks the end.

Output is pushed in chunks of at most OUTPUT_CHUNK bytes as it is produced, so memory stays flat
whatever the compression ratio (a zstd bomb of zeros decodes in constant memory). Each decoder
knows whether it stands at a member/frame boundary, the points where a later run can restart it.
"""

from __future__ import annotations

import bz2
import logging
from collections.abc import Callable
from typing import IO, Protocol, cast

import lz4.frame
import zstandard

from fetcher.errors import CorruptArchive
from fetcher.formats import SNIFF_COMPRESSION_BYTES, Compression, detect_compression, preview
from fetcher.stages.gzip_member import GzipMembers
from fetcher.stages.midstream import MidState, RestoreWanted, never_wanted
from fetcher.stages.shapes import OUTPUT_CHUNK, Chunk, Emit, OnBoundary
from fetcher.stages.xz_blocks import XzStreams, check_xz_padding
from fetcher.stages.zstd.blocks import Continuation, Event, FrameScanner
from fetcher.stages.zstd.dictionary import continuation_header, dictionary, entropy_section
from fetcher.stages.zstd.entropy import PLACEHOLDER_HUFFMAN, predefined
from fetcher.stages.zstd.output import FrameOutput
from fetcher.stages.zstd.sequences import known
from fetcher.stages.zstd.state import ZstdPoint, from_mid_state
from fetcher.stages.zstd.xxh64 import Xxh64
from fetcher.stages.zstd_choice import HEAD_BYTES, frames_are_bounded
from fetcher.stages.zstd_parallel import ParallelZstdDecoder
from fetcher.state.checkpoint import StateError

log = logging.getLogger("model-fetch")

NAMES = {
    Compression.ZSTD: "zstd",
    Compression.GZIP: "gzip",
    Compression.XZ: "xz",
    Compression.BZIP2: "bzip2",
    Compression.LZ4: "lz4",
    Compression.NONE: "uncompressed",
}


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


_EMPTY_SKIPPABLE_FRAME = (0x184D2A50).to_bytes(4, "little") + bytes(4)
# History kept for a restore point inside a zstd frame: a frame with a larger window (zstd
# --long=28 and up) resumes only at frame boundaries.
ZSTD_HISTORY_CAP = 128 << 20
# Output of a frame kept from its start before any restore point is wanted.
ZSTD_EAGER_HISTORY = 32 << 20


class ZstdDecoder:
    """Single- and multi-frame zstd, skippable frames included (pzstd writes them).

    The library decodes; the scanner walks the headers alongside, to find where frames end
    and, once a restore point is wanted, a block boundary to export the decoder state at.
    Each frame reaches the library with its checksum flag cleared and its checksum held
    back: the checksum is verified here, over a hash whose state a checkpoint can carry.
    """

    def __init__(
        self,
        emit: Emit,
        on_boundary: OnBoundary = _ignore_boundary,
        restore_wanted: RestoreWanted = never_wanted,
        *,
        history_cap: int = ZSTD_HISTORY_CAP,
    ) -> None:
        self._output = FrameOutput(emit)
        self._plain = self._stream_writer(zstandard.ZstdDecompressor())
        self._writer = self._plain
        self._scanner = FrameScanner()
        self._on_boundary = on_boundary
        self._restore_wanted = restore_wanted
        self._history_cap = history_cap
        self._wanted = False  # a restore point is being prepared
        self._deferred = False  # a point at the end of the last chunk, offered with a byte more
        self._at_point = False  # inside on_boundary at a point inside a frame
        self._point: MidState | None = None  # built when first asked for at a point
        self._frame_open = False  # a zstd frame (not a skippable one) is being decoded
        self._told_cap = False

    def _stream_writer(self, decompressor: zstandard.ZstdDecompressor) -> _StreamWriter:
        return cast(
            _StreamWriter,
            decompressor.stream_writer(cast(IO[bytes], self._output), write_size=OUTPUT_CHUNK),
        )

    def feed(self, data: Chunk) -> None:
        view = memoryview(data)
        if not view:
            return
        cursor = 0
        if self._deferred:
            self._deferred = False
            self._write(view[:1])  # flushes what the library still held of the point's block
            cursor = 1
            self._offer(0)
        if not self._wanted and self._restore_wanted():
            self._wanted = True
            self._prepare()
        scanner = self._scanner
        for event, offset in scanner.scan(view):
            if event is Event.BLOCK:
                cursor = self._block_end(view, cursor, offset)
            elif event is Event.HEADER:
                assert scanner.header is not None
                self._write(scanner.header.for_library())
                cursor = offset
                self._frame_open = True
                self._output.begin_frame(Xxh64() if scanner.header.checksum else None)
                if self._wanted:
                    self._prepare()
                else:
                    self._keep_tail(until=ZSTD_EAGER_HISTORY)
            elif event is Event.BLOCKS_END:
                self._write(view[cursor:offset])
                self._write(_EMPTY_SKIPPABLE_FRAME)  # flushes the frame's last output
                cursor = offset
            else:
                cursor = offset
                self._frame_end()
                self._on_boundary(offset)
        if scanner.passing and cursor < len(view):
            self._write(view[cursor:])

    def _prepare(self) -> None:
        """Start working towards a restore point inside the current frame."""
        scanner = self._scanner
        if not scanner.passing or not self._keep_tail(until=None):
            return  # between frames: the next boundary serves, or the next header starts it
        scanner.watch = True
        if self._output.history_complete:
            scanner.start_decoding()  # nothing decoded yet in this frame: offsets are known

    def _keep_tail(self, *, until: int | None) -> bool:
        """Keep the current frame's output tail; False when its window is above the cap.

        Before a restore point is wanted (until given) a frame's tail is kept only while its
        output is at most until: holding the chunks the library hands over costs no copy, and
        a frame whose window is larger than its output so far (zstd --long, -19 on a file)
        has a restore point only if all of it was kept, but holding a large window alive for
        a whole decode that never checkpoints costs memory traffic.
        """
        scanner = self._scanner
        assert scanner.header is not None
        window = scanner.header.window
        if window > self._history_cap:
            if until is None and not self._told_cap:
                self._told_cap = True
                log.info(
                    "zstd frame %d has a %d MiB window, more than the %d MiB kept to resume "
                    "inside a frame: it resumes at frame boundaries only (zstd --long windows "
                    "above %d MiB do; pzstd or model-fetch pack archives have many frames)",
                    scanner.frames + 1,
                    window >> 20,
                    self._history_cap >> 20,
                    self._history_cap >> 20,
                )
            return False
        self._output.keep_tail(
            window, until=until if until is not None and window > until else None
        )
        return True

    def _done_preparing(self) -> None:
        self._wanted = False
        self._scanner.watch = False
        self._scanner.stop_decoding()

    def _block_end(self, view: memoryview, cursor: int, offset: int) -> int:
        """A block ended at offset while a restore point is wanted; return the new cursor."""
        scanner = self._scanner
        if not scanner.decoding or not scanner.restorable:
            self._write(view[cursor:offset])  # so that the tail kept is up to date
            if not scanner.decoding and self._output.history_complete:
                scanner.start_decoding()  # the next block's offsets will be the point's
            return offset
        if offset == len(view):
            self._write(view[cursor:offset])
            self._deferred = True
            return offset
        self._write(view[cursor : offset + 1])  # a byte more flushes the block's last output
        self._offer(offset)
        return offset + 1

    def _offer(self, offset: int) -> None:
        if not self._output.history_complete:
            return  # the library held back more than guessed; the next block serves
        self._at_point = True
        try:
            self._on_boundary(offset)
        finally:
            self._at_point = False
            self._point = None
            self._done_preparing()

    def mid_state(self) -> MidState | None:
        """The state at a point inside a frame; None at a frame boundary or outside on_boundary."""
        if not self._at_point:
            return None
        if self._point is None:
            self._point = self._export().to_mid_state()
        return self._point

    def _export(self) -> ZstdPoint:
        scanner, output = self._scanner, self._output
        assert scanner.header is not None and known(scanner.offsets)
        return ZstdPoint(
            header=scanner.header,
            frames=scanner.frames,
            blocks=scanner.blocks,
            produced=output.produced,
            hash_state=output.hasher.state() if output.hasher is not None else None,
            huffman=scanner.huffman,
            tables=scanner.tables(),
            offsets=cast(tuple[int, int, int], scanner.offsets),
            history=output.history(),
        )

    def _frame_end(self) -> None:
        """Check the frame that just ended (skippable frames have nothing to check)."""
        if self._wanted:
            self._done_preparing()
        if not self._frame_open:
            return
        self._frame_open = False
        self._writer = self._plain  # a resumed frame's dictionary must not reach the next one
        header, output = self._scanner.header, self._output
        assert header is not None
        number = self._scanner.frames
        if output.hasher is not None and output.hasher.digest() & 0xFFFFFFFF != (
            self._scanner.checksum
        ):
            raise CorruptArchive(
                f"zstd frame {number}: content checksum does not match", "the file is damaged"
            )
        if header.content_size is not None and output.produced != header.content_size:
            raise CorruptArchive(
                f"zstd frame {number}: {output.produced} bytes decoded, the header says "
                f"{header.content_size}",
                "the file is damaged",
            )

    def _write(self, piece: Chunk) -> None:
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

    @classmethod
    def _resumed(
        cls,
        point: ZstdPoint,
        emit: Emit,
        on_boundary: OnBoundary,
        restore_wanted: RestoreWanted,
    ) -> ZstdDecoder:
        decoder = cls(emit, on_boundary, restore_wanted)
        decoder._scanner = FrameScanner(
            Continuation(
                point.header, point.frames, point.blocks, point.huffman, point.tables, point.offsets
            )
        )
        tables = tuple(
            table if table is not None else predefined(kind)
            for kind, table in enumerate(point.tables)
        )
        entropy = entropy_section(point.huffman or PLACEHOLDER_HUFFMAN, tables)
        content = dictionary(entropy, point.offsets, point.history)
        try:
            decompressor = zstandard.ZstdDecompressor(
                dict_data=zstandard.ZstdCompressionDict(
                    content, dict_type=zstandard.DICT_TYPE_FULLDICT
                )
            )
            decoder._writer = decoder._stream_writer(decompressor)
            decoder._writer.write(continuation_header(point.header.descriptor))
        except zstandard.ZstdError as error:
            raise StateError(f"zstd state: its dictionary does not load: {error}") from None
        hasher = Xxh64.from_state(point.hash_state) if point.hash_state is not None else None
        decoder._output.begin_frame(hasher, point.produced)
        decoder._output.keep_tail(point.header.window)  # a run that resumes checkpoints too
        decoder._output.seed(point.history)  # so a point is a block away here too
        decoder._frame_open = True
        return decoder


class _StreamWriter(Protocol):
    def write(self, data: Chunk) -> int: ...


def resume_zstd(
    state: MidState,
    emit: Emit,
    on_boundary: OnBoundary = _ignore_boundary,
    restore_wanted: RestoreWanted = never_wanted,
) -> ZstdDecoder:
    """A decoder carrying on from state; its input starts where the state was taken.

    Raises StateError naming the field that does not check out.
    """
    return ZstdDecoder._resumed(from_mid_state(state), emit, on_boundary, restore_wanted)


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
    "zstd": (Compression.ZSTD, resume_zstd),
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


def parallel_zstd(
    emit: Emit,
    on_boundary: OnBoundary,
    on_frame_scanned: OnBoundary,
    restore_wanted: RestoreWanted = never_wanted,
) -> Decoder:
    """Frames decoded ahead on as many threads as the CPU quota allows (one: the plain
    decoder, which also resumes inside frames)."""
    decoder = ParallelZstdDecoder(
        emit,
        on_boundary,
        on_frame_scanned=on_frame_scanned,
        restore_wanted=restore_wanted,
        max_input=PARALLEL_MAX_INPUT,
        max_output=PARALLEL_MAX_OUTPUT,
    )
    if decoder.workers == 1:
        decoder.close()
        return ZstdDecoder(emit, on_boundary, restore_wanted)
    log.info("the zstd frames announce their sizes: decoding them on %d threads", decoder.workers)
    return decoder


# Per frame in flight (workers + 1 of them): compressed bytes not yet decoded, and decoded
# bytes not yet handed on. With 2 workers and 32 MiB frames, memory stays near 100 MiB.
PARALLEL_MAX_INPUT = 8 << 20
PARALLEL_MAX_OUTPUT = 4 << 20


# Formats whose readers skip zero bytes between frames: xz's stream padding, and the zeros
# block-padding writers (tape and tar blocking) leave after gzip and bzip2 members.
ZERO_PADDED = frozenset({Compression.XZ, Compression.GZIP, Compression.BZIP2})


class AutoDecoder:
    """Picks the decoder from --format or, for auto, from the stream's first bytes."""

    def __init__(
        self,
        compression: Compression | None,
        on_detect: Callable[[Compression], Emit],
        on_boundary: OnBoundary = _ignore_boundary,
        restore_wanted: RestoreWanted = never_wanted,
        mid_state: MidState | None = None,
        *,
        continued: bool = False,
        on_frame_scanned: OnBoundary = _ignore_boundary,
    ) -> None:
        """mid_state: carry on inside a frame or member (compression must then be given),
        where there is no magic number to look at. continued: carry on at a boundary between
        frames or members of a stream begun before (compression given), where the stream may
        end, or go on with the zero padding its format allows before another frame begins.
        on_frame_scanned: a frame ends at this offset of the data being fed, to be reported
        by on_boundary only later, once decoded (by a decoder decoding frames ahead on other
        threads)."""
        assert compression is not None or not (mid_state or continued)
        self._compression = compression
        self._continued = continued and mid_state is None
        self._padding = 0  # zero bytes skipped where a continued stream carries on
        self._on_detect = on_detect
        self._on_boundary = on_boundary
        self._on_frame_scanned = on_frame_scanned
        self._restore_wanted = restore_wanted
        self._head_offset = 0  # bytes of the current feed that were held back as the head
        self._head = bytearray()
        self._inner: Decoder | None = None
        # Known from the start when carrying on; else once the head shows it.
        self._emit = on_detect(compression) if compression and (mid_state or continued) else None
        if mid_state is not None:
            assert compression is not None and self._emit is not None
            self._inner = resume_decoder(
                compression, mid_state, self._emit, self._boundary, restore_wanted
            )

    def feed(self, data: Chunk) -> None:
        if self._inner is None:
            held = len(self._head)
            skipped = self._skip_padding(data) if not held else 0
            self._head += memoryview(data)[skipped:]
            if len(self._head) < max(SNIFF_COMPRESSION_BYTES, HEAD_BYTES):
                return
            # Boundary offsets below count from the head: bytes held back from earlier
            # feeds, or (negative) this feed's padding, which comes before it.
            self._head_offset = held - skipped
            data = self._start()
            assert self._inner is not None
            self._inner.feed(data)
            self._head_offset = 0
            return
        self._inner.feed(data)

    def _boundary(self, offset: int) -> None:
        # While the held-back head is fed, offsets count from it; a boundary inside the head
        # lies in chunks before this one and is not reported. (Otherwise an offset may be
        # negative: a frame decoded on another thread ended in an earlier chunk.)
        if self._head_offset <= 0 or offset >= self._head_offset:
            self._on_boundary(offset - self._head_offset)

    def _skip_padding(self, data: Chunk) -> int:
        """Where a continued stream carries on: how many zero bytes data starts with, if its
        format allows padding there (the head then starts after them)."""
        if not self._continued or self._compression not in ZERO_PADDED:
            return 0
        view = bytes(data)
        skipped = len(view) - len(view.lstrip(b"\0"))
        self._padding += skipped
        if skipped < len(view) and self._compression is Compression.XZ:
            check_xz_padding(self._padding)
        return skipped

    def _scanned(self, offset: int) -> None:
        if offset >= self._head_offset:
            self._on_frame_scanned(offset - self._head_offset)

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
        emit = self._emit or self._on_detect(compression)
        if compression is Compression.ZSTD and frames_are_bounded(bytes(self._head)):
            self._inner = parallel_zstd(emit, self._boundary, self._scanned, self._restore_wanted)
        else:
            self._inner = make_decoder(compression, emit, self._boundary, self._restore_wanted)
        head = bytes(self._head)
        self._head.clear()
        return head

    @property
    def started(self) -> bool:
        return self._inner is not None

    def finish(self) -> None:
        if self._inner is None:
            if self._continued and not self._head:
                # The stream ended at the boundary it carried on from, or after padding.
                if self._compression is Compression.XZ:
                    check_xz_padding(self._padding)
                return
            head = self._start()  # a stream shorter than any magic number
            assert self._inner is not None
            self._inner.feed(head)
        self._inner.finish()

    @property
    def at_boundary(self) -> bool:
        if self._inner is None:
            # Inside xz padding only at a multiple of four: a restore point there resumes
            # counting it from zero.
            return self._compression is not Compression.XZ or self._padding % 4 == 0
        return self._inner.at_boundary

    def mid_state(self) -> MidState | None:
        return None if self._inner is None else self._inner.mid_state()
