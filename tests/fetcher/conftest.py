from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from fetcher.cli import main
from tests.support.archives import make_tree
from tests.support.origin import Origin


@pytest.fixture
def origin() -> Iterator[Origin]:
    with Origin() as server:
        yield server


@pytest.fixture(scope="session")
def model_tree() -> dict[str, object]:
    return dict(make_tree(seed=7, n_files=24, total_bytes=3_000_000))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# One connection: these tests pin down the request sequence of the streaming path.
FAST_RETRIES = ["--retry-wait", "0.01", "--timeout", "5", "--connections", "1"]


def run_fetch(*args: str | Path) -> int:
    """The command line, in-process: the same argument parsing, exit codes and output."""
    return main([str(arg) for arg in args])
