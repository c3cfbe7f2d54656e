"""The shapes every decoder shares: what it is fed, and how it hands on what it decoded."""

from __future__ import annotations

from collections.abc import Callable

# Output is pushed in chunks of at most this many bytes, so memory stays flat whatever the
# compression ratio.
OUTPUT_CHUNK = 1 << 20

Emit = Callable[[memoryview], None]
# Called with an offset into the data being fed, after every byte before it has been decoded
# and emitted: a point where a fresh decoder could take over.
OnBoundary = Callable[[int], None]
Chunk = bytes | bytearray | memoryview
