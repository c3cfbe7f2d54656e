"""Parallel ranged GETs: in order, shared by mirrors, checked, bounded on disk and in rate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from fetcher.marker import MARKER_NAME
from tests.fetcher.conftest import run_fetch, sha256
from tests.support.archives import Tree, make_tree, py_archive, tree_snapshot, write_tree
from tests.support.origin import Faults, Origin

TREE: Tree = make_tree(seed=21, n_files=30, total_bytes=6_000_000)
ARCHIVE = py_archive(TREE, "zst", parts=8)
PARALLEL = ["--connections", "4", "--chunk-size", "256K", "--retry-wait", "0.01"]


@pytest.fixture(scope="module")
def expected(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    return dict(tree_snapshot(write_tree(TREE, tmp_path_factory.mktemp("expected"))))


def _extracted(out: Path) -> dict[str, object]:
    snapshot = dict(tree_snapshot(out))
    snapshot.pop(MARKER_NAME)
    return snapshot


def _ranges(origin: Origin) -> list[str]:
    return [r.headers.get("range", "") for r in origin.requests if r.method == "GET"]


def test_ranges_are_requested_in_order_over_several_connections(
    origin: Origin, tmp_path: Path, expected: dict[str, object]
) -> None:
    origin.add("/m", ARCHIVE)
    out = tmp_path / "out"
    assert run_fetch(origin.url("/m"), "--sha256", sha256(ARCHIVE), "-o", out, *PARALLEL) == 0
    assert _extracted(out) == expected
    requests = [r for r in origin.requests if r.headers.get("range") != "bytes=0-0"]
    starts = [int(r.headers["range"].split("=")[1].split("-")[0]) for r in requests]
    # Dispatched in order; concurrent connections may reach the server a little out of order.
    assert all(abs(starts.index(s) - sorted(starts).index(s)) < 4 for s in starts)
    assert sorted(starts) == list(range(0, len(ARCHIVE), 256_000))
    assert all(r.status == 206 for r in requests)
    assert all(r.headers.get("if-match") == origin.etag("/m") for r in requests)
    assert len({r.connection for r in requests}) >= 2
    assert origin.bytes_sent("/m") == len(ARCHIVE) + 1  # the one-byte probe


def test_mirrors_share_the_work_and_a_dying_mirror_is_left(
    tmp_path: Path, expected: dict[str, object], capsys: pytest.CaptureFixture[str]
) -> None:
    with Origin() as source, Origin() as mirror:
        source.add("/m", ARCHIVE)
        # The mirror serves a few ranges, then answers 404 for good.
        mirror.add("/m", ARCHIVE, faults=Faults(statuses=[200] * 3 + [404] * 100))
        out = tmp_path / "out"
        code = run_fetch(
            source.url("/m"), "--mirror", mirror.url("/m"), "--sha256", sha256(ARCHIVE),
            "-o", out, *PARALLEL, "--chunk-size", "64K",  # enough ranges for both origins
        )  # fmt: skip
        assert code == 0
        assert sum(r.status == 206 for r in mirror.requests) == 3
        assert sum(r.status == 206 for r in source.requests) > 3
        assert f"leaving origin {mirror.url('/m')}: HTTP 404" in capsys.readouterr().err
    assert _extracted(out) == expected


def test_dropped_ranges_and_5xx_bursts_are_finished_elsewhere(
    origin: Origin, tmp_path: Path, expected: dict[str, object]
) -> None:
    origin.add("/m", ARCHIVE, faults=Faults(drop_after=100_000, drop_times=6, statuses=[503] * 3))
    out = tmp_path / "out"
    args = ("--sha256", sha256(ARCHIVE), "-o", out, *PARALLEL, "--retries", "20")
    assert run_fetch(origin.url("/m"), *args) == 0
    assert sum(r.status == 503 for r in origin.requests) == 3
    assert sum(r.fault == "drop" for r in origin.requests) == 6
    assert _extracted(out) == expected


def test_an_etag_change_mid_run_starts_over_cleanly(
    origin: Origin, tmp_path: Path, expected: dict[str, object], capsys: pytest.CaptureFixture[str]
) -> None:
    origin.add("/m", ARCHIVE, faults=Faults(drip_bytes_per_s=1_000_000))

    def republish() -> None:
        deadline = time.monotonic() + 10
        while len(origin.requests) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        origin.add("/m", ARCHIVE, etag='"republished"')

    republisher = threading.Thread(target=republish)
    republisher.start()
    out = tmp_path / "out"
    assert run_fetch(origin.url("/m"), "-o", out, *PARALLEL) == 0
    republisher.join()
    err = capsys.readouterr().err
    assert "the source changed while being fetched" in err
    assert any(r.status == 412 for r in origin.requests)
    assert _extracted(out) == expected


def test_a_source_that_keeps_changing_is_an_error_with_a_cure(
    origin: Origin, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    origin.add("/m", ARCHIVE, faults=Faults(etag_changes_after=2))
    assert run_fetch(origin.url("/m"), "-o", tmp_path / "out", *PARALLEL) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "the source changed 3 times" in last
    assert "new URL" in last
    assert not (tmp_path / "out" / ".model-fetch").exists()


def test_an_origin_without_range_support_falls_back_to_one_stream(
    origin: Origin, tmp_path: Path, expected: dict[str, object], capsys: pytest.CaptureFixture[str]
) -> None:
    origin.add("/m", ARCHIVE, faults=Faults(ranges=False))
    out = tmp_path / "out"
    assert run_fetch(origin.url("/m"), "--sha256", sha256(ARCHIVE), "-o", out, *PARALLEL) == 0
    assert "does not honour Range requests" in capsys.readouterr().err
    assert _extracted(out) == expected


def _sample_disk(paths: list[Path], stop: threading.Event, peaks: dict[str, int]) -> None:
    while not stop.is_set():
        for path in paths:
            total = 0
            for root, _, files in os.walk(path):
                for name in files:
                    try:
                        total += os.lstat(os.path.join(root, name)).st_blocks * 512
                    except FileNotFoundError:
                        continue
            peaks[str(path)] = max(peaks.get(str(path), 0), total)
            if total > 6_000_000 and "state" in str(path):
                print(
                    sorted(
                        (n, os.lstat(os.path.join(r, n)).st_blocks * 512)
                        for r, _, fs in os.walk(path)
                        for n in fs
                    )
                )
        time.sleep(0.01)


def test_the_part_file_stays_within_the_disk_window(tmp_path: Path) -> None:
    """Physical blocks, sampled while a 48 MB archive streams through a 4 MiB window."""
    payload = os.urandom(48 << 20)  # incompressible: archive size equals extracted size
    archive = py_archive({"weights.bin": payload}, "none")
    buffer = 4 << 20
    out = tmp_path / "out"
    state = tmp_path / "state"
    with Origin() as origin:
        origin.add("/m", archive, faults=Faults(drip_bytes_per_s=24_000_000))
        stop = threading.Event()
        peaks: dict[str, int] = {}
        sampler = threading.Thread(target=_sample_disk, args=([state, out], stop, peaks))
        sampler.start()
        try:
            result = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "fetcher",
                    origin.url("/m"),
                    "-o",
                    str(out),
                    "--workdir",
                    str(state),
                    "--max-disk-buffer",
                    str(buffer),
                    "--chunk-size",
                    "1M",
                    "--connections",
                    "4",
                    "--checkpoint-interval",
                    "0.2",
                ],
                capture_output=True,
                text=True,
                timeout=120,
            )
        finally:
            stop.set()
            sampler.join()
    assert result.returncode == 0, result.stderr
    assert (out / "weights.bin").read_bytes() == payload
    part_peak = peaks[str(state)]
    assert part_peak <= buffer + buffer // 2 + (1 << 20), f"part file peaked at {part_peak}"
    assert peaks[str(out)] <= len(payload) + part_peak + (1 << 20)


def test_bandwidth_cap_holds_across_connections_and_mirrors(tmp_path: Path) -> None:
    rate = 4_000_000
    payload = os.urandom(52_000_000)  # thirteen seconds at the cap
    archive = py_archive({"weights.bin": payload}, "none")
    with Origin() as source, Origin() as mirror:
        source.add("/m", archive)
        mirror.add("/m", archive)
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fetcher",
                source.url("/m"),
                "--mirror",
                mirror.url("/m"),
                "-o",
                str(tmp_path / "out"),
                "--max-bandwidth",
                f"{rate}/s",
                "--connections",
                "6",
                "--chunk-size",
                "512K",
                "--log-format",
                "json",
                "--progress-interval",
                "0.25",
            ],
            stderr=subprocess.PIPE,
            text=True,
        )
        _, err = process.communicate(timeout=90)
    assert process.returncode == 0, err
    progress = [
        (json.loads(line)["time"], json.loads(line)["bytes"])
        for line in err.splitlines()
        if '"progress:' in line
    ]
    # Steady state: from 1 s in to half a second before the end, a window of at least 10 s.
    samples = [(_seconds(stamp), done) for stamp, done in progress]
    start, end = samples[0][0] + 1.0, samples[-1][0] - 0.5
    window = [(t, b) for t, b in samples if start <= t <= end]
    (t0, b0), (t1, b1) = window[0], window[-1]
    assert t1 - t0 >= 10.0
    measured = (b1 - b0) / (t1 - t0)
    assert abs(measured - rate) / rate < 0.10, f"{measured / 1e6:.2f} MB/s for a 4 MB/s cap"
    assert sum(r.status == 206 for r in mirror.requests) > 0


def _seconds(stamp: str) -> float:
    clock = stamp.split("T")[1].rstrip("Z")
    hours, minutes, seconds = clock.split(":")
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
