"""Zeros become holes however the decoder cuts its output; other bytes land as they are."""

from __future__ import annotations

import errno
import itertools
import os
import random
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fetcher.stages.tree import SafeTree

SIZE = 3 << 20


def _extract(root: Path, content: bytes, cuts: list[int]) -> Path:
    tree = SafeTree(root, max_bytes=len(content))
    try:
        tree.begin_file("model.bin", 0o644, len(content), 0)
        view = memoryview(content)
        edges = [0, *sorted({c for c in cuts if 0 < c < len(content)}), len(content)]
        for start, end in itertools.pairwise(edges):
            tree.write(view[start:end])
        tree.end_file(None)
    finally:
        tree.close()
    return root / "model.bin"


def _has_data(path: Path) -> bool:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.lseek(fd, 0, os.SEEK_DATA)
    except OSError as error:
        assert error.errno == errno.ENXIO
        return False
    finally:
        os.close(fd)
    return True


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(cuts=st.lists(st.integers(1, SIZE - 1), max_size=12))
def test_a_file_of_zeros_cut_anywhere_takes_no_disk(tmp_path: Path, cuts: list[int]) -> None:
    root = Path(tempfile.mkdtemp(dir=tmp_path))  # one per example: tmp_path is shared
    path = _extract(root, bytes(SIZE), cuts)
    assert path.stat().st_size == SIZE
    assert not _has_data(path), f"zeros written as data for cuts {sorted(cuts)}"


@pytest.mark.parametrize("cuts", [[], [1], [100, 4095, 4097], [(1 << 20) + 100, (2 << 20) - 1]])
def test_zeros_between_data_keep_the_bytes_exact(tmp_path: Path, cuts: list[int]) -> None:
    rng = random.Random(7)
    content = bytes(5000) + rng.randbytes(3000) + bytes(1 << 20) + b"\x01" + bytes(100)
    path = _extract(tmp_path, content, cuts)
    assert path.read_bytes() == content
