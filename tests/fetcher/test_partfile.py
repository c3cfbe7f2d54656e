"""The part file outlives no connection: a write racing close() never reaches another file."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from fetcher.sources.partfile import PartFile, PartFileClosed

LENGTH = 8 << 20
PIECE = b"\xab" * 65536


def test_writes_racing_close_stop_cleanly_and_never_touch_a_reused_descriptor(
    tmp_path: Path,
) -> None:
    part = PartFile(tmp_path / "download.part", LENGTH, keep=False)
    outcomes: list[BaseException | None] = []
    written = threading.Semaphore(0)

    def connection() -> None:
        try:
            offset = 0
            while True:
                part.write_at(offset % LENGTH, PIECE)
                offset += len(PIECE)
                written.release()
        except BaseException as error:  # what stopped it is the result
            outcomes.append(error)

    threads = [threading.Thread(target=connection) for _ in range(4)]
    for thread in threads:
        thread.start()
    for _ in range(40):  # every connection is busy writing before the close
        assert written.acquire(timeout=60)
    part.close()
    # The lowest free descriptor numbers, the part file's among them, now name other files.
    reused = [os.open(tmp_path / f"other-{n}", os.O_RDWR | os.O_CREAT, 0o600) for n in range(8)]
    try:
        for thread in threads:
            thread.join(timeout=60)
        assert all(isinstance(outcome, PartFileClosed) for outcome in outcomes), outcomes
        assert len(outcomes) == len(threads)
        assert all(os.fstat(fd).st_size == 0 for fd in reused)
    finally:
        for fd in reused:
            os.close(fd)


def test_reads_and_holes_after_close_raise_part_file_closed(tmp_path: Path) -> None:
    part = PartFile(tmp_path / "download.part", LENGTH, keep=False)
    part.write_at(0, PIECE)
    assert part.read_at(0, 4) == PIECE[:4]
    part.close()
    part.close()  # twice is harmless
    with pytest.raises(PartFileClosed):
        part.read_at(0, 4)
    with pytest.raises(PartFileClosed):
        part.release(0, LENGTH)
