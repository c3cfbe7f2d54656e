"""The checkpoint: enough to carry on after kill -9 exactly where the last one was taken.

It is one JSON document written atomically (temp file, fsync, rename) after every file it
mentions has been flushed to disk. A checkpoint of an unknown version, or one that does not
parse, is reported and ignored: the fetch starts over rather than guessing.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fetcher.state.marker import write_atomically

log = logging.getLogger("model-fetch")

CHECKPOINT_NAME = "checkpoint.json"
VERSION = 1


@dataclass
class Checkpoint:
    # What was asked for: a different command line never resumes this state.
    request: dict[str, Any]
    # What the origin served: a changed file never resumes this state.
    length: int | None = None
    etag: str | None = None
    last_modified: str | None = None
    # Full state of every stage at one stream position, or None for "from byte 0".
    restore: dict[str, Any] | None = None
    # Files finished and flushed after that position (single-frame streams resume from 0
    # and read past these instead of writing them again).
    completed: list[tuple[str, int]] = field(default_factory=list)
    # Byte ranges of the archive held in the part file, for parallel downloads.
    chunks: list[tuple[int, int]] = field(default_factory=list)
    fetched_bytes: int = 0
    version: int = VERSION

    @property
    def position(self) -> int:
        return self.restore["position"] if self.restore else 0


def load_checkpoint(path: Path) -> tuple[Checkpoint | None, str]:
    """The checkpoint at path, or None and why it cannot be used."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None, "no checkpoint"
    except (OSError, ValueError) as error:
        return None, f"the checkpoint is unreadable ({error})"
    if not isinstance(data, dict) or data.get("version") != VERSION:
        return None, f"the checkpoint has an unknown version {data.get('version')!r}"
    try:
        checkpoint = Checkpoint(**data)
    except TypeError as error:
        return None, f"the checkpoint is malformed ({error})"
    checkpoint.completed = [(str(name), int(size)) for name, size in checkpoint.completed]
    checkpoint.chunks = [(int(start), int(end)) for start, end in checkpoint.chunks]
    return checkpoint, ""


class Checkpointer:
    """Decides when to take a checkpoint and takes it: flush the tree, then write atomically.

    The flush (a syncfs of the volume) and the write run on a thread of their own, so the
    decoder keeps going while the disk catches up; that also spreads the writeback of the
    extracted files over the run instead of paying for all of it at the end. At most one
    checkpoint is in flight: a checkpoint asked for while one is still being written is
    declined, and the caller asks again at its next chance. Work that depends on a checkpoint
    being durable (releasing the window behind it) runs once it is.
    """

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
        self._flush = flush
        self._due = time.monotonic() + interval
        self._last_position = checkpoint.position
        self.saved = 0
        self._idle = threading.Event()
        self._idle.set()
        self._error: BaseException | None = None

    def due(self, position: int) -> bool:
        """Every few seconds, or sooner when the window behind the last one fills up."""
        return time.monotonic() >= self._due or position - self._last_position >= self._every_bytes

    def save_full(
        self,
        state: dict[str, Any],
        fetched: int,
        chunks: list[tuple[int, int]],
        then: Callable[[], None],
    ) -> bool:
        """All stages restorable at state['position']: forget the completed-files list."""
        if not self._ready():
            return False
        self.checkpoint.restore = state
        self.checkpoint.completed = []
        self._submit(fetched, chunks, state["position"], then)
        return True

    def save_progress(
        self,
        completed: list[tuple[str, int]],
        fetched: int,
        chunks: list[tuple[int, int]],
        position: int,
        then: Callable[[], None],
    ) -> bool:
        """Not at a restorable point: keep the last full state, record newly finished files."""
        if not self._ready():
            return False
        self.checkpoint.completed.extend(completed)
        self._submit(fetched, chunks, position, then)
        return True

    def wait(self, *, reraise: bool = True) -> None:
        """Until the checkpoint in flight is on disk; re-raise what writing it raised."""
        self._idle.wait()
        if self._error is not None and reraise:
            error, self._error = self._error, None
            raise error

    def _ready(self) -> bool:
        if self._error is not None:
            self.wait()
        return self._idle.is_set()

    def _submit(
        self,
        fetched: int,
        chunks: list[tuple[int, int]],
        position: int,
        then: Callable[[], None],
    ) -> None:
        self._last_position = position
        self._due = time.monotonic() + self._interval
        self.checkpoint.fetched_bytes = fetched
        self.checkpoint.chunks = chunks
        blob = json.dumps(asdict(self.checkpoint), separators=(",", ":")).encode()
        self._idle.clear()
        threading.Thread(
            target=self._write, args=(blob, then), name="model-fetch-checkpoint", daemon=True
        ).start()

    def _write(self, blob: bytes, then: Callable[[], None]) -> None:
        try:
            self._flush()  # the files the checkpoint vouches for reach the disk first
            write_atomically(self.path, blob)
            self.saved += 1
            then()
        except BaseException as error:  # re-raised on the decoder's thread
            self._error = error
        finally:
            self._idle.set()
