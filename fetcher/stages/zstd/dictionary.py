"""A decoder's state at a block boundary, written as a zstd dictionary (RFC 8878 section 5).

A dictionary carries exactly what a frame's later blocks depend on: entropy tables (which
"treeless" and "repeat" modes reuse), three repeat offsets, and content that matches may
reach back into. A frame header without a checksum or content size, followed by the
original frame's remaining blocks, then decodes with libzstd to the original's remaining
output.
"""

from __future__ import annotations

from fetcher.stages.zstd.entropy import SequenceTable
from fetcher.stages.zstd.fse import LITERAL_LENGTHS, MATCH_LENGTHS, OFFSETS

DICTIONARY_MAGIC = 0xEC30A437
DICTIONARY_ID = 0x4D465A52  # any non-zero id: the frame that uses it names none
FRAME_MAGIC = 0xFD2FB528
MIN_WINDOW = 1 << 10


def entropy_section(huffman: bytes, tables: tuple[SequenceTable, ...]) -> bytes:
    """The tables in dictionary order: Huffman, offsets, match lengths, literal lengths."""
    for table in tables:
        if table.rle is not None:
            raise ValueError("an RLE table has no dictionary form a repeat mode could reuse")
    return (
        huffman
        + tables[OFFSETS].description
        + tables[MATCH_LENGTHS].description
        + tables[LITERAL_LENGTHS].description
    )


def dictionary(entropy: bytes, offsets: tuple[int, int, int], history: bytes) -> bytes:
    """The whole dictionary; history is zero-padded in front to hold every repeat offset."""
    padding = max(0, max(offsets) - len(history))
    return b"".join(
        [
            DICTIONARY_MAGIC.to_bytes(4, "little"),
            DICTIONARY_ID.to_bytes(4, "little"),
            entropy,
            *(offset.to_bytes(4, "little") for offset in offsets),
            bytes(padding),
            history,
        ]
    )


def window_size(descriptor: int) -> int:
    exponent, mantissa = descriptor >> 3, descriptor & 7
    base = 1 << (10 + exponent)
    return base + (base >> 3) * mantissa


def window_descriptor(at_least: int) -> int:
    """The smallest window descriptor whose window holds at_least bytes."""
    for descriptor in range(256):
        if window_size(descriptor) >= at_least:
            return descriptor
    raise ValueError(f"no zstd window holds {at_least} bytes")


def continuation_header(descriptor: int) -> bytes:
    """A frame header with only a window: no content size, no dictionary id, no checksum."""
    return FRAME_MAGIC.to_bytes(4, "little") + bytes([0, descriptor])
