"""The few libc calls the standard library lacks, bound once per process.

The C library is already mapped into every dynamically linked CPython, so it is opened by
handle (``CDLL(None)``) instead of being searched for: ``ctypes.util.find_library`` runs
``ldconfig -p`` in a subprocess each time, tens of milliseconds that used to be paid on every
checkpoint.
"""

from __future__ import annotations

import ctypes
import functools
import os

_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syncfs.argtypes = [ctypes.c_int]
        libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    except (OSError, AttributeError):  # a static or non-glibc build: fall back below
        return None
    return libc


def sync_filesystem(fd: int) -> None:
    """syncfs(2) on the filesystem holding fd (one flush for the whole volume); else sync()."""
    libc = _libc()
    if libc is None or libc.syncfs(fd) != 0:
        os.sync()


def punch_hole(fd: int, offset: int, length: int) -> str | None:
    """Give [offset, offset + length) of fd back to the filesystem; None, or why it cannot."""
    libc = _libc()
    if libc is None:
        return "fallocate is not available"
    mode = _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE
    if libc.fallocate(fd, mode, offset, length) == 0:
        return None
    return os.strerror(ctypes.get_errno())
