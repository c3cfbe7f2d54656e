"""Files that are whole or absent: temp file, fsync, rename, fsync of the directory."""

from __future__ import annotations

import os
import stat
from pathlib import Path


def write_atomically(path: Path, content: bytes) -> None:
    """Replace path with content so that a crash leaves the old file or the new one.

    The temporary is created exclusively and never followed through a symlink, so nothing
    planted under its name can redirect the write.
    """
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.unlink(missing_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(temporary, flags, 0o644)
    try:
        view = memoryview(content)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    temporary.replace(path)
    fsync_directory(path.parent)


def fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_tree(path: Path) -> None:
    """Remove path and everything under it, however deep; missing is fine.

    shutil.rmtree recurses once per level, so a hostile archive of a few thousand nested
    directories makes it raise RecursionError; this walks with an explicit stack of
    directory descriptors, which also keeps every name short of PATH_MAX.
    """
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(info.st_mode):
        path.unlink()
        return
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    stack: list[tuple[int, str | None]] = [(os.open(path, flags), None)]
    try:
        while stack:
            fd, _ = stack[-1]
            child = _next_subdirectory(fd)
            if child is not None:
                stack.append((os.open(child, flags, dir_fd=fd), child))
                continue
            fd, name = stack.pop()
            os.close(fd)
            if name is not None:
                os.rmdir(name, dir_fd=stack[-1][0])
    finally:
        for fd, _ in stack:
            os.close(fd)
    path.rmdir()


def _next_subdirectory(fd: int) -> str | None:
    """Unlink every non-directory in fd; the name of one subdirectory left, if any."""
    with os.scandir(fd) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                os.chmod(entry.name, 0o700, dir_fd=fd, follow_symlinks=False)
                return entry.name
            os.unlink(entry.name, dir_fd=fd)
    return None
