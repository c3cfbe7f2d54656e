"""One fetcher per output directory: an exclusive flock, waited for with a bound.

Two pods can run a fetcher on one volume at once: a ReplicaSet starts the replacement of a
deleted pod while the old one is still terminating on the same node, and a ReadWriteMany
claim is shared by every replica. The lock is taken on DIR itself, which the fetcher never
removes, so a waiter can never end up holding a lock on something unlinked under it, and no
file of the fetcher's shows in the model's directory. Where directories cannot be locked
(NFS emulates flock with byte-range locks, which need a file open for writing), a lock file
beside the marker takes its place. flock is released by the kernel when its holder dies,
however it dies: a stale lock cannot block anyone.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from pathlib import Path

from fetcher.errors import FetchError

log = logging.getLogger("model-fetch")

LOCK_NAME = ".model-fetch.lock"
_POLL_SECONDS = 0.1
_REPORT_EVERY = 30.0


class StillLocked(FetchError):
    """Another fetcher kept the directory for longer than we were willing to wait."""


class DirectoryLock:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._fd = -1

    def acquire(self, *, wait: float, stop: threading.Event) -> None:
        self._fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            if self._try():
                return
        except OSError:  # this filesystem cannot lock a directory: a lock file it is
            os.close(self._fd)
            flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
            self._fd = os.open(self.directory / LOCK_NAME, flags, 0o644)
            if self._try():
                return
        log.info(
            "another model-fetch is working in %s; waiting up to %.0fs for it to finish",
            self.directory, wait,
        )  # fmt: skip
        started = time.monotonic()
        next_report = started + _REPORT_EVERY
        while not self._try():
            now = time.monotonic()
            if now - started >= wait:
                self.release()
                raise StillLocked(
                    f"another model-fetch still works in {self.directory} after {wait:.0f}s",
                    "it is finishing the same model; this container will be restarted and "
                    "find it done, or raise --lock-wait",
                )
            if now >= next_report:
                log.info("still waiting for the other model-fetch (%.0fs)", now - started)
                next_report = now + _REPORT_EVERY
            if stop.wait(_POLL_SECONDS):
                self.release()
                return
        log.info(
            "the other model-fetch is done after %.1fs; carrying on from its state",
            time.monotonic() - started,
        )

    def _try(self) -> bool:
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing the last descriptor drops the flock
            self._fd = -1
