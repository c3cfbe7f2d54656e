"""model-fetch at two or more revisions, interleaved run by run: which one is faster, and why.

    .venv/bin/python bench/revisions.py 1b58caa HEAD [--connections 8,1] [--runs 4]
        [--archive zstd|pack]

On this virtual machine a fetch's system time swings two- to five-fold with the state of
the host's memory (docs/benchmarks.md), so two revisions are only comparable when their
runs alternate within minutes. Each revision's ``fetcher/`` is exported as ``fetch.py
--fetcher-rev`` does, each run fetches the unthrottled scenario's archive from a private
loopback nginx into a fresh folder (the archive read through the page cache and ``sync``
first, untimed; ``--archive pack``: the same tree as ``model-fetch pack`` makes it, see
``fetch.py``), and the rusage of that one process is kept: wall, user and system seconds
and peak RSS. Prints medians per revision and connection count, and the best wall time.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import _dataset  # bench/ is on sys.path when this file runs as a script
import _nginx
import _pack
from fetch import export_fetcher, warm

BENCH = Path(__file__).resolve().parent
WORK = BENCH / ".work"


@dataclass(frozen=True)
class Run:
    wall: float
    user: float
    system: float
    rss_mib: float


def fetch_once(command: tuple[str, ...], url: str, digest: str, connections: str) -> Run:
    out = WORK / "revisions-out"
    shutil.rmtree(out, ignore_errors=True)
    started = time.monotonic()
    process = subprocess.Popen(
        [*command, url, "--sha256", digest, "-o", str(out), "--connections", connections],
        stderr=subprocess.DEVNULL,
    )
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.monotonic() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed with exit code {process.returncode}")
    shutil.rmtree(out, ignore_errors=True)
    return Run(wall, usage.ru_utime, usage.ru_stime, usage.ru_maxrss / 1024)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("revisions", nargs="+", metavar="REV")
    parser.add_argument("--connections", default="8,1", help="comma-separated (default 8,1)")
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--size-gib", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--archive", choices=("zstd", "pack"), default="zstd")
    args = parser.parse_args(argv)
    size = int(args.size_gib * 2**30)
    if args.archive == "pack":
        dataset = _pack.ensure(size, args.seed)
    else:
        dataset = _dataset.ensure(WORK / "data", size, args.seed)
    commands = {rev: export_fetcher(rev)[1] for rev in args.revisions}
    counts = args.connections.split(",")
    config = _nginx.NginxConfig(
        root=dataset.archive.parent,
        prefix=WORK / "nginx-revisions",
        port=_nginx.free_port(18490),
    )
    runs: dict[tuple[str, str], list[Run]] = {}
    binary = _nginx.ensure_installed()
    with _nginx.Nginx(binary, config).start(probe_path=f"/{dataset.archive.name}") as nginx:
        url = nginx.url(dataset.archive.name)
        for round_ in range(args.runs):
            for rev, command in commands.items():
                for count in counts:
                    warm(dataset.archive)
                    subprocess.run(["sync"], check=True)
                    run = fetch_once(command, url, dataset.sha256, count)
                    runs.setdefault((rev, count), []).append(run)
                    print(
                        f"round {round_ + 1}: {rev} --connections {count}: {run.wall:.2f} s, "
                        f"user {run.user:.2f} s, system {run.system:.2f} s, "
                        f"rss {run.rss_mib:.0f} MiB",
                        file=sys.stderr,
                    )
    print(f"\n{dataset.archive.name}: medians of {args.runs} interleaved rounds\n")
    print(
        "| revision | connections | wall (s) | best wall (s) | user (s) | system (s) "
        "| peak RSS (MiB) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for (rev, count), samples in runs.items():
        print(
            f"| {rev} | {count} | {statistics.median(r.wall for r in samples):.2f} "
            f"| {min(r.wall for r in samples):.2f} "
            f"| {statistics.median(r.user for r in samples):.2f} "
            f"| {statistics.median(r.system for r in samples):.2f} "
            f"| {max(r.rss_mib for r in samples):.0f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
