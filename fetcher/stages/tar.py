"""A push-driven tar reader: bytes in any chunking, members out to a SafeTree.

The standard library's tarfile pulls from a file object and cannot report or restore its
position mid-member; this reader is a small state machine over 512-byte blocks that can. Header
blocks are decoded by tarfile.TarInfo.frombuf (checksums, base-256 numbers, ustar prefixes);
PAX and GNU long-name records are handled here. Only regular files, directories, symlinks and
hard links are extracted; everything else is refused.
"""

from __future__ import annotations

import logging
import math
import tarfile

from fetcher.errors import CorruptArchive, UnsafeArchive
from fetcher.formats import preview
from fetcher.stages.tree import SafeTree
from fetcher.state.checkpoint import MAX_TIME, TarState

log = logging.getLogger("model-fetch")

BLOCK = 512
_MAX_EXTENDED_HEADER = 1 << 20
_MAX_MEMBER_SIZE = 1 << 62  # beyond any disk; a larger (or negative) size is a damaged header
# After the end-of-archive block only padding to tar's record size follows (10 KiB by default,
# at most a few MiB with a large blocking factor); a longer tail is not an archive's.
MAX_TAIL = 4 << 20
_ENCODING = "utf-8"
_ERRORS = "surrogateescape"

_FILE_TYPES = {tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE}
_REFUSED_TYPES = {
    tarfile.CHRTYPE: "character devices are not allowed",
    tarfile.BLKTYPE: "block devices are not allowed",
    tarfile.FIFOTYPE: "FIFOs are not allowed",
    tarfile.GNUTYPE_SPARSE: "GNU sparse files are not supported",
}


class TarReader:
    def __init__(self, tree: SafeTree) -> None:
        self._tree = tree
        self._header = bytearray()
        self._remaining = 0  # content bytes left in the current member
        self._padding = 0  # zero bytes after the content, up to the next block
        self._collecting: bytes | None = None  # type of an extended header being collected
        self._extended = bytearray()
        self._overrides: dict[str, str] = {}  # from PAX 'x' and GNU 'L'/'K' for the next member
        self._globals: dict[str, str] = {}  # from PAX 'g'
        self._in_file = False
        self._mtime: float | None = None
        self.ended = False
        self.members = 0
        self.tail = 0  # bytes after the end-of-archive block
        self.tail_data = False  # whether any of them is not zero

    def write(self, data: memoryview) -> None:
        pos = 0
        size = len(data)
        while pos < size:
            if self.ended:
                self._after_end(data[pos:])
                return
            if self._remaining:
                taken = min(self._remaining, size - pos)
                self._content(data[pos : pos + taken])
                self._remaining -= taken
                pos += taken
                if not self._remaining:
                    self._member_done()
            elif self._padding:
                taken = min(self._padding, size - pos)
                self._padding -= taken
                pos += taken
            else:
                taken = min(BLOCK - len(self._header), size - pos)
                self._header += data[pos : pos + taken]
                pos += taken
                if len(self._header) == BLOCK:
                    block = bytes(self._header)
                    self._header.clear()
                    self._on_header(block)

    def _after_end(self, data: memoryview) -> None:
        self.tail += len(data)
        if not self.tail_data and data.tobytes().strip(b"\0"):
            self.tail_data = True
        if self.tail > MAX_TAIL:
            raise CorruptArchive(
                f"more than {MAX_TAIL} bytes follow the end of the tar archive",
                "the archive is damaged or has something appended; refusing it",
            )

    def close(self) -> None:
        if not self.members and self._header and not self._overrides:
            raise CorruptArchive(
                f"the stream should be a tar archive but is {len(self._header)} bytes long and "
                f"starts with {preview(bytes(self._header))}",
                "check the URL (an error page?) or give the --format it has",
            )
        if self._remaining or self._header or self._collecting is not None:
            name = self._overrides.get("path", "") or "a header"
            raise CorruptArchive(
                f"tar stream ended inside {name!r}",
                "the download was cut short or the archive is damaged",
            )
        if not self.ended:
            raise CorruptArchive(
                f"tar stream ended after {self.members} member(s) without its end-of-archive block",
                "the download was cut short or the archive is damaged",
            )
        if self.tail_data:
            log.warning(
                "ignoring %d bytes after the end of the tar archive, as tar does", self.tail
            )

    def state(self) -> TarState:
        return TarState(
            bytes(self._header),
            self._remaining,
            self._padding,
            self._collecting.decode("latin-1") if self._collecting else None,
            bytes(self._extended),
            dict(self._overrides),
            dict(self._globals),
            self._in_file,
            self._mtime,
            self.ended,
            self.members,
        )

    def restore(self, state: TarState) -> None:
        self._header = bytearray(state.header)
        self._remaining = state.remaining
        self._padding = state.padding
        collecting = state.collecting
        self._collecting = collecting.encode("latin-1") if collecting is not None else None
        self._extended = bytearray(state.extended)
        self._overrides = dict(state.overrides)
        self._globals = dict(state.pax_globals)
        self._in_file = state.in_file
        self._mtime = state.mtime
        self.ended = state.ended
        self.members = state.members

    # --- headers ---------------------------------------------------------------------------

    def _on_header(self, block: bytes) -> None:
        if block == bytes(BLOCK):
            self.ended = True  # a zero block ends the archive, as for tar without --ignore-zeros
            return
        try:
            info = tarfile.TarInfo.frombuf(block, _ENCODING, _ERRORS)
        except tarfile.HeaderError as error:
            if not self.members and not self._overrides:
                raise CorruptArchive(
                    f"the stream should be a tar archive but starts with {preview(block)}",
                    "check the URL (an error page?) or give the --format it has",
                ) from None
            raise CorruptArchive(
                f"bad tar header after {self.members} member(s): {error}",
                "the archive is damaged, or --format names the wrong type",
            ) from None
        kind = info.type
        _check_size(info.size, info.name)
        if kind in (tarfile.XHDTYPE, tarfile.SOLARIS_XHDTYPE, tarfile.XGLTYPE,
                    tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK):  # fmt: skip
            if info.size > _MAX_EXTENDED_HEADER:
                raise CorruptArchive(f"tar extended header of {info.size} bytes is too large")
            self._collecting = kind
            self._extended.clear()
            self._start_content(info.size)
            return
        self._start_member(info)

    def _start_member(self, info: tarfile.TarInfo) -> None:
        fields = {**self._globals, **self._overrides}
        self._overrides = {}
        name = fields.get("path", info.name)
        linkname = fields.get("linkpath", info.linkname)
        size = _pax_int(fields, "size", name) if "size" in fields else info.size
        _check_size(size, name)
        mtime = _pax_number(fields, "mtime", name) if "mtime" in fields else info.mtime
        if not math.isfinite(mtime) or abs(mtime) > MAX_TIME:
            raise CorruptArchive(
                f"tar member {name!r} has a modification time of {mtime!r}",
                "the archive is damaged or was not made by a tar program",
            )
        if any(key.startswith("GNU.sparse") for key in fields):
            raise UnsafeArchive(name, "GNU sparse files are not supported")
        self.members += 1
        kind = info.type
        if kind in _FILE_TYPES:
            self._tree.begin_file(name, info.mode, size, self.members)
            self._in_file = True
            self._mtime = mtime
            self._start_content(size)
            return
        if kind in _REFUSED_TYPES:
            raise UnsafeArchive(name, _REFUSED_TYPES[kind])
        if kind == tarfile.DIRTYPE:
            self._tree.make_dir(name.rstrip("/") or name, info.mode, mtime)
        elif kind == tarfile.SYMTYPE:
            self._tree.make_symlink(name, linkname)
        elif kind == tarfile.LNKTYPE:
            self._tree.make_hardlink(name, linkname)
        else:
            raise UnsafeArchive(name, f"tar member type {kind!r} is not supported")
        # Whatever size a directory or link declares, GNU tar's extraction and Python's tarfile
        # read the next header right after it: skipping that many bytes as content would hide
        # the members they hold from this tree only.
        self._start_content(0)

    def _start_content(self, size: int) -> None:
        self._remaining = size
        self._padding = -size % BLOCK
        if not size:
            self._member_done()

    # --- content ---------------------------------------------------------------------------

    def _content(self, piece: memoryview) -> None:
        if self._in_file:
            self._tree.write(piece)
        elif self._collecting is not None:
            self._extended += piece

    def _member_done(self) -> None:
        if self._in_file:
            self._tree.end_file(self._mtime)
            self._in_file = False
        elif self._collecting is not None:
            kind, self._collecting = self._collecting, None
            self._apply_extended(kind, bytes(self._extended))

    def _apply_extended(self, kind: bytes, payload: bytes) -> None:
        if kind == tarfile.GNUTYPE_LONGNAME:
            self._overrides["path"] = _c_string(payload)
        elif kind == tarfile.GNUTYPE_LONGLINK:
            self._overrides["linkpath"] = _c_string(payload)
        else:
            records = _pax_records(payload)
            (self._globals if kind == tarfile.XGLTYPE else self._overrides).update(records)


def _check_size(size: int, name: str) -> None:
    if not 0 <= size <= _MAX_MEMBER_SIZE:
        raise CorruptArchive(
            f"tar member {name!r} declares a size of {size} bytes",
            "the archive is damaged or was not made by a tar program",
        )


def _pax_int(fields: dict[str, str], key: str, name: str) -> int:
    return int(_pax_number(fields, key, name, integral=True))


def _pax_number(fields: dict[str, str], key: str, name: str, *, integral: bool = False) -> float:
    text = fields[key]
    try:
        return int(text) if integral else float(text)
    except ValueError:
        raise CorruptArchive(
            f"tar member {name!r} has a pax {key} of {text!r}, which is not a number",
            "the archive is damaged or was not made by a tar program",
        ) from None


def _c_string(payload: bytes) -> str:
    return payload.split(b"\0", 1)[0].decode(_ENCODING, _ERRORS)


def _pax_records(payload: bytes) -> dict[str, str]:
    """Parse 'LENGTH KEY=VALUE\\n' records (POSIX pax extended header)."""
    records: dict[str, str] = {}
    pos = 0
    while pos < len(payload):
        if payload[pos] == 0:
            break
        space = payload.find(b" ", pos)
        try:
            length = int(payload[pos:space])
        except ValueError:
            raise CorruptArchive("malformed pax extended header record") from None
        record = payload[space + 1 : pos + length]
        if length <= 0 or not record.endswith(b"\n") or b"=" not in record:
            raise CorruptArchive("malformed pax extended header record")
        key, value = record[:-1].split(b"=", 1)
        records[key.decode(_ENCODING, _ERRORS)] = value.decode(_ENCODING, _ERRORS)
        pos += length
    return records
