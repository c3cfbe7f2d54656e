"""Benchmark the parallel zstd decoder: local-file extraction of a pack-made archive, by threads.

    .venv/bin/python bench/zstd_parallel.py [--size-gib 2] [--threads 1,2] [--runs 3]
        [--frame-size 32MiB] [--hash]

Writes the benchmark's model tree (bench/_dataset.py's plan and content, cached in
``bench/.work/pack/``) to disk once, packs it with ``model-fetch pack`` (bench/_pack.py, the
archive ``fetch.py --archive pack`` serves; timed, cached while the tree and frame size stay
the same), then extracts the archive from the local file with
``ParallelZstdDecoder(workers=N)`` into the fetcher's own tar reader and safe tree, once per
thread count and run, interleaved, each in a fresh interpreter and a fresh directory, after a
``sync`` that is not timed. ``plain`` is the pipeline's current single-threaded decoder, for
reference. ``--hash`` also hashes the archive with SHA-256 on a reader thread, as the fetcher
does on its network thread. Every extracted tree is checked file by file.

Prints, per method, the median wall time, extracted MB/s, CPU seconds (user + system of the
whole process, and of the feeding thread alone: with enough CPUs the wall time cannot drop
below the latter), peak RSS, and the speed-up of each thread count over one thread.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import queue
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import _dataset  # bench/ is on sys.path when this file runs as a script
import _pack

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
WORK = _pack.WORK
READ_SIZE = 16 << 20  # the fetcher's default --chunk-size


def _chunks(archive: Path, hashing: bool) -> queue.Queue[bytes | None]:
    """The archive's bytes in READ_SIZE chunks, read (and hashed) on a thread of their own."""
    chunks: queue.Queue[bytes | None] = queue.Queue(maxsize=4)

    def read() -> None:
        digest = hashlib.sha256()
        with archive.open("rb", buffering=0) as file:
            while chunk := file.read(READ_SIZE):
                if hashing:
                    digest.update(chunk)
                chunks.put(chunk)
        chunks.put(None)

    threading.Thread(target=read, daemon=True).start()
    return chunks


def extract_once(archive: Path, out: Path, method: str, hashing: bool) -> dict[str, float]:
    """One extraction in this process (the child side of a run)."""
    sys.path.insert(0, str(REPO))
    from fetcher.formats import Compression
    from fetcher.stages.decode import make_decoder
    from fetcher.stages.sinks import TarSink
    from fetcher.stages.tree import SafeTree
    from fetcher.stages.zstd_parallel import ParallelZstdDecoder
    from fetcher.state.libc import keep_freed_memory

    keep_freed_memory()  # as model-fetch's command line does first
    tree = SafeTree(out, max_bytes=1 << 50)
    sink = TarSink(tree)
    if method == "plain":
        decoder = make_decoder(Compression.ZSTD, sink.write)
    else:
        decoder = ParallelZstdDecoder(sink.write, workers=int(method))
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    main_before = time.thread_time()
    chunks = _chunks(archive, hashing)
    while (chunk := chunks.get()) is not None:
        decoder.feed(chunk)
    decoder.finish()
    sink.close()
    tree.close()
    main_cpu = time.thread_time() - main_before
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    user, system = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
    return {"wall": wall, "cpu": user + system, "user": user, "sys": system,
            "main_cpu": main_cpu, "rss_mib": after.ru_maxrss / 1024}  # fmt: skip


def _run(archive: Path, method: str, index: int, hashing: bool) -> dict[str, float]:
    out = WORK / "runs" / f"{method}-{index}"
    shutil.rmtree(out, ignore_errors=True)
    subprocess.run(["sync"], check=True)
    child = subprocess.run(
        [sys.executable, __file__, "--one", method, str(archive), str(out)]
        + (["--hash"] if hashing else []),
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return dict(json.loads(child.stdout))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-gib", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threads", default="1,2", help="comma-separated; plain is added")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--frame-size", default="32MiB")
    parser.add_argument("--hash", action="store_true", help="SHA-256 the archive as it is read")
    parser.add_argument(
        "--one", nargs=3, metavar=("METHOD", "ARCHIVE", "OUT"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.one:
        method, archive, out = args.one
        print(json.dumps(extract_once(Path(archive), Path(out), method, args.hash)))
        return

    dataset = _pack.ensure(int(args.size_gib * 2**30), args.seed, args.frame_size)
    archive, size, extracted = dataset.archive, dataset.archive_bytes, dataset.extracted_bytes
    methods = ["plain", *args.threads.split(",")]
    results: dict[str, list[dict[str, float]]] = {m: [] for m in methods}
    for index in range(args.runs):
        for method in methods:
            result = _run(archive, method, index, args.hash)
            problems = _dataset.verify(dataset, WORK / "runs" / f"{method}-{index}")
            if problems:
                raise SystemExit(f"{method} run {index}: {problems[:5]}")
            shutil.rmtree(WORK / "runs" / f"{method}-{index}")
            results[method].append(result)
            print(f"run {index + 1} {method:>5}: {result['wall']:.2f} s wall, "
                  f"{result['user']:.2f} s user + {result['sys']:.2f} s system CPU, "
                  f"{result['main_cpu']:.2f} s of it in the feeding thread",
                  flush=True)  # fmt: skip

    print(f"\n{extracted / 2**30:.2f} GiB extracted from a {size / 2**20:.0f} MiB pack-made "
          f"archive ({args.frame_size} frames), {os.cpu_count()} CPUs seen, "
          f"{'with' if args.hash else 'without'} SHA-256, median of {args.runs}\n")  # fmt: skip
    print("| decoder | wall s | MB/s | CPU s | feeding thread CPU s | peak RSS MiB "
          "| speed-up vs 1 thread |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    one = statistics.median(r["wall"] for r in results[methods[1]]) if len(methods) > 1 else 0
    for method in methods:
        wall = statistics.median(r["wall"] for r in results[method])
        cpu = statistics.median(r["cpu"] for r in results[method])
        rss = max(r["rss_mib"] for r in results[method])
        main_cpu = statistics.median(r["main_cpu"] for r in results[method])
        name = "plain (decode.py)" if method == "plain" else f"parallel, {method} thread(s)"
        print(f"| {name} | {wall:.2f} | {extracted / wall / 1e6:.0f} | {cpu:.2f} | "
              f"{main_cpu:.2f} | {rss:.0f} | "
              f"{one / wall:.2f}x |")  # fmt: skip


if __name__ == "__main__":
    main()
