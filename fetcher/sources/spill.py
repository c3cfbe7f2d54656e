"""Bytes written to the part file ahead of the decoder, each run of them with its CRC32C.

Nothing flushes the part file before a checkpoint names what it holds, so a later run may find
holes or stale blocks where the checkpoint says bytes are (power loss, an OS crash): each held
range carries the CRC32C it was written with, and is reused only if its bytes still match it.

Runs are cut at every BLOCK boundary, so that a checkpoint that keeps only the ranges from some
position on (they are never cut, their CRC32C would no longer match) leaves out less than a
block there.
"""

from __future__ import annotations

import crc32c

from fetcher.state.checkpoint import HeldRange

BLOCK = 1 << 20


class SpillRun:
    """What one connection writes to disk for its range: consecutive pieces, CRC32C as it goes."""

    def __init__(self) -> None:
        self._current: HeldRange | None = None

    def extend(self, offset: int, data: bytes | memoryview) -> list[HeldRange]:
        """The held ranges that data, written at offset, creates or lengthens (new versions)."""
        view = memoryview(data)
        changed: list[HeldRange] = []
        position = offset
        while view:
            block_end = (position // BLOCK + 1) * BLOCK
            part, view = view[: block_end - position], view[block_end - position :]
            current = self._current
            if current is not None and current.end == position and position % BLOCK:
                current = HeldRange(
                    current.start, position + len(part), crc32c.crc32c(part, current.crc32c)
                )
            else:
                current = HeldRange(position, position + len(part), crc32c.crc32c(part))
            self._current = current
            changed.append(current)
            position += len(part)
        return changed


def matches(held: HeldRange, data: bytes) -> bool:
    return len(data) == held.end - held.start and crc32c.crc32c(data) == held.crc32c
