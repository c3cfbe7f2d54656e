"""One pass over the stream from byte 0: sha256 -> decompressor -> tar reader or file -> tree."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from fetcher.decode import AutoDecoder, Chunk, Emit
from fetcher.formats import Compression, Layout, strip_suffix
from fetcher.sinks import Sink, make_sink
from fetcher.tree import SafeTree


class Pass:
    def __init__(
        self,
        staging: Path,
        *,
        compression: Compression | None,
        layout: Layout,
        file_name: str,
        max_extracted: int,
    ) -> None:
        self.staging = staging
        self.tree = SafeTree(staging, max_bytes=max_extracted)
        self.hasher = hashlib.sha256()
        self.bytes = 0
        self.compression: Compression | None = None
        self._sink: Sink | None = None
        self._layout = layout
        self._file_name = file_name
        self._decoder = AutoDecoder(compression, self._on_detect)

    def _on_detect(self, compression: Compression) -> Emit:
        self.compression = compression
        name = strip_suffix(self._file_name, compression)
        self._sink = make_sink(self._layout, self.tree, name)
        return self._sink.write

    def feed(self, chunk: Chunk) -> None:
        self.hasher.update(chunk)
        self._decoder.feed(chunk)
        self.bytes += len(chunk)

    def finish(self) -> str:
        """Check every stage ended cleanly and return the hex digest of all bytes fed."""
        self._decoder.finish()
        assert self._sink is not None
        self._sink.close()
        self.tree.close()
        return self.hasher.hexdigest()

    @property
    def extracted_bytes(self) -> int:
        return self.tree.bytes_written

    def format_name(self) -> str:
        layout = self._sink.layout if self._sink else Layout.DETECT
        compression = self.compression or Compression.NONE
        if layout is Layout.TAR:
            return "tar" if compression is Compression.NONE else f"tar.{compression.value}"
        return compression.value if compression is not Compression.NONE else "file"

    def abandon(self) -> None:
        """Drop everything this pass wrote."""
        self.tree.release()
        shutil.rmtree(self.staging, ignore_errors=True)
