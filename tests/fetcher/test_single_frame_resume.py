"""A single-stream tar.bz2 has no point to resume the decoder from: what a restart still saves.

The decoder must start again at byte 0, but the files that were complete before the kill are
read past, not written again, and the bytes still held in the download window are not fetched
again; the log says exactly how much is.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from fetcher.commit import WORK_DIR_NAME
from fetcher.state.checkpoint import CHECKPOINT_NAME
from tests.support.archives import fetched_tree, py_archive, tree_snapshot, write_tree
from tests.support.events import read_checkpoint
from tests.support.origin import Origin

TREE = {
    f"weights/shard-{index:02d}.bin": random.Random(index).randbytes(400_000) for index in range(10)
}
ARCHIVE = py_archive(TREE, "bz2", parts=1)  # one stream: no boundary before the end
DIGEST = hashlib.sha256(ARCHIVE).hexdigest()


def _command(url: str, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "fetcher", url, "-o", str(out), "--sha256", DIGEST,
        "--connections", "4", "--chunk-size", "256K", "--checkpoint-interval", "0.1",
        "--retry-wait", "0.01", "--timeout", "5", *extra,
    ]  # fmt: skip


def _checkpoint(out: Path) -> dict[str, Any] | None:
    return read_checkpoint(out / WORK_DIR_NAME / CHECKPOINT_NAME)


def test_a_restart_rewrites_no_complete_file_and_refetches_only_what_the_window_lost(
    tmp_path: Path, origin: Origin
) -> None:
    origin.add("/m.tar.bz2", ARCHIVE)
    out = tmp_path / "out"
    url = origin.url("/m.tar.bz2")
    process = subprocess.Popen(
        _command(url, out, "--max-bandwidth", "1M"), stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 20
    checkpoint = None
    while time.monotonic() < deadline:
        checkpoint = _checkpoint(out)
        if checkpoint and len(checkpoint["completed"]) >= 3:
            break
        assert process.poll() is None, process.communicate()[1]
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    assert checkpoint is not None
    checkpoint = _checkpoint(out)  # the last one on disk
    assert checkpoint is not None
    assert checkpoint["restore"] is None, "a single stream offers no restorable point"
    completed = [name for _, name, _ in checkpoint["completed"]]
    assert len(completed) >= 3
    staged = out / ".model-fetch" / "tree"
    before = {name: os.stat(staged / name) for name in completed}
    held = sum(end - start for start, end, _ in checkpoint["window"]["ranges"])
    assert held > 0

    origin.clear_log()
    final = subprocess.run(_command(url, out), capture_output=True, text=True, timeout=60)
    assert final.returncode == 0, final.stderr

    said = re.search(
        r"this stream can only restart at byte 0 .*: re-fetching (\d+) bytes, reusing (\d+) "
        r"held in the download window; the (\d+) files already complete are read past",
        final.stderr,
    )
    assert said, final.stderr
    refetch, reused, skipped = (int(group) for group in said.groups())
    assert refetch + reused == len(ARCHIVE)
    assert reused == held
    assert skipped == len(completed)
    # What the origin served on the second run is what the log announced (the probe's one
    # byte aside), not the whole archive again.
    served = sum(r.body_bytes for r in origin.requests if r.range != "bytes=0-0")
    assert served == refetch, [(r.range, r.body_bytes) for r in origin.requests]
    assert served < len(ARCHIVE)

    # The files complete before the kill are the same files, never opened for writing again.
    for name, earlier in before.items():
        now = os.stat(out / name)
        assert (now.st_ino, now.st_mtime_ns, now.st_ctime_ns) == (
            earlier.st_ino,
            earlier.st_mtime_ns,
            earlier.st_ctime_ns,
        ), name
    snapshot = fetched_tree(out)
    assert snapshot == tree_snapshot(write_tree(TREE, tmp_path / "expected"))
