"""Resuming after a stop: SIGTERM's checkpoint, and checkpoints the next run cannot use.

kill -9 at exact points of the transfer is in test_kill.py.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from fetcher.commit import WORK_DIR_NAME
from fetcher.state.checkpoint import CHECKPOINT_NAME
from tests.fetcher.conftest import sha256
from tests.support.archives import (
    Tree,
    fetched_tree,
    make_tree,
    py_archive,
    tree_snapshot,
    write_tree,
)
from tests.support.events import restore_position, wait_until
from tests.support.origin import Faults, Origin

RATE = 2_000_000  # bytes/s for the single-purpose tests below
BUFFER = 2 << 20


@dataclass(frozen=True)
class Case:
    name: str
    archive: bytes
    expected: Tree | bytes


def _cases() -> list[Case]:
    tree = make_tree(seed=11, n_files=40, total_bytes=9_000_000)
    raw = random.Random(5).randbytes(8_000_000)
    return [
        Case("raw file", raw, raw),
        Case("tar", py_archive(tree, "none"), tree),
        Case("multi-frame tar.zst", py_archive(tree, "zst", parts=64), tree),
    ]


CASES = _cases()


def _command(url: str, out: Path, digest: str, extra: list[str]) -> list[str]:
    return [
        sys.executable, "-m", "fetcher", url, "-o", str(out), "--sha256", digest,
        "--max-disk-buffer", str(BUFFER),
        "--checkpoint-interval", "0.1", "--retry-wait", "0.05", *extra,
    ]  # fmt: skip


def _stop_midway(command: list[str], origin: Origin, path: str, at: int) -> str:
    """Run the fetcher until the origin has sent `at` bytes, then SIGTERM it."""
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    while origin.bytes_sent(path) < at and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=20)
    assert process.returncode == 128 + signal.SIGTERM, err
    return err


@pytest.mark.parametrize("connections", ["1", "4"])
def test_sigterm_flushes_a_checkpoint_that_the_next_run_resumes(
    tmp_path: Path, connections: str
) -> None:
    case = CASES[2]  # multi-frame tar.zst
    out = tmp_path / "out"
    with Origin() as origin:
        origin.add("/model", case.archive, faults=Faults(drip_bytes_per_s=1_000_000))
        command = _command(origin.url("/model"), out, sha256(case.archive), [])
        command += ["--connections", connections]
        _stop_midway(command, origin, "/model", len(case.archive) // 2)
        origin.set_faults("/model", None)
        sent_before = origin.bytes_sent("/model")
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
        resent = origin.bytes_sent("/model") - sent_before
    assert result.returncode == 0, result.stderr
    resumed_at = int(result.stderr.split("resuming from a checkpoint: byte ")[1].split()[0])
    assert resumed_at > 0
    assert resent <= len(case.archive) - resumed_at + BUFFER


def test_a_source_changed_since_the_checkpoint_starts_over_saying_why(tmp_path: Path) -> None:
    old, new = CASES[1].archive, py_archive({"weights": b"new model " * 100_000}, "none")
    out = tmp_path / "out"
    with Origin() as origin:
        origin.add("/model", old, faults=Faults(drip_bytes_per_s=1_000_000))
        command = _command(origin.url("/model"), out, sha256(new), ["--connections", "4"])
        # The same command line throughout: only what the origin serves changes.
        command[command.index("--sha256") : command.index("--sha256") + 2] = []
        _stop_midway(command, origin, "/model", len(old) // 3)
        origin.add("/model", new)
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "the source changed since the checkpoint (the length changed" in result.stderr
    assert (out / "weights").read_bytes() == b"new model " * 100_000


def test_an_unreadable_checkpoint_starts_over_saying_why(tmp_path: Path) -> None:
    case = CASES[1]
    out = tmp_path / "out"
    with Origin() as origin:
        origin.add("/model", case.archive, faults=Faults(drip_bytes_per_s=1_000_000))
        command = _command(origin.url("/model"), out, sha256(case.archive), [])
        _stop_midway(command, origin, "/model", len(case.archive) // 3)
        (out / ".model-fetch" / "checkpoint.json").write_text('{"version": 1, "request": ')
        origin.set_faults("/model", None)
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "the checkpoint is unreadable" in result.stderr
    assert "removing the unfinished tree and starting from byte 0" in result.stderr


SAME_LENGTH_TREE = {f"w/{n}.bin": random.Random(n).randbytes(1_000_000) for n in range(3)}


@pytest.mark.parametrize("change", ["length", "etag"])
def test_a_mirror_answering_the_resume_with_another_file_starts_over(
    tmp_path: Path, change: str
) -> None:
    """The source is gone on resume and the mirror, which answers instead, serves a new file."""
    old = py_archive(SAME_LENGTH_TREE, "none")
    new_tree = (
        {"weights": b"new model " * 100_000}
        if change == "length"
        else {name: data[::-1] for name, data in SAME_LENGTH_TREE.items()}
    )
    new = py_archive(new_tree, "none")
    assert (len(new) == len(old)) == (change == "etag")
    out = tmp_path / "out"
    with Origin() as source, Origin() as mirror:
        date = "Mon, 01 Jan 2024 00:00:00 GMT"
        for served in (source, mirror):
            served.add("/model", old, last_modified=date, faults=Faults(drip_bytes_per_s=500_000))
        extra = ["--connections", "4", "--mirror", mirror.url("/model")]
        command = _command(source.url("/model"), out, "", extra)
        command[command.index("--sha256") : command.index("--sha256") + 2] = []
        _stop_midway(command, source, "/model", len(old) // 4)
        source.add("/model", old, faults=Faults(not_found=True))
        mirror.add("/model", new)
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
        probes = [r.status for r in mirror.requests if r.range == "bytes=0-0"]
    assert result.returncode == 0, result.stderr
    assert probes[-1] == 206  # the mirror answered the resumed run's probe
    why = "the length changed" if change == "length" else "the ETag changed"
    assert f"the source changed since the checkpoint ({why}" in result.stderr
    snapshot = fetched_tree(out)
    assert snapshot == tree_snapshot(write_tree(new_tree, tmp_path / "expected"))


def test_a_part_file_lost_since_the_checkpoint_is_fetched_again(tmp_path: Path) -> None:
    """Holes are never data: ranges the checkpoint says were held, in a part file now empty."""
    raw = CASES[0].archive
    out = tmp_path / "out"
    with Origin() as origin:
        origin.add("/model", raw, faults=Faults(drip_bytes_per_s=1_000_000))
        # No --sha256: zeros read as data would go unnoticed.
        command = _command(origin.url("/model"), out, "", ["--connections", "4"])
        command[command.index("--sha256") : command.index("--sha256") + 2] = []
        command += ["--format", "none"]
        _stop_midway(command, origin, "/model", len(raw) // 2)
        checkpoint = json.loads((out / ".model-fetch" / "checkpoint.json").read_text())
        assert checkpoint["body"]["window"]["ranges"], "nothing was held past the checkpoint"
        (out / ".model-fetch" / "download.part").unlink()
        origin.set_faults("/model", None)
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "download.part was recreated" in result.stderr
    assert (out / "model").read_bytes() == raw


def test_bytes_that_came_before_a_stall_are_decoded_and_checkpointed_during_it(
    tmp_path: Path,
) -> None:
    """One stream hands its reads on in batches of up to 1 MiB. A batch does not wait on an
    origin that stalled: what came before the stall is decoded and made durable while the
    connection hangs, so a kill then loses none of it."""
    raw = random.Random(9).randbytes(3_000_000)
    stall_at = 2_600_000  # two whole batches and part of a third
    out = tmp_path / "out"
    checkpoint = out / WORK_DIR_NAME / CHECKPOINT_NAME
    with Origin() as origin:
        origin.add("/raw", raw, faults=Faults(stall_after=stall_at, stall_times=1))
        command = [
            sys.executable, "-m", "fetcher", origin.url("/raw"), "-o", str(out),
            "--format", "none", "--connections", "1", "--checkpoint-interval", "0",
            "--timeout", "120",
        ]  # fmt: skip
        process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
        try:
            wait_until(
                lambda: restore_position(checkpoint) == stall_at,
                what=f"a restore point at {stall_at}",
            )
            assert origin.bytes_sent("/raw") == stall_at  # still stalled: nothing more came
        finally:
            process.kill()
            process.communicate()
