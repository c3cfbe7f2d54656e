"""The download window on disk: a sparse file the size of the archive.

Ranges that arrive ahead of the decoder land at their own offsets; the decoder reads them in
order; space behind the last checkpoint is handed back to the filesystem by punching holes,
so the file's physical size stays near the window however large the archive is.
"""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

from fetcher.errors import OutOfDisk
from fetcher.state.libc import punch_hole

log = logging.getLogger("model-fetch")

_BLOCK = 4096


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

    def write_at(self, offset: int, data: bytes | memoryview) -> None:
        view = memoryview(data)
        try:
            while view:
                written = os.pwrite(self._fd, view, offset)
                view, offset = view[written:], offset + written
        except OSError as error:
            if error.errno in (errno.ENOSPC, errno.EDQUOT):
                raise OutOfDisk(
                    "out of disk space for the download window",
                    "lower --max-disk-buffer or give the volume extracted size + buffer",
                ) from None
            raise

    def read_at(self, offset: int, size: int) -> bytes:
        return os.pread(self._fd, size, offset)

    def release(self, start: int, end: int) -> None:
        """Give [start, end) back to the filesystem (whole blocks only)."""
        start = -(-start // _BLOCK) * _BLOCK
        end = end // _BLOCK * _BLOCK if end < self.length else end
        if end <= start:
            return
        why = punch_hole(self._fd, start, end - start)
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

    def physical_bytes(self) -> int:
        return os.fstat(self._fd).st_blocks * 512

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
