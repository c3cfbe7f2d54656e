"""The checkpointer's promises: no save declined, newer saves replace older ones, flushes kept."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from fetcher.state.checkpoint import (
    CHECKPOINT_NAME,
    Checkpoint,
    HeldRange,
    RequestIdentity,
    WindowState,
    decode,
)
from fetcher.state.checkpointer import Checkpointer


class _Flushes:
    """Records the volume flushes the writes ran; the first one can be held until released."""

    def __init__(self, *, hold_first: bool) -> None:
        self.calls: list[str] = []
        self.started = threading.Event()
        self.release = threading.Event()
        if not hold_first:
            self.release.set()

    def volume(self) -> None:
        self.calls.append("volume")
        self.started.set()
        self.release.wait(30)


def _checkpointer(tmp_path: Path, flushes: _Flushes) -> Checkpointer:
    return Checkpointer(
        tmp_path / CHECKPOINT_NAME,
        Checkpoint(RequestIdentity("test", None, "auto")),
        interval=3600,
        every_bytes=1 << 40,
        flush=flushes.volume,
    )


def _on_disk(tmp_path: Path) -> Checkpoint:
    return decode((tmp_path / CHECKPOINT_NAME).read_bytes())


def _window(*ranges: tuple[int, int, int]) -> WindowState:
    return WindowState(tuple(HeldRange(*r) for r in ranges))


def test_a_window_save_flushes_nothing_its_crc32cs_vouch_for_it(tmp_path: Path) -> None:
    flushes = _Flushes(hold_first=False)
    checkpointer = _checkpointer(tmp_path, flushes)
    checkpointer.checkpoint.window = _window((0, 4096, 0xDEADBEEF))
    checkpointer.save_window(then=lambda: None, received=4096)
    checkpointer.wait()
    assert flushes.calls == []
    assert _on_disk(tmp_path).window == _window((0, 4096, 0xDEADBEEF))


def test_saves_asked_for_during_a_write_are_kept_and_the_stronger_flush_wins(
    tmp_path: Path,
) -> None:
    flushes = _Flushes(hold_first=True)
    checkpointer = _checkpointer(tmp_path, flushes)
    released: list[str] = []
    checkpointer.checkpoint.fetched_bytes = 1
    checkpointer.save_progress(then=lambda: released.append("first"), received=1)
    assert flushes.started.wait(30)  # the first write is in flight, held in its flush
    # Two more while it is: a progress save (needs the volume flushed), then a window save
    # (needs no flush) that replaces it in the pending slot.
    checkpointer.checkpoint.fetched_bytes = 2
    checkpointer.save_progress(then=lambda: released.append("progress"), received=2)
    checkpointer.checkpoint.fetched_bytes = 3
    checkpointer.checkpoint.window = _window((8192, 16384, 7))
    checkpointer.save_window(then=lambda: released.append("window"), received=3)
    flushes.release.set()
    checkpointer.wait()
    # Declined saves would leave fetched_bytes at 1; a merge that dropped the progress save's
    # need would flush nothing for a checkpoint vouching for finished files.
    assert flushes.calls == ["volume", "volume"]
    assert released == ["first", "progress", "window"]
    saved = _on_disk(tmp_path)
    assert saved.fetched_bytes == 3
    assert saved.window == _window((8192, 16384, 7))
    assert checkpointer.written == 2


def test_a_write_that_fails_is_raised_on_the_next_save(tmp_path: Path) -> None:
    def broken() -> None:
        raise OSError(28, "No space left on device")

    checkpointer = Checkpointer(
        tmp_path / CHECKPOINT_NAME,
        Checkpoint(RequestIdentity("test", None, "auto")),
        interval=3600,
        every_bytes=1 << 40,
        flush=broken,
    )
    checkpointer.save_progress(then=lambda: None)
    with pytest.raises(OSError, match="No space left"):
        checkpointer.wait()
    assert not (tmp_path / CHECKPOINT_NAME).exists()


def test_the_first_window_save_is_due_at_once_and_later_ones_are_spaced(tmp_path: Path) -> None:
    checkpointer = Checkpointer(
        tmp_path / CHECKPOINT_NAME,
        Checkpoint(RequestIdentity("test", None, "auto")),
        interval=3600,
        every_bytes=1 << 20,  # a small window: its saves come every MiB, not every 8
        flush=lambda: None,
    )
    assert not checkpointer.window_due(received=(1 << 20) - 1)
    assert checkpointer.window_due(received=1 << 20)  # a run killed early keeps its ranges
    checkpointer.save_window(then=lambda: None, received=1 << 20)
    assert not checkpointer.window_due(received=4 << 20)  # within MIN_SPACING of that save
    checkpointer.wait()
