"""Run a command under a CPU quota, as a container's CPU limit would: ``_cgroup.py CORES -- CMD``.

Creates a cgroup (v2 at /sys/fs/cgroup or its ``unified`` mount, else v1's ``cpu``
controller) with ``CORES`` x 100 ms of CPU per 100 ms period, runs CMD in it, removes the
cgroup and exits with CMD's status. Needs root; says so and exits 2 otherwise.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

PERIOD_US = 100_000
V2_ROOTS = (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified"))
V1_ROOT = Path("/sys/fs/cgroup/cpu")


def _v2_root() -> Path | None:
    for root in V2_ROOTS:
        controllers = root / "cgroup.controllers"
        if controllers.exists() and "cpu" in controllers.read_text().split():
            return root
    return None


@contextlib.contextmanager
def cpu_quota(cores: float) -> Iterator[Path]:
    """This process in a fresh cgroup limited to ``cores`` CPUs (children inherit it), and
    back where it was afterwards, so the group can be removed."""
    quota = int(cores * PERIOD_US)
    name = f"model-fetch-bench-{os.getpid()}"
    v2 = _v2_root()
    if v2 is not None:
        group = v2 / name
        group.mkdir()
        (group / "cpu.max").write_text(f"{quota} {PERIOD_US}")
        home = v2 / "cgroup.procs"
    elif (V1_ROOT / "cpu.cfs_quota_us").exists():
        group = V1_ROOT / name
        group.mkdir()
        (group / "cpu.cfs_period_us").write_text(str(PERIOD_US))
        (group / "cpu.cfs_quota_us").write_text(str(quota))
        home = V1_ROOT / "cgroup.procs"
    else:
        raise OSError("no cgroup cpu controller is mounted")
    try:
        (group / "cgroup.procs").write_text(str(os.getpid()))
        yield group
    finally:
        home.write_text(str(os.getpid()))
        group.rmdir()


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: _cgroup.py CORES -- COMMAND [ARG...]", file=sys.stderr)
        return 2
    try:
        with cpu_quota(float(argv[0])):
            return subprocess.run(argv[2:], check=False).returncode
    except (OSError, ValueError) as error:
        print(f"_cgroup.py: cannot limit the CPU ({error}); run as root", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
