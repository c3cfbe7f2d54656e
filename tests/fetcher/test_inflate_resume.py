"""A gzip or xz decode restarted inside a member or stream gives exactly the bytes of one that ran
through, for archives made by the real tools, and a restore point that does not check out is
refused.

Restore points are asked for the way the pipeline asks: restore_wanted() turns True once the
decode has been fed past a seeded target position, and the state is taken with mid_state()
inside on_boundary. Each resumed decode is asked for points again (a second kill).
"""

from __future__ import annotations

import dataclasses
import gzip
import logging
import lzma
import random
import subprocess
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from fetcher.errors import CorruptArchive
from fetcher.stages.decode import (
    Bzip2Decoder,
    Decoder,
    GzipDecoder,
    XzDecoder,
    resume_gzip,
    resume_xz,
)
from fetcher.stages.midstream import MidState, RestoreWanted
from fetcher.stages.shapes import Emit, OnBoundary
from fetcher.state.checkpoint import StateError
from tests.support.archives import cli_compress, make_tree, tar_bytes, write_tree

TARGETS_PER_ARCHIVE = 6


Resume = Callable[[MidState, Emit, OnBoundary, RestoreWanted], Decoder]
Fresh = Callable[[Emit, OnBoundary, RestoreWanted], Decoder]


@dataclass(frozen=True)
class Point:
    offset: int  # in the whole archive
    produced: int  # output bytes before it
    state: MidState


@dataclass
class Run:
    output: bytearray
    points: list[Point]
    boundaries: int  # member or stream ends reported


def _decode(
    data: bytes,
    start: Fresh,
    *,
    base: int,
    prior: int,
    targets: list[int],
    rng: random.Random,
) -> Run:
    """Feed data (archive[base:]) in seeded chunk sizes; want a restore once past each target."""
    run = Run(bytearray(), [], 0)
    pending = sorted(t for t in targets if t > base)
    fed_end = base

    def wanted() -> bool:
        return bool(pending) and fed_end >= pending[0]

    def on_boundary(offset: int) -> None:
        state = decoder.mid_state()
        if state is None:
            run.boundaries += 1
            return
        position = chunk_start + offset
        run.points.append(Point(position, prior + len(run.output), state))
        while pending and pending[0] <= fed_end:
            pending.pop(0)

    decoder = start(run.output.extend, on_boundary, wanted)
    chunk_start = base
    view = memoryview(data)
    pos = 0
    while pos < len(data):
        size = rng.choice((rng.randint(1, 600), rng.randint(600, 70_000)))
        piece = view[pos : pos + size]
        chunk_start, fed_end = base + pos, base + pos + len(piece)
        decoder.feed(bytes(piece))
        pos += len(piece)
    decoder.finish()
    return run


def _check_resumes(
    archive: bytes,
    expected: bytes,
    fresh: Fresh,
    resume: Resume,
    seed: int,
    *,
    expect_points: bool = True,
) -> int:
    """Resume from every point a seeded set of targets produced, twice over; return how many."""
    rng = random.Random(seed)
    targets = rng.sample(range(len(archive)), TARGETS_PER_ARCHIVE)
    whole = _decode(archive, fresh, base=0, prior=0, targets=targets, rng=rng)
    assert whole.output == expected
    if not expect_points:
        assert whole.points == []
        return 0
    assert len(whole.points) >= TARGETS_PER_ARCHIVE // 2, "restore points were asked for"
    checked = 0
    for point in whole.points:
        later = [rng.randrange(point.offset, len(archive)) for _ in range(2)]
        again = _resume(archive, resume, point, later, rng)
        assert whole.output[point.produced :] == again.output, point
        checked += 1
        for second in again.points[:1]:  # the resumed decode offers points of its own
            assert second.offset > point.offset
            third = _resume(archive, resume, second, [], rng)
            assert whole.output[second.produced :] == third.output, second
            checked += 1
    return checked


def _resume(
    archive: bytes, resume: Resume, point: Point, targets: list[int], rng: random.Random
) -> Run:
    def start(emit: Emit, on_boundary: OnBoundary, wanted: RestoreWanted) -> Decoder:
        return resume(point.state, emit, on_boundary, wanted)

    return _decode(
        archive[point.offset :],
        start,
        base=point.offset,
        prior=point.produced,
        targets=targets,
        rng=rng,
    )


@pytest.fixture(scope="module")
def tar_payload() -> bytes:
    return tar_bytes(make_tree(seed=11, n_files=12, total_bytes=3_000_000))


@pytest.fixture(scope="module")
def gzip_archives(tar_payload: bytes, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    half = len(tar_payload) // 2
    source = write_tree(
        make_tree(seed=12, n_files=8, total_bytes=2_000_000), tmp_path_factory.mktemp("src")
    )
    tar_czf = subprocess.run(
        ["tar", "-czf", "-", "-C", str(source), "."], capture_output=True, check=True, timeout=120
    ).stdout
    return {
        "gzip -1": cli_compress(tar_payload, "gzip", level=1),
        "gzip -6": cli_compress(tar_payload, "gzip", level=6),
        "gzip -9": cli_compress(tar_payload, "gzip", level=9),
        "pigz": cli_compress(tar_payload, "pigz"),
        "tar czf": tar_czf,
        "concatenated members": cli_compress(tar_payload[:half], "gzip")
        + bytes(512)
        + cli_compress(tar_payload[half:], "pigz"),
    }


def _gzip_fresh(emit: Emit, on_boundary: OnBoundary, wanted: RestoreWanted) -> Decoder:
    return GzipDecoder(emit, on_boundary, wanted)


@pytest.mark.parametrize(
    "name", ["gzip -1", "gzip -6", "gzip -9", "pigz", "tar czf", "concatenated members"]
)
def test_gzip_resumed_inside_a_member_decodes_byte_for_byte(
    gzip_archives: dict[str, bytes], name: str
) -> None:
    archive = gzip_archives[name]
    expected = gzip.decompress(archive)
    assert _check_resumes(archive, expected, _gzip_fresh, resume_gzip, seed=len(name)) >= 3


def _first_point(archive: bytes, fresh: Fresh, *, at: float = 0.5) -> Point:
    rng = random.Random(5)
    run = _decode(archive, fresh, base=0, prior=0, targets=[int(len(archive) * at)], rng=rng)
    assert run.points
    return run.points[0]


def _resumed_output(archive: bytes, resume: Resume, point: Point) -> bytes:
    return bytes(_resume(archive, resume, point, [], random.Random(6)).output)


def _with(point: Point, history: bytes | None = None, **fields: Any) -> Point:
    state = dataclasses.replace(
        point.state,
        fields={**point.state.fields, **fields},
        history=point.state.history if history is None else history,
    )
    return dataclasses.replace(point, state=state)


@pytest.fixture(scope="module")
def gzip_point(gzip_archives: dict[str, bytes]) -> tuple[bytes, Point]:
    archive = gzip_archives["gzip -6"]
    point = _first_point(archive, _gzip_fresh)
    assert point.produced > 32768 and len(point.state.history) == 32768
    return archive, point


def test_gzip_state_with_damaged_history_or_check_fails_the_member(
    gzip_point: tuple[bytes, Point],
) -> None:
    archive, point = gzip_point
    assert _resumed_output(archive, resume_gzip, point)  # the point itself is good
    flipped = bytes(b ^ 0xFF for b in point.state.history)
    damaged = [
        _with(point, history=flipped),
        _with(point, crc=point.state.fields["crc"] ^ 1),
        _with(point, length=point.state.fields["length"] + 1),
    ]
    for bad in damaged:
        with pytest.raises(CorruptArchive, match="gzip stream is corrupt in member 1"):
            _resumed_output(archive, resume_gzip, bad)
    shifted = dataclasses.replace(point, offset=point.offset + 1)
    with pytest.raises(CorruptArchive):
        _resumed_output(archive, resume_gzip, shifted)


def _malformed_gzip(point: Point) -> Iterator[tuple[str, MidState]]:
    """(what the StateError must name, a state with that one thing wrong)."""
    state = point.state
    without_crc = {k: v for k, v in state.fields.items() if k != "crc"}
    yield "codec", dataclasses.replace(state, codec="xz")
    yield r"fields\.crc is missing", dataclasses.replace(state, fields=without_crc)
    yield r"fields\.crc is not", _with(point, crc=-1).state
    yield r"fields\.crc is not", _with(point, crc=1 << 32).state
    yield r"fields\.crc is not", _with(point, crc="0").state
    yield r"fields\.bits is not", _with(point, bits=8).state
    yield r"fields\.bits is not", _with(point, bits=True).state
    yield r"fields\.byte is not", _with(point, byte=256).state
    yield r"fields\.byte must be 0", _with(point, bits=0, byte=7).state
    yield r"fields\.version is not", _with(point, version=2).state
    yield r"fields\.members is not", _with(point, members=None).state
    yield r"fields\.length is not", _with(point, length=-5).state
    yield "unknown field", _with(point, window=1).state
    yield "history holds 32767 bytes", _with(point, history=point.state.history[1:]).state
    yield "history holds 0 bytes, not the 10", _with(point, history=b"", length=10).state
    yield "fields is not an object", dataclasses.replace(state, fields=[1, 2])  # type: ignore[arg-type]


def test_gzip_state_with_malformed_fields_is_refused_by_name(
    gzip_point: tuple[bytes, Point],
) -> None:
    _, point = gzip_point
    for message, state in _malformed_gzip(point):
        with pytest.raises(StateError, match=message):
            resume_gzip(state, lambda piece: None)


def test_gzip_decode_offers_no_mid_member_point_unless_asked(
    gzip_archives: dict[str, bytes],
) -> None:
    archive = gzip_archives["concatenated members"]
    run = _decode(archive, _gzip_fresh, base=0, prior=0, targets=[], rng=random.Random(1))
    assert run.points == []
    assert run.boundaries == 2


XZ_ARCHIVES = {
    "xz -T0 --block-size=128KiB": ["-T0", "--block-size=128KiB"],
    "xz -T2 --block-size=200KiB --check=sha256": ["-T2", "--block-size=200KiB", "--check=sha256"],
    "xz -T0 --block-size=300KiB --check=crc32": ["-T0", "--block-size=300KiB", "--check=crc32"],
    "xz -T0 --block-size=256KiB --check=none": ["-T0", "--block-size=256KiB", "--check=none"],
}


@pytest.fixture(scope="module")
def xz_payload() -> bytes:
    """Smaller than the gzip one: xz is slow to make and to decode."""
    return tar_bytes(make_tree(seed=13, n_files=8, total_bytes=1_500_000))


@pytest.fixture(scope="module")
def xz_archives(xz_payload: bytes) -> dict[str, bytes]:
    tar_payload = xz_payload
    third = len(tar_payload) // 3
    archives = {
        name: cli_compress(tar_payload, "xz", options=options)
        for name, options in XZ_ARCHIVES.items()
    }
    archives["concatenated streams"] = (
        cli_compress(tar_payload[:third], "xz", options=["-T0", "--block-size=100KiB"])
        + bytes(8)
        + cli_compress(tar_payload[third : 2 * third], "xz", options=["-T1"])
        + cli_compress(tar_payload[2 * third :], "xz", options=["-T0", "--block-size=150KiB"])
    )
    archives["xz single-threaded"] = cli_compress(tar_payload, "xz", options=["-T1"])
    archives["xz single-threaded --block-size"] = cli_compress(
        tar_payload, "xz", options=["-T1", "--block-size=128KiB"]
    )
    return archives


def _xz_fresh(emit: Emit, on_boundary: OnBoundary, wanted: RestoreWanted) -> Decoder:
    return XzDecoder(emit, on_boundary, wanted)


@pytest.mark.parametrize("name", [*XZ_ARCHIVES, "concatenated streams"])
def test_xz_resumed_at_a_block_start_decodes_byte_for_byte(
    xz_archives: dict[str, bytes], xz_payload: bytes, name: str
) -> None:
    archive = xz_archives[name]
    assert _check_resumes(archive, xz_payload, _xz_fresh, resume_xz, seed=len(name)) >= 3


@pytest.mark.parametrize("name", ["xz single-threaded", "xz single-threaded --block-size"])
def test_xz_without_block_sizes_offers_no_mid_stream_point_and_says_so_once(
    xz_archives: dict[str, bytes], xz_payload: bytes, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    archive = xz_archives[name]
    caplog.set_level(logging.INFO, logger="model-fetch")
    assert lzma.decompress(archive) == xz_payload
    _check_resumes(archive, xz_payload, _xz_fresh, resume_xz, seed=3, expect_points=False)
    said = [
        r.getMessage() for r in caplog.records if "resumes it only from its start" in r.getMessage()
    ]
    assert len(said) == 1
    assert "xz -T0" in said[0]


@pytest.fixture(scope="module")
def xz_point(xz_archives: dict[str, bytes]) -> tuple[bytes, Point]:
    archive = xz_archives["xz -T0 --block-size=128KiB"]
    point = _first_point(archive, _xz_fresh)
    assert point.state.fields["blocks"] >= 2 and point.state.history == b""
    return archive, point


def test_xz_state_that_disagrees_with_the_stream_fails_it(xz_point: tuple[bytes, Point]) -> None:
    archive, point = xz_point
    fields = point.state.fields
    assert _resumed_output(archive, resume_xz, point)  # the point itself is good
    for bad in (
        _with(point, records_crc=fields["records_crc"] ^ 1),
        _with(point, unpadded=fields["unpadded"] + 4),
        _with(point, uncompressed=fields["uncompressed"] - 1),
        _with(point, blocks=fields["blocks"] - 1, records_size=fields["records_size"] - 4),
    ):
        with pytest.raises(CorruptArchive, match="xz stream 1 is corrupt in its index"):
            _resumed_output(archive, resume_xz, bad)
    for bad in (_with(point, check=1), dataclasses.replace(point, offset=point.offset + 1)):
        with pytest.raises(CorruptArchive, match="xz stream 1 is corrupt"):
            _resumed_output(archive, resume_xz, bad)


def _malformed_xz(point: Point) -> Iterator[tuple[str, MidState]]:
    """(what the StateError must name, a state with that one thing wrong)."""
    state = point.state
    blocks = state.fields["blocks"]
    without = {k: v for k, v in state.fields.items() if k != "records_crc"}
    yield "codec", dataclasses.replace(state, codec="gzip")
    yield r"fields\.records_crc is missing", dataclasses.replace(state, fields=without)
    yield r"fields\.records_crc is not", _with(point, records_crc=1 << 32).state
    yield r"fields\.check is not", _with(point, check=16).state
    yield r"fields\.blocks is not", _with(point, blocks=False).state
    yield r"fields\.members is not", _with(point, members=-1).state
    yield r"fields\.version is not", _with(point, version=0).state
    yield r"fields\.records_size does not fit", _with(point, records_size=blocks).state
    yield r"fields\.unpadded is too small", _with(point, unpadded=8 * blocks).state
    yield "unknown field", _with(point, history=None, crc=0).state
    yield "history must be empty", _with(point, history=b"\0").state
    yield "fields is not an object", dataclasses.replace(state, fields="{}")  # type: ignore[arg-type]


def test_xz_state_with_malformed_fields_is_refused_by_name(xz_point: tuple[bytes, Point]) -> None:
    _, point = xz_point
    for message, state in _malformed_xz(point):
        with pytest.raises(StateError, match=message):
            resume_xz(state, lambda piece: None)


def test_bzip2_restarts_only_where_a_stream_ends(xz_payload: bytes) -> None:
    half = len(xz_payload) // 2
    archive = cli_compress(xz_payload[:half], "bzip2") + cli_compress(xz_payload[half:], "bzip2")

    def fresh(emit: Emit, on_boundary: OnBoundary, wanted: RestoreWanted) -> Decoder:
        return Bzip2Decoder(emit, on_boundary, wanted)

    run = _decode(archive, fresh, base=0, prior=0, targets=[1, half], rng=random.Random(2))
    assert run.output == xz_payload
    assert run.points == []
    assert run.boundaries == 2


def _member_with_every_header_field(payload: bytes) -> bytes:
    header = bytearray(b"\x1f\x8b\x08\x1e" + bytes(6))  # FHCRC, FEXTRA, FNAME, FCOMMENT
    header += (6).to_bytes(2, "little") + b"AB\x02\x00hi"
    header += b"weights.tar\0" + b"made for a test\0"
    header += (zlib.crc32(header) & 0xFFFF).to_bytes(2, "little")
    body = zlib.compressobj(6, zlib.DEFLATED, -15)
    deflated = body.compress(payload) + body.flush()
    trailer = zlib.crc32(payload).to_bytes(4, "little") + len(payload).to_bytes(4, "little")
    return bytes(header) + deflated + trailer


def _decoded_bytewise(decoder: GzipDecoder | XzDecoder, data: bytes, output: bytearray) -> bytes:
    for i in range(len(data)):
        decoder.feed(data[i : i + 1])
    decoder.finish()
    return bytes(output)


def test_every_gzip_header_field_and_empty_members_decode_a_byte_at_a_time() -> None:
    payload = b"tensor " * 300
    data = _member_with_every_header_field(payload) + gzip.compress(b"") + bytes(3)
    output = bytearray()
    assert _decoded_bytewise(GzipDecoder(output.extend), data, output) == payload
    damaged = bytearray(data)
    damaged[40] ^= 1  # inside the comment: only the header CRC can tell
    with pytest.raises(CorruptArchive, match="header CRC mismatch"):
        GzipDecoder(lambda piece: None).feed(bytes(damaged))
    empty = subprocess.run(["xz", "-c"], input=b"", capture_output=True, check=True).stdout
    output.clear()
    assert _decoded_bytewise(XzDecoder(output.extend), empty + empty, output) == b""
