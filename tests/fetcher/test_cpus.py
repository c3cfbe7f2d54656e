"""The CPU quota comes from the process's own cgroup files, v2 or v1, and binds from ancestors."""

from __future__ import annotations

from pathlib import Path

import pytest

from fetcher.cpus import available_cpus, cgroup_cpu_limit, parse_cfs, parse_cpu_max


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.mark.parametrize(
    ("text", "cpus"),
    [
        ("max 100000\n", None),
        ("200000 100000\n", 2.0),
        ("150000 100000\n", 1.5),
        ("50000 100000\n", 0.5),
        ("300000\n", 3.0),  # the period may be left out: the kernel's default applies
        ("", None),
        ("garbage here\n", None),
    ],
)
def test_cpu_max(text: str, cpus: float | None) -> None:
    assert parse_cpu_max(text) == cpus


@pytest.mark.parametrize(
    ("quota", "period", "cpus"),
    [("-1\n", "100000\n", None), ("250000\n", "100000\n", 2.5), ("x", "100000", None)],
)
def test_cfs(quota: str, period: str, cpus: float | None) -> None:
    assert parse_cfs(quota, period) == cpus


def _v2_host(tmp_path: Path, own: str, parent: str = "max 100000") -> tuple[Path, Path]:
    """A pure cgroup v2 host: the process sits in /kubepods/pod1/ctr."""
    root = tmp_path / "cgroup"
    _write(root / "cgroup.controllers", "cpuset cpu io memory pids\n")
    _write(root / "kubepods" / "pod1" / "cpu.max", parent)
    _write(root / "kubepods" / "pod1" / "ctr" / "cpu.max", own)
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text("0::/kubepods/pod1/ctr\n")
    return proc, root


def test_v2_own_quota(tmp_path: Path) -> None:
    proc, root = _v2_host(tmp_path, "150000 100000\n")
    assert cgroup_cpu_limit(proc, root) == 1.5
    assert available_cpus(proc, root, affinity=64) == 2  # rounded up


def test_v2_parent_quota_binds_an_unlimited_child(tmp_path: Path) -> None:
    proc, root = _v2_host(tmp_path, "max 100000\n", parent="100000 100000\n")
    assert available_cpus(proc, root, affinity=64) == 1


def test_v2_inside_a_cgroup_namespace(tmp_path: Path) -> None:
    """The namespace shows its own root as / and mounts it at the cgroup root."""
    root = tmp_path / "cgroup"
    _write(root / "cgroup.controllers", "cpu\n")
    _write(root / "cpu.max", "300000 100000\n")
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text("0::/\n")
    assert available_cpus(proc, root, affinity=64) == 3


def test_v2_listed_path_missing_under_the_mount(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    _write(root / "cgroup.controllers", "cpu\n")
    _write(root / "cpu.max", "200000 100000\n")
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text("0::/../elsewhere/ctr\n")
    assert available_cpus(proc, root, affinity=64) == 2


def test_v1_quota(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    own = root / "cpu,cpuacct" / "docker" / "abc"
    _write(own / "cpu.cfs_quota_us", "200000\n")
    _write(own / "cpu.cfs_period_us", "100000\n")
    _write(root / "cpu,cpuacct" / "cpu.cfs_quota_us", "-1\n")
    _write(root / "cpu,cpuacct" / "cpu.cfs_period_us", "100000\n")
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text("12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n1:name=systemd:/x\n")
    assert cgroup_cpu_limit(proc, root) == 2.0
    assert available_cpus(proc, root, affinity=8) == 2


def test_hybrid_host_without_limits_uses_affinity(tmp_path: Path) -> None:
    """v1 controllers plus an empty unified tree, as this kind of host mounts them."""
    root = tmp_path / "cgroup"
    _write(root / "cpu" / "cpu.cfs_quota_us", "-1\n")
    _write(root / "cpu" / "cpu.cfs_period_us", "100000\n")
    (root / "unified").mkdir()
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text("1:cpu:/\n0::/\n")
    assert cgroup_cpu_limit(proc, root) is None
    assert available_cpus(proc, root, affinity=3) == 3


def test_affinity_smaller_than_quota_wins(tmp_path: Path) -> None:
    proc, root = _v2_host(tmp_path, "800000 100000\n")
    assert available_cpus(proc, root, affinity=2) == 2


def test_no_cgroup_files_at_all(tmp_path: Path) -> None:
    assert cgroup_cpu_limit(tmp_path / "none", tmp_path / "none") is None
    assert available_cpus(tmp_path / "none", tmp_path / "none", affinity=5) == 5


def test_tiny_quota_still_gets_one_thread(tmp_path: Path) -> None:
    proc, root = _v2_host(tmp_path, "10000 100000\n")
    assert available_cpus(proc, root, affinity=4) == 1


def test_this_machine() -> None:
    assert available_cpus() >= 1
