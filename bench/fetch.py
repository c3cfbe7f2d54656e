"""Benchmark model-fetch against the shell pipelines and download managers people use instead.

    .venv/bin/python bench/fetch.py [--scenario throttled|unthrottled|both] [--size-gib 2]
        [--throttled-size-gib 1] [--limit-rate 40m] [--runs 1] [--methods a,b]
        [--archive zstd|pack] [--fetcher-rev REV] [--plot PNG] [--keep] [--profile]

Builds (once, cached in bench/.work/) a deterministic tar.zst with the real ``zstd -T0``, or
with ``--archive pack`` the same tree packed by the project's own ``model-fetch pack``, serves
it from a private nginx on 127.0.0.1 (installed with apt-get if missing), unthrottled or with a
per-connection ``limit_rate`` that models a CDN or a high-RTT origin, then times each method on
the same URL into a fresh directory on the same filesystem. Prints a markdown table per
scenario (wall time, extracted MB/s, speed relative to ``curl | zstd -d | tar -x``, peak RSS of
the whole process tree, peak disk used and its excess over the extracted tree, CPU time in all
and per extracted GB), then whether the fetcher's targets are met, and plots disk use over
time. Every output tree is checked file by file against the generated content (paths, kinds,
sizes, SHA-256; not modes or mtimes). See bench/README.md.

Methods are a registry of named command builders (``METHODS``): add one with ``@method(...)``.
"""

from __future__ import annotations

import argparse
import json
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

import _apt  # bench/ is on sys.path when this file runs as a script
import _dataset
import _floor
import _nginx
import _pack
import psutil

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
WORK = BENCH / ".work"
PYTHON = sys.executable
"""The interpreter running the bench (the venv's), which also runs model-fetch."""
MODEL_FETCH = _pack.MODEL_FETCH
ARCHIVES = {
    "zstd": "tar.zst made by zstd -T0 -3",
    "pack": f"tar.zst made by model-fetch pack --frame-size {_pack.FRAME_SIZE}",
}
BASELINE = "curl-pipe"
STREAMING_REV = "3b6aa1c"
"""The last commit of the single-stream fetcher, before parallel ranged GETs."""
SCENARIO_METHODS = {
    "throttled": (
        "model-fetch",
        "model-fetch-c1",
        "model-fetch-c4",
        "model-fetch-c8",
        "aria2c-extract",
        "curl-pipe",
        "download-extract",
    ),
    "unthrottled": (
        "model-fetch-streaming",
        "model-fetch",
        "model-fetch-c1",
        "model-fetch-c4",
        "model-fetch-c8",
        "aria2c-extract",
        "curl-pipe",
        "download-extract",
    ),
}
RSS_EVERY_S = 0.05
DISK_EVERY_S = 0.1
MARKER = ".model-fetch.json"  # the fetcher's completion marker, left in DIR on purpose
SLACK = 100 * 2**20
"""Peak disk target: extracted tree + --max-disk-buffer + this."""
SPEEDUP_TARGET = 6.0
TARGET_METHOD = "model-fetch-c8"


# methods


@dataclass(frozen=True)
class RunContext:
    """What a command builder may use. ``scratch`` is measured for disk and is ``TMPDIR``."""

    url: str
    sha256: str
    out: Path
    scratch: Path
    archive_name: str
    fetcher: tuple[str, ...] = MODEL_FETCH
    """The model-fetch command to run (the working tree's, or an exported revision's)."""
    max_disk_buffer: str = "1GiB"


@dataclass(frozen=True)
class Method:
    name: str
    summary: str
    build: Callable[[RunContext], list[str]]
    tools: tuple[str, ...] = ()
    """Executables that must exist (names on PATH or absolute paths)."""
    leaves: frozenset[str] = frozenset()
    """Top-level names the method leaves in DIR besides the model (ignored by the check)."""
    fetcher: bool = False
    """Runs model-fetch: profiled by --profile and held to the peak disk target."""


METHODS: dict[str, Method] = {}


def method(
    name: str,
    summary: str,
    tools: tuple[str, ...] = (),
    leaves: frozenset[str] = frozenset(),
    fetcher: bool = False,
) -> Callable[[Callable[[RunContext], list[str]]], Callable[[RunContext], list[str]]]:
    """Register a command builder under ``name``."""

    def register(build: Callable[[RunContext], list[str]]) -> Callable[[RunContext], list[str]]:
        METHODS[name] = Method(name, summary, build, tools, leaves, fetcher)
        return build

    return register


def shell(script: str) -> list[str]:
    return ["bash", "-o", "pipefail", "-c", script]


def export_fetcher(rev: str) -> tuple[str, tuple[str, ...]]:
    """Export ``fetcher/`` at ``rev`` to bench/.work/fetcher/HASH; return (hash, command).

    The command runs that copy with the venv's interpreter (``-P``: not the current directory's
    package), so it measures committed code whatever the working tree holds.
    """
    done = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--verify", f"{rev}^{{commit}}"],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"no such revision: {rev}")
    commit = done.stdout.strip()
    dest = WORK / "fetcher" / commit[:12]
    if not (dest / "fetcher" / "__main__.py").exists():
        tmp = dest.with_name(dest.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", commit, "fetcher"], capture_output=True, check=True
        )
        subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive.stdout, check=True)
        shutil.rmtree(dest, ignore_errors=True)
        tmp.rename(dest)
    return commit, ("env", f"PYTHONPATH={dest}", PYTHON, "-P", "-m", "fetcher")


def _model_fetch(*extra: str) -> Callable[[RunContext], list[str]]:
    def build(ctx: RunContext) -> list[str]:
        return [
            *ctx.fetcher,
            ctx.url,
            "--sha256",
            ctx.sha256,
            "-o",
            str(ctx.out),
            "--max-disk-buffer",
            ctx.max_disk_buffer,
            *extra,
        ]

    return build


method(
    "model-fetch",
    "model-fetch URL --sha256 HEX -o DIR (the default, --connections auto)",
    leaves=frozenset({MARKER}),
    fetcher=True,
)(_model_fetch())

for _n in (1, 2, 4, 8):
    method(
        f"model-fetch-c{_n}",
        f"model-fetch URL --sha256 HEX -o DIR --connections {_n}",
        leaves=frozenset({MARKER}),
        fetcher=True,
    )(_model_fetch("--connections", str(_n)))


CGROUP = BENCH / "_cgroup.py"
for _cores in ("0.5", "1"):
    method(
        f"model-fetch-cpu{_cores}",
        f"model-fetch URL --sha256 HEX -o DIR under a CPU quota of {_cores} core (the container's"
        " limit; needs root)",
        leaves=frozenset({MARKER}),
        fetcher=True,
    )(lambda ctx, _cores=_cores: [PYTHON, str(CGROUP), _cores, "--", *_model_fetch()(ctx)])


@method(
    "model-fetch-streaming",
    f"model-fetch as of {STREAMING_REV}: one ordered stream, before parallel ranges",
    tools=("git",),
    leaves=frozenset({MARKER}),
)
def _model_fetch_streaming(ctx: RunContext) -> list[str]:
    _, command = export_fetcher(STREAMING_REV)
    return [*command, ctx.url, "--sha256", ctx.sha256, "-o", str(ctx.out)]


@method(
    "aria2c-extract",
    "aria2c -x8 -s8 -k1M -d SCRATCH URL && zstd -d -c FILE | tar -x -C DIR && rm FILE",
    tools=("aria2c", "zstd", "tar"),
)
def _aria2c_extract(ctx: RunContext) -> list[str]:
    url, out = shlex.quote(ctx.url), shlex.quote(str(ctx.out))
    scratch, name = shlex.quote(str(ctx.scratch)), shlex.quote(ctx.archive_name)
    file = shlex.quote(str(ctx.scratch / ctx.archive_name))
    return shell(
        f"aria2c -q -x8 -s8 -k1M -d {scratch} -o {name} {url} "
        f"&& zstd -d -q -c {file} | tar -x -C {out} && rm -f {file}"
    )


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


APT_PACKAGES = {"aria2c": "aria2"}
"""Tools installed from Debian when missing, as nginx is."""


# measurement


@dataclass
class Sample:
    peak_rss: int = 0
    peak_disk: int = 0
    rss_samples: int = 0
    disk: list[tuple[float, int]] = field(default_factory=list)
    """(seconds since spawn, bytes allocated) every ``DISK_EVERY_S``."""


@dataclass
class Result:
    scenario: str
    method: str
    run: int
    wall_s: float
    cpu_s: float
    peak_rss: int
    peak_disk: int
    extracted_bytes: int
    status: int
    problems: list[str] = field(default_factory=list)
    disk: list[tuple[float, int]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == 0 and not self.problems

    @property
    def mb_per_s(self) -> float:
        return self.extracted_bytes / self.wall_s / 1e6

    @property
    def cpu_per_gb(self) -> float:
        """CPU seconds (user + system, the whole process tree) per extracted GB (10^9 bytes)."""
        return self.cpu_s / (self.extracted_bytes / 1e9)


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
    """Run ``argv``; return (exit status, wall seconds, CPU seconds, peaks and disk series)."""
    sample = Sample()
    done = threading.Event()
    started = 0.0

    def watch_disk() -> None:
        while not done.is_set():
            used = disk_used(watch)
            sample.disk.append((time.perf_counter() - started, used))
            sample.peak_disk = max(sample.peak_disk, used)
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
    final = disk_used(watch)
    sample.disk.append((ended[0] - started, final))
    sample.peak_disk = max(sample.peak_disk, final)
    return proc.returncode, ended[0] - started, cpu, sample


@dataclass(frozen=True)
class Scenario:
    name: str
    limit_rate: str | None
    size_gib: float
    methods: tuple[str, ...]


def warm(path: Path) -> None:
    """Read the archive through the page cache, untimed, so nginx serves every method from
    memory as a fast origin would. The kernel's reclaim evicts it between runs at times; the
    method that then met a disk-bound origin was slowed for reasons of its own, and
    ``--connections auto`` rightly went parallel on it."""
    with path.open("rb") as archive:
        while archive.read(8 << 20):
            pass


def run_one(
    scenario: str,
    m: Method,
    run: int,
    url: str,
    dataset: _dataset.Dataset,
    *,
    fetcher: tuple[str, ...],
    max_disk_buffer: str,
    keep: bool,
    verify: bool,
) -> Result:
    base = WORK / "runs" / f"{scenario}-{m.name}-{run}"
    shutil.rmtree(base, ignore_errors=True)
    out, scratch = base / "out", base / "scratch"
    out.mkdir(parents=True)
    scratch.mkdir()
    ctx = RunContext(
        url, dataset.sha256, out, scratch, dataset.archive.name, fetcher, max_disk_buffer
    )
    env = {**os.environ, "TMPDIR": str(scratch)}
    argv = m.build(ctx)
    os.sync()  # start every method with no dirty pages from the previous one
    warm(dataset.archive)
    status, wall, cpu, sample = run_measured(argv, [out, scratch], base / "log.txt", env)
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
        scenario,
        m.name,
        run,
        wall,
        cpu,
        sample.peak_rss,
        sample.peak_disk,
        dataset.extracted_bytes,
        status,
        problems,
        sample.disk,
    )


# profile


def profile(
    scenario: str,
    m: Method,
    url: str,
    dataset: _dataset.Dataset,
    ctx_extra: RunContext,
    *,
    rate: int = 200,
) -> Path:
    """One extra, untimed run of ``m`` under py-spy; returns the collapsed-stack file."""
    py_spy = shutil.which("py-spy") or shutil.which(str(Path(PYTHON).parent / "py-spy"))
    if py_spy is None:
        raise SystemExit("--profile needs py-spy: .venv/bin/pip install py-spy")
    base = WORK / "profile" / f"{scenario}-{m.name}"
    shutil.rmtree(base, ignore_errors=True)
    (base / "out").mkdir(parents=True)
    (base / "scratch").mkdir()
    ctx = RunContext(
        url,
        dataset.sha256,
        base / "out",
        base / "scratch",
        dataset.archive.name,
        ctx_extra.fetcher,
        ctx_extra.max_disk_buffer,
    )
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


def _ok(results: list[Result], scenario: str, name: str) -> list[Result]:
    return [r for r in results if r.scenario == scenario and r.method == name and r.ok]


def _median_wall(results: list[Result], scenario: str, name: str) -> float | None:
    mine = _ok(results, scenario, name)
    return statistics.median(r.wall_s for r in mine) if mine else None


def table(
    results: list[Result],
    scenario: str,
    methods: tuple[str, ...],
    floor: _floor.Floor | None = None,
) -> str:
    """One row per method: medians of wall time, throughput and CPU; worst peaks.

    With the archive's measured floor, a last column gives each method's CPU per GB over it.
    """
    rows = [
        f"| method | wall (s) | extracted MB/s | speed vs {BASELINE} | peak RSS (MiB) "
        "| peak disk (GiB) | peak disk - extracted (MiB) | CPU (s) | CPU (s/GB) |"
        + (" CPU vs floor |" if floor else ""),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if floor else ""),
    ]
    base_wall = _median_wall(results, scenario, BASELINE)
    for name in methods:
        mine = _ok(results, scenario, name)
        if not mine:
            rows.append(f"| {name} | failed | | | | | | | |" + (" |" if floor else ""))
            continue
        wall = statistics.median(r.wall_s for r in mine)
        ratio = f"{base_wall / wall:.2f}x" if base_wall else "-"
        peak = max(r.peak_disk for r in mine)
        per_gb = statistics.median(r.cpu_per_gb for r in mine)
        rows.append(
            f"| {name} | {wall:.2f} | {statistics.median(r.mb_per_s for r in mine):.0f} "
            f"| {ratio} | {max(r.peak_rss for r in mine) / 2**20:.0f} "
            f"| {peak / 2**30:.2f} | {(peak - mine[0].extracted_bytes) / 2**20:.0f} "
            f"| {statistics.median(r.cpu_s for r in mine):.1f} | {per_gb:.2f} |"
            + (f" {per_gb / floor.cpu_s_per_gb:.2f}x |" if floor else "")
        )
    return "\n".join(rows)


def floor_note(floor: _floor.Floor | None, size_gib: float, archive: str, seed: int) -> str:
    """The floor the table is held against, or what to run so that the next report has one."""
    if floor:
        return (
            f"The floor (bench/floor.py, {floor.measured}): {floor.cpu_s_per_gb:.2f} CPU-s/GB, "
            f"{floor.wall_s:.2f} s of wall time on this machine's cores."
        )
    if seed != 1:
        return f"No floor for seed {seed}: bench/floor.py measures the seed-1 archive only."
    return (
        "No floor measured for this archive: run "
        f"`.venv/bin/python bench/floor.py --size-gib {size_gib:g} --archive {archive}`."
    )


def _verdict(met: bool | None) -> str:
    return {True: "**met**", False: "**not met**", None: "not measured"}[met]


def targets(results: list[Result], buffer_bytes: int) -> list[str]:
    """The issue's targets, each flagged met / not met / not measured, with its numbers."""
    lines: list[str] = []
    c8 = TARGET_METHOD
    curl = _median_wall(results, "throttled", BASELINE)
    mine = _median_wall(results, "throttled", c8)
    aria = _median_wall(results, "throttled", "aria2c-extract")
    if curl and mine:
        speedup = curl / mine
        lines.append(
            f"- throttled, {c8} >= {SPEEDUP_TARGET:g}x {BASELINE}: "
            f"{_verdict(speedup >= SPEEDUP_TARGET)} ({speedup:.2f}x: {mine:.2f} s against "
            f"{curl:.2f} s)"
        )
    else:
        lines.append(f"- throttled, {c8} >= {SPEEDUP_TARGET:g}x {BASELINE}: {_verdict(None)}")
    if aria and mine:
        lines.append(
            f"- throttled, {c8} faster end to end than aria2c-extract: {_verdict(mine < aria)} "
            f"({mine:.2f} s against {aria:.2f} s)"
        )
    else:
        lines.append(f"- throttled, {c8} faster than aria2c-extract: {_verdict(None)}")
    stream = _ok(results, "unthrottled", "model-fetch-streaming")
    for name in ("model-fetch-c4", c8):
        now = _ok(results, "unthrottled", name)
        label = f"- unthrottled, {name} MB/s no worse than model-fetch-streaming"
        if not (stream and now):
            lines.append(f"{label}: {_verdict(None)}")
            continue
        a = statistics.median(r.mb_per_s for r in now)
        b = statistics.median(r.mb_per_s for r in stream)
        lines.append(f"{label}: {_verdict(a >= b)} ({a:.0f} against {b:.0f} MB/s, {a / b:.2f}x)")
    lines += _parallel_cost_targets(results)
    fetchers = [r for r in results if r.ok and METHODS[r.method].fetcher]
    if fetchers:
        over = [r for r in fetchers if r.peak_disk > r.extracted_bytes + buffer_bytes + SLACK]
        worst = max(fetchers, key=lambda r: r.peak_disk - r.extracted_bytes)
        excess = (worst.peak_disk - worst.extracted_bytes) / 2**20
        detail = f"worst {excess:.0f} MiB over the tree ({worst.scenario} {worst.method})"
        if over:
            detail += "; over the bound: " + ", ".join(
                f"{r.scenario} {r.method} run {r.run}" for r in over
            )
        lines.append(
            f"- every model-fetch run, peak disk <= extracted + {buffer_bytes / 2**20:.0f} MiB "
            f"buffer + {SLACK / 2**20:.0f} MiB: {_verdict(not over)} ({detail})"
        )
    else:
        lines.append(f"- peak disk bound: {_verdict(None)}")
    return lines


PARALLEL_TIME_TARGET = 0.95
"""Unthrottled: --connections 4 and 8 take at most 1/0.95 of one connection's wall time."""
PARALLEL_CPU_TARGET = 1.15
"""Unthrottled: CPU seconds per extracted GB with 8 connections, at most this times one's."""
DEFAULT_SPEEDUP_TARGETS = {"unthrottled": 1.3, "throttled": 5.8}
"""The default (--connections auto) against the curl pipeline, per scenario."""


def _parallel_cost_targets(results: list[Result]) -> list[str]:
    """What parallel ranges cost where one connection is enough, and what the default gains."""
    lines: list[str] = []
    one = _median_wall(results, "unthrottled", "model-fetch-c1")
    for name in ("model-fetch-c4", "model-fetch-c8"):
        label = f"- unthrottled, {name} >= {PARALLEL_TIME_TARGET:g}x the speed of model-fetch-c1"
        wall = _median_wall(results, "unthrottled", name)
        if not (one and wall):
            lines.append(f"{label}: {_verdict(None)}")
            continue
        ratio = one / wall
        lines.append(
            f"{label}: {_verdict(ratio >= PARALLEL_TIME_TARGET)} ({ratio:.2f}x: {wall:.2f} s "
            f"against {one:.2f} s)"
        )
    c1_cpu = [r.cpu_per_gb for r in _ok(results, "unthrottled", "model-fetch-c1")]
    c8_cpu = [r.cpu_per_gb for r in _ok(results, "unthrottled", "model-fetch-c8")]
    label = f"- unthrottled, model-fetch-c8 CPU-s/GB <= {PARALLEL_CPU_TARGET:g}x model-fetch-c1's"
    if c1_cpu and c8_cpu:
        a, b = statistics.median(c8_cpu), statistics.median(c1_cpu)
        lines.append(
            f"{label}: {_verdict(a <= PARALLEL_CPU_TARGET * b)} ({a / b:.2f}x: {a:.2f} against "
            f"{b:.2f} s/GB)"
        )
    else:
        lines.append(f"{label}: {_verdict(None)}")
    for scenario, target in DEFAULT_SPEEDUP_TARGETS.items():
        label = f"- {scenario}, model-fetch (default) >= {target:g}x {BASELINE}"
        curl = _median_wall(results, scenario, BASELINE)
        wall = _median_wall(results, scenario, "model-fetch")
        if not (curl and wall):
            lines.append(f"{label}: {_verdict(None)}")
            continue
        lines.append(
            f"{label}: {_verdict(curl / wall >= target)} ({curl / wall:.2f}x: {wall:.2f} s "
            f"against {curl:.2f} s)"
        )
    return lines


def representative(results: list[Result], scenario: str, name: str) -> Result | None:
    """The ok run whose wall time is closest to the median (the one plotted)."""
    mine = _ok(results, scenario, name)
    if not mine:
        return None
    med = statistics.median(r.wall_s for r in mine)
    return min(mine, key=lambda r: abs(r.wall_s - med))


def plot(
    results: list[Result],
    *,
    scenarios: list[Scenario],
    extracted: dict[str, int],
    buffer_bytes: int,
    titles: dict[str, str],
    path: Path,
) -> None:
    """Disk use over time, one panel per scenario, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = {
        "model-fetch-c8": ("tab:red", "-", 2.4),
        "model-fetch-c4": ("tab:orange", "-", 1.8),
        "model-fetch-c1": ("tab:olive", "-", 1.8),
        "model-fetch-streaming": ("tab:brown", ":", 1.8),
        "model-fetch": ("tab:pink", "-", 1.8),
        "model-fetch-c2": ("tab:purple", "-", 1.8),
        "aria2c-extract": ("tab:blue", "--", 1.8),
        "curl-pipe": ("tab:green", "-.", 1.8),
        "curl-pipe-sync": ("tab:cyan", "-.", 1.8),
        "download-extract": ("tab:gray", "--", 1.8),
    }
    fig, axes = plt.subplots(len(scenarios), 1, figsize=(11, 4.6 * len(scenarios)), squeeze=False)
    for ax, sc in zip(axes[:, 0], scenarios, strict=True):
        for name in sc.methods:
            r = representative(results, sc.name, name)
            if r is None or not r.disk:
                continue
            color, style, width = styles.get(name, ("black", "-", 1.5))
            xs = [0.0, *(t for t, _ in r.disk)]
            ys = [0.0, *(b / 2**30 for _, b in r.disk)]
            ax.plot(
                xs,
                ys,
                style,
                color=color,
                linewidth=width,
                label=f"{name} ({r.wall_s:.1f} s, peak {r.peak_disk / 2**30:.2f} GiB)",
            )
        tree = extracted[sc.name] / 2**30
        ax.axhline(tree, color="black", linewidth=1, linestyle=(0, (2, 2)))
        ax.axhline(tree + buffer_bytes / 2**30, color="crimson", linewidth=1, linestyle=(0, (2, 2)))
        ax.annotate(
            f"extracted tree {tree:.2f} GiB",
            (0.995, tree),
            xycoords=("axes fraction", "data"),
            ha="right",
            va="bottom",
            fontsize=9,
        )
        ax.annotate(
            f"extracted + --max-disk-buffer ({buffer_bytes / 2**30:g} GiB)",
            (0.995, tree + buffer_bytes / 2**30),
            xycoords=("axes fraction", "data"),
            ha="right",
            va="bottom",
            fontsize=9,
            color="crimson",
        )
        ax.set_title(titles[sc.name], fontsize=11)
        ax.set_xlabel("seconds since start")
        ax.set_ylabel("GiB on disk (allocated blocks)")
        ax.set_xlim(left=0)
        ax.set_ylim(0, (tree + buffer_bytes / 2**30) * 1.25)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="upper left", fontsize=8.5, framealpha=0.9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_size(text: str) -> int:
    """Bytes in ``text``: a number with an optional K/M/G (decimal) or Ki/Mi/Gi suffix."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMG]i?)?B?", text.strip(), re.IGNORECASE)
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text}")
    number, unit = float(match.group(1)), (match.group(2) or "").lower()
    scale = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "ki": 2**10, "mi": 2**20, "gi": 2**30}
    return int(number * scale[unit])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--scenario",
        choices=("throttled", "unthrottled", "both"),
        default="both",
        help="origin: nginx with --limit-rate per connection, without, or both (default both)",
    )
    parser.add_argument(
        "--size-gib", type=float, default=2.0, help="content size, unthrottled (default 2)"
    )
    parser.add_argument(
        "--throttled-size-gib",
        type=float,
        default=1.0,
        help="content size for the throttled scenario (default 1)",
    )
    parser.add_argument(
        "--limit-rate",
        metavar="RATE",
        default="40m",
        help="nginx limit_rate per connection in the throttled scenario (default 40m = 40 MB/s)",
    )
    parser.add_argument("--runs", type=int, default=1, help="runs per method (default 1)")
    parser.add_argument(
        "--methods",
        help=f"comma-separated, from: {', '.join(METHODS)} (default: per scenario, "
        f"throttled: {','.join(SCENARIO_METHODS['throttled'])}; "
        f"unthrottled: {','.join(SCENARIO_METHODS['unthrottled'])})",
    )
    parser.add_argument(
        "--archive",
        choices=tuple(ARCHIVES),
        default="zstd",
        help="the archive every method fetches: the tree streamed into zstd -T0 -3, or packed "
        f"by this checkout's model-fetch pack --frame-size {_pack.FRAME_SIZE} (default zstd)",
    )
    parser.add_argument(
        "--fetcher-rev",
        metavar="REV",
        help="run model-fetch from this commit (exported with git archive) instead of the "
        "working tree, e.g. HEAD to measure committed code only",
    )
    parser.add_argument(
        "--max-disk-buffer",
        default="1GiB",
        help="passed to model-fetch; also the peak disk target's buffer (default 1GiB)",
    )
    parser.add_argument(
        "--plot",
        type=Path,
        default=WORK / "fetch-disk-over-time.png",
        help="where the disk-over-time PNG goes (default bench/.work/fetch-disk-over-time.png)",
    )
    parser.add_argument("--keep", action="store_true", help="keep output trees in bench/.work")
    parser.add_argument("--no-verify", action="store_true", help="skip the per-file check")
    parser.add_argument("--port", type=int, default=18473, help="nginx port on 127.0.0.1")
    parser.add_argument("--seed", type=int, default=1, help="content seed (default 1)")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="afterwards, run each model-fetch method once more under py-spy and summarise",
    )
    args = parser.parse_args(argv)
    names = ("throttled", "unthrottled") if args.scenario == "both" else (args.scenario,)
    chosen = None
    if args.methods:
        chosen = tuple(m.strip() for m in args.methods.split(",") if m.strip())
        unknown = [m for m in chosen if m not in METHODS]
        if unknown:
            parser.error(f"unknown method(s) {', '.join(unknown)}; known: {', '.join(METHODS)}")
    if args.runs < 1 or args.size_gib <= 0 or args.throttled_size_gib <= 0:
        parser.error("--runs must be >= 1 and sizes > 0")
    try:
        args.buffer_bytes = parse_size(args.max_disk_buffer)
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    args.scenarios = [
        Scenario(
            name,
            args.limit_rate if name == "throttled" else None,
            args.throttled_size_gib if name == "throttled" else args.size_gib,
            chosen or SCENARIO_METHODS[name],
        )
        for name in names
    ]
    return args


def check_tools(methods: set[str], fetcher: tuple[str, ...]) -> None:
    for name in sorted(methods):
        for tool in METHODS[name].tools:
            if shutil.which(tool) is None and tool in APT_PACKAGES:
                _apt.ensure(tool, APT_PACKAGES[tool])
            if shutil.which(tool) is None:
                raise SystemExit(f"method {name} needs {tool}, which is not installed")
    if any(METHODS[n].fetcher for n in methods):
        probe = subprocess.run([*fetcher, "--help"], capture_output=True, check=False)
        if probe.returncode != 0:
            raise SystemExit(f"{' '.join(fetcher)} --help fails; run make venv first")


def _revision(exported: str | None) -> str:
    """The commit measured, and whether the fetcher had uncommitted changes."""
    if exported:
        return f"model-fetch exported from commit {exported[:7]} (committed code only)"

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


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.2f}/{five:.2f}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    exported: str | None = None
    fetcher: tuple[str, ...] = MODEL_FETCH
    if args.fetcher_rev:
        exported, fetcher = export_fetcher(args.fetcher_rev)
    check_tools({m for sc in args.scenarios for m in sc.methods}, fetcher)
    sizes = {sc.name: int(sc.size_gib * 2**30) for sc in args.scenarios}
    stem = _pack.stem if args.archive == "pack" else _dataset.stem
    keep = frozenset(stem(n, args.seed) for n in sizes.values())
    binary = _nginx.ensure_installed()
    results: list[Result] = []
    run_lines: list[str] = []
    headers: dict[str, str] = {}
    titles: dict[str, str] = {}
    extracted: dict[str, int] = {}
    floors: dict[str, _floor.Floor | None] = {}
    raws: dict[str, Path] = {}
    for sc in args.scenarios:
        if args.archive == "pack":
            dataset = _pack.ensure(sizes[sc.name], args.seed, keep=keep)
        else:
            dataset = _dataset.ensure(WORK / "data", sizes[sc.name], args.seed, keep=keep)
        extracted[sc.name] = dataset.extracted_bytes
        floors[sc.name] = _floor.load(dataset.sha256)
        config = _nginx.NginxConfig(
            root=dataset.archive.parent,
            prefix=WORK / "nginx",
            port=_nginx.free_port(args.port),
            limit_rate=sc.limit_rate,
        )
        load_before = _load()
        with _nginx.Nginx(binary, config).start(probe_path=f"/{dataset.archive.name}") as nginx:
            url = nginx.url(dataset.archive.name)
            print(
                f"[{sc.name}] archive {url} ({ARCHIVES[args.archive]}): "
                f"{dataset.archive_bytes / 2**20:.0f} MiB compressed, "
                f"{dataset.extracted_bytes / 2**20:.0f} MiB in {len(dataset.members)} files, "
                f"limit_rate {sc.limit_rate or 'off'}, load {load_before}",
                flush=True,
            )
            for run in range(1, args.runs + 1):  # interleaved, so drift hits every method alike
                for name in sc.methods:
                    r = run_one(
                        sc.name,
                        METHODS[name],
                        run,
                        url,
                        dataset,
                        fetcher=fetcher,
                        max_disk_buffer=args.max_disk_buffer,
                        keep=args.keep,
                        verify=not args.no_verify,
                    )
                    results.append(r)
                    verdict = "ok" if r.ok else "FAILED: " + "; ".join(r.problems[:5])
                    run_lines.append(
                        f"{sc.name} run {run} {name}: {r.wall_s:.2f} s, {r.mb_per_s:.0f} MB/s, "
                        f"rss {r.peak_rss / 2**20:.0f} MiB, disk {r.peak_disk / 2**30:.2f} GiB, "
                        f"cpu {r.cpu_s:.1f} s ({r.cpu_per_gb:.2f} s/GB), load {_load()}, "
                        f"{verdict}"
                    )
                    print(run_lines[-1], flush=True)
            if args.profile:
                ctx = RunContext(url, "", WORK, WORK, "", fetcher, args.max_disk_buffer)
                for name in sc.methods:
                    if METHODS[name].fetcher:
                        raws[f"{sc.name} {name}"] = profile(
                            sc.name, METHODS[name], url, dataset, ctx
                        )
        rate = f"nginx limit_rate {sc.limit_rate} per connection" if sc.limit_rate else "no limit"
        headers[sc.name] = (
            f"{sc.name}: {sc.size_gib:g} GiB of content, {dataset.archive_bytes / 2**20:.0f} MiB "
            f"{ARCHIVES[args.archive]}, {rate}, {args.runs} run(s), load average (1/5 min) "
            f"{load_before} before, {_load()} after"
        )
        titles[sc.name] = (
            f"{sc.name}: {sc.size_gib:g} GiB content, {dataset.archive_bytes / 2**20:.0f} MiB "
            f"{ARCHIVES[args.archive]}, {rate}"
        )
    report = [
        _revision(exported),
        f"archive: {ARCHIVES[args.archive]}",
        f"{os.cpu_count()} CPUs, --max-disk-buffer {args.max_disk_buffer}",
    ]
    for sc in args.scenarios:
        floor = floors[sc.name]
        report += ["", headers[sc.name], "", table(results, sc.name, sc.methods, floor)]
        report += ["", floor_note(floor, sc.size_gib, args.archive, args.seed)]
    report += ["", "Targets:", "", *targets(results, args.buffer_bytes)]
    report += ["", "```", *run_lines, "```"]
    for key, raw in raws.items():
        report += ["", f"py-spy profile of {key} ({raw}):", "", profile_summary(raw)]
    series = {
        sc.name: {
            name: [list(p) for p in rep.disk]
            for name in sc.methods
            if (rep := representative(results, sc.name, name))
        }
        for sc in args.scenarios
    }
    (WORK / "disk-series.json").write_text(json.dumps(series))
    try:
        plot(
            results,
            scenarios=args.scenarios,
            extracted=extracted,
            buffer_bytes=args.buffer_bytes,
            titles=titles,
            path=args.plot,
        )
        report += ["", f"disk over time: {args.plot}"]
    except ImportError:
        report += ["", "no plot: matplotlib is missing (make venv installs it)"]
    text = "\n".join(report)
    (WORK / "last-report.md").write_text(text + "\n")
    print()
    print(text)
    print(f"\n(also written to {WORK / 'last-report.md'})")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
