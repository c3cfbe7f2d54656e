"""Benchmark model-fetch against the shell pipelines people use instead.

    .venv/bin/python bench/fetch.py [--size-gib 2] [--runs 1] [--methods a,b] [--keep]

Builds (once, cached in bench/.work/) a deterministic ~2 GiB tar.zst with the real ``zstd -T0``,
serves it from a private nginx on 127.0.0.1 (installed with apt-get if missing), then times
each method on the same URL into a fresh directory on the same filesystem, and prints a
markdown table: wall time, extracted MB/s, peak RSS of the whole process tree, peak disk used,
CPU time and time relative to ``curl | zstd -d | tar -x``. Every output tree is checked file
by file against the generated content. See bench/README.md.

Methods are a registry of named command builders (``METHODS``): add one with ``@method(...)``.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import _dataset  # bench/ is on sys.path when this file runs as a script
import _nginx
import psutil

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
WORK = BENCH / ".work"
VENV_BIN = REPO / ".venv" / "bin"
MODEL_FETCH = VENV_BIN / "model-fetch"
BASELINE = "curl-pipe"
DEFAULT_METHODS = ("model-fetch", "curl-pipe", "download-extract")
RSS_EVERY_S = 0.05
DISK_EVERY_S = 0.1
MARKER = ".model-fetch.json"  # the fetcher's completion marker, left in DIR on purpose


# methods


@dataclass(frozen=True)
class RunContext:
    """What a command builder may use. ``scratch`` is measured for disk and is ``TMPDIR``."""

    url: str
    sha256: str
    out: Path
    scratch: Path
    archive_name: str


@dataclass(frozen=True)
class Method:
    name: str
    summary: str
    build: Callable[[RunContext], list[str]]
    tools: tuple[str, ...] = ()
    """Executables that must exist (names on PATH or absolute paths)."""
    leaves: frozenset[str] = frozenset()
    """Top-level names the method leaves in DIR besides the model (ignored by the check)."""


METHODS: dict[str, Method] = {}


def method(
    name: str, summary: str, tools: tuple[str, ...] = (), leaves: frozenset[str] = frozenset()
) -> Callable[[Callable[[RunContext], list[str]]], Callable[[RunContext], list[str]]]:
    """Register a command builder under ``name``."""

    def register(build: Callable[[RunContext], list[str]]) -> Callable[[RunContext], list[str]]:
        METHODS[name] = Method(name, summary, build, tools, leaves)
        return build

    return register


def shell(script: str) -> list[str]:
    return ["bash", "-o", "pipefail", "-c", script]


def _model_fetch(*extra: str) -> Callable[[RunContext], list[str]]:
    def build(ctx: RunContext) -> list[str]:
        return [str(MODEL_FETCH), ctx.url, "--sha256", ctx.sha256, "-o", str(ctx.out), *extra]

    return build


method(
    "model-fetch",
    "model-fetch URL --sha256 HEX -o DIR",
    tools=(str(MODEL_FETCH),),
    leaves=frozenset({MARKER}),
)(_model_fetch())

for _n in (1, 2, 4):
    method(
        f"model-fetch-c{_n}",
        f"model-fetch URL --sha256 HEX -o DIR --connections {_n}",
        tools=(str(MODEL_FETCH),),
        leaves=frozenset({MARKER}),
    )(_model_fetch("--connections", str(_n)))


@method("curl-pipe", "curl -s URL | zstd -d | tar -x -C DIR", tools=("curl", "zstd", "tar"))
def _curl_pipe(ctx: RunContext) -> list[str]:
    url, out = shlex.quote(ctx.url), shlex.quote(str(ctx.out))
    return shell(f"curl -sSf {url} | zstd -d -q | tar -x -C {out}")


@method(
    "curl-pipe-sync",
    "curl -s URL | zstd -d | tar -x -C DIR && sync -f DIR",
    tools=("curl", "zstd", "tar", "sync"),
)
def _curl_pipe_sync(ctx: RunContext) -> list[str]:
    """The pipeline made as durable as model-fetch, which flushes the tree before its marker."""
    url, out = shlex.quote(ctx.url), shlex.quote(str(ctx.out))
    return shell(f"curl -sSf {url} | zstd -d -q | tar -x -C {out} && sync -f {out}")


@method(
    "download-extract",
    "curl -o FILE URL && zstd -d -c FILE | tar -x -C DIR && rm FILE",
    tools=("curl", "zstd", "tar"),
)
def _download_extract(ctx: RunContext) -> list[str]:
    url, out = shlex.quote(ctx.url), shlex.quote(str(ctx.out))
    file = shlex.quote(str(ctx.scratch / ctx.archive_name))
    return shell(
        f"curl -sSf -o {file} {url} && zstd -d -q -c {file} | tar -x -C {out} && rm -f {file}"
    )


# measurement


@dataclass
class Sample:
    peak_rss: int = 0
    peak_disk: int = 0
    rss_samples: int = 0
    disk_samples: int = 0


@dataclass
class Result:
    method: str
    run: int
    wall_s: float
    cpu_s: float
    peak_rss: int
    peak_disk: int
    extracted_bytes: int
    status: int
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == 0 and not self.problems

    @property
    def mb_per_s(self) -> float:
        return self.extracted_bytes / self.wall_s / 1e6


def tree_rss(root: psutil.Process) -> int:
    """Resident memory of ``root`` and all its descendants, summed."""
    total = 0
    try:
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            continue
    return total


def disk_used(paths: list[Path]) -> int:
    """Allocated bytes (st_blocks) of everything under ``paths``; tolerant of concurrent change."""
    total = 0
    stack = [p for p in paths if p.exists()]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            total += st.st_blocks * 512
            if entry.is_dir(follow_symlinks=False):
                stack.append(Path(entry.path))
    return total


def run_measured(
    argv: list[str], watch: list[Path], log: Path, env: dict[str, str]
) -> tuple[int, float, float, Sample]:
    """Run ``argv``; return (exit status, wall seconds, CPU seconds, peaks)."""
    sample = Sample()
    done = threading.Event()

    def watch_disk() -> None:
        while not done.is_set():
            sample.peak_disk = max(sample.peak_disk, disk_used(watch))
            sample.disk_samples += 1
            done.wait(DISK_EVERY_S)

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with log.open("wb") as log_file:
        started = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT, env=env)
        ended: list[float] = []

        def wait() -> None:
            proc.wait()
            ended.append(time.perf_counter())
            done.set()

        waiter = threading.Thread(target=wait, daemon=True)
        disk_thread = threading.Thread(target=watch_disk, daemon=True)
        waiter.start()
        disk_thread.start()
        root = psutil.Process(proc.pid)
        while not done.is_set():
            sample.peak_rss = max(sample.peak_rss, tree_rss(root))
            sample.rss_samples += 1
            done.wait(RSS_EVERY_S)
        waiter.join()
        disk_thread.join()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    sample.peak_disk = max(sample.peak_disk, disk_used(watch))
    return proc.returncode, ended[0] - started, cpu, sample


def run_one(
    m: Method, run: int, url: str, dataset: _dataset.Dataset, *, keep: bool, verify: bool
) -> Result:
    base = WORK / "runs" / f"{m.name}-{run}"
    shutil.rmtree(base, ignore_errors=True)
    out, scratch = base / "out", base / "scratch"
    out.mkdir(parents=True)
    scratch.mkdir()
    ctx = RunContext(url, dataset.sha256, out, scratch, dataset.archive.name)
    env = {**os.environ, "TMPDIR": str(scratch)}
    os.sync()  # start every method with no dirty pages from the previous one
    status, wall, cpu, sample = run_measured(m.build(ctx), [out, scratch], base / "log.txt", env)
    problems: list[str] = []
    if status != 0:
        tail = (base / "log.txt").read_text(errors="replace").strip().splitlines()[-3:]
        problems.append(f"exit status {status}: {' / '.join(tail)}")
    elif verify:
        problems = _dataset.verify(dataset, out, ignore=m.leaves)
    if not keep:
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(scratch, ignore_errors=True)
    return Result(
        m.name,
        run,
        wall,
        cpu,
        sample.peak_rss,
        sample.peak_disk,
        dataset.extracted_bytes,
        status,
        problems,
    )


# profile


def profile(m: Method, url: str, dataset: _dataset.Dataset, rate: int = 200) -> Path:
    """One extra, untimed run of ``m`` under py-spy; returns the collapsed-stack file."""
    py_spy = shutil.which("py-spy") or shutil.which(str(VENV_BIN / "py-spy"))
    if py_spy is None:
        raise SystemExit("--profile needs py-spy: .venv/bin/pip install py-spy")
    base = WORK / "profile" / m.name
    shutil.rmtree(base, ignore_errors=True)
    (base / "out").mkdir(parents=True)
    (base / "scratch").mkdir()
    ctx = RunContext(url, dataset.sha256, base / "out", base / "scratch", dataset.archive.name)
    raw = base / "stacks.txt"
    argv = [py_spy, "record", "--format", "raw", "--threads", "--rate", str(rate)]
    argv += ["-o", str(raw), "--", *m.build(ctx)]
    os.sync()
    with (base / "log.txt").open("wb") as log:
        subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, check=True)
    shutil.rmtree(base / "out")
    return raw


def profile_summary(raw: Path, rate: int = 200, top: int = 12) -> str:
    """CPU seconds per thread, then the leaf functions where the samples landed.

    py-spy samples Python stacks only: time inside a C extension or a system call (zstd,
    OpenSSL, ``os.write``) is charged to the Python function that called it.
    """
    per_thread: Counter[str] = Counter()
    leaf: Counter[tuple[str, str]] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        head, *frames = stack.split(";")
        thread = head.split(": ", 1)[-1]
        thread = re.sub(r"-\d+$", "-N", thread)  # pool threads, summed
        per_thread[thread] += int(count)
        if frames:
            leaf[(thread, re.sub(r":\d+\)$", ")", frames[-1]))] += int(count)
    total = sum(per_thread.values()) or 1
    lines = ["| thread | CPU (s) |", "|---|---:|"]
    lines += [f"| {t} | {n / rate:.1f} |" for t, n in per_thread.most_common()]
    lines += ["", "| thread | function (self) | % of samples |", "|---|---|---:|"]
    lines += [
        f"| {t} | `{name}` | {n / total * 100:.1f} |" for (t, name), n in leaf.most_common(top)
    ]
    return "\n".join(lines)


# report


def table(results: list[Result], methods: list[str]) -> str:
    """One row per method: medians of wall time, throughput and CPU; worst peaks."""
    rows = [
        "| method | wall (s) | extracted MB/s | peak RSS (MiB) | peak disk (GiB) | CPU (s) "
        f"| time vs {BASELINE} |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    baseline = [r.wall_s for r in results if r.method == BASELINE and r.ok]
    base_wall = statistics.median(baseline) if baseline else None
    for name in methods:
        mine = [r for r in results if r.method == name and r.ok]
        if not mine:
            rows.append(f"| {name} | failed | | | | | |")
            continue
        wall = statistics.median(r.wall_s for r in mine)
        ratio = f"{wall / base_wall:.2f}x" if base_wall else "-"
        rows.append(
            f"| {name} | {wall:.2f} | {statistics.median(r.mb_per_s for r in mine):.0f} "
            f"| {max(r.peak_rss for r in mine) / 2**20:.0f} "
            f"| {max(r.peak_disk for r in mine) / 2**30:.2f} "
            f"| {statistics.median(r.cpu_s for r in mine):.1f} | {ratio} |"
        )
    return "\n".join(rows)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--size-gib", type=float, default=2.0, help="content size (default 2)")
    parser.add_argument("--runs", type=int, default=1, help="runs per method (default 1)")
    parser.add_argument(
        "--methods",
        default=",".join(DEFAULT_METHODS),
        help=f"comma-separated, from: {', '.join(METHODS)} (default: %(default)s)",
    )
    parser.add_argument("--keep", action="store_true", help="keep output trees in bench/.work")
    parser.add_argument("--no-verify", action="store_true", help="skip the per-file check")
    parser.add_argument("--port", type=int, default=18473, help="nginx port on 127.0.0.1")
    parser.add_argument(
        "--limit-rate",
        metavar="RATE",
        help="nginx limit_rate per connection, e.g. 50m (default: unthrottled)",
    )
    parser.add_argument("--seed", type=int, default=1, help="content seed (default 1)")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="afterwards, run each model-fetch method once more under py-spy and summarise",
    )
    args = parser.parse_args(argv)
    args.method_list = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in args.method_list if m not in METHODS]
    if unknown:
        parser.error(f"unknown method(s) {', '.join(unknown)}; known: {', '.join(METHODS)}")
    if args.runs < 1 or args.size_gib <= 0:
        parser.error("--runs must be >= 1 and --size-gib > 0")
    return args


def check_tools(methods: list[str]) -> None:
    for name in methods:
        for tool in METHODS[name].tools:
            if shutil.which(tool) is None:
                raise SystemExit(f"method {name} needs {tool}, which is not installed")
    if any(METHODS[n].tools and str(MODEL_FETCH) in METHODS[n].tools for n in methods):
        probe = subprocess.run([str(MODEL_FETCH), "--help"], capture_output=True, check=False)
        if probe.returncode != 0:
            raise SystemExit(f"{MODEL_FETCH} --help fails; run make venv first")


def _revision() -> str:
    """The commit measured, and whether the fetcher had uncommitted changes."""

    def git(*args: str) -> str | None:
        done = subprocess.run(
            ["git", "-C", str(REPO), *args], capture_output=True, text=True, check=False
        )
        return done.stdout.strip() if done.returncode == 0 else None

    head = git("rev-parse", "--short", "HEAD")
    if head is None:
        return "revision unknown"
    dirty = git("status", "--porcelain", "--", "fetcher")
    return f"commit {head}, " + ("uncommitted fetcher changes" if dirty else "clean fetcher")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check_tools(args.method_list)
    dataset = _dataset.ensure(WORK / "data", int(args.size_gib * 2**30), args.seed)
    binary = _nginx.ensure_installed()
    config = _nginx.NginxConfig(
        root=dataset.archive.parent,
        prefix=WORK / "nginx",
        port=_nginx.free_port(args.port),
        limit_rate=args.limit_rate,
    )
    results: list[Result] = []
    run_lines: list[str] = []
    with _nginx.Nginx(binary, config).start(probe_path=f"/{dataset.archive.name}") as nginx:
        url = nginx.url(dataset.archive.name)
        print(
            f"archive {url}: {dataset.archive_bytes / 2**20:.0f} MiB compressed, "
            f"{dataset.extracted_bytes / 2**20:.0f} MiB in {len(dataset.members)} files",
            flush=True,
        )
        for run in range(1, args.runs + 1):  # interleaved, so drift hits every method alike
            for name in args.method_list:
                r = run_one(
                    METHODS[name], run, url, dataset, keep=args.keep, verify=not args.no_verify
                )
                results.append(r)
                verdict = "ok" if r.ok else "FAILED: " + "; ".join(r.problems[:5])
                run_lines.append(
                    f"run {run} {name}: {r.wall_s:.2f} s, {r.mb_per_s:.0f} MB/s, "
                    f"rss {r.peak_rss / 2**20:.0f} MiB, disk {r.peak_disk / 2**30:.2f} GiB, "
                    f"cpu {r.cpu_s:.1f} s, {verdict}"
                )
                print(run_lines[-1], flush=True)
        raws: dict[str, Path] = {}
        if args.profile:
            for name in args.method_list:
                if str(MODEL_FETCH) in METHODS[name].tools:
                    raws[name] = profile(METHODS[name], url, dataset)
    report = [
        _revision(),
        f"{args.size_gib:g} GiB of content, {dataset.archive_bytes / 2**20:.0f} MiB tar.zst, "
        f"{args.runs} run(s), nginx limit_rate {args.limit_rate or 'off'}, "
        f"{os.cpu_count()} CPUs",
        "",
        table(results, args.method_list),
        "",
        "```",
        *run_lines,
        "```",
    ]
    for name, raw in raws.items():
        report += ["", f"py-spy profile of {name} ({raw}):", "", profile_summary(raw)]
    text = "\n".join(report)
    (WORK / "last-report.md").write_text(text + "\n")
    print()
    print(text)
    print(f"\n(also written to {WORK / 'last-report.md'})")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
