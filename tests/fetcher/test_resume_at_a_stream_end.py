"""A kill after the last frame or member ended: the restart carries on from there.

What may follow the end of a compressed stream's last frame is nothing at all, or the zero
padding its format allows (xz stream padding; the zeros block-padding writers leave after
gzip and bzip2 members). A restart at that point has no magic number to look at and no frame
still to decode, and it must not take either for a damaged archive: that fetched the whole
archive again, saying the stream "should be xz data but starts with bytes 00 00 00 00".
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import zstandard

from fetcher.commit import WORK_DIR_NAME
from fetcher.errors import CorruptArchive
from fetcher.formats import Compression
from fetcher.stages.decode import AutoDecoder
from fetcher.state.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from tests.support.archives import fetched_tree, make_tree, tar_bytes, tree_snapshot, write_tree
from tests.support.events import restore_position, wait_until
from tests.support.origin import Faults, Origin

TREE = make_tree(seed=3, n_files=5, total_bytes=3_000_000)
TAR = tar_bytes(TREE)
ETAG = '"one-archive"'
LAST_MODIFIED = "Tue, 01 Dec 2026 10:00:00 GMT"
STARTED_OVER = "starting once more from byte 0"

# (archive, padding after its last stream, --format)
PADDED = {
    "xz, 4 bytes of stream padding": (lzma.compress(TAR), 4, "tar.xz"),
    "xz, 12 bytes of stream padding": (lzma.compress(TAR), 12, "tar.xz"),
    "gzip, 8 zero bytes after the member": (gzip.compress(TAR), 8, "tar.gz"),
    "bzip2, 3 zero bytes after the stream": (bz2.compress(TAR), 3, "tar.bz2"),
}


def _command(url: str, out: Path, fmt: str) -> list[str]:
    # --checkpoint-interval 0: a restore point at every boundary the decoder reaches, so the
    # one at the end of the last stream is certain to be taken before the origin stalls.
    return [
        sys.executable, "-m", "fetcher", url, "-o", str(out), "--format", fmt,
        "--connections", "1", "--checkpoint-interval", "0", "--timeout", "60",
    ]  # fmt: skip


def _killed_at_the_stream_end(origin: Origin, out: Path, end: int, command: list[str]) -> None:
    """Run until the checkpoint says every stream ended at end (the origin holds back what
    follows), then kill -9."""
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(
            lambda: restore_position(out / WORK_DIR_NAME / CHECKPOINT_NAME) == end,
            what=f"a restore point at byte {end}, where the last stream ends",
        )
    finally:
        process.send_signal(signal.SIGKILL)
        process.communicate()
    origin.wait_idle()


def _assert_extracted(out: Path, tmp: Path) -> None:
    snapshot = fetched_tree(out)
    assert snapshot == tree_snapshot(write_tree(TREE, tmp / "expected"))


@pytest.mark.parametrize("name", list(PADDED))
def test_a_kill_before_the_padding_after_the_last_stream_resumes_there(
    tmp_path: Path, name: str
) -> None:
    compressed, padding, fmt = PADDED[name]
    archive = compressed + bytes(padding)
    end = len(compressed)
    out = tmp_path / "out"
    with Origin() as origin:
        stall = Faults(stall_after=end, stall_times=1)
        origin.add("/m", archive, etag=ETAG, last_modified=LAST_MODIFIED, faults=stall)
        command = _command(origin.url("/m"), out, fmt)
        _killed_at_the_stream_end(origin, out, end, command)
        before = origin.bytes_sent("/m")
        rerun = subprocess.run(command, capture_output=True, text=True, timeout=120)
        origin.wait_idle()
        sent = origin.bytes_sent("/m") - before
    assert rerun.returncode == 0, rerun.stderr
    assert f"resuming from a checkpoint: byte {end} of {len(archive)}" in rerun.stderr
    assert STARTED_OVER not in rerun.stderr
    assert sent == padding, rerun.stderr
    _assert_extracted(out, tmp_path)


# (archive, --format): archives whose last stream ends at their last byte
ENDED = {
    "zstd": (zstandard.ZstdCompressor().compress(TAR), "tar.zst"),
    "xz": (lzma.compress(TAR), "tar.xz"),
    "gzip": (gzip.compress(TAR), "tar.gz"),
}


@pytest.mark.parametrize("name", list(ENDED))
def test_a_kill_while_finishing_after_the_last_byte_resumes_without_a_request(
    tmp_path: Path, name: str
) -> None:
    """Killed once every byte was decoded and checkpointed, before the result was in place
    (the last flush of a large model takes seconds). The state of that moment is made from
    the padded run's: the same bytes, with the archive ending where its last stream ends."""
    compressed, fmt = ENDED[name]
    out = tmp_path / "out"
    with Origin() as origin:
        stall = Faults(stall_after=len(compressed), stall_times=1)
        padded = compressed + bytes(4)
        origin.add("/m", padded, etag=ETAG, last_modified=LAST_MODIFIED, faults=stall)
        command = _command(origin.url("/m"), out, fmt)
        _killed_at_the_stream_end(origin, out, len(compressed), command)
        path = out / WORK_DIR_NAME / CHECKPOINT_NAME
        checkpoint, _ = load_checkpoint(path)
        assert checkpoint is not None and checkpoint.position == len(compressed)
        checkpoint.length = len(compressed)
        save_checkpoint(path, checkpoint.encode())
        origin.add("/m", compressed, etag=ETAG, last_modified=LAST_MODIFIED)
        before = len(origin.requests)
        rerun = subprocess.run(command, capture_output=True, text=True, timeout=120)
        asked = origin.requests[before:]
    assert rerun.returncode == 0, rerun.stderr
    expected = f"resuming from a checkpoint: byte {len(compressed)} of {len(compressed)}"
    assert expected in rerun.stderr
    assert STARTED_OVER not in rerun.stderr
    assert "announced more bytes" not in rerun.stderr
    assert asked == [], [(r.method, r.headers) for r in asked]
    _assert_extracted(out, tmp_path)


def _continued(compression: Compression, data: bytes, cuts: int = 1) -> tuple[bytes, list[int]]:
    """Feed data (in `cuts` pieces) to a decoder carrying on at a stream boundary."""
    output = bytearray()
    boundaries: list[int] = []
    fed = 0

    def on_boundary(offset: int) -> None:
        boundaries.append(fed + offset)

    decoder = AutoDecoder(compression, lambda _: output.extend, on_boundary, continued=True)
    size = -(-len(data) // cuts) if data else 0
    for start in range(0, len(data), size or 1):
        fed = start
        decoder.feed(data[start : start + size])
    decoder.finish()
    return bytes(output), boundaries


@pytest.mark.parametrize("cuts", [1, 3, 7])
def test_a_continued_xz_stream_takes_padding_then_another_stream(cuts: int) -> None:
    stream = lzma.compress(b"more model bytes" * 1000)
    output, boundaries = _continued(Compression.XZ, bytes(8) + stream, cuts)
    assert output == b"more model bytes" * 1000
    assert boundaries[-1] == 8 + len(stream)


@pytest.mark.parametrize("compression", [Compression.ZSTD, Compression.XZ, Compression.GZIP])
def test_a_continued_stream_may_end_where_it_carried_on(compression: Compression) -> None:
    assert _continued(compression, b"") == (b"", [])


@pytest.mark.parametrize(
    ("compression", "data", "says"),
    [
        (Compression.XZ, bytes(3), "not a multiple of four"),
        (Compression.XZ, bytes(6) + lzma.compress(b"x"), "not a multiple of four"),
        (Compression.ZSTD, bytes(4), "should be zstd data"),  # zstd has no padding
        (Compression.GZIP, bytes(4) + b"not gzip at all", "should be gzip data"),
    ],
    ids=["xz-3", "xz-6-then-stream", "zstd-zeros", "gzip-junk-after-zeros"],
)
def test_what_may_not_follow_a_stream_end_is_still_refused(
    compression: Compression, data: bytes, says: str
) -> None:
    with pytest.raises(CorruptArchive, match=says):
        _continued(compression, data)


@pytest.mark.parametrize("padding", [1, 2, 3, 5])
def test_xz_padding_that_is_not_whole_groups_of_four_is_corrupt(padding: int) -> None:
    """As `xz -d` says of it; a fresh decoder, between streams and at the end."""
    stream = lzma.compress(b"weights")
    for data in (stream + bytes(padding), stream + bytes(padding) + stream):
        decoder = AutoDecoder(Compression.XZ, lambda _: lambda view: None)
        with pytest.raises(CorruptArchive, match="not a multiple of four"):
            decoder.feed(data)
            decoder.finish()
    decoder = AutoDecoder(Compression.XZ, lambda _: lambda view: None)
    decoder.feed(stream + bytes(4 * padding) + stream)
    decoder.finish()
