"""A source over bytes in memory: the pipeline's test double, cut into chunks of any size."""

from __future__ import annotations

from collections.abc import Iterator

from fetcher.http.exchange import Identity
from fetcher.sources import SourceStats


class MemorySource:
    def __init__(self, data: bytes, *, start: int = 0, chunk_size: int = 1 << 20) -> None:
        self._data = memoryview(data)
        self._start = start
        self._chunk_size = chunk_size
        self.stats = SourceStats(identity=Identity(len(data), None, None), origin="memory")

    def chunks(self) -> Iterator[bytes]:
        for offset in range(self._start, len(self._data), self._chunk_size):
            piece = bytes(self._data[offset : offset + self._chunk_size])
            self.stats.bytes_received += len(piece)
            yield piece

    def close(self) -> None:
        return None
