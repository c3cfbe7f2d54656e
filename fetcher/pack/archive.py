"""Pack a directory: walk it, write its tar through FrameWriter into a temporary, rename it."""

from __future__ import annotations

import errno
import os
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from fetcher.errors import FetchError, OutOfDisk, UsageError
from fetcher.pack.frames import FrameWriter
from fetcher.pack.members import Member, walk

_COPY_BUFFER = 1 << 20

OnProgress = Callable[[int, int], None]
"""Called with the content bytes packed so far and the total."""


@dataclass(frozen=True)
class PackResult:
    sha256: str
    bytes: int
    frames: int
    members: int
    content_bytes: int


def _no_progress(done: int, total: int) -> None:
    return None


class _CountingReader:
    def __init__(self, inner: IO[bytes], count: Callable[[int], None]) -> None:
        self._inner = inner
        self._count = count

    def read(self, size: int = -1) -> bytes:
        data = self._inner.read(size)
        self._count(len(data))
        return data


def check_paths(source: Path, output: Path) -> tuple[Path, Path]:
    """The resolved directory and output path; UsageError when the output would be inside."""
    if not source.is_dir():
        raise UsageError(f"{source} is not a directory")
    root = source.resolve()
    parent = output.parent.resolve()
    if not parent.is_dir():
        raise UsageError(f"-o {output}: the directory {output.parent} does not exist")
    if output.is_dir():
        raise UsageError(f"-o {output} is a directory", "give the archive's file name")
    final = Path(os.path.realpath(parent / output.name))
    for where in (parent / output.name, final):
        if where == root or root in where.parents:
            raise UsageError(
                f"-o {output} is inside {source}",
                "write the archive outside the directory it packs",
            )
    return root, final


def _tar_info(member: Member, mtime: int | None) -> tarfile.TarInfo:
    info = tarfile.TarInfo(member.name)
    info.mode = member.mode
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = max(0, member.mtime if mtime is None else mtime)
    if member.kind == "dir":
        info.type = tarfile.DIRTYPE
    elif member.kind == "symlink":
        info.type = tarfile.SYMTYPE
        info.linkname = member.target
    else:
        info.size = member.size
    return info


def _write_tar(
    members: list[Member], writer: FrameWriter, mtime: int | None, count: Callable[[int], None]
) -> None:
    with tarfile.TarFile(
        fileobj=writer,  # type: ignore[arg-type]  # in "w" mode tarfile only writes and tells
        mode="w",
        format=tarfile.PAX_FORMAT,
        encoding="utf-8",
        copybufsize=_COPY_BUFFER,
    ) as tar:
        for member in members:
            info = _tar_info(member, mtime)
            if member.kind != "file":
                tar.addfile(info)
                continue
            try:
                with member.path.open("rb") as file:
                    tar.addfile(info, _CountingReader(file, count))
            except OSError as error:
                if error.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise
                raise FetchError(
                    f"{member.path}: {error.strerror or error} (did it change while it was packed?)"
                ) from None


def pack(
    source: Path,
    output: Path,
    *,
    frame_size: int,
    level: int,
    threads: int,
    mtime: int | None,
    on_progress: OnProgress = _no_progress,
) -> PackResult:
    """Write source's tree to output as seekable tar.zst; mtime None keeps the files' own."""
    root, final = check_paths(source, output)
    members = walk(root)
    total = sum(member.size for member in members)
    done = 0

    def count(read: int) -> None:
        nonlocal done
        done += read
        on_progress(done, total)

    fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    temporary = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            writer = FrameWriter(out, frame_size=frame_size, level=level, threads=threads)
            _write_tar(members, writer, mtime, count)
            writer.finish()
            out.flush()
            os.fsync(out.fileno())
        temporary.chmod(0o644)  # mkstemp's 0600 would keep the archive from its servers
        temporary.replace(final)
        _fsync_directory(final.parent)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise OutOfDisk(f"{final.parent}: no space left for the archive") from None
        raise FetchError(f"{error.filename or final}: {error.strerror or error}") from None
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return PackResult(
        writer.sha256.hexdigest(), writer.bytes_written, len(writer.entries), len(members), total
    )


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
