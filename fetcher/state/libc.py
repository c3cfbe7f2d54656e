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
_M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
_M_MMAP_THRESHOLD = -3
# Free memory a heap keeps instead of handing it back to the kernel, and the size from which a
# block is mapped on its own (and unmapped when freed). See keep_freed_memory.
KEPT_FREE_BYTES = 64 << 20
MAPPED_FROM_BYTES = 32 << 20  # the most glibc takes: buffers below it come from the heaps


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syncfs.argtypes = [ctypes.c_int]
        libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
        if hasattr(libc, "mallopt"):
            libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
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


def keep_freed_memory() -> bool:
    """Have glibc's malloc reuse freed memory instead of giving it back and faulting it in again.

    The decoded stream moves through pieces of about a MiB, allocated on one thread (a decode
    worker, a range connection) and freed on another, several hundred per second. By default
    glibc trims the top of each thread's heap back to the kernel as soon as 128 KiB or so are
    free there, and maps large pieces on their own, so nearly every piece met fresh pages: a
    2 GiB pack archive on two decode threads took 460,000 page faults and a third of its system
    time for them (docs/benchmarks.md). With 64 MiB kept free per heap the same fetch takes
    26,000, for about 12 MiB more peak RSS. Fixing one threshold stops glibc adjusting the
    other, so blocks up to 32 MiB (the archive's reads, a pack frame's buffers) are taken from
    the heaps explicitly, as the adjusting would have come to. True when applied; not on a C
    library without mallopt.
    """
    libc = _libc()
    if libc is None or not hasattr(libc, "mallopt"):
        return False
    kept = libc.mallopt(_M_TRIM_THRESHOLD, KEPT_FREE_BYTES)
    mapped = libc.mallopt(_M_MMAP_THRESHOLD, MAPPED_FROM_BYTES)
    return bool(kept and mapped)
