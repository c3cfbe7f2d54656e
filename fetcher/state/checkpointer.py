"""When to take a checkpoint, and taking it without holding up the decoder.

Two clocks, because two kinds of save serve different ends:

- a *restore* save records every stage's state at a restorable point (a frame or member
  boundary, any byte of a plain stream): it is what bounds the bytes a kill costs. It is due
  every interval (or sooner when a quarter of the window lies behind the last one), and once
  due it is taken at the very next restorable point, whatever else was saved meanwhile.
- a *progress* save, taken when no restorable point came for a whole interval, records the
  files finished since and the ranges the window holds, and frees window space that a
  restart would only fetch again;
- a *window* save, taken when the window received PROGRESS_BYTES (or every_bytes, when
  smaller) since the last save, records only the ranges it holds, so that a kill does not
  lose what parallel ranges brought ahead of the decoder. It flushes nothing: each range goes
  with the CRC32C it was written with, and a later run reuses only those whose bytes still
  match it.

Saves are never declined. The flush (a syncfs of the volume) and the atomic write run on a
thread of their own; a save asked for while one is being written waits in a single slot, and
a newer one replaces it: each blob holds everything the older ones did. Work that depends on
a save being durable (handing back the window behind it) runs once it is.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fetcher.state.checkpoint import Checkpoint, save_checkpoint

PROGRESS_BYTES = 8 << 20
# Saves triggered by bytes alone are at least this far apart, so that a fast download does not
# write the checkpoint many times a second.
MIN_SPACING = 0.25


@dataclass
class _Save:
    blob: bytes
    then: Callable[[], None]
    flush: bool = True  # False: nothing it vouches for needs flushing first


class Checkpointer:
    def __init__(
        self,
        path: Path,
        checkpoint: Checkpoint,
        *,
        interval: float,
        every_bytes: int,
        flush: Callable[[], None],
    ) -> None:
        self.path = path
        self.checkpoint = checkpoint
        self._interval = interval
        self._every_bytes = every_bytes
        self._window_bytes = min(PROGRESS_BYTES, every_bytes)
        self._flush = flush
        now = time.monotonic()
        # The first restorable point of every run is saved at once. Without a restore point
        # yet, a checkpoint without one then means that no boundary had been passed (which the
        # log says); and a run killed again soon after it resumed still keeps what it did.
        self._last_restore_at = -math.inf
        self._last_restore_position = checkpoint.position
        self._last_save_at = now
        # The first window save needs no spacing: a run killed soon after it started keeps the
        # ranges it brought ahead (it costs no flush).
        self._spaced_from = -math.inf
        self._received_at_last_save = 0
        self.restore_saves = 0
        self.written = 0
        self._lock = threading.Lock()
        self._pending: _Save | None = None
        self._writing = False
        self._idle = threading.Condition(self._lock)
        self._error: BaseException | None = None

    # --- when ---------------------------------------------------------------------------

    def restore_due(self, position: int) -> bool:
        return (
            time.monotonic() - self._last_restore_at >= self._interval
            or position - self._last_restore_position >= self._every_bytes
        )

    def progress_due(self) -> bool:
        now = time.monotonic()
        return (
            now - self._last_save_at >= self._interval
            and now - self._last_restore_at >= self._interval
        )

    def window_due(self, received: int) -> bool:
        """received: bytes brought so far in this run (the caller checks that a window holds
        some of them ahead of the decoder)."""
        return (
            received - self._received_at_last_save >= self._window_bytes
            and time.monotonic() - self._spaced_from >= MIN_SPACING
        )

    # --- what ---------------------------------------------------------------------------

    def save_restore(self, then: Callable[[], None], received: int = 0) -> None:
        """checkpoint.restore was just set to a restorable point: make it durable."""
        self._raise_pending_error()
        self._received_at_last_save = received
        self._last_restore_at = self._last_save_at = self._spaced_from = time.monotonic()
        self._last_restore_position = self.checkpoint.position
        self.restore_saves += 1
        self._submit(_Save(self.checkpoint.encode(), then))

    def save_progress(self, then: Callable[[], None], received: int = 0) -> None:
        """Files finished and window holdings changed; the restore point stays as it was."""
        self._raise_pending_error()
        self._received_at_last_save = received
        self._last_save_at = self._spaced_from = time.monotonic()
        self._submit(_Save(self.checkpoint.encode(), then))

    def save_window(self, then: Callable[[], None], received: int) -> None:
        """Only checkpoint.window changed: its CRC32Cs vouch for it, nothing is flushed."""
        self._raise_pending_error()
        self._received_at_last_save = received
        self._last_save_at = self._spaced_from = time.monotonic()
        self._submit(_Save(self.checkpoint.encode(), then, flush=False))

    def wait(self, *, reraise: bool = True) -> None:
        """Until every save asked for is on disk; re-raise what writing one raised."""
        with self._idle:
            self._idle.wait_for(lambda: not self._writing and self._pending is None)
        if reraise:
            self._raise_pending_error()

    # --- how ----------------------------------------------------------------------------

    def _raise_pending_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _submit(self, save: _Save) -> None:
        with self._lock:
            if self._pending is not None:
                # Superseded: the newer blob holds the older one's state, and its release
                # reaches at least as far (positions only move forward).
                save = _Save(
                    save.blob,
                    _both(self._pending.then, save.then),
                    self._pending.flush or save.flush,
                )
            self._pending = save
            if self._writing:
                return
            self._writing = True
        threading.Thread(target=self._write_all, name="model-fetch-checkpoint", daemon=True).start()

    def _write_all(self) -> None:
        while True:
            with self._lock:
                save, self._pending = self._pending, None
                if save is None or self._error is not None:
                    self._writing = False
                    self._pending = None
                    self._idle.notify_all()
                    return
            try:
                # The files the checkpoint vouches for reach the disk first.
                if save.flush:
                    self._flush()
                save_checkpoint(self.path, save.blob)
                self.written += 1
                save.then()
            except BaseException as error:  # re-raised on the decoder's thread
                with self._lock:
                    self._error = error


def _both(first: Callable[[], None], second: Callable[[], None]) -> Callable[[], None]:
    def run() -> None:
        first()
        second()

    return run
