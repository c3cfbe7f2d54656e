"""The zstd seekable format's seek table (contrib/seekable_format in the zstd sources).

A skippable frame (magic 0x184D2A5E) at the very end of the file: one entry per frame before
it (compressed size, decompressed size, checksum), then a footer of the frame count, a
descriptor byte and the seekable magic 0x8F92EAB1. Every zstd decoder skips it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

SKIPPABLE_MAGIC = 0x184D2A5E
SEEKABLE_MAGIC = 0x8F92EAB1
CHECKSUM_FLAG = 0x80
_RESERVED_BITS = 0x7C
FOOTER_SIZE = 9
MAX_FRAME_DECOMPRESSED = 1 << 30  # the reference implementation's limit per frame
_ENTRY = struct.Struct("<III")
_FOOTER = struct.Struct("<IBI")


@dataclass(frozen=True)
class SeekEntry:
    compressed: int
    decompressed: int
    checksum: int
    """The low 32 bits of the XXH64 of the frame's content, as the frame itself ends with."""


def frame_checksum(frame: bytes | memoryview) -> int:
    """The content checksum a zstd frame written with a checksum ends with."""
    return int.from_bytes(frame[-4:], "little")


def encode(entries: list[SeekEntry]) -> bytes:
    body = b"".join(_ENTRY.pack(e.compressed, e.decompressed, e.checksum) for e in entries)
    body += _FOOTER.pack(len(entries), CHECKSUM_FLAG, SEEKABLE_MAGIC)
    return struct.pack("<II", SKIPPABLE_MAGIC, len(body)) + body


def decode(data: bytes) -> list[SeekEntry]:
    """The entries of the seek table that data (a whole file, or its tail) ends with."""
    if len(data) < FOOTER_SIZE + 8:
        raise ValueError("too short for a seek table")
    count, descriptor, magic = _FOOTER.unpack_from(data, len(data) - FOOTER_SIZE)
    if magic != SEEKABLE_MAGIC:
        raise ValueError("no seekable magic at the end")
    if descriptor & _RESERVED_BITS:
        raise ValueError("reserved bits set in the seek table descriptor")
    size = (12 if descriptor & CHECKSUM_FLAG else 8) * count
    start = len(data) - FOOTER_SIZE - size - 8
    if start < 0:
        raise ValueError("the seek table is longer than the data")
    frame_magic, frame_size = struct.unpack_from("<II", data, start)
    if frame_magic != SKIPPABLE_MAGIC or frame_size != size + FOOTER_SIZE:
        raise ValueError("the seek table is not in a skippable frame of its size")
    entries = []
    for index in range(count):
        if descriptor & CHECKSUM_FLAG:
            compressed, decompressed, checksum = _ENTRY.unpack_from(data, start + 8 + 12 * index)
        else:
            compressed, decompressed = struct.unpack_from("<II", data, start + 8 + 8 * index)
            checksum = 0
        entries.append(SeekEntry(compressed, decompressed, checksum))
    return entries
