"""The entropy tables a zstd frame has in effect between two blocks, and how a block changes them.

Later blocks may say "repeat": use the previous block's table. So the tables in effect at a
block boundary are whatever the latest defining blocks said: a Huffman tree description for
literals, and for each kind of sequence code a predefined, RLE or described FSE table.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fetcher.stages.zstd import fse
from fetcher.stages.zstd.errors import FormatError
from fetcher.stages.zstd.sections import huffman_description_size

PREDEFINED, RLE, FSE_COMPRESSED, REPEAT = 0, 1, 2, 3  # symbol compression modes

# Two symbols of one bit each: a valid tree for a frame that has not described one yet.
PLACEHOLDER_HUFFMAN = bytes([128, 0x10])


@dataclass(frozen=True)
class SequenceTable:
    """A table in effect: an RLE symbol, or an FSE description (predefined ones written out)."""

    kind: int
    rle: int | None = None
    description: bytes = b""
    _decoding: list[fse.DecodingTable] = field(default_factory=list, compare=False, repr=False)

    def decoding(self) -> fse.DecodingTable:
        if not self._decoding:
            if self.rle is not None:
                table = fse.rle_table(self.rle)
            else:
                distribution, _ = fse.read_description(self.description, 0, self.kind)
                table = fse.decoding_table(distribution)
            self._decoding.append(table)
        return self._decoding[0]


_PREDEFINED = tuple(
    SequenceTable(kind, description=fse.write_description(fse.default_distribution(kind)))
    for kind in range(3)
)


def predefined(kind: int) -> SequenceTable:
    return _PREDEFINED[kind]


def described(kind: int, description: bytes) -> SequenceTable:
    """A table from a saved description; raises FormatError when it does not parse whole."""
    _, end = fse.read_description(description, 0, kind)
    if end != len(description):
        raise FormatError(f"{fse.KIND_NAMES[kind]} table description has trailing bytes")
    return SequenceTable(kind, description=bytes(description))


def read_tables(
    data: bytes | bytearray,
    start: int,
    modes: int,
    previous: tuple[SequenceTable | None, ...],
) -> tuple[tuple[SequenceTable, ...], int]:
    """The tables a sequences header at data[start:] puts in effect, and where it ends.

    modes is the Symbol_Compression_Modes byte; data[start] is the first byte after it.
    """
    if modes & 3:
        raise FormatError("reserved bits set in the sequence compression modes")
    tables: list[SequenceTable] = []
    position = start
    for kind in (fse.LITERAL_LENGTHS, fse.OFFSETS, fse.MATCH_LENGTHS):
        mode = (modes >> (6 - 2 * kind)) & 3
        if mode == PREDEFINED:
            tables.append(predefined(kind))
        elif mode == RLE:
            if position >= len(data):
                raise FormatError("sequences header cut short")
            symbol = data[position]
            if symbol > fse.MAX_SYMBOL[kind]:
                raise FormatError(f"{fse.KIND_NAMES[kind]} RLE symbol {symbol} is too large")
            tables.append(SequenceTable(kind, rle=symbol))
            position += 1
        elif mode == FSE_COMPRESSED:
            _, end = fse.read_description(data, position, kind)
            tables.append(SequenceTable(kind, description=bytes(data[position:end])))
            position = end
        else:
            table = previous[kind]
            if table is None:
                raise FormatError(f"{fse.KIND_NAMES[kind]} table repeated before any was set")
            tables.append(table)
    return tuple(tables), position


def check_huffman(description: bytes) -> None:
    """Raises FormatError unless description is one whole Huffman tree description."""
    if not description or huffman_description_size(description[0]) != len(description):
        raise FormatError("Huffman tree description has the wrong size")


def table_at(head: bytes, modes: int, kind: int) -> SequenceTable:
    """The table one kind gets from a sequences header that defines it (not by repeat)."""
    position = 0
    for other in range(kind + 1):
        mode = (modes >> (6 - 2 * other)) & 3
        if other == kind:
            tables, _ = read_tables(head, position, mode << (6 - 2 * kind), (None, None, None))
            return tables[kind]
        if mode == RLE:
            position += 1
        elif mode == FSE_COMPRESSED:
            _, position = fse.read_description(head, position, other)
    raise AssertionError("unreachable")
