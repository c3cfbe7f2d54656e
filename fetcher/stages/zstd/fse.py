"""FSE table descriptions and decoding tables (RFC 8878 section 4.1), in the forms zstd uses.

A description is the byte-aligned, forward bit stream of normalized counts found in a
sequences section header and in a dictionary; a decoding table maps each state to its
symbol and to how the next state is read.
"""

from __future__ import annotations

from dataclasses import dataclass

from fetcher.stages.zstd.errors import FormatError

# The kinds of sequence codes, in the order a sequences section header describes them.
LITERAL_LENGTHS, OFFSETS, MATCH_LENGTHS = 0, 1, 2
KIND_NAMES = ("literal lengths", "offsets", "match lengths")
MAX_ACCURACY = (9, 8, 9)
MAX_SYMBOL = (35, 31, 52)

# Predefined distributions (RFC 8878 section 3.1.1.3.2.2); -1 is "less than 1".
DEFAULT_ACCURACY = (6, 5, 6)
DEFAULT_COUNTS: tuple[tuple[int, ...], ...] = (
    (4, 3, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 3, 2, 1, 1, 1,
     1, 1, -1, -1, -1, -1),
    (1, 1, 1, 1, 1, 1, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, -1, -1, -1, -1,
     -1),
    (1, 4, 3, 2, 2, 2, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
     1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, -1, -1, -1, -1, -1, -1, -1),
)  # fmt: skip


@dataclass(frozen=True)
class Distribution:
    accuracy: int
    counts: tuple[int, ...]  # normalized counts by symbol; -1 is "less than 1"


@dataclass(frozen=True)
class DecodingTable:
    """Per state: the symbol, the bits to read for the next state, and the base it adds to."""

    accuracy: int
    symbols: tuple[int, ...]
    bits: tuple[int, ...]
    bases: tuple[int, ...]


def default_distribution(kind: int) -> Distribution:
    return Distribution(DEFAULT_ACCURACY[kind], DEFAULT_COUNTS[kind])


def read_description(data: bytes | bytearray, start: int, kind: int) -> tuple[Distribution, int]:
    """Parse the description at data[start:]; return it and the offset just after it."""
    bits = int.from_bytes(data[start : start + 160], "little")  # longer than any description
    available = 8 * min(160, len(data) - start)
    accuracy = (bits & 15) + 5
    position = 4
    if accuracy > MAX_ACCURACY[kind]:
        raise FormatError(f"{KIND_NAMES[kind]} table accuracy {accuracy} is too high")
    remaining = (1 << accuracy) + 1
    threshold = 1 << accuracy
    width = accuracy + 1
    counts: list[int] = []
    previous_zero = False
    while remaining > 1:
        if previous_zero:
            while True:
                repeat = (bits >> position) & 3
                position += 2
                counts.extend([0] * repeat)
                if repeat != 3:
                    break
        limit = (2 * threshold - 1) - remaining
        low = (bits >> position) & (threshold - 1)
        if low < limit:
            value = low
            position += width - 1
        else:
            value = (bits >> position) & (2 * threshold - 1)
            if value >= threshold:
                value -= limit
            position += width
        count = value - 1
        remaining -= abs(count)
        counts.append(count)
        previous_zero = count == 0
        while remaining < threshold:
            width -= 1
            threshold >>= 1
        if position > available or len(counts) > MAX_SYMBOL[kind] + 1:
            raise FormatError(f"{KIND_NAMES[kind]} table description runs past its end")
    if remaining != 1:
        raise FormatError(f"{KIND_NAMES[kind]} table counts do not add up")
    return Distribution(accuracy, tuple(counts)), start + (position + 7) // 8


def write_description(distribution: Distribution) -> bytes:
    """The description of distribution, as a compressor writes it."""
    accuracy = distribution.accuracy
    bits = accuracy - 5
    position = 4
    remaining = (1 << accuracy) + 1
    threshold = 1 << accuracy
    width = accuracy + 1
    counts = distribution.counts
    symbol = 0
    previous_zero = False
    while remaining > 1:
        if previous_zero:
            start = symbol
            while counts[symbol] == 0:
                symbol += 1
            zeros = symbol - start
            while zeros >= 3:
                bits |= 3 << position
                position += 2
                zeros -= 3
            bits |= zeros << position
            position += 2
        count = counts[symbol]
        symbol += 1
        limit = (2 * threshold - 1) - remaining
        remaining -= abs(count)
        value = count + 1
        if value >= threshold:
            value += limit
        bits |= value << position
        position += width - (value < limit)
        previous_zero = value == 1
        while remaining < threshold:
            width -= 1
            threshold >>= 1
    return bits.to_bytes((position + 7) // 8, "little")


def decoding_table(distribution: Distribution) -> DecodingTable:
    accuracy = distribution.accuracy
    size = 1 << accuracy
    symbols = [0] * size
    high = size - 1
    next_state: list[int] = []
    for symbol, count in enumerate(distribution.counts):
        if count == -1:
            symbols[high] = symbol
            high -= 1
            next_state.append(1)
        else:
            next_state.append(count)
    position, step, mask = 0, (size >> 1) + (size >> 3) + 3, size - 1
    for symbol, count in enumerate(distribution.counts):
        for _ in range(max(count, 0)):
            symbols[position] = symbol
            position = (position + step) & mask
            while position > high:
                position = (position + step) & mask
    if position != 0:
        raise FormatError("table counts do not spread over the table")
    bits, bases = [0] * size, [0] * size
    for state, symbol in enumerate(symbols):
        following = next_state[symbol]
        next_state[symbol] += 1
        width = accuracy - (following.bit_length() - 1)
        bits[state] = width
        bases[state] = (following << width) - size
    return DecodingTable(accuracy, tuple(symbols), tuple(bits), tuple(bases))


def rle_table(symbol: int) -> DecodingTable:
    """The table of an RLE mode: one symbol, no bits read for any state."""
    return DecodingTable(0, (symbol,), (0,), (0,))
