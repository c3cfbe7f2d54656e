"""Every decoder gives the same bytes however its input is chunked, and knows a cut-short end."""

import bz2
import gzip
import lzma
import os
import random
import subprocess
import zlib

import pytest
import zstandard

from fetcher.errors import CorruptArchive
from fetcher.formats import Compression, detect_compression
from fetcher.stages.decode import AutoDecoder, make_decoder
from fetcher.stages.shapes import OUTPUT_CHUNK, Emit
from tests.support.archives import compress, zstd_streamed

PAYLOAD_A = random.Random(1).randbytes(200_000) * 3
PAYLOAD_B = b"model weights " * 150_000
PAYLOAD = PAYLOAD_A + PAYLOAD_B


def _python_streams() -> dict[str, tuple[Compression, bytes]]:
    zstd = zstandard.ZstdCompressor()
    return {
        "zstd-single-frame": (Compression.ZSTD, zstd.compress(PAYLOAD)),
        "zstd-multi-frame": (Compression.ZSTD, zstd.compress(PAYLOAD_A) + zstd.compress(PAYLOAD_B)),
        "zstd-streamed-no-size": (Compression.ZSTD, zstd_streamed(PAYLOAD)),
        "gzip-single-member": (Compression.GZIP, gzip.compress(PAYLOAD)),
        "gzip-multi-member": (
            Compression.GZIP,
            gzip.compress(PAYLOAD_A) + gzip.compress(PAYLOAD_B),
        ),
        "xz-single": (Compression.XZ, lzma.compress(PAYLOAD)),
        "xz-multi-stream": (Compression.XZ, lzma.compress(PAYLOAD_A) + lzma.compress(PAYLOAD_B)),
        "bzip2-single": (Compression.BZIP2, bz2.compress(PAYLOAD)),
        "bzip2-multi-stream": (
            Compression.BZIP2,
            bz2.compress(PAYLOAD_A) + bz2.compress(PAYLOAD_B),
        ),
        "identity": (Compression.NONE, PAYLOAD),
    }


def _tool_streams(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Compression, bytes]]:
    source = tmp_path_factory.mktemp("tools") / "payload"
    source.write_bytes(PAYLOAD)

    def run(*command: str) -> bytes:
        return subprocess.run([*command, str(source)], capture_output=True, check=True).stdout

    return {
        "zstd-tool": (Compression.ZSTD, run("zstd", "-q", "-c", "--no-progress")),
        "pzstd-tool": (Compression.ZSTD, run("pzstd", "-q", "-p", "2", "-c")),
        "gzip-tool": (Compression.GZIP, run("gzip", "-c")),
        "xz-tool": (Compression.XZ, run("xz", "-c", "-T2")),
        "bzip2-tool": (Compression.BZIP2, run("bzip2", "-c")),
    }


@pytest.fixture(scope="module")
def streams(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Compression, bytes]]:
    return {**_python_streams(), **_tool_streams(tmp_path_factory)}


def _decode(compression: Compression, data: bytes, step: int) -> tuple[bytes, int]:
    output = bytearray()
    largest = 0

    def emit(piece: memoryview) -> None:
        nonlocal largest
        output.extend(piece)
        largest = max(largest, len(piece))

    decoder = make_decoder(compression, emit)
    for start in range(0, len(data), step):
        decoder.feed(data[start : start + step])
    decoder.finish()
    assert decoder.at_boundary
    return bytes(output), largest


STEPS = [1 << 20, 65_536, 4099, 511]


@pytest.mark.parametrize("step", STEPS)
def test_output_is_identical_for_every_chunking(
    streams: dict[str, tuple[Compression, bytes]], step: int
) -> None:
    for name, (compression, data) in streams.items():
        decoded, largest = _decode(compression, data, step)
        assert decoded == PAYLOAD, name
        assert largest <= OUTPUT_CHUNK, name


def test_magic_bytes_name_the_compression(streams: dict[str, tuple[Compression, bytes]]) -> None:
    for name, (compression, data) in streams.items():
        assert detect_compression(data[:6]) is compression, name


@pytest.mark.parametrize("cut", [1, 7, 100, 5000])
def test_a_stream_cut_short_is_corrupt_not_complete(
    streams: dict[str, tuple[Compression, bytes]], cut: int
) -> None:
    for name, (compression, data) in streams.items():
        if compression is Compression.NONE:
            continue
        decoder = make_decoder(compression, lambda piece: None)
        decoder.feed(data[:-cut])
        with pytest.raises(CorruptArchive, match="ended inside"):
            decoder.finish()
        assert not decoder.at_boundary, name


def test_boundaries_are_reported_between_frames_and_members() -> None:
    zstd = zstandard.ZstdCompressor()
    first, second = zstd.compress(PAYLOAD_A), zstd.compress(PAYLOAD_B)
    decoder = make_decoder(Compression.ZSTD, lambda piece: None)
    decoder.feed(first[:-1])
    assert not decoder.at_boundary
    decoder.feed(first[-1:])
    assert decoder.at_boundary
    decoder.feed(second[:10])
    assert not decoder.at_boundary

    members = gzip.compress(PAYLOAD_A), gzip.compress(PAYLOAD_B)
    gz = make_decoder(Compression.GZIP, lambda piece: None)
    gz.feed(members[0])
    assert gz.at_boundary
    gz.feed(members[1][:50])
    assert not gz.at_boundary


@pytest.mark.parametrize(
    "compression",
    [Compression.ZSTD, Compression.GZIP, Compression.XZ, Compression.BZIP2, Compression.LZ4],
)
@pytest.mark.parametrize("tail_length", [1, 2, 3])
def test_a_stream_ending_inside_the_next_magic_is_cut_short(
    compression: Compression, tail_length: int
) -> None:
    """One to three bytes of another frame's magic after whole frames are not an end."""
    data = compress(PAYLOAD, compression.value, parts=2)
    cut = data + data[:tail_length]
    decoder = make_decoder(compression, lambda piece: None)
    with pytest.raises(CorruptArchive, match="ended inside"):
        for start in range(0, len(cut), 4096):
            decoder.feed(cut[start : start + 4096])
        decoder.finish()


@pytest.mark.parametrize("tail", [b"\x50", b"\x50\x2a\x4d", b"abc", b"\x01"])
def test_zstd_ending_in_a_few_bytes_that_begin_no_frame_is_corrupt(tail: bytes) -> None:
    decoder = make_decoder(Compression.ZSTD, lambda piece: None)
    decoder.feed(compress(PAYLOAD, "zst", parts=2) + tail)
    with pytest.raises(CorruptArchive, match="ended inside frame 3"):
        decoder.finish()


@pytest.mark.parametrize("begun", [1, 2, 3, 4])
def test_a_zstd_frame_is_open_from_its_first_byte(begun: int) -> None:
    """A restore point after part of the next magic would resume inside that magic."""
    zstd = zstandard.ZstdCompressor()
    first, second = zstd.compress(PAYLOAD_A), zstd.compress(PAYLOAD_B)
    decoder = make_decoder(Compression.ZSTD, lambda piece: None)
    decoder.feed(first)
    assert decoder.at_boundary
    decoder.feed(second[:begun])
    assert not decoder.at_boundary
    decoder.feed(second[begun:])
    assert decoder.at_boundary
    decoder.finish()


@pytest.mark.parametrize(
    ("compression", "damaged"),
    [
        (Compression.ZSTD, b"\x28\xb5\x2f\xfd" + os.urandom(64)),
        (Compression.GZIP, gzip.compress(PAYLOAD_A)[:20] + b"\xff" * 200),
        (Compression.XZ, lzma.compress(PAYLOAD_A)[:40] + b"\x00\xff" * 100),
        (Compression.BZIP2, b"BZh9" + b"\x01" * 200),
    ],
)
def test_garbage_is_corrupt(compression: Compression, damaged: bytes) -> None:
    decoder = make_decoder(compression, lambda piece: None)
    with pytest.raises(CorruptArchive):
        decoder.feed(damaged)
        decoder.finish()


def test_a_decompression_bomb_is_emitted_in_bounded_chunks() -> None:
    bomb = zstandard.ZstdCompressor(level=19).compress(bytes(256 << 20))
    assert len(bomb) < 64 << 10
    total = 0
    largest = 0

    def emit(piece: memoryview) -> None:
        nonlocal total, largest
        total += len(piece)
        largest = max(largest, len(piece))

    decoder = make_decoder(Compression.ZSTD, emit)
    decoder.feed(bomb)
    decoder.finish()
    assert total == 256 << 20
    assert largest <= OUTPUT_CHUNK


def test_gzip_members_separated_by_zero_padding_decode() -> None:
    data = gzip.compress(PAYLOAD_A) + bytes(512) + gzip.compress(PAYLOAD_B)
    decoded, _ = _decode(Compression.GZIP, data, 1000)
    assert decoded == PAYLOAD


def test_auto_decoder_detects_and_reports_the_choice() -> None:
    chosen: list[Compression] = []
    output = bytearray()

    def on_detect(compression: Compression) -> Emit:
        chosen.append(compression)
        return output.extend

    decoder = AutoDecoder(None, on_detect)
    data = zlib.compress(PAYLOAD_A)  # zlib framing is not gzip: stored as is
    for start in range(0, len(data), 3):
        decoder.feed(data[start : start + 3])
    decoder.finish()
    assert chosen == [Compression.NONE]
    assert bytes(output) == data


def test_auto_decoder_handles_a_stream_shorter_than_any_magic() -> None:
    output = bytearray()
    decoder = AutoDecoder(None, lambda compression: output.extend)
    decoder.feed(b"hi")
    decoder.finish()
    assert bytes(output) == b"hi"
