"""The parallel zstd decoder gives the plain decoder's bytes, boundaries and errors, in order."""

from __future__ import annotations

import gc
import hashlib
import itertools
import random
import struct
import threading
import tracemalloc
from dataclasses import dataclass, field

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fetcher.errors import CorruptArchive, UnsafeArchive
from fetcher.formats import Compression
from fetcher.pack.archive import pack
from fetcher.stages.decode import Decoder, make_decoder
from fetcher.stages.shapes import OUTPUT_CHUNK
from fetcher.stages.zstd_parallel import ParallelZstdDecoder
from tests.support.archives import cli_compress, make_tree, write_tree

RNG = random.Random(5)
PARTS = [
    RNG.randbytes(RNG.randrange(1, 40_000)) + b"weights " * RNG.randrange(20_000) for _ in range(9)
]


def _frames(parts: list[bytes], level: int = 3) -> bytes:
    compressor = zstandard.ZstdCompressor(level=level, write_checksum=True)
    return b"".join(compressor.compress(part) for part in parts)


def _skippable(payload: bytes, magic: int = 0x184D2A53) -> bytes:
    return struct.pack("<II", magic, len(payload)) + payload


@dataclass
class Run:
    output: bytearray = field(default_factory=bytearray)
    boundaries: list[int] = field(default_factory=list)
    emitted_at_boundary: list[int] = field(default_factory=list)
    largest_chunk: int = 0
    error: CorruptArchive | None = None


def run(parallel: bool, data: bytes, cuts: list[int], **options: int) -> Run:
    """Feed data cut at cuts (boundaries as stream positions) to either decoder."""
    result = Run()
    feed_start = 0

    def emit(chunk: memoryview) -> None:
        result.output += chunk
        result.largest_chunk = max(result.largest_chunk, len(chunk))

    def boundary(offset: int) -> None:
        result.boundaries.append(feed_start + offset)
        result.emitted_at_boundary.append(len(result.output))

    decoder: Decoder = (
        ParallelZstdDecoder(emit, boundary, **options)
        if parallel
        else make_decoder(Compression.ZSTD, emit, boundary)
    )
    edges = [0, *sorted(set(c for c in cuts if 0 < c < len(data))), len(data)]
    try:
        for start, end in itertools.pairwise(edges):
            feed_start = start
            decoder.feed(data[start:end])
        decoder.finish()
    except CorruptArchive as error:
        result.error = error
    return result


def _assert_same(
    data: bytes, cuts: list[int], damaged_from: int | None = None, **options: int
) -> Run:
    """damaged_from: decoded bytes before a damaged frame, whose own output may differ (the
    plain decoder checks the content checksum after the frame's output, the library before
    the output of the call that reads it)."""
    plain = run(False, data, cuts)
    parallel = run(True, data, cuts, **options)
    assert bytes(parallel.output[:damaged_from]) == bytes(plain.output[:damaged_from])
    assert parallel.boundaries == plain.boundaries
    assert parallel.emitted_at_boundary == plain.emitted_at_boundary
    assert (parallel.error is None) == (plain.error is None), (parallel.error, plain.error)
    assert parallel.largest_chunk <= OUTPUT_CHUNK
    return parallel


def _ends(parts: list[bytes]) -> list[int]:
    """Decoded bytes at each frame end."""
    out, total = [], 0
    for part in parts:
        total += len(part)
        out.append(total)
    return out


WORKERS = [1, 2, 4]


@pytest.mark.parametrize("workers", WORKERS)
def test_many_frames_whole_and_in_small_chunks(workers: int) -> None:
    data = _frames(PARTS)
    for cuts in ([], list(range(0, len(data), 7_777)), list(range(0, len(data), 1))[:300]):
        result = _assert_same(data, cuts, workers=workers, max_input=32_768, max_output=65_536)
        assert result.error is None
        assert result.emitted_at_boundary == _ends(PARTS)


@pytest.mark.parametrize("workers", WORKERS)
def test_pzstd_made(workers: int) -> None:
    payload = b"".join(PARTS) * 12
    data = cli_compress(payload, "pzstd", level=1)
    result = _assert_same(data, list(range(0, len(data), 1 << 20)), workers=workers)
    assert bytes(result.output) == payload
    assert len(result.boundaries) >= 4  # pzstd's skippable headers and its frames


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, bytes]:
    """A pack-made archive with many frames, and its tar stream."""
    tmp = tmp_path_factory.mktemp("pack")
    source = write_tree(make_tree(seed=3, n_files=20, total_bytes=2_000_000), tmp / "model")
    pack(source, tmp / "m.tar.zst", frame_size=64 * 1024, level=3, threads=2, mtime=0)
    data = (tmp / "m.tar.zst").read_bytes()
    return data, zstandard.ZstdDecompressor().stream_reader(data).read()


@pytest.mark.parametrize("workers", WORKERS)
def test_pack_made_with_its_seek_table(workers: int, packed: tuple[bytes, bytes]) -> None:
    data, tar = packed
    result = _assert_same(data, list(range(0, len(data), 100_000)), workers=workers)
    assert bytes(result.output) == tar and result.error is None
    assert len(result.boundaries) > 30  # every frame, then the seek table's skippable frame
    assert result.boundaries[-1] == len(data)


def test_many_tiny_frames_and_skippable_frames_between() -> None:
    rng = random.Random(9)
    parts = [rng.randbytes(rng.randrange(0, 300)) for _ in range(400)]
    compressor = zstandard.ZstdCompressor(write_checksum=True)
    pieces = []
    for index, part in enumerate(parts):
        pieces.append(compressor.compress(part))
        if index % 3 == 0:
            pieces.append(_skippable(rng.randbytes(rng.randrange(0, 50))))
    data = b"".join(pieces)
    for workers in (2, 3):
        result = _assert_same(data, list(range(0, len(data), 333)), workers=workers)
        assert len(result.boundaries) == len(pieces)


def _corrupt_frame(parts: list[bytes], index: int) -> tuple[bytes, int]:
    """The frames with one byte flipped inside frame ``index``; the offset of that frame."""
    frames = [zstandard.ZstdCompressor(write_checksum=True).compress(p) for p in parts]
    damaged = bytearray(frames[index])
    damaged[len(damaged) // 2] ^= 0x55
    frames[index] = bytes(damaged)
    return b"".join(frames), sum(len(f) for f in frames[:index])


@pytest.mark.parametrize("workers", WORKERS)
@pytest.mark.parametrize("index", [0, 4, 8])
def test_a_corrupt_frame_fails_at_that_frame(workers: int, index: int) -> None:
    data, at = _corrupt_frame(PARTS, index)
    before = sum(map(len, PARTS[:index]))
    result = _assert_same(data, list(range(0, len(data), 50_000)), before, workers=workers)
    assert result.error is not None
    assert result.boundaries == [b for b in result.boundaries if b <= at]
    assert result.emitted_at_boundary == _ends(PARTS)[:index]
    assert bytes(result.output[:before]) == b"".join(PARTS[:index])
    assert len(result.output) <= sum(map(len, PARTS[: index + 1]))
    if workers > 1:
        assert f"frame {index + 1}" in result.error.message


@pytest.mark.parametrize("workers", WORKERS)
def test_a_bad_magic_after_good_frames(workers: int) -> None:
    data = _frames(PARTS[:4]) + b"\x00not zstd at all" + _frames(PARTS[4:])
    result = _assert_same(data, [len(data) // 2], workers=workers)
    assert result.error is not None and "bad frame magic" in result.error.message


@pytest.mark.parametrize("workers", WORKERS)
@pytest.mark.parametrize("keep", [0.5, 0.999])
def test_a_truncated_last_frame(workers: int, keep: float) -> None:
    data = _frames(PARTS)
    last = len(zstandard.ZstdCompressor(write_checksum=True).compress(PARTS[-1]))
    cut = data[: len(data) - last + int(last * keep)]
    result = _assert_same(cut, list(range(0, len(cut), 30_000)), workers=workers)
    assert result.error is not None and "ended inside frame" in result.error.message
    assert result.emitted_at_boundary == _ends(PARTS)[:-1]


def test_an_empty_stream_is_refused() -> None:
    with pytest.raises(CorruptArchive):
        ParallelZstdDecoder(lambda chunk: None, workers=2).finish()


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    cuts=st.lists(st.integers(min_value=1, max_value=400_000), max_size=25),
    workers=st.sampled_from([1, 2, 3]),
    skippable_at=st.sets(st.integers(min_value=0, max_value=8), max_size=3),
)
def test_any_chunking_keeps_bytes_and_boundaries_in_order(
    cuts: list[int], workers: int, skippable_at: set[int]
) -> None:
    compressor = zstandard.ZstdCompressor(write_checksum=True)
    pieces = []
    for index, part in enumerate(PARTS[:6]):
        pieces.append(compressor.compress(part[:60_000]))
        if index in skippable_at:
            pieces.append(_skippable(b"x" * index))
    data = b"".join(pieces)
    result = _assert_same(data, cuts, workers=workers, max_input=16_384, max_output=32_768)
    assert result.error is None
    assert result.boundaries == sorted(result.boundaries)


def test_a_single_frame_is_decoded_while_it_streams() -> None:
    payload = random.Random(2).randbytes(3 << 20)  # incompressible: 3 MiB of input to stream
    data = zstandard.ZstdCompressor(level=1).compress(payload)
    emitted = bytearray()
    decoder = ParallelZstdDecoder(emitted.extend, workers=2, max_input=64 * 1024)
    step = 16 * 1024
    split = int(len(data) * 0.6) // step * step
    for start in range(0, split, step):
        decoder.feed(data[start : start + step])
    assert len(data) > 20 * 64 * 1024  # the input room was filled many times over
    assert 0 < len(emitted) < len(payload)
    assert payload.startswith(bytes(emitted))
    for start in range(split, len(data), step):
        decoder.feed(data[start : start + step])
    decoder.finish()
    assert bytes(emitted) == payload


def test_a_bomb_frame_is_held_to_its_output_room() -> None:
    size = 256 << 20
    compressing = zstandard.ZstdCompressor().compressobj(size=size)
    zeros = bytes(1 << 20)
    bomb = b"".join(compressing.compress(zeros) for _ in range(size >> 20)) + compressing.flush()
    assert len(bomb) < 1 << 20
    digest = hashlib.sha256()
    seen = 0

    def slow_sink(chunk: memoryview) -> None:
        nonlocal seen
        seen += len(chunk)
        for _ in range(3):  # a consumer slower than the decoder of zeros
            digest.update(chunk)

    tracemalloc.start()
    try:
        decoder = ParallelZstdDecoder(slow_sink, workers=2, max_output=4 << 20)
        decoder.feed(bomb)
        decoder.finish()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert seen == size
    assert peak < 48 << 20, peak


def test_an_error_from_the_sink_stops_the_workers() -> None:
    data = _frames(PARTS)
    calls = 0

    def failing(chunk: memoryview) -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise UnsafeArchive("x", "refused")

    decoder = ParallelZstdDecoder(failing, workers=3, max_output=65_536)
    with pytest.raises(UnsafeArchive):
        for start in range(0, len(data), 10_000):
            decoder.feed(data[start : start + 10_000])
        decoder.finish()
    assert not [t for t in threading.enumerate() if t.name.startswith("zstd-frames")]
    with pytest.raises(RuntimeError):
        decoder.feed(b"more")
    with pytest.raises(RuntimeError):  # not a wait for workers that are gone
        decoder.finish()


def test_a_dropped_decoder_stops_its_workers() -> None:
    data = _frames(PARTS)
    decoder = ParallelZstdDecoder(lambda chunk: None, workers=3, max_output=65_536)
    decoder.feed(data[: len(data) // 2])
    threads = list(decoder._threads)
    assert threads
    del decoder
    gc.collect()
    for thread in threads:
        thread.join(timeout=30)  # a bound for a hang, not a guess at timing
        assert not thread.is_alive()


def test_default_workers_follow_the_cpu_quota() -> None:
    from fetcher.cpus import available_cpus

    decoder = ParallelZstdDecoder(lambda chunk: None)
    assert decoder.workers == available_cpus()
    decoder.close()


def test_frames_decode_on_several_threads_at_once() -> None:
    """Before the first frame's output is emitted, the frames after it are decoded too."""
    parts = [bytes(4 << 20) for _ in range(3)]
    data = _frames(parts, level=1)
    emitted = bytearray()
    decoded_ahead: list[bool] = []

    def emit(chunk: memoryview) -> None:
        if not decoded_ahead:
            jobs = list(decoder._jobs)
            with decoder._shared.cond:  # woken by each worker as it finishes its frame
                decoder._shared.cond.wait_for(lambda: all(j.done for j in jobs), timeout=60)
            decoded_ahead.append(len(jobs) == 3 and all(j.done for j in jobs))
        emitted.extend(chunk)

    decoder = ParallelZstdDecoder(emit, workers=3, max_output=8 << 20)
    decoder.feed(data)
    decoder.finish()
    assert decoded_ahead == [True]
    assert bytes(emitted) == b"".join(parts)


@pytest.mark.parametrize("workers", WORKERS)
def test_the_first_bytes_of_another_frame_are_not_a_boundary(workers: int) -> None:
    """Two bytes of a next magic number are input the decoder holds: not a clean end."""
    emitted = bytearray()
    decoder = ParallelZstdDecoder(emitted.extend, workers=workers)
    decoder.feed(_frames(PARTS[:2]) + b"\x28\xb5")
    assert not decoder.at_boundary
    with pytest.raises(CorruptArchive, match="ended inside frame 3"):
        decoder.finish()
    assert bytes(emitted) == b"".join(PARTS[:2])


def test_a_buffer_reused_by_the_caller_after_feed() -> None:
    """Only bytes are immutable: any other buffer may be refilled as soon as feed() returns."""
    data = _frames(PARTS)
    emitted = bytearray()
    decoder = ParallelZstdDecoder(emitted.extend, workers=3)
    buffer = bytearray(50_000)
    for start in range(0, len(data), len(buffer)):
        piece = data[start : start + len(buffer)]
        buffer[: len(piece)] = piece
        decoder.feed(memoryview(buffer)[: len(piece)])
        buffer[:] = bytes(len(buffer))  # the caller reads the next chunk into it
    decoder.finish()
    assert bytes(emitted) == b"".join(PARTS)


def test_a_wanted_restore_point_comes_in_the_feed_that_ends_the_frame() -> None:
    """Frames decoded ahead would report their ends a feed late; when a checkpoint is due they
    must not, or a kill in between loses every frame that had arrived whole."""
    data = _frames(PARTS)
    ends = run(False, data, []).boundaries
    reported: list[tuple[int, int]] = []  # (feed number, stream position)
    feed = {"number": 0, "start": 0}
    decoder = ParallelZstdDecoder(
        lambda chunk: None,
        lambda offset: reported.append((feed["number"], feed["start"] + offset)),
        restore_wanted=lambda: True,
        workers=2,
    )
    # One feed per frame, each cut just past that frame's end: the next frame has begun.
    edges = [0, *(end + 1 for end in ends[:-1]), len(data)]
    for number, (start, stop) in enumerate(itertools.pairwise(edges)):
        feed.update(number=number, start=start)
        decoder.feed(data[start:stop])
    decoder.finish()
    assert reported == list(enumerate(ends)), reported
