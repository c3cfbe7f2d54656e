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
import random
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import pytest

from fetcher.errors import CorruptArchive
from fetcher.stages.decode import Emit, GzipDecoder, OnBoundary, resume_gzip
from fetcher.stages.midstream import MidState, RestoreWanted
from fetcher.state.checkpoint import StateError
from tests.support.archives import cli_compress, make_tree, tar_bytes, write_tree

TARGETS_PER_ARCHIVE = 6


class _Resumable(Protocol):
    def feed(self, data: bytes) -> None: ...

    def finish(self) -> None: ...

    def mid_state(self) -> MidState | None: ...


Resume = Callable[[MidState, Emit, OnBoundary, RestoreWanted], _Resumable]
Fresh = Callable[[Emit, OnBoundary, RestoreWanted], _Resumable]


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
    start: Callable[[Emit, OnBoundary, RestoreWanted], _Resumable],
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
    def start(emit: Emit, on_boundary: OnBoundary, wanted: RestoreWanted) -> _Resumable:
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


def _gzip_fresh(emit: Emit, on_boundary: OnBoundary, wanted: RestoreWanted) -> _Resumable:
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
