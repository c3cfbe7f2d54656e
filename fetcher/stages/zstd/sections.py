"""Sizes read off the headers of a compressed block's two sections (RFC 8878 3.1.1.3).

Each function needs only the first bytes of its header, so a scanner can find the sequences
section and the table descriptions without decoding literals.
"""

from __future__ import annotations

RAW, RLE, COMPRESSED, TREELESS = 0, 1, 2, 3  # Literals_Block_Type


def literals_header_size(first: int) -> int:
    kind, size_format = first & 3, (first >> 2) & 3
    if kind < COMPRESSED:
        return (1, 2, 1, 3)[size_format]
    return (3, 3, 4, 5)[size_format]


def literals_section_size(header: bytes | bytearray) -> int:
    """The whole literals section's size, header included; header holds all its bytes."""
    first = header[0]
    kind, size_format = first & 3, (first >> 2) & 3
    size = literals_header_size(first)
    value = int.from_bytes(header[:size], "little")
    if kind < COMPRESSED:
        regenerated = value >> (3 if size_format in (0, 2) else 4)
        return size + (regenerated if kind == RAW else 1)
    compressed = (
        value >> (14, 14, 18, 22)[size_format] & (0x3FF, 0x3FF, 0x3FFF, 0x3FFFF)[size_format]
    )
    return size + compressed


def huffman_description_size(first: int) -> int:
    """Bytes of a Huffman tree description, its header byte included."""
    if first < 128:
        return 1 + first
    return 1 + (first - 127 + 1) // 2


def sequences_header_size(first: int) -> int:
    """Bytes of Number_of_Sequences plus the compression modes byte (none when 0)."""
    if first == 0:
        return 1
    return 2 if first < 128 else 3 if first < 255 else 4


def sequence_count(header: bytes | bytearray) -> int:
    first = header[0]
    if first < 128:
        return first
    if first < 255:
        return ((first - 128) << 8) + header[1]
    return header[1] + (header[2] << 8) + 0x7F00
