"""Parallel ranged GETs: in order, shared by mirrors, checked, bounded on disk and in rate."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from fetcher.commit import WORK_DIR_NAME
from fetcher.state.checkpoint import CHECKPOINT_NAME
from tests.fetcher.conftest import run_fetch, sha256
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

TREE: Tree = make_tree(seed=21, n_files=30, total_bytes=6_000_000)
ARCHIVE = py_archive(TREE, "zst", parts=8)
PARALLEL = ["--connections", "4", "--chunk-size", "256K", "--retry-wait", "0.01"]


@pytest.fixture(scope="module")
def expected(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    return dict(tree_snapshot(write_tree(TREE, tmp_path_factory.mktemp("expected"))))


def _ranges(origin: Origin) -> list[str]:
    return [r.headers.get("range", "") for r in origin.requests if r.method == "GET"]


def test_ranges_are_requested_in_order_over_several_connections(
    origin: Origin, tmp_path: Path, expected: dict[str, object]
) -> None:
    origin.add("/m", ARCHIVE)
    out = tmp_path / "out"
    assert run_fetch(origin.url("/m"), "--sha256", sha256(ARCHIVE), "-o", out, *PARALLEL) == 0
    assert fetched_tree(out) == expected
    requests = [r for r in origin.requests if r.headers.get("range") != "bytes=0-0"]
    starts = [int(r.headers["range"].split("=")[1].split("-")[0]) for r in requests]
    # Dispatched in order: when a range reaches the server, every range before it was already
    # taken by a connection, and each of the other three holds at most one it has not sent yet.
    # How late a busy machine lets a connection send what it took does not change that.
    for index, start in enumerate(starts):
        taken_not_sent = [earlier for earlier in starts[index + 1 :] if earlier < start]
        assert len(taken_not_sent) < 4, (start, taken_not_sent, starts)
    assert sorted(starts) == list(range(0, len(ARCHIVE), 256_000))
    assert all(r.status == 206 for r in requests)
    assert all(r.headers.get("if-match") == origin.etag("/m") for r in requests)
    assert len({r.connection for r in requests}) >= 2
    assert origin.bytes_sent("/m") == len(ARCHIVE) + 1  # the one-byte probe


def test_ranges_reuse_their_connections(origin: Origin, tmp_path: Path) -> None:
    # A range's body is read off the connection past the HTTP parser, and the connection
    # stays open for the next range: on a distant origin a new connection per range would
    # cost a TCP and a TLS handshake each. (The single stream's connection closes after it.)
    origin.add("/m", ARCHIVE)
    out = tmp_path / "out"
    assert run_fetch(origin.url("/m"), "-o", out, *PARALLEL, "--chunk-size", "64K") == 0
    ranges = [r for r in origin.requests if r.headers.get("range") != "bytes=0-0"]
    assert len(ranges) == len(range(0, len(ARCHIVE), 64_000))
    assert len({r.connection for r in ranges}) <= 8 < len(ranges)


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
    assert fetched_tree(out) == expected


def _bounded(ranges: list[str]) -> bool:
    """Every range is a closed bytes=a-b: what parallel fetching asks, never a stream's a-."""
    return all(re.fullmatch(r"bytes=\d+-\d+", r) for r in ranges)


def test_dropped_ranges_and_5xx_bursts_are_finished_elsewhere(
    origin: Origin, tmp_path: Path, expected: dict[str, object], capsys: pytest.CaptureFixture[str]
) -> None:
    # The probe is answered (200: "behave"), then the burst hits the parallel ranges.
    faults = Faults(drop_after=100_000, drop_times=6, statuses=[200, 503, 503, 503])
    origin.add("/m", ARCHIVE, faults=faults)
    out = tmp_path / "out"
    args = ("--sha256", sha256(ARCHIVE), "-o", out, *PARALLEL, "--retries", "20")
    assert run_fetch(origin.url("/m"), *args) == 0
    requests = [r for r in origin.requests if r.method == "GET"]
    assert (requests[0].range, requests[0].status) == ("bytes=0-0", 206)
    assert sum(r.status == 503 for r in requests) == 3
    assert sum(r.fault == "drop" for r in requests) == 6
    assert all(r.range != "bytes=0-0" for r in requests[1:])
    assert _bounded(_ranges(origin))
    err = capsys.readouterr().err
    assert "set aside" in err
    assert "fetching over one connection" not in err
    assert fetched_tree(out) == expected


def test_a_probe_answered_with_5xx_is_asked_again_before_parallel_ranges(
    origin: Origin, tmp_path: Path, expected: dict[str, object], capsys: pytest.CaptureFixture[str]
) -> None:
    origin.add("/m", ARCHIVE, faults=Faults(statuses=[503, 429]))
    out = tmp_path / "out"
    assert run_fetch(origin.url("/m"), "--sha256", sha256(ARCHIVE), "-o", out, *PARALLEL) == 0
    requests = [r for r in origin.requests if r.method == "GET"]
    assert [(r.range, r.status) for r in requests[:3]] == [
        ("bytes=0-0", s) for s in (503, 429, 206)
    ]
    assert len(requests) > 4
    assert _bounded(_ranges(origin))
    err = capsys.readouterr().err
    assert "no origin answered the range probe" in err
    assert "asking again" in err
    assert "fetching over one connection" not in err
    assert fetched_tree(out) == expected


def test_a_probe_no_origin_answers_falls_back_to_one_stream_and_says_so(
    tmp_path: Path, expected: dict[str, object], capsys: pytest.CaptureFixture[str]
) -> None:
    with Origin() as source, Origin() as mirror:
        source.add("/m", ARCHIVE, faults=Faults(not_found=True))
        # 1 + 3 probes, all refused for now; the stream that takes over is served.
        mirror.add("/m", ARCHIVE, faults=Faults(statuses=[503] * 4))
        out = tmp_path / "out"
        code = run_fetch(
            source.url("/m"), "--mirror", mirror.url("/m"), "--sha256", sha256(ARCHIVE),
            "-o", out, *PARALLEL,
        )  # fmt: skip
        assert code == 0
        assert len(source.requests) == 2  # once by the probe (final), once by the stream
        probes = [r for r in mirror.requests if r.range == "bytes=0-0"]
        assert [r.status for r in probes] == [503] * 4
        assert [(r.range, r.status) for r in mirror.requests[4:]] == [(None, 200)]
        line = (
            f"no origin answered the range probe ({source.url('/m')}: HTTP 404; "
            f"{mirror.url('/m')}: HTTP 503): fetching over one connection"
        )
    assert line in capsys.readouterr().err
    assert fetched_tree(out) == expected


def test_a_mirror_that_dies_mid_run_is_set_aside_and_the_source_finishes(
    tmp_path: Path, expected: dict[str, object], capsys: pytest.CaptureFixture[str]
) -> None:
    with Origin() as source:
        mirror = Origin().start()
        mirror_url = mirror.url("/m")
        try:
            # Paced, so the mirror is stopped with most of the file still to come.
            source.add("/m", ARCHIVE, faults=Faults(drip_bytes_per_s=1_000_000))
            mirror.add("/m", ARCHIVE, faults=Faults(drip_bytes_per_s=1_000_000))

            def kill_mirror() -> None:
                deadline = time.monotonic() + 20
                while mirror.bytes_sent("/m") < 200_000 and time.monotonic() < deadline:
                    time.sleep(0.01)
                mirror.stop()  # the listener closes: connections are refused from now on

            killer = threading.Thread(target=kill_mirror)
            killer.start()
            out = tmp_path / "out"
            code = run_fetch(
                source.url("/m"), "--mirror", mirror_url, "--sha256", sha256(ARCHIVE),
                "-o", out, *PARALLEL, "--chunk-size", "64K",
            )  # fmt: skip
            killer.join()
        finally:
            mirror.stop()
        by_mirror = sum(r.body_bytes for r in mirror.requests if r.status == 206)
        by_source = sum(r.body_bytes for r in source.requests if r.status == 206)
    assert code == 0
    assert 200_000 <= by_mirror < len(ARCHIVE) // 2  # it died early in the run
    assert by_source >= len(ARCHIVE) - by_mirror
    err = capsys.readouterr().err
    assert f"origin {mirror_url}: connection failed: [Errno 111] Connection refused" in err
    assert "set aside for" in err
    assert fetched_tree(out) == expected


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
    assert fetched_tree(out) == expected


def _same_length_archives() -> tuple[Tree, bytes, Tree, bytes]:
    """Two tars with the same names and sizes: another file, byte for byte the same length."""
    old: Tree = {f"w/{n}.bin": random.Random(n).randbytes(1_000_000) for n in range(3)}
    new: Tree = {f"w/{n}.bin": random.Random(10 + n).randbytes(1_000_000) for n in range(3)}
    old_archive, new_archive = py_archive(old, "none"), py_archive(new, "none")
    assert len(old_archive) == len(new_archive)
    return old, old_archive, new, new_archive


@pytest.mark.parametrize("preconditions", ["honoured", "ignored"])
def test_a_file_republished_without_etag_mid_run_is_never_mixed(
    origin: Origin, tmp_path: Path, capsys: pytest.CaptureFixture[str], preconditions: str
) -> None:
    """No ETag, same length: only Last-Modified tells the new file from the old one."""
    old, old_archive, new, new_archive = _same_length_archives()
    ignored = preconditions == "ignored"
    origin.add(
        "/m", old_archive, etag=None, last_modified="Mon, 01 Jan 2024 00:00:00 GMT",
        faults=Faults(drip_bytes_per_s=1_000_000, ignore_preconditions=ignored),
    )  # fmt: skip

    def republish() -> None:
        deadline = time.monotonic() + 10
        # Several ranges of the old file have arrived, most of it is still to come.
        while origin.bytes_sent("/m") < 600_000 and time.monotonic() < deadline:
            time.sleep(0.01)
        origin.add(
            "/m", new_archive, etag=None, last_modified="Tue, 02 Jan 2024 00:00:00 GMT",
            faults=Faults(ignore_preconditions=ignored),
        )  # fmt: skip

    republisher = threading.Thread(target=republish)
    republisher.start()
    out = tmp_path / "out"
    code = run_fetch(origin.url("/m"), "-o", out, *PARALLEL)  # no --sha256 to catch a mix
    republisher.join()
    err = capsys.readouterr().err
    assert code == 0, err
    ranged = [r for r in origin.requests if r.range != "bytes=0-0"]
    assert all(r.headers.get("if-unmodified-since") for r in ranged)
    assert "the source changed while being fetched" in err
    if ignored:  # told apart by the date on the answer
        assert "changed its Last-Modified from Mon, 01 Jan 2024" in err
    else:  # refused by the origin
        assert any(r.status == 412 for r in origin.requests)
        assert "no longer serves the file with Last-Modified Mon, 01 Jan 2024" in err
    assert fetched_tree(out) == dict(tree_snapshot(write_tree(new, tmp_path / "new")))
    assert fetched_tree(out) != dict(tree_snapshot(write_tree(old, tmp_path / "old")))


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
    assert fetched_tree(out) == expected


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


@pytest.mark.parametrize("digest", [True, False], ids=["with sha256", "without"])
def test_an_origin_that_honours_only_the_probe_goes_on_over_one_connection(
    origin: Origin,
    tmp_path: Path,
    expected: dict[str, object],
    capsys: pytest.CaptureFixture[str],
    digest: bool,
) -> None:
    # A 206 for the probe's one byte, then 200 and the whole file for every real range.
    origin.add("/m", ARCHIVE, faults=Faults(ranges_only_for_the_probe=True))
    out = tmp_path / "out"
    flags = ["--sha256", sha256(ARCHIVE)] if digest else []
    assert run_fetch(origin.url("/m"), *flags, "-o", out, *PARALLEL) == 0
    err = capsys.readouterr().err
    assert "answered a range with the whole file; going on over one connection" in err
    assert fetched_tree(out) == expected


# An origin that labels the file with nothing a client can compare: no ETag, a weak one, and
# no Last-Modified either. Two answers from it may come from two versions of the file.
UNLABELLED = {"no validator": None, "a weak ETag": 'W/"v1"'}


@pytest.mark.parametrize("etag", UNLABELLED.values(), ids=UNLABELLED.keys())
def test_ranges_of_an_unlabelled_file_are_not_combined_without_a_digest(
    origin: Origin, tmp_path: Path, expected: dict[str, object], etag: str | None
) -> None:
    origin.add("/m", ARCHIVE, etag=etag, last_modified=None)
    assert run_fetch(origin.url("/m"), "-o", tmp_path / "out", *PARALLEL) == 0
    assert fetched_tree(tmp_path / "out") == expected
    assert {r.range for r in origin.requests} <= {None, "bytes=0-0"}  # one stream after the probe
    origin.clear_log()
    # With a digest, a mix of two versions would be caught at the end: ranges are fine.
    digest = sha256(ARCHIVE)
    assert run_fetch(origin.url("/m"), "--sha256", digest, "-o", tmp_path / "o2", *PARALLEL) == 0
    assert len({r.range for r in origin.requests} - {None, "bytes=0-0"}) > 1


@pytest.mark.parametrize("etag", UNLABELLED.values(), ids=UNLABELLED.keys())
def test_a_resume_of_an_unlabelled_file_replaced_since_the_kill_is_not_mixed(
    tmp_path: Path, etag: str | None
) -> None:
    """Raw bytes: nothing in a mix of two versions would fail to decode, so only the rule that
    an unlabelled file is not resumed without a digest keeps the old half out."""
    old, new = random.Random(5).randbytes(3_000_000), random.Random(6).randbytes(3_000_000)
    out = tmp_path / "out"
    with Origin() as origin:
        origin.add("/m", old, etag=etag, last_modified=None,
                   faults=Faults(drip_bytes_per_s=2_000_000))  # fmt: skip
        command = [sys.executable, "-m", "fetcher", origin.url("/m"), "-o", str(out),
                   "--format", "none", "--checkpoint-interval", "0.1"]  # fmt: skip
        process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
        state = out / WORK_DIR_NAME / CHECKPOINT_NAME
        wait_until(lambda: (restore_position(state) or 0) > 1_000_000, what="a third fetched")
        process.kill()
        process.communicate()
        origin.add("/m", new, etag=etag, last_modified=None)
        final = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert final.returncode == 0, final.stderr
    assert "cannot be shown to be the same version" in final.stderr
    assert (out / "m").read_bytes() == new
