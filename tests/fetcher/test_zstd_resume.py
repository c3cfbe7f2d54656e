"""A zstd frame resumed at a block boundary decodes to exactly what the whole decode gives.

Archives come from the real zstd command line (and tar -I zstd, pzstd); restore points are
asked for through the decoder's own interface (restore_wanted, then mid_state() inside
on_boundary), and every resumed decode is compared byte for byte with the normal one.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import logging
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import xxhash
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fetcher.commit import WORK_DIR_NAME
from fetcher.errors import CorruptArchive
from fetcher.stages.decode import ZstdDecoder, resume_zstd
from fetcher.stages.midstream import MidState
from fetcher.stages.zstd import fse
from fetcher.stages.zstd.blocks import Event, FrameScanner
from fetcher.stages.zstd.dictionary import dictionary, entropy_section
from fetcher.stages.zstd.entropy import PLACEHOLDER_HUFFMAN, predefined
from fetcher.stages.zstd.sequences import known
from fetcher.stages.zstd.xxh64 import Xxh64
from fetcher.state.checkpoint import CHECKPOINT_NAME, StateError
from tests.support.archives import fetched_tree, make_tree, tree_snapshot, write_tree
from tests.support.events import read_checkpoint
from tests.support.origin import Origin

SIZE = 3_000_000


def _payload(seed: int, size: int) -> bytes:
    """Runs of random, text-like, periodic and zero bytes: raw, RLE and compressed blocks."""
    rng = random.Random(seed)
    words = [bytes(rng.choices(b"etaoinshrdlucmfwyp", k=rng.randint(2, 9))) for _ in range(400)]
    out = bytearray()
    while len(out) < size:
        kind, length = rng.random(), rng.randint(2_000, 150_000)
        if kind < 0.25:
            out += rng.randbytes(length)
        elif kind < 0.65:
            out += b" ".join(rng.choices(words, k=length // 6))
        elif kind < 0.85:
            period = rng.randbytes(rng.randint(1, 300))
            out += (period * (length // len(period) + 1))[:length]
        else:
            out += bytes(length)
    return bytes(out[:size])


PAYLOAD = _payload(11, SIZE)
INCOMPRESSIBLE = random.Random(12).randbytes(SIZE)

# name -> how the archive is made from PAYLOAD (written to "payload" in a work directory)
VARIANTS: dict[str, list[str]] = {
    "fast": ["zstd", "-q", "-c", "--fast"],
    "level-1": ["zstd", "-q", "-c", "-1"],
    "level-3": ["zstd", "-q", "-c", "-3"],
    "level-9": ["zstd", "-q", "-c", "-9"],
    "level-19": ["zstd", "-q", "-c", "-19"],
    "long-27": ["zstd", "-q", "-c", "--long=27"],
    "threads": ["zstd", "-q", "-c", "-T0"],
    "ultra-22": ["zstd", "-q", "-c", "--ultra", "-22"],
    "single-thread": ["zstd", "-q", "-c", "--single-thread", "-6"],
    "file-single-segment": ["zstd", "-q", "-c", "-3", "payload"],  # content size known
    "pzstd": ["pzstd", "-q", "-c", "-p", "2"],
    "tar": ["tar", "-I", "zstd", "-cf", "-", "tree"],
}


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    work = tmp_path_factory.mktemp("zstd-resume")
    (work / "payload").write_bytes(PAYLOAD)
    write_tree(
        {f"shard-{i}.bin": _payload(20 + i, 600_000) for i in range(4)} | {"a.txt": b"x" * 999},
        work / "tree",
    )
    made = {}
    for name, command in VARIANTS.items():
        stdin = None if command[-1] in ("payload", "tree") else PAYLOAD
        made[name] = subprocess.run(
            command, input=stdin, cwd=work, capture_output=True, check=True, timeout=120
        ).stdout
    made["two-frames"] = made["level-3"] + made["level-19"]
    # Random bytes: zstd stores every block raw, and no sequence ever moves the repeat offsets.
    made["incompressible"] = subprocess.run(
        ["zstd", "-q", "-c", "-3"], input=INCOMPRESSIBLE, capture_output=True, check=True
    ).stdout
    return made


@pytest.fixture(scope="module")
def outputs(archives: dict[str, bytes]) -> dict[str, bytes]:
    """What the library alone decodes each archive to."""
    decoded = {}
    for name, archive in archives.items():
        reader = zstandard.ZstdDecompressor().stream_reader(archive, read_across_frames=True)
        with reader:
            decoded[name] = reader.read()
    return decoded


@dataclasses.dataclass
class Point:
    position: int  # in the archive
    state: MidState
    output: int  # bytes decoded before it


def _decode(
    archive: bytes,
    *,
    chunk: int,
    wanted_at: list[int] | None = None,
    start: int = 0,
    state: MidState | None = None,
) -> tuple[bytes, list[Point]]:
    """Decode archive[start:] (resuming from state if given), wanting a restore point from
    each position of wanted_at (offsets into the archive) until one inside a frame is
    offered: a frame end answers a wish too, but then the decoder is asked again."""
    out = bytearray()
    points: list[Point] = []
    moments = sorted(wanted_at or [])
    fed = [start, start]  # start of the chunk being fed, bytes fed so far

    def wanted() -> bool:
        return bool(moments) and fed[1] >= moments[0]

    def on_boundary(offset: int) -> None:
        mid = decoder.mid_state()
        if mid is not None:
            points.append(Point(fed[0] + offset, mid, len(out)))
            while moments and moments[0] <= fed[1]:
                moments.pop(0)

    if state is None:
        decoder = ZstdDecoder(out.extend, on_boundary, wanted)
    else:
        decoder = resume_zstd(state, out.extend, on_boundary, wanted)
    for position in range(start, len(archive), chunk):
        fed[0] = position
        decoder.feed(archive[position : position + chunk])
        fed[1] = min(position + chunk, len(archive))
    decoder.finish()
    return bytes(out), points


NAMES = [*VARIANTS, "two-frames", "incompressible"]


@pytest.mark.parametrize("name", NAMES)
@settings(
    max_examples=3,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_resuming_at_any_offered_point_gives_the_same_bytes(
    name: str, archives: dict[str, bytes], outputs: dict[str, bytes], data: st.DataObject
) -> None:
    archive, expected = archives[name], outputs[name]
    chunk = data.draw(st.sampled_from([4096, 65_536, 200_003]), label="chunk")
    later = data.draw(st.lists(st.integers(1, len(archive) - 1), max_size=6), label="wanted")
    whole, points = _decode(archive, chunk=chunk, wanted_at=[0, *later])
    assert whole == expected
    assert points, "a restore point is wanted from the start: one must be offered"
    # Fractions rather than draws bounded by what the decode returned: the draws are then the
    # same whatever it offered, which Hypothesis's replay relies on.
    pick, later_again = data.draw(st.tuples(st.floats(0, 1), st.floats(0, 1)), label="fractions")
    point = points[min(int(pick * len(points)), len(points) - 1)]
    assert point.state.codec == "zstd"
    assert len(repr(point.state.fields)) < 64 * 1024
    again = point.position + 1 + int(later_again * (len(archive) - point.position - 1))
    rest, further = _decode(
        archive, chunk=chunk, start=point.position, state=point.state, wanted_at=[again]
    )
    assert expected[: point.output] + rest == expected
    if further:  # killed twice: the resumed decoder's own point resumes as well
        second = further[0]
        tail, _ = _decode(archive, chunk=65_536, start=second.position, state=second.state)
        assert expected[: point.output + second.output] + tail == expected


@pytest.mark.parametrize("name", NAMES)
def test_every_point_of_a_decode_that_stops_and_starts_following_resumes_exactly(
    name: str, archives: dict[str, bytes], outputs: dict[str, bytes]
) -> None:
    """Eight wishes over the archive: the scanner follows the repeat offsets from each wish to
    its point, and passes over the blocks between. Each point must carry the offsets the
    library has there, whatever the blocks passed over did (raw ones leave them, those with
    sequences move them, and one whose header was read just before a wish may do either)."""
    archive, expected = archives[name], outputs[name]
    wanted = [len(archive) * n // 8 for n in range(8)]
    for chunk in (65_536, 200_003):
        whole, points = _decode(archive, chunk=chunk, wanted_at=wanted)
        assert whole == expected
        for point in points:
            rest, _ = _decode(archive, chunk=chunk, start=point.position, state=point.state)
            assert expected[: point.output] + rest == expected, (chunk, point.position)


def test_a_point_is_offered_a_block_or_two_after_it_is_wanted(
    archives: dict[str, bytes], outputs: dict[str, bytes]
) -> None:
    archive = archives["level-19"]  # from stdin: an 8 MiB window, more than the whole output
    chunk = 65_536
    for wanted in (len(archive) // 5, len(archive) // 2):
        whole, points = _decode(archive, chunk=chunk, wanted_at=[wanted])
        assert whole == outputs["level-19"]
        assert len(points) == 1
        asked = -(-wanted // chunk) * chunk  # the first feed that starts past it asks
        # The tail was kept from the frame's start; the offsets are followed through the block
        # after the current one, and the library may hold back one more.
        assert points[0].output - _output_at(archive, asked) <= 5 * 128 * 1024
        rest, _ = _decode(archive, chunk=chunk, start=points[0].position, state=points[0].state)
        assert whole[: points[0].output] + rest == whole


def test_a_frame_of_raw_blocks_offers_a_point_wherever_one_is_wanted(
    archives: dict[str, bytes], outputs: dict[str, bytes]
) -> None:
    # With no sequence in the frame, the offsets it started with hold at every block end; a
    # decoder that learned them only from sequences offered its first point and no other.
    archive = archives["incompressible"]
    assert outputs["incompressible"] == INCOMPRESSIBLE
    chunk = 65_536
    wanted = [len(archive) // 4, len(archive) // 2, 3 * len(archive) // 4]
    _, points = _decode(archive, chunk=chunk, wanted_at=wanted)
    offered = [point.position for point in points]
    assert len(offered) == len(wanted), offered
    for want, position in zip(wanted, offered, strict=True):
        assert 0 <= position - want <= 3 * 128 * 1024, (want, position)
    for point in points:
        rest, _ = _decode(archive, chunk=chunk, start=point.position, state=point.state)
        assert INCOMPRESSIBLE[: point.output] + rest == INCOMPRESSIBLE


def _output_at(archive: bytes, position: int) -> int:
    out = bytearray()
    decoder = ZstdDecoder(out.extend)
    decoder.feed(archive[:position])
    return len(out)


def test_frame_ends_carry_no_mid_state(archives: dict[str, bytes]) -> None:
    out = bytearray()
    seen: list[tuple[int, MidState | None]] = []
    decoder = ZstdDecoder(out.extend, lambda offset: seen.append((offset, decoder.mid_state())))
    decoder.feed(archives["two-frames"])
    decoder.finish()
    assert [state for _, state in seen] == [None, None]
    assert seen[0][0] == len(archives["level-3"])


def _a_point(archive: bytes) -> Point:
    _, points = _decode(archive, chunk=65_536, wanted_at=[0])
    return points[0]


def _with(state: MidState, **changes: Any) -> MidState:
    history = changes.pop("history", state.history)
    return MidState(state.codec, {**state.fields, **changes}, history)


def _resume_all(archive: bytes, point: Point, state: MidState) -> bytes:
    rest, _ = _decode(archive, chunk=65_536, start=point.position, state=state)
    return rest


def test_the_content_checksum_covers_the_frame_before_the_point(
    archives: dict[str, bytes], outputs: dict[str, bytes]
) -> None:
    archive = archives["level-19"]
    point = _a_point(archive)
    hash_state = bytearray(base64.b64decode(point.state.fields["xxh64_state"]))
    assert hash_state, "zstd writes a content checksum by default"
    hash_state[0] ^= 1  # as if one byte before the point had decoded differently
    damaged = _with(point.state, xxh64_state=base64.b64encode(bytes(hash_state)).decode())
    with pytest.raises(CorruptArchive, match="checksum"):
        _resume_all(archive, point, damaged)
    assert outputs["level-19"][point.output :] == _resume_all(archive, point, point.state)


def test_a_wrong_history_fails_the_checksum_and_a_damaged_one_is_refused(
    archives: dict[str, bytes],
) -> None:
    archive = archives["level-9"]
    _, points = _decode(archive, chunk=65_536, wanted_at=[0, len(archive) // 2])
    point = points[-1]
    assert len(point.state.history) > 100_000
    inverted = bytes(255 - byte for byte in point.state.history)
    wrong = _with(
        point.state,
        history=inverted,
        history_xxh64=f"{xxhash.xxh64(inverted).intdigest():016x}",
    )
    with pytest.raises(CorruptArchive):
        _resume_all(archive, point, wrong)
    flipped = bytearray(point.state.history)
    flipped[len(flipped) // 2] ^= 0x40
    with pytest.raises(StateError, match="history"):
        _resume_all(archive, point, _with(point.state, history=bytes(flipped)))


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"frame_header": "not base64!"}, "frame_header"),
        ({"frame_header": base64.b64encode(b"\x28\xb5\x2f\xfd\x00").decode()}, "frame_header"),
        ({"frame_header": base64.b64encode(b"PK\x03\x04\x00\x00").decode()}, "frame_header"),
        ({"frames": -1}, "frames"),
        ({"blocks": 0}, "blocks"),
        ({"produced": "12"}, "produced"),
        ({"xxh64_state": base64.b64encode(b"short").decode()}, "xxh64_state"),
        ({"huffman": base64.b64encode(b"\x05\x01").decode()}, "huffman"),
        ({"offsets": base64.b64encode(b"\xff\xff\xff").decode()}, "offsets"),
        ({"literal_lengths": base64.b64encode(b"\x00").decode()}, "literal_lengths"),
        ({"match_lengths": 7}, "match_lengths"),
        ({"repeat_offsets": [1, 4]}, "repeat_offsets"),
        ({"repeat_offsets": [0, 4, 8]}, "repeat_offsets"),
        ({"repeat_offsets": [1, 4, 1 << 40]}, "repeat_offsets"),
        ({"repeat_offsets": [True, 4, 8]}, "repeat_offsets"),
        ({"history": b"too short"}, "history"),
        ({"history_xxh64": None}, "history"),
    ],
)
def test_a_malformed_field_is_a_state_error_that_names_it(
    archives: dict[str, bytes], changes: dict[str, Any], field: str
) -> None:
    point = _a_point(archives["level-3"])
    with pytest.raises(StateError, match=field):
        resume_zstd(_with(point.state, **changes), lambda view: None)
    missing = dict(point.state.fields)
    if field in missing:
        del missing[field]
        with pytest.raises(StateError, match=field):
            resume_zstd(MidState("zstd", missing, point.state.history), lambda view: None)


def test_a_state_of_another_codec_is_refused(archives: dict[str, bytes]) -> None:
    point = _a_point(archives["level-3"])
    with pytest.raises(StateError, match="gzip"):
        resume_zstd(MidState("gzip", point.state.fields, point.state.history), lambda v: None)


def test_a_resumed_frame_cut_short_is_corrupt(archives: dict[str, bytes]) -> None:
    archive = archives["level-3"]
    point = _a_point(archive)
    decoder = resume_zstd(point.state, lambda view: None)
    decoder.feed(archive[point.position : -10])
    with pytest.raises(CorruptArchive, match="ended inside frame 1"):
        decoder.finish()


def test_a_window_above_the_cap_resumes_at_frame_ends_and_says_so(
    archives: dict[str, bytes], caplog: pytest.LogCaptureFixture
) -> None:
    archive = archives["two-frames"]  # windows of 2 MiB (level 3) and 8 MiB (level 19)
    out = bytearray()
    offered: list[MidState | None] = []
    decoder = ZstdDecoder(
        out.extend,
        lambda offset: offered.append(decoder.mid_state()),
        lambda: True,
        history_cap=4 << 20,
    )
    with caplog.at_level(logging.INFO, logger="model-fetch"):
        for position in range(0, len(archive), 65_536):
            decoder.feed(archive[position : position + 65_536])
        decoder.finish()
    first_frame = [state for state in offered[: offered.index(None)]]
    assert first_frame and all(state is not None for state in first_frame)
    assert offered[offered.index(None) + 1 :] == [None], "no point inside the second frame"
    lines = [r.getMessage() for r in caplog.records if "frame boundaries" in r.getMessage()]
    assert len(lines) == 1, lines
    assert "8 MiB window" in lines[0] and "pzstd" in lines[0]


# --- the parts --------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=5000), cuts=st.lists(st.integers(0, 5000), max_size=5))
def test_xxh64_state_carries_over_and_matches_the_xxhash_digest(
    data: bytes, cuts: list[int]
) -> None:
    hasher = Xxh64()
    start = 0
    for cut in sorted(cuts):
        hasher.update(data[start:cut])
        hasher = Xxh64.from_state(hasher.state())
        start = max(start, cut)
    hasher.update(data[start:])
    assert hasher.digest() == xxhash.xxh64(data).intdigest()


def test_xxh64_state_is_the_struct_size() -> None:
    assert len(Xxh64().state()) == 88  # XXH64_state_t in xxHash 0.8
    with pytest.raises(ValueError, match="88 bytes"):
        Xxh64.from_state(bytes(87))


@st.composite
def _distributions(draw: st.DrawFn) -> tuple[int, fse.Distribution]:
    kind = draw(st.sampled_from([fse.LITERAL_LENGTHS, fse.OFFSETS, fse.MATCH_LENGTHS]))
    accuracy = draw(st.integers(5, fse.MAX_ACCURACY[kind]))
    symbols = draw(st.integers(2, fse.MAX_SYMBOL[kind] + 1))
    left = 1 << accuracy
    counts = []
    for index in range(symbols - 1):
        reserve = symbols - 1 - index  # the last symbol must get at least one
        count = draw(st.sampled_from([-1, 0, 1, draw(st.integers(1, max(1, left - reserve)))]))
        count = min(count, left - 1) if count > 0 else count
        counts.append(count)
        left -= abs(count)
        if left <= 1:
            break
    counts.append(left)
    return kind, fse.Distribution(accuracy, tuple(counts))


@settings(max_examples=200, deadline=None)
@given(_distributions())
def test_fse_descriptions_round_trip(case: tuple[int, fse.Distribution]) -> None:
    kind, distribution = case
    if sum(abs(c) for c in distribution.counts) != 1 << distribution.accuracy:
        return
    written = fse.write_description(distribution)
    parsed, end = fse.read_description(written + b"\xff" * 4, 0, kind)
    assert (parsed, end) == (distribution, len(written))
    table = fse.decoding_table(parsed)
    assert len(table.symbols) == 1 << distribution.accuracy


def test_the_dictionary_round_trips_through_the_library() -> None:
    content = _payload(3, 200_000)
    tables = tuple(predefined(kind) for kind in range(3))
    raw = dictionary(entropy_section(PLACEHOLDER_HUFFMAN, tables), (1, 4, 8), content)
    loaded = zstandard.ZstdCompressionDict(raw, dict_type=zstandard.DICT_TYPE_FULLDICT)
    assert loaded.dict_id() == int.from_bytes(raw[4:8], "little")
    frame = zstandard.ZstdCompressor(level=3, dict_data=loaded).compress(content[-50_000:] * 2)
    again = zstandard.ZstdDecompressor(dict_data=loaded).decompress(frame)
    assert again == content[-50_000:] * 2
    assert len(frame) < 10_000, "the copy of the dictionary's content was found"


def test_the_dictionary_pads_history_to_hold_every_repeat_offset() -> None:
    tables = tuple(predefined(kind) for kind in range(3))
    raw = dictionary(entropy_section(PLACEHOLDER_HUFFMAN, tables), (1, 4, 8), b"ab")
    assert raw.endswith(bytes(6) + b"ab")
    zstandard.ZstdDecompressor(
        dict_data=zstandard.ZstdCompressionDict(raw, dict_type=zstandard.DICT_TYPE_FULLDICT)
    ).decompress(zstandard.ZstdCompressor().compress(b"hello"))


def _probe_block(offset_value: int) -> bytes:
    """A last block of one sequence: literal "Q", then 8 bytes from repeat offset 1, 2 or 3.

    Its tables are RLE (literal length 1, offset code, match length 8), so the bit stream
    holds only the offset code's extra bit and the end marker.
    """
    offset_code, extra = {1: (0, 0), 2: (1, 0), 3: (1, 1)}[offset_value]
    stream = bytes([0x01 if offset_code == 0 else 0x02 | extra])
    content = bytes([0x08, ord("Q"), 0x01, 0x54, 1, offset_code, 5]) + stream
    return ((len(content) << 3) | (2 << 1) | 1).to_bytes(3, "little") + content


def _library_offsets_agree(archive: bytes, header: bytes, position: int, offsets: Any) -> None:
    """Append a probe block at position; what the library copies shows its repeat offsets."""
    for index, offset in enumerate(offsets):
        frame = header + archive[len(header) : position] + _probe_block(index + 1)
        out = zstandard.ZstdDecompressor().decompressobj().decompress(frame)
        decoded = bytearray(out[:-9])
        assert out[-9:-8] == b"Q"
        decoded += b"Q"
        for _ in range(8):
            decoded.append(decoded[-offset])
        assert out == bytes(decoded), f"repeat offset {index + 1} at {position}: not {offset}"


@pytest.mark.parametrize("name", ["level-3", "level-19"])
def test_repeat_offsets_followed_in_python_are_the_librarys(
    name: str, archives: dict[str, bytes]
) -> None:
    archive = archives[name]  # from stdin: no content size, so a probe may end the frame
    rng = random.Random(name)
    scanner = FrameScanner()
    scanner.watch = True
    checked = 0
    for event, offset in scanner.scan(memoryview(archive)):
        if event is Event.HEADER:
            scanner.start_decoding()  # known offsets from the frame's start
        elif event is Event.BLOCK:
            if not scanner.decoding:
                scanner.start_decoding()  # unknown offsets, until a block pushes three through
                continue
            if not known(scanner.offsets):
                continue
            assert scanner.header is not None
            _library_offsets_agree(archive, scanner.header.for_library(), offset, scanner.offsets)
            checked += 1
            if rng.random() < 0.2:
                scanner.stop_decoding()
    assert checked >= 10


# --- end to end: model-fetch killed inside the one frame of a tar -I zstd archive ----------


def _checkpoint_body(out: Path) -> dict[str, Any] | None:
    return read_checkpoint(out / WORK_DIR_NAME / CHECKPOINT_NAME)


def _run_until_mid_frame_checkpoint(command: list[str], out: Path, after: int) -> dict[str, Any]:
    """Run command until a checkpoint inside the frame lies past byte after; kill it there."""
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            body = _checkpoint_body(out)
            restore = body and body["restore"]
            if restore and restore.get("decoder") and restore["position"] > after:
                break
            assert process.poll() is None, process.communicate()[1]
            time.sleep(0.05)
        else:
            raise AssertionError("no checkpoint inside the frame was written")
    finally:
        process.send_signal(signal.SIGKILL)
        process.communicate()
    body = _checkpoint_body(out)  # the last one on disk
    assert body is not None and body["restore"]["decoder"]["codec"] == "zstd"
    return body


def test_a_fetch_killed_twice_inside_one_frame_resumes_each_time_where_it_was(
    tmp_path: Path, origin: Origin
) -> None:
    tree = make_tree(seed=5, n_files=12, total_bytes=6_000_000)
    archive = subprocess.run(
        ["tar", "-I", "zstd", "-cf", "-", "-C", str(write_tree(tree, tmp_path / "src")), "."],
        capture_output=True,
        check=True,
        timeout=120,
    ).stdout
    origin.add("/m.tar.zst", archive)
    out = tmp_path / "out"
    command = [
        sys.executable, "-m", "fetcher", origin.url("/m.tar.zst"), "-o", str(out),
        "--sha256", hashlib.sha256(archive).hexdigest(), "--connections", "2",
        "--chunk-size", "256K", "--checkpoint-interval", "0.1", "--retry-wait", "0.01",
        "--timeout", "5",
    ]  # fmt: skip

    first = _run_until_mid_frame_checkpoint([*command, "--max-bandwidth", "2M"], out, 0)
    second = _run_until_mid_frame_checkpoint(
        [*command, "--max-bandwidth", "2M"], out, first["restore"]["position"]
    )
    assert 0 < first["restore"]["position"] < second["restore"]["position"] < len(archive)

    origin.clear_log()
    final = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert final.returncode == 0, final.stderr
    said = re.search(r"re-fetching (\d+) bytes from byte (\d+)", final.stderr)
    assert said, final.stderr
    assert int(said.group(2)) >= second["restore"]["position"]
    served = sum(r.body_bytes for r in origin.requests if r.range != "bytes=0-0")
    assert served == int(said.group(1)) < len(archive) - second["restore"]["position"] + 1
    snapshot = fetched_tree(out)
    assert snapshot == tree_snapshot(tmp_path / "src")
