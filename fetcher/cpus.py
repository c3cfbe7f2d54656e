"""How many CPUs this process may keep busy: its cgroup's CPU quota, else its affinity mask.

A container limited to 2 CPUs on a 64-core node still sees 64 cores in os.cpu_count(); running
64 decoding threads there only gets the container throttled. The quota is read from cgroup v2
``cpu.max`` and from cgroup v1 ``cpu.cfs_quota_us``/``cpu.cfs_period_us``, in the process's own
cgroup and every ancestor up to the mount point (a parent's limit binds its children too); the
smallest limit found wins, and so does the affinity mask when it is smaller still.

A fractional quota is rounded up: 1.5 CPUs is kept busiest by two threads (one thread would
leave half a CPU unused; the kernel throttles the second for the rest).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

PROC_CGROUP = Path("/proc/self/cgroup")
CGROUP_ROOT = Path("/sys/fs/cgroup")


def parse_cpu_max(text: str) -> float | None:
    """CPUs allowed by a cgroup v2 ``cpu.max`` ("QUOTA PERIOD" or "max PERIOD"), None if none."""
    fields = text.split()
    if not fields or fields[0] == "max":
        return None
    try:
        quota = int(fields[0])
        period = int(fields[1]) if len(fields) > 1 else 100_000
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def parse_cfs(quota_text: str, period_text: str) -> float | None:
    """CPUs allowed by cgroup v1 ``cpu.cfs_quota_us`` and ``cpu.cfs_period_us``; -1 is none."""
    try:
        quota, period = int(quota_text.strip()), int(period_text.strip())
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _cgroup_paths(proc_cgroup: Path) -> tuple[str | None, str | None]:
    """This process's cgroup v2 path and its v1 path for the cpu controller, when listed."""
    v2 = v1 = None
    for line in (_read(proc_cgroup) or "").splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and not controllers:
            v2 = path
        elif "cpu" in controllers.split(","):
            v1 = path
    return v2, v1


def _own_and_ancestors(mount: Path, path: str) -> list[Path]:
    """The cgroup's directory and its parents up to the mount point.

    Inside a cgroup namespace the listed path may not exist under the mount (the mount shows
    the namespace's root): then the mount point itself is the process's cgroup.
    """
    own = mount / path.lstrip("/")
    if not own.is_dir():
        return [mount]
    dirs = [own]
    while dirs[-1] != mount and mount in dirs[-1].parents:
        dirs.append(dirs[-1].parent)
    return dirs


def _v2_limit(root: Path, path: str) -> float | None:
    # A pure v2 host mounts the unified tree at the root; a hybrid one below it.
    mount = root if (root / "cgroup.controllers").exists() else root / "unified"
    if not mount.is_dir():
        return None
    limits = []
    for directory in _own_and_ancestors(mount, path):
        text = _read(directory / "cpu.max")
        limit = parse_cpu_max(text) if text is not None else None
        if limit is not None:
            limits.append(limit)
    return min(limits, default=None)


def _v1_limit(root: Path, path: str) -> float | None:
    mount = next((root / name for name in ("cpu,cpuacct", "cpu") if (root / name).is_dir()), None)
    if mount is None:
        return None
    limits = []
    for directory in _own_and_ancestors(mount, path):
        quota = _read(directory / "cpu.cfs_quota_us")
        period = _read(directory / "cpu.cfs_period_us")
        limit = parse_cfs(quota, period) if quota is not None and period is not None else None
        if limit is not None:
            limits.append(limit)
    return min(limits, default=None)


def cgroup_cpu_limit(
    proc_cgroup: Path = PROC_CGROUP, cgroup_root: Path = CGROUP_ROOT
) -> float | None:
    """CPUs this process's cgroups allow (fractional), or None when nothing limits them."""
    v2_path, v1_path = _cgroup_paths(proc_cgroup)
    limits = []
    if v2_path is not None:
        limits.append(_v2_limit(cgroup_root, v2_path))
    if v1_path is not None:
        limits.append(_v1_limit(cgroup_root, v1_path))
    return min((limit for limit in limits if limit is not None), default=None)


def _affinity() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not every platform has affinity masks
        return os.cpu_count() or 1


def available_cpus(
    proc_cgroup: Path = PROC_CGROUP, cgroup_root: Path = CGROUP_ROOT, affinity: int | None = None
) -> int:
    """Threads worth running at once: the CPU quota rounded up, at most the affinity count."""
    cpus = affinity if affinity is not None else _affinity()
    limit = cgroup_cpu_limit(proc_cgroup, cgroup_root)
    if limit is not None:
        cpus = min(cpus, math.ceil(limit))
    return max(1, cpus)
