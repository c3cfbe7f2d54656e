"""Answers without a length (Transfer-Encoding: chunked) that break: retried as any other
break, continued where the validators (or the digest) show the file is the same one."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fetcher.conftest import run_fetch, sha256
from tests.support.archives import fetched_tree, make_tree, py_archive, tree_snapshot, write_tree
from tests.support.origin import Faults, Origin

TREE = make_tree(seed=31, n_files=6, total_bytes=1_500_000)
ARCHIVE = py_archive(TREE, "zst")
RETRIES = ["--retries", "3", "--retry-wait", "0.01"]


@pytest.mark.parametrize("validators", ["etag", "last-modified"])
def test_a_chunked_answer_that_breaks_is_continued_under_its_validator(
    origin: Origin, tmp_path: Path, capsys: pytest.CaptureFixture[str], validators: str
) -> None:
    labels = (
        {"last_modified": None}
        if validators == "etag"
        else {"etag": None, "last_modified": "Mon, 01 Jan 2024 00:00:00 GMT"}
    )
    faults = Faults(chunked=True, drop_after=len(ARCHIVE) // 3, drop_times=2)
    origin.add("/m.tar.zst", ARCHIVE, faults=faults, **labels)  # type: ignore[arg-type]
    out = tmp_path / "out"
    assert run_fetch(origin.url("/m.tar.zst"), "-o", out, *RETRIES) == 0
    err = capsys.readouterr().err
    assert "retry 2/3" in err
    assert "the source changed" not in err
    assert fetched_tree(out) == tree_snapshot(write_tree(TREE, tmp_path / "want"))
    continued = [r.range for r in origin.requests if r.range not in (None, "bytes=0-0")]
    assert len(continued) == 2, continued  # each from where the broken answer stopped
    assert all(not r.startswith("bytes=0-") for r in continued if r), continued


def test_a_chunked_answer_that_always_breaks_runs_out_of_retries_not_out_of_changes(
    origin: Origin, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Each answer breaks a tenth of the file in: more breaks than retries before the end.
    faults = Faults(chunked=True, drop_after=len(ARCHIVE) // 10, drop_times=None)
    origin.add("/m.tar.zst", ARCHIVE, faults=faults)
    assert run_fetch(origin.url("/m.tar.zst"), "-o", tmp_path / "out", *RETRIES) == 5
    err = capsys.readouterr().err
    assert "all origins failed after their retries" in err.strip().splitlines()[-1]
    assert "retry 3/3" in err
    assert "changed" not in err


def test_a_chunked_answer_without_validators_is_continued_when_a_digest_will_tell(
    origin: Origin, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    faults = Faults(chunked=True, drop_after=len(ARCHIVE) // 2)
    origin.add("/m.tar.zst", ARCHIVE, faults=faults, etag=None, last_modified=None)
    out = tmp_path / "out"
    digest = sha256(ARCHIVE)
    assert run_fetch(origin.url("/m.tar.zst"), "--sha256", digest, "-o", out, *RETRIES) == 0
    err = capsys.readouterr().err
    assert "the source changed" not in err
    assert fetched_tree(out) == tree_snapshot(write_tree(TREE, tmp_path / "want"))
