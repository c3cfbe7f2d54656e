"""lz4 frames, alone and under tar: made by the real lz4 tool and by lz4.frame, checksums held."""

from __future__ import annotations

import random
import subprocess
from pathlib import Path

import lz4.frame
import pytest

from fetcher.errors import CorruptArchive
from fetcher.formats import Compression, detect_compression
from fetcher.stages.decode import make_decoder
from fetcher.stages.shapes import OUTPUT_CHUNK
from fetcher.state.marker import MARKER_NAME
from tests.fetcher.conftest import FAST_RETRIES, run_fetch, sha256
from tests.support.archives import (
    File,
    Symlink,
    Tree,
    cli_archive,
    cli_compress,
    fetched_tree,
    py_archive,
    tree_snapshot,
    write_tree,
)
from tests.support.origin import Origin

PAYLOAD_A = random.Random(4).randbytes(300_000)
PAYLOAD_B = b"lz4 block " * 200_000
PAYLOAD = PAYLOAD_A + PAYLOAD_B

TREE: Tree = {
    "config.json": b'{"layers": 4}',
    "weights/a.bin": PAYLOAD_A,
    "weights/b.bin": PAYLOAD_B,
    "weights/latest": Symlink("b.bin"),
    "run.sh": File(b"#!/bin/sh\n", 0o755),
}


def _frame(data: bytes, **flags: object) -> bytes:
    return bytes(lz4.frame.compress(data, **flags))


def _tool(data: bytes, *flags: str) -> bytes:
    """The real lz4 tool with flags (-BX: a checksum after every block)."""
    return subprocess.run(
        ["lz4", "-q", "-c", *flags], input=data, capture_output=True, check=True
    ).stdout


def _streams() -> dict[str, bytes]:
    return {
        "tool": cli_compress(PAYLOAD, "lz4"),
        "tool-two-frames": cli_compress(PAYLOAD_A, "lz4") + cli_compress(PAYLOAD_B, "lz4"),
        "tool-block-checksums": _tool(PAYLOAD, "--content-size", "-BX", "-B4"),
        "python-checksums": _frame(PAYLOAD, block_checksum=True, content_checksum=True),
        "python-no-checksums": _frame(PAYLOAD, content_checksum=False),
        "python-64k-blocks": _frame(PAYLOAD, block_size=lz4.frame.BLOCKSIZE_MAX64KB),
        "python-three-frames": _frame(PAYLOAD_A) + _frame(b"") + _frame(PAYLOAD_B),
    }


def _decode(data: bytes, step: int) -> tuple[bytes, int, list[int]]:
    output = bytearray()
    largest = 0
    boundaries: list[int] = []
    fed = 0

    def emit(piece: memoryview) -> None:
        nonlocal largest
        output.extend(piece)
        largest = max(largest, len(piece))

    decoder = make_decoder(Compression.LZ4, emit, lambda offset: boundaries.append(fed + offset))
    for start in range(0, len(data), step):
        fed = start
        decoder.feed(data[start : start + step])
    decoder.finish()
    assert decoder.at_boundary
    return bytes(output), largest, boundaries


@pytest.mark.parametrize("step", [1 << 20, 65_536, 4099, 97])
def test_every_stream_decodes_the_same_for_every_chunking(step: int) -> None:
    for name, data in _streams().items():
        decoded, largest, _ = _decode(data, step)
        assert decoded == PAYLOAD, name
        assert largest <= OUTPUT_CHUNK, name
        assert detect_compression(data[:6]) is Compression.LZ4, name


def test_frame_ends_are_the_boundaries_reported() -> None:
    first, second = cli_compress(PAYLOAD_A, "lz4"), cli_compress(PAYLOAD_B, "lz4")
    _, _, boundaries = _decode(first + second, 10_000)
    assert boundaries == [len(first), len(first) + len(second)]


@pytest.mark.parametrize("flags", [{"block_checksum": True}, {"content_checksum": True}])
def test_a_damaged_block_fails_its_checksum(flags: dict[str, bool]) -> None:
    # Stored (incompressible) blocks decode whatever their bytes: only a checksum tells.
    data = bytearray(_frame(PAYLOAD_A, store_size=False, **flags))
    data[len(data) // 2] ^= 0x40
    decoder = make_decoder(Compression.LZ4, lambda piece: None)
    with pytest.raises(CorruptArchive, match=r"(?i)checksum_invalid"):
        decoder.feed(bytes(data))
        decoder.finish()


@pytest.mark.parametrize("cut", [1, 4, 1000])
def test_a_stream_cut_short_is_corrupt_not_complete(cut: int) -> None:
    data = cli_compress(PAYLOAD, "lz4")
    decoder = make_decoder(Compression.LZ4, lambda piece: None)
    decoder.feed(data[:-cut])
    assert not decoder.at_boundary
    with pytest.raises(CorruptArchive, match="ended inside frame 1"):
        decoder.finish()


def _expected(tmp_path: Path) -> dict[str, object]:
    return dict(tree_snapshot(write_tree(TREE, tmp_path / "expected")))


@pytest.mark.parametrize("made_by", ["tool", "python-three-frames"])
def test_a_tar_lz4_extracts_byte_for_byte(origin: Origin, tmp_path: Path, made_by: str) -> None:
    if made_by == "tool":
        archive = cli_archive(TREE, "lz4", tmp_path / "work")
    else:
        archive = py_archive(TREE, "lz4", parts=3)
    origin.add("/model.tar.lz4", archive)
    out = tmp_path / "out"
    code = run_fetch(origin.url("/model.tar.lz4"), "--sha256", sha256(archive), "-o", out,
                     *FAST_RETRIES)  # fmt: skip
    assert code == 0
    assert fetched_tree(out) == _expected(tmp_path)


@pytest.mark.parametrize("name", ["/weights.bin.lz4", "/weights"])
def test_a_single_lz4_file_is_stored_decompressed(
    origin: Origin, tmp_path: Path, name: str
) -> None:
    body = cli_compress(PAYLOAD, "lz4")
    origin.add(name, body)
    out = tmp_path / "out"
    assert run_fetch(origin.url(name), "-o", out, *FAST_RETRIES) == 0
    stored = "weights.bin" if name.endswith(".lz4") else "weights"
    assert (out / stored).read_bytes() == PAYLOAD  # detected by its magic when unnamed


def test_a_truncated_tar_lz4_is_exit_4_in_one_line(
    origin: Origin, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archive = cli_archive(TREE, "lz4", tmp_path / "work")
    origin.add("/model.tar.lz4", archive[: len(archive) - 100])
    out = tmp_path / "out"
    assert run_fetch(origin.url("/model.tar.lz4"), "-o", out, *FAST_RETRIES) == 4
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("model-fetch: error: lz4 stream ended inside")
    assert not (out / MARKER_NAME).exists()
