"""Which zstd streams are decoded on several threads: those whose frames announce a size."""

from __future__ import annotations

import random
import subprocess
from pathlib import Path

import pytest
import zstandard

from fetcher.cpus import available_cpus
from fetcher.formats import Compression
from fetcher.stages.decode import AutoDecoder, ZstdDecoder
from fetcher.stages.zstd_choice import PARALLEL_FRAME_LIMIT, frames_are_bounded
from fetcher.stages.zstd_parallel import ParallelZstdDecoder

DATA = random.Random(3).randbytes(3 << 20)


def _cli(*args: str, data: bytes = DATA) -> bytes:
    return subprocess.run(args, input=data, capture_output=True, check=True).stdout


def _from_file(tmp_path: Path, *args: str) -> bytes:
    source = tmp_path / "model.bin"
    source.write_bytes(DATA)
    subprocess.run([*args, str(source), "-o", str(tmp_path / "out.zst")], check=True)
    return (tmp_path / "out.zst").read_bytes()


def test_frames_that_announce_a_bounded_size_are_told_apart(tmp_path: Path) -> None:
    assert frames_are_bounded(_cli("pzstd", "-q", "-c", "-p", "2"))  # size frames
    assert frames_are_bounded(_from_file(tmp_path, "zstd", "-q", "-f"))  # content size
    assert frames_are_bounded(zstandard.ZstdCompressor().compress(DATA))
    assert not frames_are_bounded(_cli("zstd", "-q", "-c"))  # piped: no size
    assert not frames_are_bounded(_cli("zstd", "-q", "-c", "-T0", "--long=27"))
    large = zstandard.ZstdCompressor().compressobj(size=PARALLEL_FRAME_LIMIT + 1)
    assert not frames_are_bounded(large.compress(b"x" * 64))
    assert not frames_are_bounded(b"\x28\xb5\x2f\xfd")  # too short to tell
    assert not frames_are_bounded(b"not zstd at all, not even close")


@pytest.mark.parametrize("bounded", [True, False], ids=["pzstd", "piped zstd"])
def test_the_decoder_follows_the_frames_and_the_cpu_quota(bounded: bool) -> None:
    archive = _cli("pzstd", "-q", "-c", "-p", "2") if bounded else _cli("zstd", "-q", "-c")
    out = bytearray()
    decoder = AutoDecoder(Compression.ZSTD, lambda compression: out.extend)
    decoder.feed(archive)
    decoder.finish()
    assert bytes(out) == DATA
    inner = decoder._inner
    parallel = bounded and available_cpus() > 1
    assert isinstance(inner, ParallelZstdDecoder if parallel else ZstdDecoder)
