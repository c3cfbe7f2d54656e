"""kill -9 at exact points of the transfer, then restart until done; two fetchers on one DIR.

The origin triggers every kill itself (``Origin.kill_after``): it SIGKILLs the fetcher just
before the body write that crosses a byte threshold. So the fetcher always dies busy, at a
point of the transfer chosen by seed, however fast or loaded the machine is; nothing here
waits on a clock to decide when to kill.
"""

from __future__ import annotations

import concurrent.futures
import random
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import zstandard

from fetcher.commit import WORK_DIR_NAME
from fetcher.request import AUTO_CONNECTIONS
from fetcher.state.checkpoint import CHECKPOINT_NAME, load_checkpoint
from tests.fetcher.conftest import sha256
from tests.support.archives import (
    Tree,
    fetched_tree,
    make_tree,
    tar_bytes,
    tree_snapshot,
    write_tree,
)
from tests.support.origin import Faults, Origin
from tests.support.zips import cli_zip

MIB = 1 << 20
PATH = "/model"
KILLS = 20
WINDOW = 2 * MIB
CHECKPOINT_INTERVAL = 0.5
# The origin's total pacing, summed over the connections: each response is paced at RATE / n
# for n connections at most. Kills do not depend on time, so this only sets how long a case
# takes and how many bytes the time-driven checkpoint lets pile up (the bound's rate term).
RATE = 16 * MIB
TEST_FLAGS = [
    "--max-disk-buffer", str(WINDOW), "--checkpoint-interval", str(CHECKPOINT_INTERVAL),
    "--retry-wait", "0.05", "--chunk-size", "1MiB",
]  # fmt: skip
RESUMED_AT = re.compile(r"resuming from a checkpoint: byte (\d+)")
SHARES = (0.10, 0.40)  # each attempt is killed after this share of what it has to fetch
ATTEMPT_TIMEOUT = 120.0


def _pieces(data: bytes, seed: str, low: int, high: int) -> Iterator[bytes]:
    """``data`` cut into consecutive pieces of seeded random sizes in [low, high]."""
    rng = random.Random(seed)
    pos = 0
    while pos < len(data):
        size = rng.randint(low, high)
        yield data[pos : pos + size]
        pos += size


def zstd_cli_frames(pieces: Iterator[bytes], level: int = 3) -> bytes:
    """One frame per piece, each from its own run of the real ``zstd`` (it must be installed:
    a missing binary fails the module, it does not skip it)."""
    args = ["zstd", "-q", "-c", f"-{level}"]
    run = [subprocess.run(args, input=p, capture_output=True, check=True) for p in pieces]
    return b"".join(r.stdout for r in run)


def gzip_cli_members(pieces: Iterator[bytes], level: int = 6) -> bytes:
    """One member per piece, each from its own run of the real ``gzip``."""
    args = ["gzip", "-c", "-n", f"-{level}"]
    run = [subprocess.run(args, input=p, capture_output=True, check=True) for p in pieces]
    return b"".join(r.stdout for r in run)


def zstd_frame_per(data: bytes, size: int, level: int = 3) -> bytes:
    """A frame per ``size`` bytes of input, the layout block-wise zstd writers produce. (The
    zstd CLI has no such flag: ``-B`` sets a job size inside one frame.)"""
    compressor = zstandard.ZstdCompressor(level=level)
    return b"".join(compressor.compress(data[i : i + size]) for i in range(0, len(data), size))


def _frame_count(archive: bytes) -> int:
    count, rest = 0, archive
    while rest:
        decoder = zstandard.ZstdDecompressor().decompressobj()
        decoder.decompress(rest)
        rest, count = decoder.unused_data, count + 1
    return count


def mixed_content(seed: int, size: int, random_share: float) -> bytes:
    """Cheap bytes that compress to about ``random_share`` of their size: 64 KiB blocks,
    random or repeated text."""
    rng = random.Random(seed)
    text = b"the quick brown fox jumps over the lazy dog; " * 1500
    block = 64 * 1024
    out = bytearray()
    while len(out) < size:
        out += rng.randbytes(block) if rng.random() < random_share else text[:block]
    return bytes(out[:size])


@dataclass(frozen=True)
class Case:
    name: str
    archive: bytes
    expected: Tree | bytes
    flags: tuple[str, ...] = ()
    window: int = WINDOW


def _kill_cases() -> dict[str, Case]:
    expected = make_tree(seed=31, n_files=40, total_bytes=20 * MIB)
    tar = tar_bytes(expected)
    raw = random.Random(5).randbytes(12 * MIB)
    # Frames bigger than the window: a single stream cannot hold a whole frame past its
    # restart point, so each kill there loses up to a frame, the worst case for one stream.
    big_frames = {
        f"weights/big-{n}.bin": random.Random(100 + n).randbytes(6 * MIB) for n in range(4)
    }
    cases = [
        Case("raw", raw, raw, flags=("--format", "none")),
        Case("tar", tar, expected),
        Case("tar.zst-cli-frames", zstd_cli_frames(_pieces(tar, "zst", MIB, 8 * MIB)), expected),
        Case("tar.zst-frame-per-2MiB", zstd_frame_per(tar, 2 * MIB), expected),
        Case("tar.gz-members", gzip_cli_members(_pieces(tar, "gz", 4 * MIB, 4 * MIB)), expected),
        Case(
            "tar.zst-frames-over-window",
            zstd_cli_frames(_pieces(tar_bytes(big_frames), "big", 4 * MIB, 8 * MIB)),
            big_frames,
        ),
    ]
    return {case.name: case for case in cases}


@pytest.fixture(scope="module")
def kill_cases() -> dict[str, Case]:
    cases = _kill_cases()
    assert _frame_count(cases["tar.zst-cli-frames"].archive) >= 3
    assert _frame_count(cases["tar.zst-frames-over-window"].archive) >= 3
    return cases


def _command(url: str, out: Path, digest: str, *flags: str) -> list[str]:
    return [sys.executable, "-m", "fetcher", url, "-o", str(out), "--sha256", digest, *flags]


def _still_to_fetch(out: Path, size: int) -> int:
    """Bytes the next attempt has to fetch: past the checkpoint, less what the window holds."""
    checkpoint, _ = load_checkpoint(out / WORK_DIR_NAME / CHECKPOINT_NAME)
    if checkpoint is None:
        return size
    position = checkpoint.position
    return max(size - position - checkpoint.window.total(position), 1)


@dataclass
class KillRun:
    """What a series of killed attempts and the final run made the origin send."""

    size: int
    logs: list[str] = field(default_factory=list)
    sent: list[int] = field(default_factory=list)
    """Body bytes the origin sent in each killed attempt."""
    resumed_at: list[int] = field(default_factory=list)
    """Position each killed attempt resumed from (0: it started from byte 0)."""
    total_sent: int = 0
    final: subprocess.CompletedProcess[str] | None = None

    @property
    def kills(self) -> int:
        return len(self.sent)

    @property
    def killed_sent(self) -> int:
        return sum(self.sent)

    @property
    def fetched_again(self) -> int:
        return self.total_sent - self.size

    @property
    def restart_from_zero(self) -> int:
        """What the origin would have sent had every attempt started over from byte 0 and got
        as far as this one did: the bytes it skipped by resuming, sent again each time."""
        return self.size + sum(self.resumed_at) + self.killed_sent

    @property
    def last_resume(self) -> int:
        found = RESUMED_AT.findall(self.final.stderr if self.final else "")
        return int(found[-1]) if found else 0


def kill_then_finish(
    origin: Origin, command: list[str], out: Path, size: int, shares: list[float]
) -> KillRun:
    """One attempt per share, each SIGKILLed by the origin once it has sent that share of what
    the attempt has to fetch; stops early if an attempt finishes. Then a run to completion."""
    run = KillRun(size)
    for share in shares:
        threshold = max(1, int(share * _still_to_fetch(out, size)))
        before = origin.bytes_sent(PATH)
        process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
        # Armed after the start: the fetcher needs far longer to import than this takes.
        switch = origin.kill_after(PATH, threshold, process.pid)
        _, err = process.communicate(timeout=ATTEMPT_TIMEOUT)
        origin.on_body_progress(PATH, None)
        origin.wait_idle()
        run.logs.append(err)
        assert process.returncode in (0, -signal.SIGKILL), err
        assert switch.fired == (process.returncode == -signal.SIGKILL), err
        if process.returncode == 0:
            break
        run.sent.append(origin.bytes_sent(PATH) - before)
        found = RESUMED_AT.findall(err)
        run.resumed_at.append(int(found[-1]) if found else 0)
    run.final = subprocess.run(command, capture_output=True, text=True, timeout=ATTEMPT_TIMEOUT)
    run.logs.append(run.final.stderr)
    origin.wait_idle()
    run.total_sent = origin.bytes_sent(PATH)
    return run


def assert_fetched_right(run: KillRun, out: Path, case: Case, digest: str, tmp: Path) -> None:
    assert run.final is not None
    assert run.final.returncode == 0, run.final.stderr
    assert f"sha256 {digest} verified" in "".join(run.logs)
    if isinstance(case.expected, bytes):
        assert (out / "model").read_bytes() == case.expected
    else:
        snapshot = fetched_tree(out)
        assert snapshot == tree_snapshot(write_tree(case.expected, tmp / "expected"))
    assert not (out / WORK_DIR_NAME).exists()


def report(capsys: pytest.CaptureFixture[str], label: str, run: KillRun, bound: int) -> None:
    with capsys.disabled():
        print(
            f"\n  {label}: {run.kills} kills, {run.total_sent:,} bytes sent for a "
            f"{run.size:,}-byte archive ({run.total_sent / run.size:.2f}x); the killed attempts "
            f"were sent {run.killed_sent:,}, {run.fetched_again:,} of them again "
            f"({run.fetched_again / max(run.killed_sent, 1):.0%}); last resume at byte "
            f"{run.last_resume:,}; bound {bound:,}, a restart from byte 0 "
            f"{run.restart_from_zero:,} ({run.total_sent / run.restart_from_zero:.2f} of it)"
        )


def kill_bound(size: int, kills: int, window: int, checkpoint_interval: float, rate: int) -> int:
    """A kill may cost the window, what arrived since the last checkpoint, and a chunk."""
    return size + kills * (window + int(checkpoint_interval * rate) + MIB)


CASE_NAMES = [
    "raw",
    "tar",
    "tar.zst-cli-frames",
    "tar.zst-frame-per-2MiB",
    "tar.gz-members",
]
RUNS = [(name, connections) for name in CASE_NAMES for connections in ("1", "4", "auto")] + [
    ("tar.zst-frames-over-window", "1")
]


# What the matrix may cost, as a share of starting over from byte 0 at every kill (1.0 by
# definition for a fetcher that does). Any byte restarts a raw file or a plain tar: measured
# 0.11-0.19. A compressed stream restarts at its last frame or member, and these frames hold
# up to 8 MiB of a ~6-15 MB archive, so a kill often loses its whole attempt: 0.19-0.69.
MAX_SHARE_OF_RESTARTING = {"raw": 0.4, "tar": 0.4}
MAX_SHARE_OF_RESTARTING_FRAMED = 0.85
# The cases run side by side: each waits mostly on its paced origin and on process starts.
CASES_AT_ONCE = 4


def _kill_case(tmp: Path, case: Case, connections: str) -> tuple[KillRun, Path]:
    rng = random.Random(f"{case.name}/{connections}")
    shares = [rng.uniform(*SHARES) for _ in range(KILLS)]
    out = tmp / "out"
    most = AUTO_CONNECTIONS if connections == "auto" else int(connections)
    flags = [*TEST_FLAGS, "--connections", connections, *case.flags]
    with Origin() as origin:
        origin.add(PATH, case.archive, faults=Faults(drip_bytes_per_s=RATE / most))
        command = _command(origin.url(PATH), out, sha256(case.archive), *flags)
        return kill_then_finish(origin, command, out, len(case.archive), shares), out


def run_kill_matrix(
    tmp_path: Path,
    runs: list[tuple[Case, str]],
    max_share_of_restarting: Callable[[Case], float],
    capsys: pytest.CaptureFixture[str],
    also: Callable[[Case, KillRun], None] = lambda case, run: None,
) -> None:
    """Each (case, connections) killed KILLS times and run to completion, CASES_AT_ONCE at a
    time; every failure of every case is reported together."""
    with concurrent.futures.ThreadPoolExecutor(CASES_AT_ONCE) as pool:
        futures = [
            pool.submit(_kill_case, tmp_path / f"{case.name}-{c}", case, c) for case, c in runs
        ]
        results = [future.result() for future in futures]
    failures: list[str] = []
    for (case, connections), (run, out) in zip(runs, results, strict=True):
        label = f"{case.name}, {connections} connection(s)"
        bound = kill_bound(len(case.archive), run.kills, case.window, CHECKPOINT_INTERVAL, RATE)
        report(capsys, label, run, bound)
        try:
            assert run.kills == KILLS
            assert_fetched_right(run, out, case, sha256(case.archive), out.parent)
            assert run.total_sent <= bound
            # The issue's bound is loose when later attempts fetch little, so also: far less
            # than restarting from byte 0 at every kill would have cost.
            assert run.total_sent <= max_share_of_restarting(case) * run.restart_from_zero
            assert run.resumed_at == sorted(run.resumed_at), "a resume went back"
            assert run.last_resume > 0
            also(case, run)
        except AssertionError as failed:
            failures.append(f"{label}: {failed}")
    assert not failures, "\n".join(failures)


def test_sigkill_at_progress_points_then_restart_until_done(
    tmp_path: Path, kill_cases: dict[str, Case], capsys: pytest.CaptureFixture[str]
) -> None:
    """Every case of the matrix, 20 kills each, then run to completion."""
    runs = [(kill_cases[name], connections) for name, connections in RUNS]
    run_kill_matrix(
        tmp_path,
        runs,
        lambda case: MAX_SHARE_OF_RESTARTING.get(case.name, MAX_SHARE_OF_RESTARTING_FRAMED),
        capsys,
    )


def _pieced_archives(tar: bytes, seed: str, low: int, high: int) -> dict[str, bytes]:
    return {
        "tar.zst": zstd_cli_frames(_pieces(tar, seed, low, high)),
        "tar.gz": gzip_cli_members(_pieces(tar, seed, low, high)),
    }


def _mixed_tree(seed: int, files: int, size: int, random_share: float) -> dict[str, bytes]:
    return {
        f"model/shard-{n}.bin": mixed_content(seed + n, size, random_share) for n in range(files)
    }


POD_FLAGS = ["--checkpoint-interval", "2", "--connections", "auto", "--max-disk-buffer", "1GiB"]
POD_KILLS = 6
POD_RATE = 24 * MIB
POD_MAX_SHARE_OF_RESTARTING = 0.8


@pytest.mark.evidence
def test_what_pods_get_survives_sigkills(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The webhook's injected defaults, on an archive of the size that makes resuming matter."""
    tree = _mixed_tree(seed=41, files=4, size=24 * MIB, random_share=0.75)
    archive = zstd_cli_frames(_pieces(tar_bytes(tree), "pods", 4 * MIB, 8 * MIB))
    assert len(archive) >= 64 * MIB
    case = Case("what pods get", archive, tree, window=1 << 30)
    rng = random.Random("what pods get")
    shares = [rng.uniform(*SHARES) for _ in range(POD_KILLS)]
    digest = sha256(archive)
    out = tmp_path / "out"
    with Origin() as origin:
        pace = Faults(drip_bytes_per_s=POD_RATE / AUTO_CONNECTIONS)
        origin.add(PATH, archive, faults=pace)
        command = _command(origin.url(PATH), out, digest, *POD_FLAGS)
        run = kill_then_finish(origin, command, out, len(archive), shares)
    bound = kill_bound(len(archive), run.kills, case.window, 2.0, POD_RATE)
    report(capsys, "what pods get (webhook defaults)", run, bound)
    assert run.kills == POD_KILLS
    assert_fetched_right(run, out, case, digest, tmp_path)
    assert run.total_sent <= bound
    # Attempts here are shorter than the 2 s interval and eight ranges run ahead of the decoder,
    # so what a kill keeps is mostly the window's ranges, recorded every 8 MiB: measured 0.66
    # of restarting from byte 0 (0.83 before those saves, 1.0 for a fetcher that restarts).
    assert run.total_sent <= POD_MAX_SHARE_OF_RESTARTING * run.restart_from_zero
    assert run.resumed_at == sorted(run.resumed_at), "a resume went back"
    assert run.last_resume > 0


ISSUE_RATE = 3_000_000
ISSUE_KILLS = 4
ISSUE_SHARE = 0.30
ISSUE_MAX_RATIO = 1.45
ISSUE_FLAGS = [
    "--connections", "1", "--chunk-size", "1MiB", "--max-disk-buffer", str(WINDOW),
    "--checkpoint-interval", str(CHECKPOINT_INTERVAL), "--retry-wait", "0.05",
]  # fmt: skip


def _issue_kills(tmp: Path, archive: bytes) -> tuple[KillRun, Path]:
    out = tmp / "out"
    with Origin() as origin:
        origin.add(PATH, archive, faults=Faults(drip_bytes_per_s=ISSUE_RATE))
        command = _command(origin.url(PATH), out, sha256(archive), *ISSUE_FLAGS)
        shares = [ISSUE_SHARE] * ISSUE_KILLS
        return kill_then_finish(origin, command, out, len(archive), shares), out


def run_the_issue(
    tmp_path: Path,
    archives: dict[str, bytes],
    tree: Tree,
    capsys: pytest.CaptureFixture[str],
    also: Callable[[KillRun], None] = lambda run: None,
) -> None:
    """The issue's scenario on each archive: ~40 MB at ISSUE_RATE, killed ISSUE_KILLS times at
    ISSUE_SHARE of what is left, then run to completion. The archives run side by side (each
    waits on its own paced origin almost all the time); every failure is reported together."""
    with concurrent.futures.ThreadPoolExecutor(len(archives)) as pool:
        futures = {
            name: pool.submit(_issue_kills, tmp_path / f"case-{index}", archive)
            for index, (name, archive) in enumerate(archives.items())
        }
        results = {name: future.result() for name, future in futures.items()}
    failures: list[str] = []
    for name, (run, out) in results.items():
        archive = archives[name]
        bound = int(ISSUE_MAX_RATIO * len(archive))
        report(capsys, f"the issue, {name}", run, bound)
        try:
            assert 36_000_000 <= len(archive) <= 46_000_000
            assert run.kills == ISSUE_KILLS
            assert_fetched_right(run, out, Case(name, archive, tree), sha256(archive), out.parent)
            # Starting over from byte 0 each time would cost 1 + 4 x 0.3 = 2.2 archives or more.
            assert run.total_sent <= bound
            assert run.last_resume > 0
            also(run)
        except AssertionError as failed:
            failures.append(f"{name}: {failed}")
    assert not failures, "\n".join(failures)


@pytest.mark.evidence
def test_the_issue_four_sigkills_cost_under_half_an_archive(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """~40 MB in 4 MiB frames (tar.zst) or members (tar.gz) at 3 MB/s, killed four times at
    30% of what is left."""
    tree = _mixed_tree(seed=61, files=3, size=18 * MIB, random_share=0.7)
    run_the_issue(
        tmp_path, _pieced_archives(tar_bytes(tree), "issue", 4 * MIB, 4 * MIB), tree, capsys
    )


WAITING = ("is working in", "waiting up to")
TWO_FETCHERS_RATE = 2 * MIB


class LineReader:
    """Reads a process's stderr on a thread; ``wait_for`` blocks until a line has all words."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        assert process.stderr is not None
        self._stream = process.stderr
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._ended = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for line in self._stream:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self._ended = True
            self._changed.notify_all()

    def wait_for(self, words: tuple[str, ...], timeout: float) -> bool:
        def seen() -> bool:
            return self._ended or any(all(w in line for w in words) for line in self.lines)

        with self._changed:
            self._changed.wait_for(seen, timeout)
            return any(all(w in line for w in words) for line in self.lines)

    def text(self, timeout: float = 30.0) -> str:
        self._thread.join(timeout)
        self._stream.close()
        return "".join(self.lines)


def test_a_second_fetcher_on_the_same_dir_waits_then_resumes_the_first_ones_checkpoint(
    tmp_path: Path, kill_cases: dict[str, Case]
) -> None:
    case = kill_cases["tar.zst-cli-frames"]
    size = len(case.archive)
    digest = sha256(case.archive)
    out = tmp_path / "out"
    reached = threading.Event()

    def note_progress(sent: int) -> bool:
        if sent >= 0.3 * size:
            reached.set()
        return True

    with Origin() as origin:
        origin.add(PATH, case.archive, faults=Faults(drip_bytes_per_s=TWO_FETCHERS_RATE))
        origin.on_body_progress(PATH, note_progress)
        command = _command(origin.url(PATH), out, digest, *TEST_FLAGS, "--connections", "1")
        first = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
        second: subprocess.Popen[str] | None = None
        try:
            assert reached.wait(60), "the first fetcher never got 30% of the archive"
            second = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
            second_log = LineReader(second)
            waiting = second_log.wait_for(WAITING, timeout=30)
            still_running = first.poll() is None
            first.send_signal(signal.SIGTERM)
            _, first_err = first.communicate(timeout=30)
            second.wait(timeout=ATTEMPT_TIMEOUT)
            second_err = second_log.text()
        finally:
            for process in (first, second):
                if process is not None and process.poll() is None:
                    process.kill()
                    process.wait()
        origin.wait_idle()
        sent = origin.bytes_sent(PATH)
    assert waiting, f"the second fetcher did not say it waits for the first:\n{second_err}"
    assert still_running, f"the first fetcher ended before the SIGTERM:\n{first_err}"
    assert first.returncode == 128 + signal.SIGTERM, first_err
    assert second.returncode == 0, second_err
    assert_fetched_right_once(out, case, digest, tmp_path, second_err)
    resumed = RESUMED_AT.findall(second_err)
    assert resumed and int(resumed[0]) > 0, second_err
    # Nothing before the resume point went out twice: one archive, plus what the first one
    # held past its checkpoint when it stopped.
    assert sent <= size + WINDOW + MIB, f"{sent:,} bytes sent for {size:,}"


def assert_fetched_right_once(out: Path, case: Case, digest: str, tmp: Path, log: str) -> None:
    assert f"sha256 {digest} verified" in log
    assert not isinstance(case.expected, bytes)
    snapshot = fetched_tree(out)
    assert snapshot == tree_snapshot(write_tree(case.expected, tmp / "expected"))
    assert not (out / WORK_DIR_NAME).exists()


def lz4_cli_frames(pieces: Iterator[bytes]) -> bytes:
    """One frame per piece, each from its own run of the real ``lz4``."""
    args = ["lz4", "-q", "-c"]
    run = [subprocess.run(args, input=p, capture_output=True, check=True) for p in pieces]
    return b"".join(r.stdout for r in run)


def _zip_and_lz4_cases(tmp: Path) -> dict[str, Case]:
    # Many entries of like size: a zip restarts at the entry a kill fell in.
    tree = {f"shards/s-{n:03d}.bin": mixed_content(200 + n, 256 * 1024, 0.6) for n in range(80)}
    tar = tar_bytes(make_tree(seed=31, n_files=40, total_bytes=20 * MIB))
    cases = [
        Case("zip-info-zip", cli_zip(tree, tmp / "zip"), tree, flags=("--format", "zip")),
        Case(
            "tar.lz4-cli-frames",
            lz4_cli_frames(_pieces(tar, "lz4", MIB, 4 * MIB)),
            make_tree(seed=31, n_files=40, total_bytes=20 * MIB),
        ),
    ]
    return {case.name: case for case in cases}


ZIP_LZ4_RUNS = [("zip-info-zip", "1"), ("zip-info-zip", "4"), ("tar.lz4-cli-frames", "1"),
                ("tar.lz4-cli-frames", "auto")]  # fmt: skip
# Entries of 256 KiB and lz4 frames of up to 4 MiB: measured 0.16-0.40 (zip) and 0.18-0.48
# (tar.lz4) of restarting from byte 0 at every kill, which a fetcher that cannot resume them
# costs by definition (1.0).
MAX_SHARE_OF_RESTARTING_ZIP_LZ4 = {"zip-info-zip": 0.6, "tar.lz4-cli-frames": 0.85}


def test_sigkill_zip_and_tar_lz4_at_progress_points_then_restart_until_done(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A zip by Info-ZIP and a tar.lz4 in frames by the lz4 tool, 20 kills each, resumed."""
    cases = _zip_and_lz4_cases(tmp_path / "made")
    runs = [(cases[name], connections) for name, connections in ZIP_LZ4_RUNS]
    run_kill_matrix(tmp_path, runs, lambda case: MAX_SHARE_OF_RESTARTING_ZIP_LZ4[case.name], capsys)
