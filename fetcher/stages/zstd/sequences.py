"""Repeat offsets after a block, from its sequences alone (RFC 8878 3.1.1.3.2 and 3.1.1.5).

Decoding starts from repeat offsets that may be unknown: each is either a number or
(i, delta), "the i-th offset in effect when decoding started, plus delta". Once a block has
pushed three known offsets through, the state after it is known whatever came before, and
no earlier sequence had to be replayed.
"""

from __future__ import annotations

from fetcher.stages.zstd import fse
from fetcher.stages.zstd.entropy import SequenceTable, read_tables
from fetcher.stages.zstd.errors import FormatError
from fetcher.stages.zstd.sections import (
    COMPRESSED,
    huffman_description_size,
    literals_header_size,
    literals_section_size,
    sequence_count,
    sequences_header_size,
)

Offset = int | tuple[int, int]
Offsets = tuple[Offset, Offset, Offset]

UNKNOWN: Offsets = ((0, 0), (1, 0), (2, 0))
FRAME_START: Offsets = (1, 4, 8)

_LITERAL_LENGTH_BITS = (0,) * 16 + (1, 1, 1, 1, 2, 2, 3, 3, 4, 6, 7, 8, 9, 10, 11, 12, 13, 14,
                                    15, 16)  # fmt: skip
_MATCH_LENGTH_BITS = (0,) * 32 + (1, 1, 1, 1, 2, 2, 3, 3, 4, 4, 5, 7, 8, 9, 10, 11, 12, 13,
                                  14, 15, 16)  # fmt: skip


def known(offsets: Offsets) -> bool:
    return all(isinstance(offset, int) for offset in offsets)


class _BackwardBits:
    """Reads a sequences bit stream from its end towards its start, as zstd writes it."""

    def __init__(self, data: bytes | bytearray, start: int) -> None:
        if start >= len(data) or data[-1] == 0:
            raise FormatError("sequences bit stream has no end marker")
        self._data = data
        self._next = len(data) - 2  # the next byte to load, moving down to start
        self._start = start
        last = data[-1]
        self._bits = last.bit_length() - 1  # bits held below the end marker
        self._value = last & ((1 << self._bits) - 1)

    def read(self, count: int) -> int:
        while self._bits < count:
            byte = self._data[self._next] if self._next >= self._start else 0
            self._next -= 1
            self._value = (self._value << 8) | byte
            self._bits += 8
        self._bits -= count
        result = self._value >> self._bits
        self._value &= (1 << self._bits) - 1
        return result

    def finished(self) -> bool:
        return self._next < self._start and self._bits == 0 and self._next == self._start - 1


def after_sequences(
    data: bytes | bytearray,
    start: int,
    count: int,
    tables: tuple[SequenceTable, ...],
    offsets: Offsets,
) -> Offsets:
    """The repeat offsets after count sequences whose bit stream is data[start:]."""
    literal_lengths, offset_codes, match_lengths = (table.decoding() for table in tables)
    ll_symbols, ll_bits, ll_bases = (
        literal_lengths.symbols,
        literal_lengths.bits,
        literal_lengths.bases,
    )
    of_symbols, of_bits, of_bases = offset_codes.symbols, offset_codes.bits, offset_codes.bases
    ml_symbols, ml_bits, ml_bases = match_lengths.symbols, match_lengths.bits, match_lengths.bases
    stream = _BackwardBits(data, start)
    read = stream.read
    ll_state = read(literal_lengths.accuracy)
    of_state = read(offset_codes.accuracy)
    ml_state = read(match_lengths.accuracy)
    first, second, third = offsets
    for index in range(count):
        of_code = of_symbols[of_state]
        ml_code = ml_symbols[ml_state]
        ll_code = ll_symbols[ll_state]
        if of_code > fse.MAX_SYMBOL[fse.OFFSETS]:
            raise FormatError(f"offset code {of_code} is too large")
        value = (1 << of_code) + read(of_code)
        read(_MATCH_LENGTH_BITS[ml_code])
        read(_LITERAL_LENGTH_BITS[ll_code])
        if value > 3:
            first, second, third = value - 3, first, second
        else:
            repeat = value - 1 if ll_code else value  # literal length 0 shifts the choice
            if repeat == 1:
                first, second = second, first
            elif repeat == 2:
                first, second, third = third, first, second
            elif repeat == 3:
                first, second, third = _less_one(first), first, second
        if index + 1 < count:
            ll_state = ll_bases[ll_state] + read(ll_bits[ll_state])
            ml_state = ml_bases[ml_state] + read(ml_bits[ml_state])
            of_state = of_bases[of_state] + read(of_bits[of_state])
    if not stream.finished():
        raise FormatError("sequences bit stream does not end where its sequences do")
    return first, second, third


def _less_one(offset: Offset) -> Offset:
    if isinstance(offset, tuple):
        return offset[0], offset[1] - 1
    if offset <= 1:
        raise FormatError("repeat offset 1 minus one is zero")
    return offset - 1


Tables = tuple[SequenceTable | None, SequenceTable | None, SequenceTable | None]


def after_block(
    block: bytes, huffman: bytes | None, tables: Tables, offsets: Offsets
) -> tuple[bytes | None, Tables, Offsets]:
    """The Huffman description, tables and repeat offsets in effect after a compressed block."""
    header_size = literals_header_size(block[0])
    if header_size >= len(block):
        raise FormatError("compressed block cut short in its literals header")
    section = literals_section_size(block[:header_size])
    if section >= len(block):
        raise FormatError("literals section runs past its block")
    if block[0] & 3 == COMPRESSED:
        size = huffman_description_size(block[header_size])
        if header_size + size > section:
            raise FormatError("Huffman tree description runs past its literals")
        huffman = block[header_size : header_size + size]
    first = block[section]
    if first == 0:
        return huffman, tables, offsets
    header_end = section + sequences_header_size(first)
    if header_end > len(block):
        raise FormatError("sequences header runs past its block")
    count = sequence_count(block[section:header_end])
    modes = block[header_end - 1]
    in_effect, stream_start = read_tables(block, header_end, modes, tables)
    offsets = after_sequences(block, stream_start, count, in_effect, offsets)
    return huffman, (in_effect[0], in_effect[1], in_effect[2]), offsets
