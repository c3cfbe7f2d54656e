"""--connections auto (the default): one connection until it is the wait, then parallel ranges."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from fetcher.request import AUTO_CONNECTIONS
from tests.fetcher.conftest import run_fetch, sha256
from tests.support.archives import fetched_tree, make_tree, py_archive, tree_snapshot, write_tree
from tests.support.origin import Faults, Origin

TREE = dict(make_tree(seed=23, n_files=30, total_bytes=6_000_000))
ARCHIVE = py_archive(TREE, "zst", parts=32)
DIGEST = sha256(ARCHIVE)
PER_CONNECTION = 1_500_000  # bytes/s the origin serves each response: a capped CDN edge
HANDED_OVER = re.compile(
    r"one connection brings .* and waited idle for the network (\d+)% of the time: "
    rf"going on from byte (\d+) over {AUTO_CONNECTIONS} connections"
)
FAST = ["--retry-wait", "0.05", "--timeout", "5", "--chunk-size", "256K"]


def _expected(tmp_path: Path) -> object:
    return tree_snapshot(write_tree(TREE, tmp_path / "expected"))


def test_a_capped_connection_hands_over_to_parallel_ranges(
    tmp_path: Path, origin: Origin, capsys: pytest.CaptureFixture[str]
) -> None:
    origin.add("/m", ARCHIVE, faults=Faults(drip_bytes_per_s=PER_CONNECTION))
    out = tmp_path / "out"
    assert run_fetch(origin.url("/m"), "-o", out, "--sha256", DIGEST, *FAST) == 0
    err = capsys.readouterr().err
    handed = HANDED_OVER.search(err)
    assert handed, err
    idle, position = int(handed.group(1)), int(handed.group(2))
    assert idle > 50
    assert 0 < position < len(ARCHIVE)
    assert fetched_tree(out) == _expected(tmp_path)
    assert f"sha256 {DIGEST} verified" in err

    requests = [r for r in origin.requests if r.range != "bytes=0-0"]  # the probe aside
    stream, *ranges = requests
    assert stream.range is None  # the whole file, over one connection
    assert ranges, "no ranged request after the hand-over"
    for request in ranges:
        start, end = map(int, request.range.removeprefix("bytes=").split("-"))  # type: ignore[union-attr]
        assert position <= start <= end < len(ARCHIVE), request.range
    assert len({r.connection for r in ranges}) > 1  # in parallel, not one after another
    # Nothing fetched twice: the stream stops where the ranges begin (the socket may have
    # held a little more when it was closed).
    served = sum(r.body_bytes for r in requests)
    assert served <= len(ARCHIVE) + 2 * PER_CONNECTION // 10


def test_a_connection_that_reaches_the_bandwidth_cap_stays_alone(
    tmp_path: Path, origin: Origin, capsys: pytest.CaptureFixture[str]
) -> None:
    # Idle waiting here is the fetcher's own --max-bandwidth pacing: more connections would
    # share the same cap and gain nothing.
    origin.add("/m", ARCHIVE)
    out = tmp_path / "out"
    code = run_fetch(
        origin.url("/m"), "-o", out, "--sha256", DIGEST, "--max-bandwidth", "4M", *FAST
    )
    err = capsys.readouterr().err
    assert code == 0, err
    assert "going on from byte" not in err
    assert [r.range for r in origin.requests] == ["bytes=0-0", None]
    assert fetched_tree(out) == _expected(tmp_path)


def test_an_explicit_count_starts_parallel_at_once(
    tmp_path: Path, origin: Origin, capsys: pytest.CaptureFixture[str]
) -> None:
    origin.add("/m", ARCHIVE, faults=Faults(drip_bytes_per_s=PER_CONNECTION * 4))
    out = tmp_path / "out"
    assert run_fetch(origin.url("/m"), "-o", out, "--connections", "3", *FAST) == 0
    assert "going on from byte" not in capsys.readouterr().err
    ranged = [r.range for r in origin.requests if r.range != "bytes=0-0"]
    assert ranged and all(r is not None and r.startswith("bytes=") for r in ranged)
    assert fetched_tree(out) == _expected(tmp_path)


def test_a_kill_after_the_hand_over_resumes_from_the_window(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with Origin() as origin:
        origin.add("/m", ARCHIVE, faults=Faults(drip_bytes_per_s=PER_CONNECTION / 3))
        command = [
            sys.executable, "-m", "fetcher", origin.url("/m"), "-o", str(out),
            "--sha256", DIGEST, "--checkpoint-interval", "0.1", *FAST,
        ]  # fmt: skip
        process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
        lines: list[str] = []
        handed = threading.Event()

        def read() -> None:
            assert process.stderr is not None
            for line in process.stderr:
                lines.append(line)
                if HANDED_OVER.search(line):
                    handed.set()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        assert handed.wait(20), "".join(lines)
        checkpoint = out / ".model-fetch" / "checkpoint.json"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # a checkpoint that records ranges of the window
            if checkpoint.exists() and json.loads(checkpoint.read_text() or "{}").get(
                "body", {}
            ).get("window", {}).get("ranges"):
                break
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait()
        reader.join(5)
        assert process.stderr is not None
        process.stderr.close()
        held = json.loads(checkpoint.read_text())["body"]["window"]["ranges"]
        assert held, "the checkpoint holds no ranges"

        origin.set_faults("/m", None)
        origin.clear_log()
        final = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert final.returncode == 0, final.stderr
    assert "resuming from a checkpoint" in final.stderr
    reused = re.search(r"reusing (\d+) held in the download window", final.stderr)
    assert reused and int(reused.group(1)) > 0, final.stderr
    # With a window to reuse, the restart goes straight to ranges.
    assert "going on from byte" not in final.stderr
    assert fetched_tree(out) == _expected(tmp_path)
