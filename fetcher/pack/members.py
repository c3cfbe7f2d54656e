"""What goes into a pack: the directory walked in a fixed order, each entry checked and normalised.

Order is by the bytes of each name, depth first, so the same tree gives the same archive on
any filesystem. Modes become 0644 or 0755 (files with any execute bit, and directories),
since owners and umasks differ between the machines that pack. Only regular files,
directories and symlinks that stay inside the directory are taken; anything else is refused
rather than left out, so an archive never silently differs from the tree it names. Hard
links are stored as separate files: the fetcher gets the same bytes either way.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from fetcher.errors import UnsafeArchive, UsageError
from fetcher.stages.tree import check_symlink_target, member_parts

Kind = Literal["dir", "file", "symlink"]


@dataclass(frozen=True)
class Member:
    name: str
    """The archive name: relative, POSIX, without a leading './'."""
    kind: Kind
    path: Path
    size: int
    mode: int
    mtime: int
    target: str = ""


def _kind_name(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "a named pipe"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return name
    return "not a file, directory or symlink"


def _check_symlink(root: Path, path: Path, name: str) -> str:
    target = str(path.readlink())
    try:
        # The fetcher's own rule, so that every pack it makes it also extracts.
        check_symlink_target(name, target)
    except UnsafeArchive as error:
        raise UsageError(
            f"{path}: the symlink to {target!r} points outside {root}",
            "pack keeps only relative symlinks that stay inside the directory; "
            "replace it with the file it points to",
        ) from error
    resolved = Path(os.path.realpath(path))
    if resolved != root and root not in resolved.parents:
        raise UsageError(
            f"{path}: the symlink to {target!r} resolves to {resolved}, outside {root}",
            "replace it with the file it points to",
        )
    return target


def _member(root: Path, path: Path, name: str) -> Member:
    info = path.lstat()
    mtime = int(info.st_mtime)
    if stat.S_ISDIR(info.st_mode):
        return Member(name, "dir", path, 0, 0o755, mtime)
    if stat.S_ISREG(info.st_mode):
        mode = 0o755 if info.st_mode & 0o111 else 0o644
        return Member(name, "file", path, info.st_size, mode, mtime)
    if stat.S_ISLNK(info.st_mode):
        return Member(name, "symlink", path, 0, 0o777, mtime, _check_symlink(root, path, name))
    raise UsageError(
        f"{path} is {_kind_name(info.st_mode)}", "pack stores only files, directories and symlinks"
    )


def _check_name(path: Path, name: str) -> None:
    try:
        member_parts(name)
    except UnsafeArchive as error:
        raise UsageError(f"{path}: {error.message}", "rename it before packing") from error


def walk(root: Path) -> list[Member]:
    """Every entry under root (resolved, an existing directory), parents before children."""
    members: list[Member] = []

    def visit(directory: Path, prefix: str) -> None:
        with os.scandir(directory) as entries:
            names = sorted((entry.name for entry in entries), key=os.fsencode)
        for name in names:
            path = directory / name
            member_name = prefix + name
            _check_name(path, member_name)
            member = _member(root, path, member_name)
            members.append(member)
            if member.kind == "dir":
                visit(path, member_name + "/")

    try:
        visit(root, "")
    except PermissionError as error:
        raise UsageError(f"{error.filename}: permission denied") from None
    return members
