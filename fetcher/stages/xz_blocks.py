"""Concatenated xz streams walked block by block, restartable at any block start.

The stream is parsed here (https://tukaani.org/xz/xz-file-format.txt) alongside liblzma, which
decodes it and checks it whole. Blocks are independent (LZMA2 starts afresh at each), so a
restore point between blocks carries no history, only what the stream's index will be checked
against. A decode resumed at a block start cannot hand liblzma the rest of the stream (its
index lists blocks liblzma did not see), so each remaining block of that stream is decoded as
a single-block stream of its own, with a stream header, index and footer made for it; liblzma
then checks the block's check and sizes, and the real index is checked here.

Knowing where a block ends needs its compressed size in the block header. Multi-threaded xz
(``xz -T0``) writes it; single-threaded xz does not, and such a stream is handed to liblzma
whole, resumable only at its start.
"""

from __future__ import annotations

import logging
import lzma
import re
import zlib
from collections.abc import Callable, Mapping
from typing import Any, Final

from fetcher.errors import CorruptArchive
from fetcher.stages.midstream import MidState, PointReport, RestoreWanted
from fetcher.state.checkpoint import StateError

__all__ = ["CODEC", "XzStreams"]

CODEC: Final = "xz"
_STATE_VERSION: Final = 1
_log = logging.getLogger("model-fetch")

_STREAM_MAGIC: Final = b"\xfd7zXZ\x00"
_FOOTER_MAGIC: Final = b"YZ"
_STREAM_HEADER_SIZE: Final = 12
_FOOTER_SIZE: Final = 12
_CHECK_SIZES: Final = (0, 4, 4, 4, 8, 8, 8, 16, 16, 16, 32, 32, 32, 64, 64, 64)
_HAS_COMPRESSED_SIZE: Final = 0x40
_HAS_UNCOMPRESSED_SIZE: Final = 0x80
_RESERVED_BLOCK_FLAGS: Final = 0x3C
_MAX_VLI: Final = (1 << 63) - 1
_NOT_ZERO = re.compile(rb"[^\0]")  # stream padding between streams is skipped

# Phases of the walk through one stream.
_BETWEEN = "between streams"
_STREAM_HEADER = "stream header"
_BLOCK_START = "block or index"
_BLOCK_HEADER = "block header"
_BLOCK_DATA = "block"
_INDEX = "index"
_FOOTER = "stream footer"
_WHOLE = "blocks"  # a stream whose block headers give no sizes, decoded by liblzma alone


class _BadStream(ValueError):
    pass


def check_xz_padding(size: int) -> None:
    """Stream padding comes in whole groups of four zero bytes (the xz format, section 2.2);
    xz itself calls any other count corrupt, and so does this reader."""
    if size % 4:
        raise CorruptArchive(
            f"xz stream padding is {size} zero bytes, not a multiple of four",
            "the file is damaged",
        )


def _crc(data: bytes | bytearray | memoryview, value: int = 0) -> bytes:
    return zlib.crc32(data, value).to_bytes(4, "little")


def _vli(value: int) -> bytes:
    """xz's multibyte integer: seven bits a byte, low first, the high bit says more follow."""
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _read_vli(data: bytes, pos: int, end: int) -> tuple[int, int]:
    value = 0
    for shift in range(0, 63, 7):
        if pos >= end:
            raise _BadStream("a size runs past the end of its block header")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if byte == 0 and shift:
                raise _BadStream("a size is not in its shortest form")
            return value, pos
    raise _BadStream("a size is longer than nine bytes")


def _stream_flags(check: int) -> bytes:
    return bytes((0, check))


def _single_block_stream(check: int) -> tuple[bytes, Callable[[int, int], bytes]]:
    """The stream header, and how to make the index and footer, of a one-block stream."""
    header = _STREAM_MAGIC + _stream_flags(check) + _crc(_stream_flags(check))

    def tail(unpadded: int, uncompressed: int) -> bytes:
        index = bytearray(b"\0" + _vli(1) + _vli(unpadded) + _vli(uncompressed))
        index += bytes(-len(index) % 4)
        index += _crc(index)
        backward = (len(index) // 4 - 1).to_bytes(4, "little") + _stream_flags(check)
        return bytes(index) + _crc(backward) + backward + _FOOTER_MAGIC

    return header, tail


class _Records:
    """What a stream's index must list, summed as the blocks go by."""

    def __init__(self) -> None:
        self.count = 0
        self.unpadded = 0
        self.uncompressed = 0
        self.size = 0  # bytes the records take in the index
        self.crc = 0  # CRC-32 of those bytes

    def add(self, record: bytes, unpadded: int, uncompressed: int) -> None:
        self.count += 1
        self.unpadded += unpadded
        self.uncompressed += uncompressed
        self.size += len(record)
        self.crc = zlib.crc32(record, self.crc)

    def summary(self) -> tuple[int, int, int, int, int]:
        return self.count, self.unpadded, self.uncompressed, self.size, self.crc


class _Index:
    """A stream's index read byte by byte after its indicator, summed like _Records."""

    def __init__(self) -> None:
        self.records = _Records()
        self._crc = zlib.crc32(b"\0")  # the indicator, already read
        self._length = 1
        self._values: list[int] = []
        self._value = self._shift = 0
        self._record = bytearray()
        self._count: int | None = None
        self._trailer = bytearray()  # the CRC-32 after the padding
        self.size = 0  # set when done

    def feed(self, data: bytes, pos: int) -> int:
        """Read index bytes from data[pos:]; return where the index (or data) ends."""
        while pos < len(data) and not self.size:
            byte = data[pos]
            pos += 1
            if self._count is None or self.records.count < self._count:
                self._crc = zlib.crc32(bytes((byte,)), self._crc)
                self._length += 1
                self._number(byte)
            elif self._length % 4:
                if byte:
                    raise _BadStream("the index padding is not zero")
                self._crc = zlib.crc32(b"\0", self._crc)
                self._length += 1
            else:
                self._trailer.append(byte)
                if len(self._trailer) == 4:
                    if bytes(self._trailer) != self._crc.to_bytes(4, "little"):
                        raise _BadStream("the index CRC-32 does not match")
                    self.size = self._length + 4
        return pos

    def _number(self, byte: int) -> None:
        if self._count is not None:
            self._record.append(byte)
        if self._shift and not byte:
            raise _BadStream("an index number is not in its shortest form")
        if self._shift > 56:
            raise _BadStream("an index number is longer than nine bytes")
        self._value |= (byte & 0x7F) << self._shift
        self._shift += 7
        if byte & 0x80:
            return
        value, self._value, self._shift = self._value, 0, 0
        if self._count is None:
            self._count = value
            return
        self._values.append(value)
        if len(self._values) == 2:
            unpadded, uncompressed = self._values
            self._values.clear()
            if not unpadded:
                raise _BadStream("the index lists a block of size 0")
            self.records.add(bytes(self._record), unpadded, uncompressed)
            self._record.clear()


class XzStreams:
    """The decoder: feed() pushes output to emit(), on_boundary() marks restore points.

    A point at a stream end has no state to carry; one at a block start inside a stream has
    (mid_state()). Points are offered only after restore_wanted() has said yes.
    """

    def __init__(
        self,
        emit: Callable[[memoryview], None],
        on_boundary: Callable[[int], None],
        restore_wanted: RestoreWanted,
        *,
        output_chunk: int,
    ) -> None:
        self._emit = emit
        self._on_boundary = on_boundary
        self._restore_wanted = restore_wanted
        self._output_chunk = output_chunk
        self.members = 0  # complete streams
        self._phase = _BETWEEN
        self._padding = 0  # zero bytes since the last stream ended
        self._pending = bytearray()  # bytes of a fixed-size part collected so far
        self._need = 0  # that part's size
        self._decompressor: lzma.LZMADecompressor | None = None
        self._per_block = False  # resumed inside this stream: one made-up stream per block
        self._check = 0
        self._records = _Records()
        self._index = _Index()
        self._unpadded = 0
        self._left = 0  # bytes of the current block still to come
        self._block_output = 0
        self._told_whole = False
        self._point = PointReport()

    # --- restore points -----------------------------------------------------------------

    def restore(self, state: MidState) -> None:
        """Carry on at a block start from state; the next byte fed is that block's first.

        Raises StateError naming the field that does not check out.
        """
        fields = _check_state(state)
        self.members = fields["members"]
        self._check = fields["check"]
        records = self._records
        records.count, records.unpadded, records.uncompressed = (
            fields["blocks"],
            fields["unpadded"],
            fields["uncompressed"],
        )
        records.size, records.crc = fields["records_size"], fields["records_crc"]
        self._per_block = True
        self._expect(_BLOCK_START, 1)

    def mid_state(self) -> MidState | None:
        """The state at the point being reported; only valid inside on_boundary."""
        return self._point.state

    def _offer_point(self, pos: int) -> None:
        count, unpadded, uncompressed, size, crc = self._records.summary()
        fields = {
            "version": _STATE_VERSION,
            "members": self.members,
            "check": self._check,
            "blocks": count,
            "unpadded": unpadded,
            "uncompressed": uncompressed,
            "records_size": size,
            "records_crc": crc,
        }
        self._point.report(MidState(CODEC, fields, b""), self._on_boundary, pos)

    # --- decoding -----------------------------------------------------------------------

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        data = data if isinstance(data, bytes) else bytes(data)
        pos = 0
        try:
            while pos < len(data):
                pos = self._step(data, pos)
        except (_BadStream, lzma.LZMAError, EOFError) as error:
            self._decompressor = None
            raise CorruptArchive(
                f"xz stream {self.members + 1} is corrupt in its {self._phase}: {error}",
                "the file is damaged",
            ) from None

    def _step(self, data: bytes, pos: int) -> int:
        phase = self._phase
        if phase == _BETWEEN:
            found = _NOT_ZERO.search(data, pos)
            end = len(data) if found is None else found.start()
            self._padding += end - pos
            if found is not None:
                check_xz_padding(self._padding)
                self._padding = 0
                self._expect(_STREAM_HEADER, _STREAM_HEADER_SIZE)
            return end
        if phase == _BLOCK_DATA:
            return self._block_data(data, pos)
        if phase == _INDEX:
            return self._read_index(data, pos)
        if phase == _WHOLE:
            return self._whole_stream(data, pos)
        taken = min(self._need - len(self._pending), len(data) - pos)
        self._pending += data[pos : pos + taken]
        pos += taken
        if len(self._pending) == self._need:
            pending = bytes(self._pending)
            self._pending.clear()
            if phase == _STREAM_HEADER:
                self._stream_header(pending)
            elif phase == _BLOCK_START:
                self._block_start(pending)
            elif phase == _BLOCK_HEADER:
                self._start_block(pending)
            else:
                self._footer(pending, pos)
        return pos

    def _expect(self, phase: str, size: int = 0) -> None:
        """Go on to phase; for a fixed-size part, collect its size bytes first."""
        self._phase = phase
        self._need = size

    def _decode(self, piece: bytes | memoryview) -> None:
        decompressor = self._decompressor
        assert decompressor is not None
        output = decompressor.decompress(piece, self._output_chunk)
        while True:
            if output:
                self._block_output += len(output)
                self._emit(memoryview(output))
            if decompressor.eof or decompressor.needs_input:
                return
            output = decompressor.decompress(b"", self._output_chunk)

    def _stream_header(self, header: bytes) -> None:
        if header[:6] != _STREAM_MAGIC:
            raise _BadStream(f"not an xz stream: it starts with {header[:6].hex()}")
        if header[8:] != _crc(header[6:8]):
            raise _BadStream("the stream header CRC-32 does not match")
        if header[6] or header[7] & 0xF0:
            raise _BadStream(f"unsupported stream flags {header[6:8].hex()}")
        self._check = header[7]
        self._records = _Records()
        self._per_block = False
        self._decompressor = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
        self._decode(header)
        self._expect(_BLOCK_START, 1)

    def _block_start(self, first: bytes) -> None:
        if first[0]:
            self._pending += first  # the header size byte, part of the header
            self._expect(_BLOCK_HEADER, (first[0] + 1) * 4)
            return
        if not self._per_block:
            self._decode(first)
        self._index = _Index()
        self._expect(_INDEX)

    def _start_block(self, header: bytes) -> None:
        if header[-4:] != _crc(header[:-4]):
            raise _BadStream(f"the header of block {self._records.count + 1} fails its CRC-32")
        flags = header[1]
        if flags & _RESERVED_BLOCK_FLAGS:
            raise _BadStream(f"reserved block flags {flags:#04x} are set")
        if not flags & _HAS_COMPRESSED_SIZE:
            self._whole_stream_from(header)
            return
        compressed, _ = _read_vli(header, 2, len(header) - 4)
        if not compressed:
            raise _BadStream(f"block {self._records.count + 1} claims no compressed size")
        check_size = _CHECK_SIZES[self._check]
        self._unpadded = len(header) + compressed + check_size
        self._left = compressed + (-compressed % 4) + check_size
        if self._unpadded > _MAX_VLI:
            raise _BadStream(f"block {self._records.count + 1} is too large")
        self._block_output = 0
        if self._per_block:
            stream_header, _ = _single_block_stream(self._check)
            self._decompressor = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
            self._decode(stream_header)
        self._decode(header)
        self._expect(_BLOCK_DATA)

    def _whole_stream_from(self, header: bytes) -> None:
        if self._per_block:
            raise _BadStream(
                f"block {self._records.count + 1} has no compressed size in its header, so "
                "this stream cannot be carried on from inside it; fetch into a new directory"
            )
        if not self._told_whole:
            self._told_whole = True
            _log.info(
                "xz stream %d has no block sizes in its block headers (single-threaded xz "
                "writes it so): a fetch resumes it only from its start; `xz -T0` (with "
                "--block-size=SIZE for smaller pieces) makes an archive that resumes at each "
                "block",
                self.members + 1,
            )
        self._decode(header)
        self._expect(_WHOLE)

    def _block_data(self, data: bytes, pos: int) -> int:
        taken = min(self._left, len(data) - pos)
        self._decode(memoryview(data)[pos : pos + taken])
        pos += taken
        self._left -= taken
        if self._left:
            return pos
        record = _vli(self._unpadded) + _vli(self._block_output)
        self._records.add(record, self._unpadded, self._block_output)
        if self._per_block:
            _, tail = _single_block_stream(self._check)
            self._decode(tail(self._unpadded, self._block_output))
            self._require_end("the block")
        self._expect(_BLOCK_START, 1)
        if self._restore_wanted():
            self._offer_point(pos)
        return pos

    def _require_end(self, what: str) -> None:
        decompressor = self._decompressor
        assert decompressor is not None
        if not decompressor.eof or decompressor.unused_data:
            raise _BadStream(f"liblzma and this reader disagree on where {what} ends")
        self._decompressor = None

    def _read_index(self, data: bytes, start: int) -> int:
        pos = self._index.feed(data, start)
        if not self._per_block:
            self._decode(memoryview(data)[start:pos])
        if self._index.size:
            if self._index.records.summary() != self._records.summary():
                raise _BadStream(
                    f"the index lists {self._index.records.count} block(s) that do not match "
                    f"the {self._records.count} decoded"
                )
            self._expect(_FOOTER, _FOOTER_SIZE)
        return pos

    def _footer(self, footer: bytes, pos: int) -> None:
        if footer[10:] != _FOOTER_MAGIC:
            raise _BadStream("the stream footer magic is missing")
        if footer[:4] != _crc(footer[4:10]):
            raise _BadStream("the stream footer CRC-32 does not match")
        if footer[8:10] != _stream_flags(self._check):
            raise _BadStream("the stream footer's flags differ from its header's")
        if (int.from_bytes(footer[4:8], "little") + 1) * 4 != self._index.size:
            raise _BadStream("the stream footer gives another index size")
        if not self._per_block:
            self._decode(footer)
            self._require_end("the stream")
        self._end_stream(pos)

    def _whole_stream(self, data: bytes, pos: int) -> int:
        decompressor = self._decompressor
        assert decompressor is not None
        self._decode(memoryview(data)[pos:])
        if not decompressor.eof:
            return len(data)
        pos = len(data) - len(decompressor.unused_data)
        self._decompressor = None
        self._end_stream(pos)
        return pos

    def _end_stream(self, pos: int) -> None:
        self.members += 1
        self._expect(_BETWEEN)
        self._on_boundary(pos)

    def finish(self) -> None:
        if self._phase != _BETWEEN or self.members == 0:
            self._decompressor = None
            raise CorruptArchive(
                f"xz data ended inside stream {self.members + 1}",
                "the download was cut short or the file is damaged",
            )
        check_xz_padding(self._padding)

    @property
    def at_boundary(self) -> bool:
        # Inside padding only at a multiple of four: a restore point there (carried on by a
        # fresh reader) counts the rest from zero.
        return self._phase == _BETWEEN and self._padding % 4 == 0


_LIMITS: Final = {
    "version": (_STATE_VERSION, _STATE_VERSION),
    "members": (0, _MAX_VLI),
    "check": (0, 15),
    "blocks": (0, _MAX_VLI),
    "unpadded": (0, _MAX_VLI),
    "uncompressed": (0, _MAX_VLI),
    "records_size": (0, _MAX_VLI),
    "records_crc": (0, 0xFFFFFFFF),
}


def _check_state(state: MidState) -> dict[str, int]:
    if state.codec != CODEC:
        raise StateError(f"xz state.codec is {state.codec!r}, not {CODEC!r}")
    fields = state.fields
    if not isinstance(fields, Mapping):
        raise StateError("xz state.fields is not an object")
    unknown = sorted(set(fields) - set(_LIMITS))
    if unknown:
        raise StateError(f"xz state.fields has unknown field(s) {', '.join(map(str, unknown))}")
    checked = {name: _whole(fields, name, low, high) for name, (low, high) in _LIMITS.items()}
    # An index record is two numbers of one to nine bytes; a block is at least an 8-byte
    # header and one byte of data.
    if not 2 * checked["blocks"] <= checked["records_size"] <= 18 * checked["blocks"]:
        raise StateError("xz state.fields.records_size does not fit the number of blocks")
    if checked["unpadded"] < 9 * checked["blocks"]:
        raise StateError("xz state.fields.unpadded is too small for the number of blocks")
    if state.history != b"":
        raise StateError("xz state.history must be empty: xz blocks start afresh")
    return checked


def _whole(fields: Mapping[str, Any], name: str, low: int, high: int) -> int:
    if name not in fields:
        raise StateError(f"xz state.fields.{name} is missing")
    value = fields[name]
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise StateError(f"xz state.fields.{name} is not a whole number in [{low}, {high}]")
    return value
