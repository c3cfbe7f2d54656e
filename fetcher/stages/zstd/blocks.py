"""Walks zstd frames and blocks (RFC 8878) without decoding them, for the points between.

The library decodes across frames and blocks but cannot say where one ended. The scanner
reads only headers: frame headers, block headers and, in compressed blocks, the few bytes
that say which entropy tables the block sets (a Huffman tree description, the sequence
compression modes and the FSE descriptions after them, kept raw and parsed only when a
restore point needs them). On request it also reads whole blocks to follow the repeat
offsets, the one part of the decoder's state that headers do not show.

The scanner never decides that a stream is corrupt beyond what it must to walk it (a bad
magic, a reserved block type): when a block is not what it expects, it stops offering
restore points for that frame and leaves the verdict to the library.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from fetcher.errors import CorruptArchive
from fetcher.stages.zstd.dictionary import MIN_WINDOW, window_descriptor, window_size
from fetcher.stages.zstd.entropy import PREDEFINED, REPEAT, SequenceTable, predefined, table_at
from fetcher.stages.zstd.errors import FormatError
from fetcher.stages.zstd.sections import (
    COMPRESSED,
    huffman_description_size,
    literals_header_size,
    literals_section_size,
    sequences_header_size,
)
from fetcher.stages.zstd.sequences import (
    FRAME_START,
    UNKNOWN,
    Offsets,
    Tables,
    after_block,
    known,
)

FRAME_MAGIC = 0xFD2FB528
_SKIPPABLE_MASK = 0xFFFFFFF0
_SKIPPABLE_MAGIC = 0x184D2A50
MAX_BLOCK = 128 * 1024
# Longer than the three FSE descriptions can be: (53 * 9 + 36 * 9 + 32 * 8) bits, 3 RLE bytes.
_TABLES_HEAD = 256


class Event(enum.Enum):
    HEADER = "a frame header ended; block data follows"
    BLOCK = "a block that is not the frame's last ended (reported only while watching)"
    BLOCKS_END = "the frame's last block ended; its checksum, if any, follows"
    FRAME_END = "a frame (or skippable frame) ended"


@dataclass(frozen=True)
class FrameHeader:
    raw: bytes
    window: int  # bytes a match may reach back: the window, or the whole single segment
    descriptor: int  # a window descriptor for a frame carrying on from inside this one
    checksum: bool
    content_size: int | None

    @classmethod
    def parse(cls, raw: bytes) -> FrameHeader:
        flags = raw[4]
        single_segment = (flags >> 5) & 1
        position = 5 if single_segment else 6
        position += (0, 1, 2, 4)[flags & 3]  # dictionary id
        size_bytes = (1 if single_segment else 0, 2, 4, 8)[flags >> 6]
        content_size = None
        if size_bytes:
            content_size = int.from_bytes(raw[position : position + size_bytes], "little")
            content_size += 256 if size_bytes == 2 else 0
        if single_segment:
            assert content_size is not None
            window = content_size  # beyond any window when absurd: then never resumed inside
            descriptor = window_descriptor(min(max(content_size, MIN_WINDOW), window_size(255)))
        else:
            descriptor = raw[5]
            window = window_size(descriptor)
        return cls(raw, window, descriptor, bool((flags >> 2) & 1), content_size)

    def for_library(self) -> bytes:
        """The header with its checksum flag cleared: the checksum is verified outside."""
        return self.raw[:4] + bytes([self.raw[4] & ~4]) + self.raw[5:]


def header_size(flags: int) -> int:
    single_segment = (flags >> 5) & 1
    return (
        5
        + (0 if single_segment else 1)
        + (0, 1, 2, 4)[flags & 3]
        + (1 if single_segment else 0, 2, 4, 8)[flags >> 6]
    )


@dataclass(frozen=True)
class _Defined:
    """A sequences header seen in passing: its modes byte and the raw bytes after it."""

    modes: int
    head: bytes


@dataclass(frozen=True)
class Continuation:
    """Where a resumed scanner starts: inside a frame, before a block header."""

    header: FrameHeader
    frames: int
    blocks: int
    huffman: bytes | None
    tables: Tables
    offsets: Offsets  # the repeat offsets there


class FrameScanner:
    """Frame and block ends of a zstd stream; with ``follow_tables`` false, only those.

    Following the entropy tables costs a parse of every compressed block's headers, which only
    a decoder that resumes inside frames needs.
    """

    def __init__(
        self, continuation: Continuation | None = None, *, follow_tables: bool = True
    ) -> None:
        self._follow_tables = follow_tables
        self.frames = 0  # complete frames, skippable ones included
        self.in_frame = False
        self.passing = False  # whether the bytes now scanned are block data
        self.header: FrameHeader | None = None
        self.checksum = 0  # the last frame's content checksum, once read
        self.watch = False  # report every block end, not only frame ends
        self.blocks = 0  # blocks begun in the current frame
        self.huffman: bytes | None = None
        self._tables: list[SequenceTable | _Defined | None] = [None, None, None]
        self.tracked = True  # whether the tables and offsets are followed in this frame
        self.decoding = False  # whether whole blocks are read to follow the repeat offsets
        # The repeat offsets after the last block, also while not decoding: raw and RLE
        # blocks, and compressed ones without sequences, leave them alone (a frame of
        # incompressible data keeps the ones it started with); a block whose sequences are
        # passed over makes them unknown.
        self.offsets: Offsets = FRAME_START
        self._pending = bytearray()
        self._need = 4
        self._skip = 0
        self._step: Callable[[], Event | None] = self._magic
        self._base = 0  # stream offset of the chunk being scanned
        self._now = 0  # stream offset just after the bytes scanned so far
        self._block_end = 0
        self._last = False
        self._sequences_at = 0  # stream offsets inside the block being read
        self._huffman_at = self._huffman_end = 0  # and offsets into the bytes collected
        self._head_at = 0
        self._modes = 0
        if continuation is not None:
            self.frames = continuation.frames
            self.in_frame = self.passing = True
            self.header = continuation.header
            self.blocks = continuation.blocks
            self.huffman = continuation.huffman
            self._tables = list(continuation.tables)
            self.offsets = continuation.offsets
            self._take(3, self._block_header)

    # --- what a restore point is made of ---------------------------------------------------

    def tables(self) -> Tables:
        """The sequence tables in effect; raises FormatError when a kept header is not valid."""
        for kind, table in enumerate(self._tables):
            if isinstance(table, _Defined):
                self._tables[kind] = table_at(table.head, table.modes, kind)
        tables = self._tables
        assert not any(isinstance(table, _Defined) for table in tables)
        return (tables[0], tables[1], tables[2])  # type: ignore[return-value]

    def start_decoding(self) -> None:
        """Follow the repeat offsets from the next block on (call between blocks)."""
        if self.decoding or not self.tracked:
            return
        if self.blocks == 0:
            self.offsets = FRAME_START
        try:
            self.tables()
        except FormatError:
            self.tracked = False
            return
        self.decoding = True

    def stop_decoding(self) -> None:
        self.decoding = False

    @property
    def restorable(self) -> bool:
        """Whether the state after the last block can be written out exactly."""
        if not (self.decoding and self.tracked and known(self.offsets)):
            return False
        # After an RLE table, a repeat mode reads its first state with no bits; a dictionary
        # can only hold FSE tables, whose first state is read with some.
        return all(
            not isinstance(table, SequenceTable) or table.rle is None for table in self._tables
        )

    # --- scanning --------------------------------------------------------------------------

    def scan(self, view: memoryview) -> Iterator[tuple[Event, int]]:
        """Scan view; yield each event with the offset in view where it happens."""
        position, end = 0, len(view)
        try:
            while True:
                if self._skip:
                    if position == end:
                        return
                    taken = min(self._skip, end - position)
                    self._skip -= taken
                    position += taken
                    if self._skip:
                        return
                wanted = self._need - len(self._pending)
                if wanted > 0:
                    if position == end:
                        return
                    piece = view[position : position + wanted]
                    if not self._pending and self._step == self._magic:
                        # A frame begins with its first byte: a stream that ends, or a restore
                        # point taken, after one to three bytes of a magic is inside it.
                        self.in_frame = True
                    self._pending += piece
                    position += len(piece)
                    if len(piece) < wanted:
                        return
                self._now = self._base + position
                event = self._step()
                if event is not None:
                    yield event, position
        finally:
            self._base += end

    def _take(self, need: int, step: Callable[[], Event | None], skip: int = 0) -> None:
        """Skip skip bytes, then collect need bytes, then call step."""
        self._pending.clear()
        self._need = need
        self._skip = skip
        self._step = step

    def _more(self, need: int, step: Callable[[], Event | None]) -> None:
        """Collect bytes on top of those pending until need are, then call step."""
        self._need = need
        self._step = step

    # --- frames ----------------------------------------------------------------------------

    def _magic(self) -> Event | None:
        magic = int.from_bytes(self._pending[:4], "little")
        self.in_frame = True
        if magic & _SKIPPABLE_MASK == _SKIPPABLE_MAGIC:
            self._take(4, self._skippable_size)
        elif magic == FRAME_MAGIC:
            self._more(5, self._descriptor)
        else:
            raise CorruptArchive(
                f"zstd stream: bad frame magic {magic:#010x} after {self.frames} frame(s)",
                "the file is not zstd, or it is damaged",
            )
        return None

    def _skippable_size(self) -> Event | None:
        self._take(0, self._frame_end, skip=int.from_bytes(self._pending[:4], "little"))
        return None

    def _descriptor(self) -> Event | None:
        self._more(header_size(self._pending[4]), self._header_end)
        return None

    def _header_end(self) -> Event | None:
        self.header = FrameHeader.parse(bytes(self._pending))
        self.passing = True
        self.blocks = 0
        self.huffman = None
        self._tables = [None, None, None]
        self.tracked = self._follow_tables
        self.decoding = False
        self.offsets = FRAME_START
        self._take(3, self._block_header)
        return Event.HEADER

    def _frame_end(self) -> Event | None:
        self.frames += 1
        self.in_frame = False
        self._take(4, self._magic)
        return Event.FRAME_END

    # --- blocks ----------------------------------------------------------------------------

    def _block_header(self) -> Event | None:
        header = int.from_bytes(self._pending[:3], "little")
        self._last = bool(header & 1)
        block_type = (header >> 1) & 3
        size = header >> 3
        if block_type == 3:
            raise CorruptArchive("zstd stream: reserved block type", "the file is damaged")
        self.blocks += 1
        self._block_end = self._now + (1 if block_type == 1 else size)
        if block_type != 2 or not self.tracked:
            self._to_block_end()
        elif size < 3 or size > MAX_BLOCK:
            self._untracked()
        elif self.decoding:
            self._take(size, self._whole_block)
        else:
            self._take(min(6, size), self._literals)  # a header's 1 to 5 bytes, and one more
        return None

    def _to_block_end(self) -> None:
        self._take(0, self._block_end_reached, skip=self._block_end - self._now)

    def _untracked(self) -> None:
        self.tracked = False
        self.decoding = False
        self.offsets = UNKNOWN
        self._to_block_end()

    def _block_end_reached(self) -> Event | None:
        if not self._last:
            self._take(3, self._block_header)
            return Event.BLOCK if self.watch else None
        self.passing = False
        if self.header is not None and self.header.checksum:
            self._take(4, self._checksum)
        else:
            self._take(0, self._frame_end)
        return Event.BLOCKS_END

    def _checksum(self) -> Event | None:
        self.checksum = int.from_bytes(self._pending[:4], "little")
        return self._frame_end()

    def _whole_block(self) -> Event | None:
        try:
            self.huffman, tables, self.offsets = after_block(
                bytes(self._pending), self.huffman, self.tables(), self.offsets
            )
        except FormatError:
            self._untracked()
            return None
        self._tables = list(tables)
        self._to_block_end()
        return None

    # --- the headers of a compressed block, read in passing --------------------------------
    # Each step collects a few bytes more than the header it parses may need (never past the
    # block); positions are kept absolute, so what is collected beyond a header is skipped.

    def _literals(self) -> Event | None:
        pending, start = self._pending, self._now - len(self._pending)
        size = literals_header_size(pending[0])
        if size >= len(pending):
            self._untracked()
            return None
        self._sequences_at = start + literals_section_size(pending[:size])
        if self._sequences_at >= self._block_end:
            self._untracked()
        elif pending[0] & 3 == COMPRESSED:
            end = size + huffman_description_size(pending[size])
            if start + end > self._sequences_at:
                self._untracked()
            else:
                self._huffman_at, self._huffman_end = size, end
                self._more(end, self._huffman)
        else:
            self._to_sequences()
        return None

    def _huffman(self) -> Event | None:
        self.huffman = bytes(self._pending[self._huffman_at : self._huffman_end])
        self._to_sequences()
        return None

    def _to_sequences(self) -> None:
        skip = self._sequences_at - self._now
        if skip < 0:  # the sequences header is already among the bytes collected
            self._pending = self._pending[skip:]
            self._more(min(4, self._block_end - self._sequences_at), self._sequences)
        else:
            self._take(min(4, self._block_end - self._sequences_at), self._sequences, skip=skip)

    def _sequences(self) -> Event | None:
        pending = self._pending
        size = sequences_header_size(pending[0])
        if pending[0] == 0:
            self._to_block_end()
            return None
        # Sequences passed over (also when decoding was asked for while this block's header
        # was being read): the offsets may have moved.
        self.offsets = UNKNOWN
        if size > len(pending):
            self._untracked()
            return None
        modes = pending[size - 1]
        if modes & 3:
            self._untracked()
            return None
        defining = False
        for kind in range(3):
            mode = (modes >> (6 - 2 * kind)) & 3
            if mode == PREDEFINED:
                self._tables[kind] = predefined(kind)
            elif mode != REPEAT:
                defining = True
        if not defining:
            self._to_block_end()
            return None
        self._modes, self._head_at = modes, size
        left = self._block_end - self._sequences_at - size
        self._more(size + min(_TABLES_HEAD, left), self._tables_head)
        return None

    def _tables_head(self) -> Event | None:
        defined = _Defined(self._modes, bytes(self._pending[self._head_at :]))
        for kind in range(3):
            if (self._modes >> (6 - 2 * kind)) & 3 not in (PREDEFINED, REPEAT):
                self._tables[kind] = defined
        self._to_block_end()
        return None
