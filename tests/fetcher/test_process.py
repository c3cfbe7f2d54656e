"""model-fetch as the init container runs it: a separate process, signals, memory, disk."""

from __future__ import annotations

import io
import os
import pty
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import pytest

from tests.fetcher.conftest import sha256
from tests.support.archives import compress, py_archive
from tests.support.origin import Faults, Origin

FETCH = [sys.executable, "-m", "fetcher"]


def _big_archive(extracted_mib: int) -> bytes:
    """A tar.zst whose members add up to extracted_mib, compressing ~100:1."""
    buffer = io.BytesIO()
    block = (bytes(range(256)) * 4096)[: 1 << 20]
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for index in range(4):
            info = tarfile.TarInfo(f"shard-{index}.bin")
            info.size = extracted_mib // 4 << 20
            archive.addfile(info, io.BytesIO(block * (extracted_mib // 4)))
    return compress(buffer.getvalue(), "zst", level=1)


def _peak_rss_kib(args: list[str]) -> tuple[int, int]:
    """Exit code and peak RSS of one child, measured by a parent that runs only that child."""
    probe = textwrap.dedent(
        """
        import resource, subprocess, sys
        code = subprocess.run(sys.argv[1:]).returncode
        print(code, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, *args], capture_output=True, text=True, check=True
    )
    code, peak = result.stdout.split()
    return int(code), int(peak)


def test_peak_memory_does_not_grow_with_the_archive(origin: Origin, tmp_path: Path) -> None:
    small, large = _big_archive(8), _big_archive(800)
    origin.add("/small", small)
    origin.add("/large", large)
    code_small, rss_small = _peak_rss_kib([*FETCH, origin.url("/small"), "-o", str(tmp_path / "s")])
    code_large, rss_large = _peak_rss_kib([*FETCH, origin.url("/large"), "-o", str(tmp_path / "l")])
    assert (code_small, code_large) == (0, 0)
    assert sum(f.stat().st_size for f in (tmp_path / "l").glob("shard-*")) == 800 << 20
    assert rss_large < 100 * 1024, f"peak RSS {rss_large} KiB"
    assert rss_large - rss_small < 16 * 1024, f"{rss_small} KiB -> {rss_large} KiB"


def test_sigterm_stops_with_128_plus_15_and_one_plain_line(origin: Origin, tmp_path: Path) -> None:
    archive = py_archive({"weights": os.urandom(2_000_000)}, "zst")
    origin.add("/m", archive, faults=Faults(drip_bytes_per_s=200_000))
    out = tmp_path / "out"
    process = subprocess.Popen(
        [*FETCH, origin.url("/m"), "--sha256", sha256(archive), "-o", str(out)],
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 10
    while origin.bytes_sent("/m") < 200_000 and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=10)
    assert process.returncode == 128 + signal.SIGTERM, err
    assert err.strip().splitlines()[-1].startswith("model-fetch: error: stopped by SIGTERM")
    assert not (out / ".model-fetch.json").exists()


def test_out_of_disk_exits_6_naming_the_cure(tmp_path: Path) -> None:
    archive = py_archive({"weights": os.urandom(3_000_000)}, "none")
    (tmp_path / "model.tar").write_bytes(archive)
    with Origin() as origin:
        origin.add("/m", archive)
        out = tmp_path / "small-volume"
        out.mkdir()
        # A 1 MiB tmpfs in a private mount namespace stands in for a full emptyDir.
        script = (
            f"mount -t tmpfs -o size=1m tmpfs {out} && "
            f"{sys.executable} -m fetcher {origin.url('/m')} -o {out}"
        )
        result = subprocess.run(
            ["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=60
        )
    assert result.returncode == 6, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    # Either the extracted file or the download window hits the limit first.
    assert "out of disk space" in last
    assert "size" in last.split(";", 1)[1]  # and the line says what to resize


@pytest.mark.parametrize("bad", [["--connections", "0"], ["--retries", "-1"], ["--output"]])
def test_usage_errors_exit_2(bad: list[str]) -> None:
    result = subprocess.run(
        [*FETCH, "https://h/m", "-o", "/nonexistent/x", *bad], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert result.stderr.strip()


def test_a_terminal_gets_a_progress_bar(origin: Origin, tmp_path: Path) -> None:
    archive = py_archive({"weights": os.urandom(3_000_000)}, "none")
    origin.add("/m", archive, faults=Faults(drip_bytes_per_s=3_000_000))
    primary, secondary = pty.openpty()
    process = subprocess.Popen(
        [*FETCH, origin.url("/m"), "-o", str(tmp_path / "out"), "--connections", "1"],
        stdin=secondary,
        stdout=secondary,
        stderr=secondary,
    )
    os.close(secondary)
    screen = b""
    while True:
        try:
            data = os.read(primary, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        screen += data
    os.close(primary)
    assert process.wait(timeout=30) == 0
    text = screen.decode()
    bars = [part for part in text.split("\r") if part.startswith("[")]
    assert bars, text
    assert "MB/s" in bars[-1]
    assert "ETA" in bars[-1]
    assert "%" in bars[-1]


def test_a_second_signal_exits_at_once(origin: Origin, tmp_path: Path) -> None:
    # One zstd frame has no restorable point, so after the first signal the fetcher would
    # keep decoding for its grace period; the second signal must cut that short.
    archive = py_archive({"weights": os.urandom(4_000_000)}, "zst")
    origin.add("/m", archive, faults=Faults(drip_bytes_per_s=500_000))
    process = subprocess.Popen(
        [*FETCH, origin.url("/m"), "-o", str(tmp_path / "out"), "--connections", "1"],
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 10
    while origin.bytes_sent("/m") < 300_000 and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=10)
    assert process.returncode == 128 + signal.SIGTERM
    assert "stopped by SIGTERM" not in err  # it left without the orderly last line
