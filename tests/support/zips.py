"""Zip archives for tests: by Python's zipfile, by Info-ZIP ``zip`` and by ``7z``.

Trees are those of ``tests.support.archives`` (no hard links: zip has none). ``py_zip`` stores
unix modes and symlinks in the external attributes as Info-ZIP does; ``cli_zip`` writes the
tree to disk and runs the real ``zip`` (``-y`` keeps symlinks as links), to a file or, with
``stream=True``, to a pipe, where it must write data descriptors; ``sevenz_zip`` runs ``7z``.
"""

from __future__ import annotations

import io
import os
import stat
import subprocess
import zipfile
from pathlib import Path
from typing import BinaryIO

from tests.support.archives import Dir, File, Hardlink, Symlink, Tree, write_tree

__all__ = ["Unseekable", "cli_zip", "py_zip", "sevenz_zip"]

_DATE = (2024, 1, 2, 3, 4, 6)


class Unseekable(io.RawIOBase):
    """A write-only stream that cannot seek: zipfile then writes data descriptors."""

    def __init__(self, sink: BinaryIO) -> None:
        self._sink = sink

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        return self._sink.write(data)


def py_zip(
    tree: Tree, method: int = zipfile.ZIP_DEFLATED, *, streamed: bool = False,
    force_zip64: bool = False,
) -> bytes:  # fmt: skip
    """A zip of tree made by zipfile; streamed writes to an unseekable stream."""
    buffer = io.BytesIO()
    target: BinaryIO = Unseekable(buffer) if streamed else buffer  # type: ignore[assignment]
    with zipfile.ZipFile(target, "w", method) as archive:
        for path, entry in tree.items():
            _add(archive, path, entry, force_zip64=force_zip64)
    return buffer.getvalue()


def _add(archive: zipfile.ZipFile, path: str, entry: object, *, force_zip64: bool) -> None:
    if isinstance(entry, Hardlink):
        raise ValueError("zip archives have no hard links")
    if isinstance(entry, Dir):
        info = zipfile.ZipInfo(path.rstrip("/") + "/", _DATE)
        info.external_attr = (stat.S_IFDIR | entry.mode) << 16 | 0x10
        archive.writestr(info, b"")
        return
    info = zipfile.ZipInfo(path, _DATE)
    info.compress_type = archive.compression
    if isinstance(entry, Symlink):
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        data = entry.target.encode()
    else:
        file = entry if isinstance(entry, File) else File(entry)  # type: ignore[arg-type]
        info.external_attr = (stat.S_IFREG | file.mode) << 16
        data = file.data
    info.create_system = 3
    with archive.open(info, "w", force_zip64=force_zip64) as member:
        member.write(data)


def cli_zip(
    tree: Tree, workdir: Path, *flags: str, stream: bool = False, tool_args: tuple[str, ...] = ()
) -> bytes:
    """Write tree into workdir/src and zip it with Info-ZIP ``zip -r -y`` (plus flags)."""
    src = write_tree(tree, workdir / "src")
    names = sorted(os.listdir(src))
    if stream:
        return subprocess.run(
            ["zip", "-q", "-r", "-y", *flags, "-", *names, *tool_args],
            cwd=src, capture_output=True, check=True, timeout=120,
        ).stdout  # fmt: skip
    out = workdir / "made.zip"
    out.unlink(missing_ok=True)
    subprocess.run(
        ["zip", "-q", "-r", "-y", *flags, str(out), *names],
        cwd=src, capture_output=True, check=True, timeout=120,
    )  # fmt: skip
    return out.read_bytes()


def sevenz_zip(tree: Tree, workdir: Path, *flags: str) -> bytes:
    """Write tree into workdir/src and zip it with ``7z a -tzip`` (plus flags)."""
    src = write_tree(tree, workdir / "src")
    out = workdir / "made-7z.zip"
    out.unlink(missing_ok=True)
    subprocess.run(
        ["7z", "a", "-tzip", "-bd", "-bso0", *flags, str(out), *sorted(os.listdir(src))],
        cwd=src, capture_output=True, check=True, timeout=120,
    )  # fmt: skip
    return out.read_bytes()
