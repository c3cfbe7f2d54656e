"""Concatenated gzip members (RFC 1952), restartable at any deflate block end inside one.

The header and trailer are parsed here and the deflate data goes to the raw inflater. A
restore point inside a member carries what the inflater and the trailer check need: the
unused bits of the byte it stopped in, the last 32 KiB of the member's output, and the running
CRC-32 and length. ``tar czf``, ``gzip`` and ``pigz`` all write one member of many blocks.
"""

from __future__ import annotations

import re
import struct
import zlib
from collections.abc import Callable, Mapping
from typing import Any, Final

from fetcher.errors import CorruptArchive, FetchError
from fetcher.stages.inflate import WINDOW_SIZE, InflateError, Inflater, InflateUnavailable
from fetcher.stages.midstream import MidState, PointReport, RestoreWanted
from fetcher.state.checkpoint import StateError

__all__ = ["CODEC", "GzipMembers"]

CODEC: Final = "gzip"
_STATE_VERSION: Final = 1

_MAGIC: Final = b"\x1f\x8b"
_DEFLATE: Final = 8
_FHCRC, _FEXTRA, _FNAME, _FCOMMENT = 2, 4, 8, 16
_RESERVED_FLAGS: Final = 0xE0
_TRAILER = struct.Struct("<II")  # CRC-32 and ISIZE (length mod 2**32) of the member's output
_NOT_ZERO = re.compile(rb"[^\0]")  # zero padding between members (tar blocks) is skipped

_BETWEEN, _HEADER, _BODY, _TRAILER_PHASE = range(4)


class _BadMember(ValueError):
    pass


class _Header:
    """An RFC 1952 member header read incrementally, checked and then forgotten."""

    def __init__(self) -> None:
        self._fields = ["fixed"]  # what is still to be read, in order
        self._pending = bytearray()
        self._skip = 0
        self._crc = 0  # of the header bytes, for FHCRC

    @property
    def done(self) -> bool:
        return not self._fields

    def feed(self, data: bytes, pos: int) -> int:
        """Read header bytes from data[pos:]; return where the header (or data) ends."""
        view = memoryview(data)
        while self._fields and pos < len(data):
            field = self._fields[0]
            if field == "text":  # a NUL-terminated name or comment, of any length
                end = data.find(b"\0", pos)
                stop = len(data) if end < 0 else end + 1
                self._crc = zlib.crc32(view[pos:stop], self._crc)
                pos = stop
                if end >= 0:
                    self._fields.pop(0)
                continue
            if field == "extra":
                taken = min(self._skip, len(data) - pos)
                self._crc = zlib.crc32(view[pos : pos + taken], self._crc)
                pos += taken
                self._skip -= taken
                if not self._skip:
                    self._fields.pop(0)
                continue
            size = 10 if field == "fixed" else 2
            taken = min(size - len(self._pending), len(data) - pos)
            self._pending += view[pos : pos + taken]
            pos += taken
            if len(self._pending) == size:
                value = bytes(self._pending)
                self._pending.clear()
                self._fields.pop(0)
                self._field(field, value)
        return pos

    def _field(self, field: str, value: bytes) -> None:
        if field == "hcrc":
            if int.from_bytes(value, "little") != self._crc & 0xFFFF:
                raise _BadMember("header CRC mismatch")
            return
        self._crc = zlib.crc32(value, self._crc)
        if field == "xlen":
            self._skip = int.from_bytes(value, "little")
            if self._skip:
                self._fields.insert(0, "extra")
            return
        if value[:2] != _MAGIC:
            raise _BadMember(f"not a gzip member: it starts with {value[:2].hex()}")
        if value[2] != _DEFLATE:
            raise _BadMember(f"unknown compression method {value[2]}")
        flags = value[3]
        if flags & _RESERVED_FLAGS:
            raise _BadMember(f"reserved header flags {flags:#04x} are set")
        self._fields = [
            name
            for flag, name in ((_FEXTRA, "xlen"), (_FNAME, "text"), (_FCOMMENT, "text"))
            if flags & flag
        ] + (["hcrc"] if flags & _FHCRC else [])


class GzipMembers:
    """The decoder: feed() pushes output to emit(), on_boundary() marks restore points.

    A point at a member end has no state to carry; one inside a member has (mid_state()).
    Block ends are looked for only after restore_wanted() has said yes, so the normal decode
    runs zlib with large buffers and keeps no history.
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
        self._scratch = bytearray(output_chunk)  # what zlib writes into, copied out
        self.members = 0
        self._phase = _BETWEEN
        self._header = _Header()
        self._inflater: Inflater | None = None
        self._crc = 0
        self._length = 0
        self._trailer = bytearray()
        self._resumed_in: int | None = None  # the byte a restore point stopped inside of
        self._point = PointReport()

    # --- restore points -----------------------------------------------------------------

    def restore(self, state: MidState) -> None:
        """Carry on inside a member from state; the next byte fed is the one it was taken at.

        Raises StateError naming the field that does not check out.
        """
        fields = _check_state(state)
        self.members = fields["members"]
        self._crc = fields["crc"]
        self._length = fields["length"]
        bits, byte = fields["bits"], fields["byte"]
        try:
            self._inflater = Inflater(
                history=state.history, bits=bits, value=byte >> (8 - bits) if bits else 0
            )
        except InflateError as error:
            raise StateError(f"gzip state does not restart zlib: {error}") from None
        except InflateUnavailable as error:
            raise _unavailable(error) from None
        self._resumed_in = byte if bits else None
        self._phase = _BODY

    def mid_state(self) -> MidState | None:
        """The state at the point being reported; only valid inside on_boundary."""
        return self._point.state

    def _offer_point(self, data: bytes, pos: int, inflater: Inflater) -> None:
        bits = inflater.unused_bits
        if bits and pos == 0:
            return  # the byte holding the unused bits came in an earlier feed
        offset = pos - 1 if bits else pos
        fields = {
            "version": _STATE_VERSION,
            "members": self.members,
            "crc": self._crc,
            "length": self._length,
            "bits": bits,
            "byte": data[offset] if bits else 0,
        }
        self._point.report(MidState(CODEC, fields, inflater.history()), self._on_boundary, offset)

    # --- decoding -----------------------------------------------------------------------

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        data = data if isinstance(data, bytes) else bytes(data)
        pos = 0
        try:
            while pos < len(data):
                pos = self._step(data, pos)
        except (InflateError, _BadMember) as error:
            self._close()
            raise CorruptArchive(
                f"gzip stream is corrupt in member {self.members + 1}: {error}",
                "the file is damaged",
            ) from None
        except InflateUnavailable as error:
            raise _unavailable(error) from None

    def _step(self, data: bytes, pos: int) -> int:
        if self._phase == _BETWEEN:
            found = _NOT_ZERO.search(data, pos)
            if found is None:
                return len(data)
            self._phase = _HEADER
            self._header = _Header()
            return found.start()
        if self._phase == _HEADER:
            pos = self._header.feed(data, pos)
            if self._header.done:
                self._phase = _BODY
                self._inflater = Inflater()
                self._crc = self._length = 0
            return pos
        if self._phase == _BODY:
            return self._inflate(data, pos)
        return self._read_trailer(data, pos)

    def _inflate(self, data: bytes, pos: int) -> int:
        inflater = self._inflater
        assert inflater is not None
        if self._resumed_in is not None:
            if data[pos] != self._resumed_in:
                raise _BadMember("the byte at the restore point differs from the checkpoint's")
            self._resumed_in = None
            pos += 1
        while True:
            stepping = self._restore_wanted()
            output = inflater.inflate(data, pos, self._scratch, stop_at_block=stepping)
            pos += inflater.consumed
            if output:
                self._crc = zlib.crc32(output, self._crc)
                self._length += len(output)
                self._emit(output)
            if inflater.finished:
                self._close()
                self._phase = _TRAILER_PHASE
                self._trailer.clear()
                return pos
            if inflater.at_block_end:
                self._offer_point(data, pos, inflater)
            elif len(output) < self._output_chunk:
                if pos == len(data):
                    return pos
                if not output and not inflater.consumed:
                    raise _BadMember("zlib stopped without reading or writing anything")

    def _read_trailer(self, data: bytes, pos: int) -> int:
        taken = min(_TRAILER.size - len(self._trailer), len(data) - pos)
        self._trailer += data[pos : pos + taken]
        pos += taken
        if len(self._trailer) < _TRAILER.size:
            return pos
        crc, size = _TRAILER.unpack(self._trailer)
        if crc != self._crc:
            raise _BadMember(
                f"CRC-32 mismatch: the trailer says {crc:08x}, the data {self._crc:08x}"
            )
        if size != self._length & 0xFFFFFFFF:
            raise _BadMember(
                f"length mismatch: the trailer says {size} (mod 2**32), the data {self._length}"
            )
        self.members += 1
        self._phase = _BETWEEN
        self._on_boundary(pos)
        return pos

    def _close(self) -> None:
        if self._inflater is not None:
            self._inflater.close()
            self._inflater = None

    def finish(self) -> None:
        if self._phase != _BETWEEN or self.members == 0:
            self._close()
            raise CorruptArchive(
                f"gzip stream ended inside member {self.members + 1}",
                "the download was cut short or the file is damaged",
            )

    @property
    def at_boundary(self) -> bool:
        return self._phase == _BETWEEN


def _unavailable(error: InflateUnavailable) -> FetchError:
    return FetchError(str(error), "run the fetcher on a CPython whose zlib module uses libz")


_FIELDS: Final = ("version", "members", "crc", "length", "bits", "byte")


def _check_state(state: MidState) -> dict[str, int]:
    if state.codec != CODEC:
        raise StateError(f"gzip state.codec is {state.codec!r}, not {CODEC!r}")
    fields = state.fields
    if not isinstance(fields, Mapping):
        raise StateError("gzip state.fields is not an object")
    unknown = sorted(set(fields) - set(_FIELDS))
    if unknown:
        raise StateError(f"gzip state.fields has unknown field(s) {', '.join(map(str, unknown))}")
    limits = {
        "version": (_STATE_VERSION, _STATE_VERSION),
        "members": (0, (1 << 63) - 1),
        "crc": (0, 0xFFFFFFFF),
        "length": (0, (1 << 63) - 1),
        "bits": (0, 7),
        "byte": (0, 0xFF),
    }
    checked = {name: _whole(fields, name, *limits[name]) for name in _FIELDS}
    if not checked["bits"] and checked["byte"]:
        raise StateError("gzip state.fields.byte must be 0 when no bits of it are left")
    history = state.history
    wanted = min(checked["length"], WINDOW_SIZE)
    if not isinstance(history, bytes) or len(history) != wanted:
        size = len(history) if isinstance(history, bytes) else type(history).__name__
        raise StateError(f"gzip state.history holds {size} bytes, not the {wanted} expected")
    return checked


def _whole(fields: Mapping[str, Any], name: str, low: int, high: int) -> int:
    if name not in fields:
        raise StateError(f"gzip state.fields.{name} is missing")
    value = fields[name]
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise StateError(f"gzip state.fields.{name} is not a whole number in [{low}, {high}]")
    return value
