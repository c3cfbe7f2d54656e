"""The fetcher keeps freed memory for reuse: decoded pieces move between threads at hundreds of
MB/s, and memory handed back to the kernel after each is faulted in again for the next."""

from __future__ import annotations

import ctypes
import subprocess
import sys
import textwrap

import pytest

# 512 MiB out of 32 MiB frames on two decode workers, fed as a download feeds it; prints the
# page faults the decoding took.
DECODE_FRAMES = textwrap.dedent(
    """
    import random, resource, sys
    import zstandard
    from fetcher.stages.zstd_parallel import ParallelZstdDecoder
    from fetcher.state.libc import keep_freed_memory

    if sys.argv[1] == "keep":
        assert keep_freed_memory()
    half = random.Random(1).randbytes(1 << 19)
    frame = zstandard.ZstdCompressor(level=1).compress((half + bytes(1 << 19)) * 32)
    stream = memoryview(frame * 16)
    decoded = 0

    def emit(view: memoryview) -> None:
        global decoded
        decoded += len(view)

    decoder = ParallelZstdDecoder(emit, workers=2)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for start in range(0, len(stream), 1 << 20):
        decoder.feed(stream[start : start + (1 << 20)])
    decoder.finish()
    assert decoded == 16 * 32 << 20
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """
)


def _page_faults(mode: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", DECODE_FRAMES, mode],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return int(done.stdout)


@pytest.mark.skipif(
    not hasattr(ctypes.CDLL(None), "mallopt"), reason="the C library has no mallopt (not glibc)"
)
def test_decoding_on_two_threads_reuses_memory_instead_of_faulting_it_in_again() -> None:
    # Measured on glibc 2.36: about 68,000 faults (266 MiB of fresh pages for 512 MiB decoded)
    # by default, 16,000-20,000 kept (the heaps growing to their working set once).
    by_default = _page_faults("default")
    kept = _page_faults("keep")
    assert kept < by_default / 2, (kept, by_default)


def test_the_command_line_keeps_freed_memory_before_anything_else() -> None:
    script = textwrap.dedent(
        """
        import fetcher.state.libc as libc
        calls = []
        libc.keep_freed_memory = lambda: calls.append("kept") or True
        from fetcher.cli import main
        try:
            main(["--help"])
        except SystemExit:
            pass
        print(calls)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert done.stdout.strip().endswith("['kept']"), done.stdout
