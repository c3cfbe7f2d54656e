"""The fetch's inner loop: source -> digest -> stages, with checkpoints at restorable points.

Two threads. The network thread pulls the source and hashes each chunk as it arrives; the
caller's thread decodes and extracts. A chunk travels with the digest state before it, so the
digest at any restorable point inside it is derived only when a checkpoint needs it.

What a kill costs is bounded by when restore points are saved, so the rule is simple: once a
restore save is due, the very next restorable point is saved (see Checkpointer). When no
restorable point comes for a whole interval (a frame larger than the reads), a progress save
records the files finished since and frees the window a restart would fetch again anyway.

After a signal, decoding goes on with what has arrived, for at most STOP_GRACE seconds, up to
the next restorable point, so the last checkpoint lands where a restart loses nothing.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from fetcher.errors import Interrupted, UnsafeArchive
from fetcher.progress import Progress
from fetcher.sources import Source, SourceStats, Window
from fetcher.stages.chain import Stages
from fetcher.stages.digest import ResumableSha256
from fetcher.state.checkpoint import WindowState, history_name, history_serial
from fetcher.state.checkpointer import Checkpointer

STOP_GRACE = 2.0
_QUEUE_CHUNKS = 8  # read-ahead between the network thread and the decoder: ~8 MiB
_IDLE_SECONDS = 0.2


class StopRequest:
    """Set from a signal handler; the loops check it between chunks."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signal_number = 0
        self.signal_name = ""
        self.requested_at = 0.0

    def request(self, signal_number: int, signal_name: str) -> None:
        self.signal_number, self.signal_name = signal_number, signal_name
        self.requested_at = time.monotonic()
        self.event.set()

    def check(self) -> None:
        if self.event.is_set():
            raise Interrupted(self.signal_number, self.signal_name or "a stop request")

    def grace_over(self) -> bool:
        return self.event.is_set() and time.monotonic() - self.requested_at > STOP_GRACE


@dataclass(frozen=True)
class Stats:
    digest: str
    bytes: int
    extracted_bytes: int
    files: int
    format: str
    origin: str = ""
    connections: int = 1
    window_bytes: int = 0


@dataclass
class _Hashed:
    data: bytes
    hash_before: ResumableSha256


@dataclass
class _End:
    hasher: ResumableSha256


def run(
    source: Source,
    stages: Stages,
    checkpointer: Checkpointer,
    stop: StopRequest,
    progress: Progress,
    *,
    stats: SourceStats,
    halt: threading.Event,
    window_size: int,
    max_download: int,
) -> Stats:
    """Feed the source through the stages to the end; the digest of what was read.

    halt tells the source's threads to stop: set here once the decoder is done with them
    (not at the signal itself, since the decoder may still need bytes to reach a clean point).
    """
    window = source if isinstance(source, Window) else None
    announced_checked = False
    saver = _Saver(checkpointer, stages, stats, window, window_size)

    def on_restorable(position: int) -> None:
        if stop.event.is_set():
            saver.last(at_restorable_point=True)  # the first clean point after the signal
            stop.check()
        if checkpointer.restore_due(position):
            saver.restore_point()

    def restore_wanted(position: int) -> bool:
        return stop.event.is_set() or checkpointer.restore_due(position)

    stages.on_restorable = on_restorable
    stages.restore_wanted = restore_wanted
    try:
        for item in _received(_network_items(source, stages.hasher(), halt), stop):
            if item is None:
                saver.while_waiting()
                continue
            if isinstance(item, _End):
                stages.finish()
                progress.update(stages.bytes, stages.extracted_bytes)
                return Stats(
                    item.hasher.hexdigest(),
                    stages.bytes,
                    stages.extracted_bytes,
                    stages.tree.files_written,
                    stages.format_name(),
                    stats.origin,
                    stats.connections,
                    stats.window_bytes,
                )
            stages.feed(item.data, item.hash_before)
            if not announced_checked and stats.identity is not None:
                announced_checked = True
                _check_size(stats.identity.length or 0, max_download, announced=True)
            _check_size(stages.bytes, max_download, announced=False)
            if stop.grace_over():
                saver.last(at_restorable_point=stages.at_boundary)  # no clean point in time
                stop.check()
            saver.after_chunk()
            if progress.total is None and stats.identity:
                progress.total = stats.identity.length
            progress.update(stages.bytes, stages.extracted_bytes)
        raise AssertionError("the network thread ended without a last item")
    except Interrupted:
        saver.last(at_restorable_point=stages.restorable and stages.at_boundary)
        stop.check()  # the signal's own number and name
        raise
    finally:
        halt.set()
        checkpointer.wait(reraise=False)  # never write into a state directory being removed
        stages.release()


def _check_size(size: int, limit: int, *, announced: bool) -> None:
    """No archive is much larger than what it extracts to: a body past that is not one."""
    if size > limit:
        what = f"announces {size} bytes" if announced else f"sent more than {limit} bytes"
        raise UnsafeArchive(
            "the download",
            f"the source {what}, more than --max-extracted-size allows for an archive",
        )


class _Saver:
    """Fills in the checkpoint, asks for it to be saved, then hands back the window's space."""

    def __init__(
        self,
        checkpointer: Checkpointer,
        stages: Stages,
        stats: SourceStats,
        window: Window | None,
        window_size: int,
    ) -> None:
        self._checkpointer = checkpointer
        self._stages = stages
        self._stats = stats
        self._window = window
        self._window_size = window_size
        self._closed = False
        self._state_dir = checkpointer.path.parent
        restore = checkpointer.checkpoint.restore
        kept = restore.decoder.history_serial if restore and restore.decoder else None
        self._history_serial = 0 if kept is None else kept + 1
        sweep_histories(self._state_dir, keep_from=self._history_serial, keep=kept)

    def _common(self, keep_from: int) -> None:
        checkpoint = self._checkpointer.checkpoint
        identity = self._stats.identity
        if identity is not None:
            checkpoint.length, checkpoint.etag = identity.length, identity.etag
            checkpoint.last_modified = identity.last_modified
        checkpoint.fetched_bytes = self._stats.bytes_received
        held = self._window.holdings() if self._window else []
        # A range cut short at keep_from would not match its CRC32C: it is left out whole.
        checkpoint.window = WindowState(tuple(r for r in held if r.start >= keep_from))

    def _release(self, position: int) -> None:
        if self._window is not None:
            self._window.release_below(position)

    def restore_point(self) -> None:
        """Every stage restorable here: the window below this position is never read again."""
        stages = self._stages
        if not stages.restorable:
            return
        position = stages.bytes
        checkpoint = self._checkpointer.checkpoint
        serial = self._history_serial
        checkpoint.restore, history = stages.restore_point(serial)
        if history is not None:
            # Flushed with the volume before the checkpoint that names it is written.
            (self._state_dir / history_name(serial)).write_bytes(history)
            self._history_serial += 1
        # Files finished after this point are still read past on a restart from it.
        checkpoint.completed = {}
        stages.tree.completed.clear()
        self._common(position)

        def then() -> None:
            self._release(position)
            if history is not None:
                sweep_histories(self._state_dir, keep_from=serial)

        self._checkpointer.save_restore(then=then, received=self._stats.bytes_received)

    def progress(self) -> None:
        """No restorable point here: record finished files; keep at most half a window behind."""
        stages = self._stages
        checkpoint = self._checkpointer.checkpoint
        keep_from = max(checkpoint.position, stages.bytes - self._window_size // 2)
        checkpoint.completed.update(stages.tree.completed)
        stages.tree.completed.clear()
        self._common(keep_from)
        self._checkpointer.save_progress(
            then=lambda: self._release(keep_from), received=self._stats.bytes_received
        )

    def while_waiting(self) -> None:
        """Waiting for bytes: a checkpoint now may be what frees the window for them."""
        checkpointer, stages = self._checkpointer, self._stages
        if stages.restorable and stages.at_boundary:
            if checkpointer.restore_due(stages.bytes) or checkpointer.progress_due():
                self.restore_point()
        else:
            self.after_chunk()

    def after_chunk(self) -> None:
        if self._checkpointer.progress_due():
            self.progress()  # no restorable point for a whole interval
        elif (
            self._window is not None
            and self._checkpointer.window_due(self._stats.bytes_received)
            and self._window.holdings()  # asked last: it takes the download's lock
        ):
            self.window()  # what the ranges brought ahead of the decoder

    def window(self) -> None:
        """Only the window's holdings: the files and the restore point stay as last saved."""
        checkpoint = self._checkpointer.checkpoint
        self._common(checkpoint.position)
        self._checkpointer.save_window(then=lambda: None, received=self._stats.bytes_received)

    def last(self, *, at_restorable_point: bool) -> None:
        """On the way out after a signal: one more checkpoint, on disk before exiting."""
        if self._closed:
            return
        self._closed = True
        if at_restorable_point and self._stages.restorable:
            self.restore_point()
        else:
            self.progress()
        self._checkpointer.wait()


def sweep_histories(state_dir: Path, *, keep_from: int, keep: int | None = None) -> None:
    """Remove the decoder history files no checkpoint on disk names any more: those older
    than keep_from, except keep."""
    try:
        paths = list(state_dir.iterdir())
    except FileNotFoundError:
        return
    for path in paths:
        serial = history_serial(path.name)
        if serial is not None and serial < keep_from and serial != keep:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def _network_items(
    source: Source, hasher: ResumableSha256, finished: threading.Event
) -> queue.Queue[object]:
    """Run the source and the digest on their own thread; items arrive in order."""
    items: queue.Queue[object] = queue.Queue(maxsize=_QUEUE_CHUNKS)

    def put(item: object) -> bool:
        while not finished.is_set():
            try:
                items.put(item, timeout=_IDLE_SECONDS)
            except queue.Full:
                continue
            return True
        return False

    def produce() -> None:
        digest = hasher
        try:
            for data in source.chunks():
                before = digest.copy()
                digest.update(data)
                if not put(_Hashed(data, before)):
                    return
            put(_End(digest))
        except BaseException as error:  # handed to the consumer, which reports it
            put(error)

    threading.Thread(target=produce, name="model-fetch-network", daemon=True).start()
    return items


def _received(items: queue.Queue[object], stop: StopRequest) -> Iterator[_Hashed | _End | None]:
    """The network thread's items in order; None whenever nothing came for a moment."""
    while True:
        try:
            item = items.get(timeout=_IDLE_SECONDS)
        except queue.Empty:
            if stop.grace_over():
                stop.check()
            yield None
            continue
        if isinstance(item, BaseException):
            raise item
        assert isinstance(item, _Hashed | _End)
        yield item
        if isinstance(item, _End):
            return
