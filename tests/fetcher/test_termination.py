"""The termination message: what `kubectl describe pod` shows of a fetch, success or failure."""

from __future__ import annotations

import json
from pathlib import Path

from fetcher.termination import LIMIT
from tests.fetcher.conftest import FAST_RETRIES, run_fetch, sha256
from tests.support.archives import py_archive
from tests.support.origin import Faults, Origin

TREE = {"weights/a.bin": b"a" * 300_000, "config.json": b"{}"}
ARCHIVE = py_archive(TREE, "zst")


def _message(path: Path) -> dict[str, object]:
    loaded: dict[str, object] = json.loads(path.read_text())
    return loaded


def test_success_writes_the_result(origin: Origin, tmp_path: Path) -> None:
    origin.add("/m.tar.zst", ARCHIVE)
    log = tmp_path / "termination-log"
    log.touch()  # the kubelet creates it; the fetcher only writes into an existing file
    code = run_fetch(
        origin.url("/m.tar.zst"), "--sha256", sha256(ARCHIVE), "-o", tmp_path / "out",
        "--termination-log", log, *FAST_RETRIES,
    )  # fmt: skip
    assert code == 0
    result = _message(log)
    assert result["status"] == "ok"
    assert result["sha256"] == sha256(ARCHIVE)
    assert result["sha256_verified"] is True
    assert result["bytes"] == len(ARCHIVE) == result["fetched_bytes"]
    assert result["refetched_bytes"] == 0
    assert result["files"] == 2
    assert result["extracted_bytes"] == 300_002
    assert result["mirror"] == 0
    assert result["origin"] == origin.url("/m.tar.zst")
    assert result["format"] == "tar.zst"
    assert isinstance(result["seconds"], float)


def test_a_mirror_that_served_is_named(origin: Origin, tmp_path: Path) -> None:
    origin.add("/m.tar.zst", ARCHIVE, faults=Faults(not_found=True))
    log = tmp_path / "termination-log"
    log.touch()
    with Origin() as mirror:
        mirror.add("/m.tar.zst", ARCHIVE)
        code = run_fetch(
            origin.url("/m.tar.zst"), "--mirror", mirror.url("/m.tar.zst"), "-o", tmp_path / "o",
            "--termination-log", log, *FAST_RETRIES,
        )  # fmt: skip
    assert code == 0
    assert _message(log)["mirror"] == 1


def test_a_checksum_mismatch_writes_the_last_line_and_exit_3(
    origin: Origin, tmp_path: Path
) -> None:
    origin.add("/m.tar.zst", ARCHIVE)
    log = tmp_path / "termination-log"
    log.touch()
    code = run_fetch(
        origin.url("/m.tar.zst"), "--sha256", "0" * 64, "-o", tmp_path / "out",
        "--termination-log", log, *FAST_RETRIES,
    )  # fmt: skip
    assert code == 3
    result = _message(log)
    assert result["status"] == "error"
    assert result["exit_code"] == 3
    assert str(result["message"]).startswith("sha256 mismatch")


def test_an_unreachable_source_writes_exit_5_within_the_kubelets_limit(
    origin: Origin, tmp_path: Path
) -> None:
    log = tmp_path / "termination-log"
    log.touch()
    # Many failing mirrors make a long last line: it is cut to fit, keeping its end (the hint).
    mirrors = [arg for n in range(120) for arg in ("--mirror", origin.url(f"/gone-{n:04d}"))]
    code = run_fetch(
        origin.url("/gone"), *mirrors, "-o", tmp_path / "out", "--retries", "0",
        "--termination-log", log, *FAST_RETRIES,
    )  # fmt: skip
    assert code == 5
    raw = log.read_bytes()
    assert len(raw) <= LIMIT
    result = json.loads(raw)
    assert result["exit_code"] == 5
    assert str(result["message"]).endswith("add a --mirror")


def test_nothing_is_written_where_there_is_no_termination_log(
    origin: Origin, tmp_path: Path
) -> None:
    origin.add("/m.tar.zst", ARCHIVE)
    log = tmp_path / "absent" / "termination-log"
    code = run_fetch(
        origin.url("/m.tar.zst"), "-o", tmp_path / "out", "--termination-log", log, *FAST_RETRIES
    )
    assert code == 0
    assert not log.exists()
    assert not log.parent.exists()
