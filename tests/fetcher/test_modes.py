"""Who may read the extracted model: the app containers rarely run as the fetcher's user."""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fetcher.conftest import FAST_RETRIES, run_fetch
from tests.support.origin import Origin


@pytest.fixture
def strict_umask() -> Iterator[None]:
    """A container runtime's umask of 077 must not decide what the app may read."""
    previous = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(previous)


def test_directories_the_archive_does_not_list_are_traversable_by_others(
    tmp_path: Path, origin: Origin, strict_umask: None
) -> None:
    source = tmp_path / "source"
    (source / "weights" / "shard").mkdir(parents=True)
    (source / "weights" / "shard" / "model.safetensors").write_bytes(b"w" * 1000)
    (source / "config.json").write_bytes(b"{}")
    for path in (source / "weights" / "shard" / "model.safetensors", source / "config.json"):
        path.chmod(0o644)
    # Only the files, as `tar -cf m.tar weights/shard/model.safetensors config.json` writes them.
    archive = subprocess.run(
        ["tar", "-cf", "-", "--no-recursion", "-C", str(source),
         "weights/shard/model.safetensors", "config.json"],
        check=True, capture_output=True,
    ).stdout  # fmt: skip
    origin.add("/m.tar", archive)
    out = tmp_path / "out"
    assert run_fetch(origin.url("/m.tar"), "-o", out, *FAST_RETRIES) == 0

    for directory in (out / "weights", out / "weights" / "shard"):
        mode = stat.S_IMODE(directory.stat().st_mode)
        assert mode == 0o755, f"{directory.relative_to(out)} is {mode:o}"
    assert stat.S_IMODE((out / "weights/shard/model.safetensors").stat().st_mode) == 0o644


def test_listed_directories_keep_the_archive_mode(
    tmp_path: Path, origin: Origin, strict_umask: None
) -> None:
    source = tmp_path / "source"
    (source / "private").mkdir(parents=True)
    (source / "private" / "notes").write_bytes(b"n")
    (source / "private" / "notes").chmod(0o600)
    (source / "private").chmod(0o750)
    archive = subprocess.run(
        ["tar", "-cf", "-", "-C", str(source), "private"], check=True, capture_output=True
    ).stdout
    origin.add("/m.tar", archive)
    out = tmp_path / "out"
    assert run_fetch(origin.url("/m.tar"), "-o", out, *FAST_RETRIES) == 0
    assert stat.S_IMODE((out / "private").stat().st_mode) == 0o750
    assert stat.S_IMODE((out / "private" / "notes").stat().st_mode) == 0o600
