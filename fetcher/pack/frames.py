"""The file object tarfile writes into: the tar stream cut into independent zstd frames.

Every frame holds exactly frame_size bytes of tar stream (the last one the rest), carries its
content size and checksum, and needs nothing from the frames before it, so a decoder can start
at any frame. The seek table that lists them ends the file. The SHA-256 of everything written
is kept as it goes: the archive is never read back.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import BinaryIO

import zstandard

from fetcher.pack import seektable


class FrameWriter:
    def __init__(
        self,
        out: BinaryIO,
        *,
        frame_size: int,
        level: int,
        threads: int,
        on_frame: Callable[[int], None] | None = None,
    ) -> None:
        # threads >= 1 always: zstd's multithreaded output is the same for any worker count,
        # but differs from its single-threaded mode, and a pack must not depend on the machine.
        self._compressor = zstandard.ZstdCompressor(
            level=level, threads=max(1, threads), write_checksum=True, write_content_size=True
        )
        self._out = out
        self._frame_size = frame_size
        self._buffer = bytearray()
        self._position = 0
        self._on_frame = on_frame
        self.entries: list[seektable.SeekEntry] = []
        self.sha256 = hashlib.sha256()
        self.bytes_written = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self._buffer += data
        self._position += len(data)
        while len(self._buffer) >= self._frame_size:
            self._frame(self._frame_size)
        return len(data)

    def tell(self) -> int:
        """Bytes of tar stream so far (tarfile asks, to know where the archive starts)."""
        return self._position

    def _frame(self, size: int) -> None:
        with memoryview(self._buffer) as view:
            frame = self._compressor.compress(view[:size])
        del self._buffer[:size]
        self._emit(frame)
        self.entries.append(seektable.SeekEntry(len(frame), size, seektable.frame_checksum(frame)))
        if self._on_frame is not None:
            self._on_frame(len(self.entries))

    def _emit(self, data: bytes) -> None:
        self._out.write(data)
        self.sha256.update(data)
        self.bytes_written += len(data)

    def finish(self) -> None:
        """Write the last frame and the seek table."""
        if self._buffer:
            self._frame(len(self._buffer))
        self._emit(seektable.encode(self.entries))
