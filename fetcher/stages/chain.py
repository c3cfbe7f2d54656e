"""The stages in order: decompressor -> tar reader or single file -> safe tree.

The digest is computed upstream, on the network thread, in parallel with decoding: each chunk
arrives with a copy of the hash state before it, from which the state at any point inside
the chunk is derived when, and only when, a checkpoint needs it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

from fetcher.formats import Compression, Layout, strip_suffix
from fetcher.stages.decode import AutoDecoder
from fetcher.stages.digest import ResumableSha256
from fetcher.stages.midstream import MidState
from fetcher.stages.shapes import Chunk, Emit
from fetcher.stages.sinks import Sink, make_sink, resumed_sink
from fetcher.stages.tree import SafeTree
from fetcher.state.checkpoint import (
    CompletedFile,
    DecoderPoint,
    RestorePoint,
    StateError,
)

# Called with the stream position at every point where all stages could be restored.
OnRestorable = Callable[[int], None]
# Asked with the stream position: whether a restore point is wanted soon.
RestoreWanted = Callable[[int], bool]
# The codec a decoder state names, for each compression that has one.
CODECS = {Compression.ZSTD: "zstd", Compression.GZIP: "gzip", Compression.XZ: "xz"}


def _never(position: int) -> None:
    return None


def _not_wanted(position: int) -> bool:
    return False


def read_history(state_dir: Path, point: DecoderPoint) -> bytes:
    """The history file a decoder state goes with, checked against what the state says."""
    path = state_dir / point.history_name
    try:
        data = path.read_bytes()
    except OSError as error:
        raise StateError(
            f"its decoder history {path.name} is unreadable ({error.strerror})"
        ) from None
    if len(data) != point.history_size or hashlib.sha256(data).hexdigest() != point.history_sha256:
        raise StateError(f"its decoder history {path.name} does not match the checkpoint")
    return data


class Stages:
    def __init__(
        self,
        staging: Path,
        *,
        compression: Compression | None,
        layout: Layout,
        file_name: str,
        max_extracted: int,
        resume: RestorePoint | None = None,
        already_complete: dict[int, CompletedFile] | None = None,
        state_dir: Path | None = None,
        password: bytes | None = None,
    ) -> None:
        """Fresh stages, or (resume) stages carried on from a checkpoint's restore point.

        state_dir holds the history a restore point inside a frame goes with.
        Raises StateError when the restore point does not fit this request or the disk.
        """
        self.staging = staging
        self.tree = SafeTree(staging, max_bytes=max_extracted)
        self.bytes = 0
        self.compression: Compression | None = None
        self.on_restorable: OnRestorable = _never
        self.restore_wanted: RestoreWanted = _not_wanted
        self._sink: Sink | None = None
        self._layout = layout
        self._file_name = file_name
        self._resume = resume
        self._password = password
        mid_state: MidState | None = None
        try:
            if resume:
                self.bytes = resume.position
                found = Compression(resume.compression)
                if compression is not None and found is not compression:
                    raise StateError(
                        f"the checkpoint decoded {found.value}, not the {compression.value} asked"
                    )
                compression = found
                if resume.decoder is not None:
                    mid_state = _mid_state(resume.decoder, compression, state_dir)
                self.tree.restore(resume.tree, already_complete or {})
                self._hash_before = ResumableSha256.from_state(resume.sha256_state)
            else:
                self._hash_before = ResumableSha256()  # the digest state at _chunk_start
                if already_complete:
                    self.tree.restore(self.tree.state(), already_complete)
        except ValueError as error:  # StateError, or a digest state that does not check out
            self.tree.release()
            raise StateError(str(error)) from None
        self._chunk: memoryview = memoryview(b"")
        self._chunk_start = self.bytes
        # The digest state at each frame end the decoder has scanned but not yet reported (one
        # decoding frames ahead on other threads reports them late, in a later chunk).
        self._scanned_ends: dict[int, bytes] = {}
        self._reported_at = -1  # the last position on_restorable was called with
        try:
            self._decoder = AutoDecoder(
                compression,
                self._on_detect,
                self._on_boundary,
                lambda: self.restore_wanted(self._chunk_start),
                mid_state,
                continued=resume is not None,
                on_frame_scanned=self._on_frame_scanned,
            )
        except StateError:
            self.tree.release()
            raise

    def hasher(self) -> ResumableSha256:
        """The digest of every byte before the first one these stages will be fed."""
        return self._hash_before.copy()

    def _on_detect(self, compression: Compression) -> Emit:
        self.compression = compression
        name = strip_suffix(self._file_name, compression)
        if self._resume is None:
            self._sink = make_sink(
                self._layout, self.tree, name, self._on_sink_boundary, password=self._password
            )
        else:
            self._sink = resumed_sink(
                self._resume.sink, self.tree, name, self._layout, self._on_sink_boundary,
                start=self._resume.position, password=self._password,
            )  # fmt: skip
        return self._sink.write

    def feed(self, chunk: Chunk, hash_before: ResumableSha256) -> None:
        """Decode chunk; hash_before is the digest state of every byte before it."""
        self._chunk = memoryview(chunk)
        self._chunk_start = self.bytes
        self._hash_before = hash_before
        self._decoder.feed(self._chunk)
        self.bytes = self._chunk_start + len(self._chunk)
        if self._decoder.started and self.at_boundary and self._reported_at != self.bytes:
            self._report()

    def _on_frame_scanned(self, offset: int) -> None:
        """A frame ends at offset in the current chunk; it will be reported once decoded."""
        self._scanned_ends[self._chunk_start + offset] = self._digest_in_chunk(offset)

    def _digest_in_chunk(self, offset: int) -> bytes:
        """The digest state of every byte before offset in the current chunk."""
        hasher = self._hash_before.copy()
        hasher.update(self._chunk[:offset])
        return hasher.export_state()

    def _on_boundary(self, offset: int) -> None:
        """The decoder can be restored at offset in the current chunk (a frame or member end,
        or a point inside one it can carry on from; negative: in an earlier chunk); every
        byte before it is out, none after."""
        position = self._chunk_start + offset
        for older in [end for end in self._scanned_ends if end < position]:
            del self._scanned_ends[older]
        if offset < 0 and position not in self._scanned_ends:
            return  # no digest state kept for it: the next boundary will do
        self.bytes = position
        self._report()

    def _report(self) -> None:
        self._reported_at = self.bytes
        self.on_restorable(self.bytes)

    def _on_sink_boundary(self, position: int) -> None:
        """The sink (zip, undecoded) can restart at this stream position; within this chunk only,
        where the digest state is known."""
        if self._chunk_start <= position <= self._chunk_start + len(self._chunk):
            self.bytes = position
            self._report()

    def _hash_state(self) -> bytes:
        if self.bytes < self._chunk_start:
            return self._scanned_ends[self.bytes]
        return self._digest_in_chunk(self.bytes - self._chunk_start)

    def restore_point(self, history_serial: int) -> tuple[RestorePoint, bytes | None]:
        """Every stage's state at self.bytes, and the decoder history to store as the file
        history_serial names (None: a frame boundary needs none); valid only inside
        on_restorable, or at a boundary."""
        assert self._sink is not None and self.compression is not None
        mid = self._decoder.mid_state()
        decoder = None
        if mid is not None:
            decoder = DecoderPoint(
                mid.codec,
                mid.fields,
                history_serial,
                len(mid.history),
                hashlib.sha256(mid.history).hexdigest(),
            )
        point = RestorePoint(
            self.bytes,
            self._hash_state(),
            self.compression.value,
            self._sink.state(),
            self.tree.state(),
            decoder,
        )
        return point, None if mid is None else mid.history

    @property
    def at_boundary(self) -> bool:
        """Whether the decoder stands at a boundary after the last whole chunk fed."""
        sink_ready = self._sink is None or self._sink.at_boundary
        return self._decoder.at_boundary and sink_ready

    @property
    def restorable(self) -> bool:
        return self._decoder.started and self._sink is not None

    def finish(self) -> None:
        """Check every stage ended cleanly."""
        self._decoder.finish()
        assert self._sink is not None
        self._sink.close()
        self.tree.close()

    @property
    def extracted_bytes(self) -> int:
        return self.tree.bytes_written

    def format_name(self) -> str:
        layout = self._sink.layout if self._sink else Layout.DETECT
        compression = self.compression or Compression.NONE
        if layout is Layout.TAR:
            return "tar" if compression is Compression.NONE else f"tar.{compression.value}"
        if layout is Layout.ZIP:
            return "zip"
        return compression.value if compression is not Compression.NONE else "file"

    def release(self) -> None:
        if self._sink is not None:
            self._sink.release()
        self.tree.release()


def _mid_state(point: DecoderPoint, compression: Compression, state_dir: Path | None) -> MidState:
    if CODECS.get(compression) != point.codec:
        raise StateError(f"its decoder state is {point.codec}'s, not {compression.value}'s")
    if state_dir is None:
        raise StateError("its decoder history has no state directory to be read from")
    return MidState(point.codec, point.fields, read_history(state_dir, point))
