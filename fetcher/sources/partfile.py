"""The download window on disk: a sparse file the size of the archive.

Ranges that arrive ahead of the decoder land at their own offsets; the decoder reads them in
order; space behind the last checkpoint is handed back to the filesystem by punching holes,
so the file's physical size stays near the window however large the archive is.

Connections may still be writing when the download is closed (one blocked on a slow origin
is not waited for): close() waits for the reads and writes in progress, and later ones raise
PartFileClosed, so no thread ever uses a descriptor number the process has since reused.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fetcher.errors import OutOfDisk
from fetcher.state.libc import punch_hole

log = logging.getLogger("model-fetch")

_BLOCK = 4096


class PartFileClosed(Exception):
    """The download is over: a connection still bringing bytes stops without a word."""


class PartFile:
    def __init__(self, path: Path, length: int, *, keep: bool) -> None:
        """Open (keep=True: reuse the bytes a checkpoint vouches for) or create the part file.

        kept is False when the file was created or emptied here: then it holds no data at all,
        whatever ranges the checkpoint recorded.
        """
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
        self._fd = os.open(path, flags, 0o600)
        # A file of another length (or none) cannot hold what the checkpoint vouches for.
        self.kept = keep and os.fstat(self._fd).st_size == length
        if not self.kept:
            os.ftruncate(self._fd, 0)
        os.ftruncate(self._fd, length)
        self.path = path
        self.length = length
        self._punch_warned = False
        self.released = 0
        self._users = 0
        self._closing = False
        self._idle = threading.Condition()

    @contextmanager
    def _descriptor(self) -> Iterator[int]:
        with self._idle:
            if self._closing:
                raise PartFileClosed
            self._users += 1
        try:
            yield self._fd
        finally:
            with self._idle:
                self._users -= 1
                self._idle.notify_all()

    def write_at(self, offset: int, data: bytes | memoryview) -> None:
        view = memoryview(data)
        try:
            with self._descriptor() as fd:
                while view:
                    written = os.pwrite(fd, view, offset)
                    view, offset = view[written:], offset + written
        except OSError as error:
            if error.errno in (errno.ENOSPC, errno.EDQUOT):
                raise OutOfDisk(
                    "out of disk space for the download window",
                    "lower --max-disk-buffer or give the volume extracted size + buffer",
                ) from None
            raise

    def read_at(self, offset: int, size: int) -> bytes:
        with self._descriptor() as fd:
            return os.pread(fd, size, offset)

    def release(self, start: int, end: int) -> None:
        """Give [start, end) back to the filesystem (whole blocks only)."""
        start = -(-start // _BLOCK) * _BLOCK
        end = end // _BLOCK * _BLOCK if end < self.length else end
        if end <= start:
            return
        with self._descriptor() as fd:
            why = punch_hole(fd, start, end - start)
        if why is None:
            self.released += end - start
            return
        if not self._punch_warned:
            self._punch_warned = True
            log.warning(
                "this filesystem cannot punch holes (%s): the download window will not shrink "
                "and the part file may grow to the archive's size",
                why,
            )

    def close(self) -> None:
        with self._idle:
            self._closing = True  # no new reads or writes; those in progress are waited for
            self._idle.wait_for(lambda: not self._users)
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
