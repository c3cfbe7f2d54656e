"""The download window: bytes the decoder reads next in memory, bytes ahead on disk with CRC32Cs.

Nothing flushes the part file before a checkpoint names its ranges, so a restart trusts a held
range only if its bytes still match the CRC32C they were written with; and the connection that
hands bytes over in memory waits for a slow decoder instead of spilling past the window.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import crc32c
import pytest

from fetcher.http.client import make_client
from fetcher.http.exchange import Identity
from fetcher.http.ratelimit import Unlimited
from fetcher.http.retry import RetryPolicy
from fetcher.http.target import Target
from fetcher.sources.governor import (
    GROW_AFTER,
    GROW_SHARE,
    HELD_SHARE,
    SHRINK_AFTER,
    SHRINK_SHARE,
    Governor,
)
from fetcher.sources.partfile import PartFile
from fetcher.sources.ranged import ParallelDownload
from fetcher.sources.spill import BLOCK, SpillRun
from fetcher.state.checkpoint import CHECKPOINT_NAME, HeldRange, StateError, WindowState
from tests.fetcher.conftest import sha256
from tests.fetcher.test_kill import (
    CHECKPOINT_INTERVAL,
    MIB,
    RATE,
    WINDOW,
    kill_bound,
    mixed_content,
    zstd_frame_per,
)
from tests.support.archives import (
    cli_compress,
    fetched_tree,
    make_tree,
    tar_bytes,
    tree_snapshot,
    write_tree,
)
from tests.support.events import PATIENCE_S, read_checkpoint, wait_until
from tests.support.origin import Faults, Origin

PATH = "/model"
CONNECTIONS = 4


def _command(url: str, state: Path, out: Path, digest: str, *flags: str) -> list[str]:
    return [
        sys.executable, "-m", "fetcher", url, "-o", str(out), "--workdir", str(state),
        "--sha256", digest, "--connections", str(CONNECTIONS), "--retry-wait", "0.05", *flags,
    ]  # fmt: skip


def _held(state: Path) -> list[list[int]]:
    body = read_checkpoint(state / CHECKPOINT_NAME)
    ranges: list[list[int]] = ((body or {}).get("window") or {}).get("ranges") or []
    return ranges


def _covering(origin: Origin, offset: int) -> list[str]:
    """The ranged requests whose range holds offset."""
    found = []
    for request in origin.requests:
        match = re.fullmatch(r"bytes=(\d+)-(\d+)", request.range or "")
        if match and int(match[1]) <= offset <= int(match[2]):
            found.append(request.range or "")
    return found


def test_a_held_range_damaged_on_disk_after_a_kill_is_fetched_again(tmp_path: Path) -> None:
    raw = random.Random(71).randbytes(12 * MIB)
    out, state = tmp_path / "out", tmp_path / "state"
    flags = ["--format", "none", "--chunk-size", "256K", "--max-disk-buffer", "4MiB",
             "--checkpoint-interval", "0.2"]  # fmt: skip
    with Origin() as origin:
        origin.add(PATH, raw, faults=Faults(drip_bytes_per_s=1_000_000))  # each connection
        command = _command(origin.url(PATH), state, out, sha256(raw), *flags)
        process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
        wait_until(lambda: len(_held(state)) >= 2, what="a checkpoint naming held ranges")
        process.kill()
        process.communicate()
        held = _held(state)  # the last checkpoint on disk
        assert held, "the checkpoint names no held range"
        start, end, _ = held[-1]
        flipped = (start + end) // 2
        with (state / "download.part").open("r+b") as part:
            part.seek(flipped)
            byte = part.read(1)
            part.seek(flipped)
            part.write(bytes([byte[0] ^ 0xFF]))
        origin.set_faults(PATH, None)
        origin.clear_log()
        final = subprocess.run(command, capture_output=True, text=True, timeout=120)
        refetched = _covering(origin, flipped)
    assert final.returncode == 0, final.stderr
    assert (out / "model").read_bytes() == raw
    assert final.stderr.count("do not match the CRC32C they were written with") == 1
    assert refetched, "the damaged range was not fetched again"
    reused = re.search(r"reusing (\d+) held in the download window", final.stderr)
    assert reused and int(reused[1]) > 0, final.stderr


def test_held_ranges_that_fail_their_crc32c_after_the_gaps_are_fetched_are_fetched_again(
    tmp_path: Path,
) -> None:
    """A node crash leaves zeros where the never-flushed part file's pages were. The held
    ranges are checked only when the decoder reaches them; by then every gap may be fetched,
    and a connection must still be there to fetch the damaged ranges again (it used to have
    gone, and the resume waited for good). Here the part file holds every byte, all zeros."""
    data = random.Random(72).randbytes(4 * MIB)
    half = len(data) // 2
    held = [HeldRange(0, half, crc32c.crc32c(data[:half])),
            HeldRange(half, len(data), crc32c.crc32c(data[half:]))]  # fmt: skip
    (tmp_path / "part").write_bytes(bytes(len(data)))
    received: list[bytes] = []
    with (
        Origin() as origin,
        make_client(
            ca_bundle=None, authorization=None, read_timeout=30, connect_timeout=30
        ) as client,
    ):
        origin.add(PATH, data)
        download = ParallelDownload(
            [Target(origin.url(PATH), "origin")], client, policy=RetryPolicy(retries=0),
            limiter=Unlimited(), stop=threading.Event(),
            part=PartFile(tmp_path / "part", len(data), keep=True),
            identity=Identity(len(data), None, None), identity_origin=0, connections=4,
            chunk_size=MIB, buffer=64 * MIB, held=held, start=0,
        )  # fmt: skip
        reader = threading.Thread(target=lambda: received.extend(download.chunks()), daemon=True)
        reader.start()
        reader.join(timeout=PATIENCE_S)
        hung = reader.is_alive()
        download.close()
        ranges = [request.range for request in origin.requests]
    assert not hung, f"still waiting after {PATIENCE_S} s; asked for {ranges}"
    assert b"".join(received) == data
    assert ranges, "nothing was fetched again"


def test_a_kill_right_after_a_checkpoint_naming_held_ranges_costs_at_most_the_kill_bound(
    tmp_path: Path,
) -> None:
    """Bytes handed over in memory are not on disk: what a kill costs is still bounded."""
    tree = {f"w/{n}.bin": mixed_content(80 + n, 10 * MIB, 0.9) for n in range(4)}
    archive = zstd_frame_per(tar_bytes(tree), 2 * MIB)
    size = len(archive)
    out, state = tmp_path / "out", tmp_path / "state"
    flags = ["--max-disk-buffer", str(WINDOW), "--checkpoint-interval", str(CHECKPOINT_INTERVAL),
             "--chunk-size", "1MiB"]  # fmt: skip
    with Origin() as origin:
        origin.add(PATH, archive, faults=Faults(drip_bytes_per_s=RATE / CONNECTIONS))
        command = _command(origin.url(PATH), state, out, sha256(archive), *flags)
        process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
        seen: list[object] = []

        def just_saved_with_held_ranges() -> bool:
            body = read_checkpoint(state / CHECKPOINT_NAME)
            if body is None or (seen and body == seen[-1]):
                return False
            seen.append(body)
            return bool(_held(state)) and origin.bytes_sent(PATH) >= size // 2

        wait_until(just_saved_with_held_ranges, what="a new checkpoint naming held ranges")
        process.kill()
        _, err = process.communicate()
        assert process.returncode == -9, err
        origin.set_faults(PATH, None)
        final = subprocess.run(command, capture_output=True, text=True, timeout=120)
        origin.wait_idle()
        sent = origin.bytes_sent(PATH) - 1  # the probe's byte
    assert final.returncode == 0, final.stderr
    snapshot = fetched_tree(out)
    assert snapshot == tree_snapshot(write_tree(tree, tmp_path / "expected"))
    # Starting over from byte 0 would cost at least half an archive more than this allows.
    assert sent <= kill_bound(size, 1, WINDOW, CHECKPOINT_INTERVAL, RATE), (sent, size)


def test_a_slow_decoder_makes_the_hand_over_wait_not_spill_past_the_window(
    tmp_path: Path,
) -> None:
    """A fast origin, a slow codec: the part file's blocks, sampled at every body write."""
    tree = make_tree(seed=73, n_files=12, total_bytes=48 * MIB)
    archive = cli_compress(tar_bytes(tree), "bzip2")  # decodes far slower than loopback serves
    buffer = 2 * MIB
    out, state = tmp_path / "out", tmp_path / "state"
    part = state / "download.part"
    peak = [0]

    def sample(sent: int) -> bool:
        with contextlib.suppress(FileNotFoundError):
            peak[0] = max(peak[0], part.stat().st_blocks * 512)
        return True

    with Origin() as origin:
        origin.add(PATH, archive)
        origin.on_body_progress(PATH, sample)
        command = _command(
            origin.url(PATH), state, out, sha256(archive),
            "--max-disk-buffer", str(buffer), "--chunk-size", "512K",
            "--checkpoint-interval", "0.2",
        )  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, timeout=300)
        sent = origin.bytes_sent(PATH)
    assert result.returncode == 0, result.stderr
    assert len(archive) >= 8 * buffer
    assert sent <= len(archive) + 1  # nothing fetched twice
    # The ranges ahead, at most the window and one range under way; a connection that spilled
    # what the decoder could not take in memory yet would fill the part file with the archive.
    assert 0 < peak[0] <= buffer + 512 * 1024 + BLOCK // 4, f"part file peaked at {peak[0]:,}"


# --- the pieces ------------------------------------------------------------------------------


def test_a_spill_run_is_cut_at_block_lines_with_each_piece_s_crc32c() -> None:
    data = random.Random(3).randbytes(3 * BLOCK)
    run = SpillRun()
    start = BLOCK - 1000
    held: dict[int, HeldRange] = {}
    for offset in range(0, len(data), 300_000):  # pieces that straddle the lines
        for piece in run.extend(start + offset, data[offset : offset + 300_000]):
            held[piece.start] = piece
    ranges = sorted(held.values(), key=lambda r: r.start)
    assert [(r.start, r.end) for r in ranges] == [
        (start, BLOCK), (BLOCK, 2 * BLOCK), (2 * BLOCK, 3 * BLOCK), (3 * BLOCK, start + 3 * BLOCK)
    ]  # fmt: skip
    for r in ranges:
        assert r.crc32c == crc32c.crc32c(data[r.start - start : r.end - start])


def test_the_governor_doubles_while_the_decoder_waits_and_halves_while_it_holds_back() -> None:
    governor = Governor(8, 2, window=1.0)
    now = 0.0
    governor.tick(now)

    def windows(count: int, *, waited: float = 0.0, held: float = 0.0) -> int:
        nonlocal now
        for _ in range(count):
            governor.waited(waited)
            governor.held_back(held)
            now += 1.0
            governor.tick(now)
        return governor.limit

    hungry, calm = GROW_SHARE + 0.05, HELD_SHARE + 0.05
    assert windows(GROW_AFTER - 1, waited=hungry) == 2  # once is an origin's hiccup
    assert windows(1, waited=hungry) == 4
    assert windows(GROW_AFTER, waited=hungry) == 8
    assert windows(GROW_AFTER, waited=0.9) == 8  # never above the count asked for
    assert windows(5) == 8  # catching up through the ranges on disk: nothing changes
    assert windows(5, waited=(GROW_SHARE + SHRINK_SHARE) / 2, held=0.9) == 8  # it still waited
    assert windows(SHRINK_AFTER - 1, held=calm) == 8  # a pause, for a flush say
    assert windows(1) == 8  # and the count starts again
    assert windows(SHRINK_AFTER, held=calm) == 4
    assert windows(3 * SHRINK_AFTER, held=calm) == 1  # never below one


@pytest.mark.parametrize(
    ("window", "why"),
    [
        ([[0, 10]], "is not [start, end, crc32c]"),
        ([[10, 10, 0]], "is not [start, end, crc32c]"),
        ([[0, 10, 1 << 32]], "is not [start, end, crc32c]"),
        ([[0, 10, -1]], "is not [start, end, crc32c]"),
        ([[0, 10, 1], [5, 20, 2]], "overlaps or precedes"),
    ],
)
def test_a_window_record_out_of_shape_is_refused_by_name(window: object, why: str) -> None:
    with pytest.raises(StateError, match=re.escape(why)):
        WindowState.from_json({"v": 1, "ranges": window})
    with pytest.raises(StateError, match="version"):
        WindowState.from_json({"v": 2, "ranges": []})
    assert WindowState.from_json({"v": 1, "ranges": [[0, 10, 7]]}) == WindowState(
        (HeldRange(0, 10, 7),)
    )


def test_a_decoder_slower_than_one_connection_leaves_the_ranges_to_that_one(
    tmp_path: Path,
) -> None:
    """An origin at 50 MB/s per connection and a decoder at 25 MB/s: while the decoder reads a
    range from disk, the connection handing the next one over in memory waits for it, and
    that wait, counted as it goes, brings the connections down to one. Counted only when each
    wait ended (up to half a second later), it never filled three windows in a row, and the
    connection ahead spilled most of the file through the part file."""
    data = random.Random(83).randbytes(96 * MIB)
    with (
        Origin() as origin,
        make_client(
            ca_bundle=None, authorization=None, read_timeout=30, connect_timeout=30
        ) as client,
    ):
        origin.add(PATH, data, faults=Faults(drip_bytes_per_s=50_000_000))  # each connection
        target = Target(origin.url(PATH), "origin")
        download = ParallelDownload(
            [target], client, policy=RetryPolicy(retries=0), limiter=Unlimited(),
            stop=threading.Event(), part=PartFile(tmp_path / "part", len(data), keep=False),
            identity=Identity(len(data), None, None), identity_origin=0, connections=8,
            chunk_size=8 * MIB, buffer=1 << 30, held=(), start=0,
        )  # fmt: skip
        digest = hashlib.sha256()
        try:
            for piece in download.chunks():
                digest.update(piece)
                time.sleep(len(piece) / 25e6)  # the decoder's pace: half a connection's
        finally:
            download.close()
    assert digest.hexdigest() == sha256(data)
    through_disk = download.stats.window_bytes
    assert through_disk <= len(data) // 2, f"{through_disk:,} of {len(data):,} bytes spilled"
