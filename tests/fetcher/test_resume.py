"""kill -9 at seeded random moments, restart until done: the result is as if never killed."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fetcher.conftest import sha256
from tests.support.archives import Tree, make_tree, py_archive, tree_snapshot, write_tree
from tests.support.origin import Faults, Origin

KILLS = 20
CLEAN_RUN_SECONDS = 6.0  # each archive is paced to take this long uninterrupted
RATE = 2_000_000  # bytes/s for the single-purpose tests below
BUFFER = 2 << 20


@dataclass(frozen=True)
class Case:
    name: str
    archive: bytes
    expected: Tree | bytes
    resumable: bool  # False: only byte 0 is a restart point (one zstd frame)


def _cases() -> list[Case]:
    tree = make_tree(seed=11, n_files=40, total_bytes=9_000_000)
    raw = random.Random(5).randbytes(8_000_000)
    return [
        Case("raw file", raw, raw, True),
        Case("tar", py_archive(tree, "none"), tree, True),
        Case("multi-frame tar.zst", py_archive(tree, "zst", parts=16), tree, True),
        Case("multi-member tar.gz", py_archive(tree, "gz", parts=16), tree, True),
        Case("single-frame tar.zst", py_archive(tree, "zst"), tree, False),
    ]


CASES = _cases()


def _command(url: str, out: Path, digest: str, extra: list[str]) -> list[str]:
    return [
        sys.executable, "-m", "fetcher", url, "-o", str(out), "--sha256", digest,
        "--max-disk-buffer", str(BUFFER),
        "--checkpoint-interval", "0.1", "--retry-wait", "0.05", *extra,
    ]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
@pytest.mark.parametrize("connections", ["1", "4"])
def test_sigkill_at_random_moments_then_restart_until_done(
    tmp_path: Path, case: Case, connections: str, capsys: pytest.CaptureFixture[str]
) -> None:
    chooser = random.Random(f"{case.name}/{connections}")
    digest = sha256(case.archive)
    out = tmp_path / "out"
    extra = ["--connections", connections]
    if case.name == "raw file":
        extra += ["--format", "none"]
    kills = 0
    logs: list[str] = []
    with Origin() as origin:
        # The origin paces itself: with a client-side cap the kernel's socket buffers would
        # fill with megabytes that each kill throws away, hiding what the fetcher re-requests.
        # Paced per response, so the total stays the same whatever the connection count, and
        # slow enough that all twenty kills land before the fetch could finish.
        pace = len(case.archive) / CLEAN_RUN_SECONDS / int(connections)
        origin.add("/model", case.archive, faults=Faults(drip_bytes_per_s=pace))
        command = _command(origin.url("/model"), out, digest, extra)
        while kills < KILLS:
            # Parallel runs change --chunk-size between attempts: the checkpoint records byte
            # ranges, so a different grid still reuses what the part file holds.
            chunk = ["--chunk-size", chooser.choice(["192K", "256K", "320K"])]
            process = subprocess.Popen(command + chunk, stderr=subprocess.PIPE, text=True)
            time.sleep(chooser.uniform(0.25, 0.7))
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                kills += 1
            logs.append(process.communicate()[1])
            assert process.returncode in (0, -signal.SIGKILL), logs[-1]
            if process.returncode == 0:
                break
        final = subprocess.run(command, capture_output=True, text=True, timeout=120)
        logs.append(final.stderr)
        fetched = origin.bytes_sent("/model")
    assert kills == KILLS
    assert final.returncode == 0, final.stderr
    assert f"sha256 {digest} verified" in "".join(logs)
    if isinstance(case.expected, bytes):
        assert (out / "model").read_bytes() == case.expected
    else:
        snapshot = tree_snapshot(out)
        snapshot.pop(".model-fetch.json")
        assert snapshot == tree_snapshot(write_tree(case.expected, tmp_path / "expected"))
    assert not (out / ".model-fetch").exists()
    window = BUFFER
    with capsys.disabled():
        print(
            f"\n  {case.name}, {connections} connection(s): {kills} kills, "
            f"{fetched:,} bytes fetched for a {len(case.archive):,}-byte archive "
            f"({fetched / len(case.archive):.2f}x)"
        )
    if case.resumable:
        assert fetched <= len(case.archive) + kills * window
    else:
        assert "can only restart at byte 0" in "".join(logs)


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
