"""The physical floor of a fetch on this machine: each unavoidable part of it, measured alone.

    .venv/bin/python bench/floor.py [--size-gib 2] [--archive zstd|pack] [--runs 3]

On the archive ``fetch.py`` serves (the same cache in ``bench/.work/``), each part runs on its
own, in a fresh interpreter, after a ``sync`` that is not timed:

- ``receive``: the archive's bytes from the loopback nginx into a reused buffer with
  ``recv_into`` (the kernel's copy out of the socket, and nginx's sendfile beside it);
- ``sha256``: the archive hashed from memory (OpenSSL, as the fetcher hashes);
- ``zstd decode``: the archive decoded into nothing (libzstd through python-zstandard, one
  thread, as the fetcher decodes a single frame);
- ``file writes``: the extracted bytes written from memory into files of the dataset's sizes
  (the kernel's copy into the page cache, and the filesystem's work per file);

and prints, per part, the median CPU seconds (user + system, nginx's included for receive),
per extracted GB, and their sum: no fetch on this machine can use less CPU than the sum, nor
finish faster than the sum spread over every core, nor faster than its slowest part on one.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import _dataset  # bench/ is on sys.path when this file runs as a script
import _floor
import _nginx
import _pack
import psutil

BENCH = Path(__file__).resolve().parent
WORK = BENCH / ".work"
PIECE = 16 << 20
PARTS = ("receive", "sha256", "zstd decode", "file writes")


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _receive(archive: Path, port: int, nginx_pid: int) -> float:
    """CPU of this process and of nginx while the archive crosses loopback."""
    nginx = psutil.Process(nginx_pid)
    workers = nginx.children() or [nginx]

    def nginx_cpu() -> float:
        return sum(sum(p.cpu_times()[:2]) for p in workers)

    before, before_nginx = _cpu(), nginx_cpu()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        request = f"GET /{archive.name} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        sock.sendall(request.encode())
        buffer = bytearray(1 << 20)
        while sock.recv_into(buffer):
            pass
    return _cpu() - before + nginx_cpu() - before_nginx


def _sha256(archive: Path) -> float:
    import hashlib

    data = archive.read_bytes()
    before = _cpu()
    hashlib.sha256(data).digest()
    return _cpu() - before


def _decode(archive: Path) -> float:
    import zstandard

    data = archive.read_bytes()
    before = _cpu()
    reader = zstandard.ZstdDecompressor().stream_reader(data, read_across_frames=True)
    buffer = bytearray(1 << 20)
    while reader.readinto(buffer):
        pass
    return _cpu() - before


def _writes(sizes: list[int], out: Path) -> float:
    block = os.urandom(1 << 20)
    before = _cpu()
    for number, size in enumerate(sizes):
        fd = os.open(out / f"f{number}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        left = size
        try:
            while left:
                left -= os.write(fd, memoryview(block)[: min(left, len(block))])
        finally:
            os.close(fd)
    return _cpu() - before


def child(argv: list[str]) -> None:
    """One measurement in this interpreter; prints its CPU seconds."""
    part, archive = argv[0], Path(argv[1])
    if part == "receive":
        seconds = _receive(archive, int(argv[2]), int(argv[3]))
    elif part == "sha256":
        seconds = _sha256(archive)
    elif part == "zstd decode":
        seconds = _decode(archive)
    else:
        out = Path(argv[2])
        seconds = _writes(json.loads(argv[3]), out)
    print(seconds)


def measure(part: str, extra: list[str]) -> float:
    os.sync()
    done = subprocess.run(
        [sys.executable, __file__, "--child", part, *extra],
        stdout=subprocess.PIPE,
        text=True,
        check=True,
    )
    return float(done.stdout.strip())


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-gib", type=float, default=2.0)
    parser.add_argument("--archive", choices=("zstd", "pack"), default="zstd")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--port", type=int, default=18474)
    args = parser.parse_args()
    size = int(args.size_gib * 2**30)
    pack = args.archive == "pack"
    dataset = _pack.ensure(size) if pack else _dataset.ensure(WORK / "data", size)
    sizes = [m.size for m in dataset.members]
    gb = dataset.extracted_bytes / 1e9
    out = WORK / "floor-out"
    config = _nginx.NginxConfig(
        dataset.archive.parent, WORK / "nginx-floor", _nginx.free_port(args.port)
    )
    results: dict[str, list[float]] = {part: [] for part in PARTS}
    with _nginx.Nginx(_nginx.ensure_installed(), config).start(
        probe_path=f"/{dataset.archive.name}"
    ) as nginx:
        for run in range(1, args.runs + 1):  # interleaved, so drift hits every part alike
            for part in PARTS:
                if part == "receive":
                    extra = [str(dataset.archive), str(config.port), str(nginx.pid)]
                elif part == "file writes":
                    shutil.rmtree(out, ignore_errors=True)
                    out.mkdir(parents=True)
                    extra = [str(dataset.archive), str(out), json.dumps(sizes)]
                else:
                    extra = [str(dataset.archive)]
                seconds = measure(part, extra)
                results[part].append(seconds)
                print(f"run {run} {part}: {seconds:.2f} CPU s", flush=True)
    shutil.rmtree(out, ignore_errors=True)
    medians = {part: statistics.median(values) for part, values in results.items()}
    total = sum(medians.values())
    cores = len(os.sched_getaffinity(0))
    print()
    print(
        f"{dataset.archive_bytes / 2**20:.0f} MiB archive ({args.archive}), "
        f"{dataset.extracted_bytes / 2**30:.2f} GiB in {len(sizes)} files, "
        f"median of {args.runs}, {cores} CPUs, {time.strftime('%Y-%m-%d')}"
    )
    print()
    print("| part | CPU (s) | CPU (s/GB) |")
    print("|---|---:|---:|")
    for part, seconds in medians.items():
        print(f"| {part} | {seconds:.2f} | {seconds / gb:.2f} |")
    print(f"| **sum: the floor** | **{total:.2f}** | **{total / gb:.2f}** |")
    slowest = max(medians.values())
    wall = max(total / cores, slowest)
    print()
    print(
        f"wall-time floor on {cores} cores: {wall:.2f} s "
        f"({dataset.extracted_bytes / 1e6 / wall:.0f} MB/s extracted)"
    )
    saved = _floor.save(
        _floor.Floor(dataset.sha256, total / gb, wall, medians, time.strftime("%Y-%m-%d"))
    )
    print(f"saved for bench/fetch.py's CPU vs floor column: {saved}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
