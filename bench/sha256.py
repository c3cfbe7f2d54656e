"""Throughput of ResumableSha256 against hashlib.sha256, fed 1 MiB chunks.

Run: .venv/bin/python bench/sha256.py [total MiB, default 512]

The threaded rows hash one independent stream per core; they only scale if update releases the GIL.
"""

import hashlib
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from fetcher.stages.digest import ResumableSha256, libcrypto_origin

CHUNK = 1024 * 1024

Hasher = Callable[[], "hashlib._Hash | ResumableSha256"]


def hash_stream(make: Hasher, chunk: bytes | bytearray | memoryview, count: int) -> None:
    hasher = make()
    for _ in range(count):
        hasher.update(chunk)
    hasher.digest()


def throughput(
    make: Hasher, chunk: bytes | bytearray | memoryview, total_mib: int, threads: int
) -> float:
    count = total_mib // threads
    with ThreadPoolExecutor(threads) as pool:
        start = time.perf_counter()
        list(pool.map(lambda _: hash_stream(make, chunk, count), range(threads)))
        elapsed = time.perf_counter() - start
    return count * threads / elapsed


def main() -> None:
    total_mib = int(sys.argv[1]) if len(sys.argv) > 1 else 512
    cores = os.cpu_count() or 1
    payload = os.urandom(CHUNK + 1)
    inputs: dict[str, bytes | bytearray | memoryview] = {
        "bytes": payload[:CHUNK],
        "bytearray": bytearray(payload[:CHUNK]),
        "memoryview of bytes": memoryview(payload)[1:],
    }
    print(f"libcrypto: {libcrypto_origin()}; {total_mib} MiB per row, 1 MiB chunks")
    print(f"{'input':<20} {'threads':>7} {'hashlib MB/s':>13} {'resumable MB/s':>15} {'ratio':>6}")
    for threads in sorted({1, cores}):
        for label, chunk in inputs.items():
            baseline = throughput(hashlib.sha256, chunk, total_mib, threads) * CHUNK / 1e6
            resumable = throughput(ResumableSha256, chunk, total_mib, threads) * CHUNK / 1e6
            print(
                f"{label:<20} {threads:>7} {baseline:>13.0f} {resumable:>15.0f}"
                f" {resumable / baseline:>6.2f}"
            )


if __name__ == "__main__":
    main()
