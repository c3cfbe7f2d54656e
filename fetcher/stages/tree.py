"""Writes archive members under a root directory and nowhere else.

Every path is walked one component at a time with directory file descriptors and O_NOFOLLOW, so
a symlink planted by an earlier member (or by anyone else) can never redirect a write. Link
targets are checked before the link exists, so nothing the archive creates points outside.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path, PurePosixPath

from fetcher.errors import FetchError, OutOfDisk, UnsafeArchive
from fetcher.state.checkpoint import CompletedFile, DirMode, OpenFile, StateError, TreeState
from fetcher.state.libc import sync_filesystem

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_PERMISSION_BITS = 0o777  # setuid, setgid and sticky bits are never restored
_IMPLICIT_DIR_MODE = 0o755
# Each write at most this much: the kernel sizes page-cache folios by the write, and on a
# virtual machine whose free memory the host has taken back, large folios fault it back in
# at a high cost (writing 2 GiB in 1 MiB writes took 0.4-16 s of system time there, in
# 128 KiB writes 0.4-0.5 s; see docs/benchmarks.md). Smaller writes cost more system calls.
WRITE_BYTES = 128 << 10
# Pieces of zeros are left as holes, so a file of zeros takes no disk. However short: how the
# decoder cuts its output depends on how the network cut its input, and a short piece written
# as data would put blocks of zeros on disk by chance. Checked piece by piece as written, so
# each byte is looked at once.
_ZEROS = bytes(WRITE_BYTES)
# The fetcher's own files in DIR (state folder, marker and its temporary, lock): no archive
# member may reach them, or a symlink named like one could redirect the fetcher's own writes.
RESERVED_NAMES = frozenset(
    {".model-fetch", ".model-fetch.json", "..model-fetch.json.tmp", ".model-fetch.lock"}
)


def member_parts(name: str, *, allow_root: bool = False) -> tuple[str, ...]:
    """The components of an archive member path, or UnsafeArchive if it could leave the root."""
    if "\0" in name:
        raise UnsafeArchive(name, "the name contains a NUL byte")
    if name.startswith("/"):
        raise UnsafeArchive(name, "absolute paths are not allowed")
    parts = tuple(part for part in PurePosixPath(name).parts if part != ".")
    if ".." in parts:
        raise UnsafeArchive(name, "'..' components are not allowed")
    if not parts and not allow_root:
        raise UnsafeArchive(name, "the name is empty")
    if parts and parts[0] in RESERVED_NAMES:
        raise UnsafeArchive(name, "the name is one model-fetch keeps for its own files")
    return parts


def check_symlink_target(member: str, target: str) -> None:
    """Allow only relative targets whose '..' steps come first and stay within the root.

    A '..' after an ordinary component could climb out through a symlink that resolves to the
    root itself (``up -> ..`` then ``esc -> up/..``), which a purely lexical check would miss.
    """
    if not target or "\0" in target:
        raise UnsafeArchive(member, "the symlink target is empty or contains NUL")
    if target.startswith("/"):
        raise UnsafeArchive(member, f"the symlink points to the absolute path {target!r}")
    depth = len(member_parts(member)) - 1
    climbing = True
    for part in PurePosixPath(target).parts:
        if part == "..":
            if not climbing:
                raise UnsafeArchive(member, f"the symlink target {target!r} has '..' after a name")
            depth -= 1
            if depth < 0:
                raise UnsafeArchive(member, f"the symlink target {target!r} leaves the directory")
        elif part != ".":
            climbing = False


class SafeTree:
    def __init__(self, root: Path, *, max_bytes: int) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self._root_fd = os.open(root, _DIR_FLAGS)
        self._max_bytes = max_bytes
        self.bytes_written = 0
        self.files_written = 0
        self._dir_modes: dict[tuple[str, ...], tuple[int, float | None]] = {}
        self._parent_cache: tuple[tuple[str, ...], int] | None = None
        self._file_fd: int | None = None
        self._file_member = ""
        self._file_mode = 0
        self._file_parts: tuple[str, ...] = ()
        self._file_offset = 0
        self._file_size = 0
        self._hole_pending = False  # the file ends in a hole not yet given its length
        # Files a resumed run finds complete on disk: their content is read past, not rewritten.
        self._already_complete: dict[int, CompletedFile] = {}
        self._skipping = False
        self._file_ordinal = 0
        self.completed: dict[int, CompletedFile] = {}  # finished since the last restore point

    # --- paths ---------------------------------------------------------------------------

    def _open_parent(self, member: str, parts: tuple[str, ...]) -> int:
        """A descriptor of the member's parent directory, creating directories as needed."""
        parent = parts[:-1]
        if self._parent_cache and self._parent_cache[0] == parent:
            return self._parent_cache[1]
        fd = os.dup(self._root_fd)
        for part in parent:
            fd = self._enter(member, fd, part)
        if self._parent_cache:
            os.close(self._parent_cache[1])
        self._parent_cache = (parent, fd)
        return fd

    def _enter(self, member: str, dir_fd: int, part: str) -> int:
        """Open (creating if missing) the directory part inside dir_fd; always closes dir_fd."""
        try:
            try:
                child = os.open(part, _DIR_FLAGS, dir_fd=dir_fd)
            except FileNotFoundError:
                os.mkdir(part, 0o700, dir_fd=dir_fd)
                child = os.open(part, _DIR_FLAGS, dir_fd=dir_fd)
                # A parent the archive does not list gets tar's usual mode, whatever the umask:
                # the app containers reading the model seldom run as the fetcher's user. A
                # listed directory gets its own mode from close().
                os.fchmod(child, _IMPLICIT_DIR_MODE)
        except OSError as error:
            if error.errno in (errno.ELOOP, errno.ENOTDIR):
                raise UnsafeArchive(
                    member, f"{part!r} on its path is a symlink or not a directory"
                ) from None
            raise _translate(error, member) from None
        finally:
            os.close(dir_fd)
        return child

    def _clear(self, member: str, dir_fd: int, name: str, *, keep_dir: bool = False) -> bool:
        """Remove a non-directory entry at name (later members win); True if a dir is there."""
        try:
            info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if stat.S_ISDIR(info.st_mode):
            if keep_dir:
                return True
            raise UnsafeArchive(member, "it would replace a directory")
        os.unlink(name, dir_fd=dir_fd)
        return False

    # --- members -------------------------------------------------------------------------

    def check_cap(self, more: int, member: str = "") -> None:
        if self.bytes_written + more > self._max_bytes:
            raise UnsafeArchive(
                member or self._file_member,
                f"extracting it would exceed the cap of {self._max_bytes} bytes "
                "(--max-extracted-size)",
            )

    def begin_file(self, member: str, mode: int, size: int, ordinal: int) -> None:
        """Start the regular file that is member number ordinal of the stream."""
        parts = member_parts(member)
        self.check_cap(size, member)
        parent_fd = self._open_parent(member, parts)
        self._file_member = member
        self._file_mode = mode & _PERMISSION_BITS
        self._file_parts = parts
        self._file_offset = 0
        self._file_size = size
        self._file_ordinal = ordinal
        done = self._already_complete.get(ordinal)
        if (
            done is not None
            and done.path == "/".join(parts)
            and done.size == size
            and _is_regular_of_size(parent_fd, parts[-1], size)
        ):
            self._skipping = True
            return
        try:
            self._clear(member, parent_fd, parts[-1])
            self._file_fd = os.open(parts[-1], _NEW_FILE_FLAGS, 0o600, dir_fd=parent_fd)
        except OSError as error:
            raise _translate(error, member) from None

    def write(self, data: memoryview) -> None:
        if self._skipping:
            self.bytes_written += len(data)
            self._file_offset += len(data)
            return
        assert self._file_fd is not None
        try:
            while data:
                run = min(len(data), len(_ZEROS))
                if _ZEROS.startswith(data[:run]):
                    os.lseek(self._file_fd, run, os.SEEK_CUR)
                    self._hole_pending = True
                    data = data[run:]
                    self.bytes_written += run
                    self._file_offset += run
                    continue
                written = os.write(self._file_fd, data[:run])
                self._hole_pending = False
                data = data[written:]
                self.bytes_written += written
                self._file_offset += written
        except OSError as error:
            raise _translate(error, self._file_member) from None

    def end_file(self, mtime: float | None) -> None:
        self.files_written += 1
        ordinal = self._file_ordinal
        self.completed[ordinal] = CompletedFile(
            ordinal, "/".join(self._file_parts), self._file_offset
        )
        if self._skipping:
            self._skipping = False
            return
        assert self._file_fd is not None
        try:
            self._fill_hole()
            os.fchmod(self._file_fd, self._file_mode)
            if mtime is not None:
                os.utime(self._file_fd, (mtime, mtime))
        finally:
            os.close(self._file_fd)
            self._file_fd = None

    def make_dir(self, member: str, mode: int, mtime: float | None) -> None:
        parts = member_parts(member, allow_root=True)
        if not parts:
            return  # "./" names the output directory itself, whose mode is not the archive's
        parent_fd = self._open_parent(member, parts)
        mode &= _PERMISSION_BITS
        try:
            if not self._clear(member, parent_fd, parts[-1], keep_dir=True):
                os.mkdir(parts[-1], 0o700, dir_fd=parent_fd)
            # The mode now, with the owner's rwx so members can still go in (the final mode
            # too: see close()); a resume checks it against what the checkpoint says.
            os.chmod(parts[-1], mode | stat.S_IRWXU, dir_fd=parent_fd)
        except OSError as error:
            raise _translate(error, member) from None
        self._dir_modes[parts] = (mode, mtime)

    def make_symlink(self, member: str, target: str) -> None:
        parts = member_parts(member)
        check_symlink_target(member, target)
        parent_fd = self._open_parent(member, parts)
        try:
            self._clear(member, parent_fd, parts[-1])
            os.symlink(target, parts[-1], dir_fd=parent_fd)
        except OSError as error:
            raise _translate(error, member) from None
        self.files_written += 1

    def make_hardlink(self, member: str, target: str) -> None:
        parts = member_parts(member)
        target_parts = member_parts(target)
        target_fd = os.dup(self._open_parent(target, target_parts))
        # The staging tree holds only what this archive created, so a regular file found there
        # is one extracted earlier.
        if not _is_regular_of_size(target_fd, target_parts[-1], None):
            os.close(target_fd)
            raise UnsafeArchive(
                member, f"the hard link target {target!r} is not a regular file extracted earlier"
            )
        if parts == target_parts:
            # A link to itself (tar leaves the file as it is): clearing the name first would
            # delete the very file it names.
            os.close(target_fd)
            return
        try:
            parent_fd = self._open_parent(member, parts)
            self._clear(member, parent_fd, parts[-1])
            os.link(
                target_parts[-1],
                parts[-1],
                src_dir_fd=target_fd,
                dst_dir_fd=parent_fd,
                follow_symlinks=False,
            )
        except OSError as error:
            raise _translate(error, member) from None
        finally:
            os.close(target_fd)
        self.files_written += 1

    def _fill_hole(self) -> None:
        """Give a file that ends in a hole its full length (the disk then agrees with offset)."""
        if self._hole_pending and self._file_fd is not None:
            os.ftruncate(self._file_fd, self._file_offset)
            self._hole_pending = False

    def set_file_mode(self, member: str, mode: int) -> None:
        """Give a regular file extracted earlier its mode (zip keeps modes at the end)."""
        parts = member_parts(member)
        parent_fd = self._open_parent(member, parts)
        try:
            fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd)
        except OSError as error:
            raise _translate(error, member) from None
        try:
            os.fchmod(fd, mode & _PERMISSION_BITS)
        finally:
            os.close(fd)

    def file_to_symlink(self, member: str, limit: int) -> None:
        """Replace a regular file extracted earlier by a symlink to the target it holds."""
        parts = member_parts(member)
        parent_fd = self._open_parent(member, parts)
        try:
            fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd)
            try:
                raw = os.read(fd, limit + 1)
            finally:
                os.close(fd)
        except OSError as error:
            raise _translate(error, member) from None
        if len(raw) > limit:
            raise UnsafeArchive(member, f"the symlink target is longer than {limit} bytes")
        target = raw.decode("utf-8", "surrogateescape")
        check_symlink_target(member, target)
        try:
            os.unlink(parts[-1], dir_fd=parent_fd)
            os.symlink(target, parts[-1], dir_fd=parent_fd)
        except OSError as error:
            raise _translate(error, member) from None
        self.bytes_written -= len(raw)  # a link's target is not extracted data, as in tar

    # --- checkpoints -------------------------------------------------------------------------

    def state(self) -> TreeState:
        """What a later run needs to carry on from here, files already flushed to disk."""
        open_file = None
        self._fill_hole()
        if self._file_fd is not None or self._skipping:
            open_file = OpenFile(
                self._file_parts,
                self._file_mode,
                self._file_offset,
                self._skipping,
                self._file_size,
            )
        return TreeState(
            self.bytes_written,
            self.files_written,
            tuple(DirMode(parts, mode, mtime) for parts, (mode, mtime) in self._dir_modes.items()),
            open_file,
        )

    def restore(self, state: TreeState, already_complete: dict[int, CompletedFile]) -> None:
        """Carry on from state; StateError when the disk does not hold what it describes."""
        self.bytes_written = state.bytes_written
        self.files_written = state.files_written
        self._dir_modes = {d.parts: (d.mode, d.mtime) for d in state.dir_modes}
        for parts, (mode, _) in self._dir_modes.items():
            self._check_directory(parts, mode)
        self._already_complete = already_complete
        open_file = state.open_file
        if open_file is None:
            return
        parts = open_file.parts
        member = "/".join(parts)
        self._file_parts, self._file_member = parts, member
        self._file_mode, self._file_offset = open_file.mode, open_file.offset
        self._file_size = open_file.size
        self._skipping = open_file.skipping
        if self._skipping:
            # Read past: the file must already be whole on disk, or the rest of it is lost.
            try:
                parent_fd = self._open_parent(member, member_parts(member))
            except (OSError, FetchError) as error:
                raise StateError(
                    f"the file {member!r} it was reading past is gone ({error})"
                ) from None
            if not _is_regular_of_size(parent_fd, parts[-1], open_file.size):
                raise StateError(
                    f"the file {member!r} it was reading past is not the complete "
                    f"{open_file.size}-byte file on disk"
                )
            return
        try:
            parent_fd = self._open_parent(member, member_parts(member))
            fd = os.open(parts[-1], os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd)
        except (OSError, FetchError) as error:
            raise StateError(
                f"the file {member!r} it was writing cannot be reopened ({error})"
            ) from None
        size = os.fstat(fd).st_size
        if size < self._file_offset:
            os.close(fd)
            raise StateError(
                f"{member!r} holds {size} bytes on disk, fewer than the {self._file_offset} "
                "the checkpoint vouches for"
            )
        os.ftruncate(fd, self._file_offset)  # bytes past the checkpoint are written again
        os.lseek(fd, self._file_offset, os.SEEK_SET)
        self._file_fd = fd

    def _check_directory(self, parts: tuple[str, ...], mode: int) -> None:
        """A directory the checkpoint lists must be on disk, with the mode it recorded."""
        name = "/".join(parts)
        fd = os.dup(self._root_fd)
        try:
            for part in parts:
                try:
                    child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except OSError as error:
                    raise StateError(
                        f"the directory {name!r} it lists is not on disk ({error.strerror})"
                    ) from None
                os.close(fd)
                fd = child
            found = stat.S_IMODE(os.fstat(fd).st_mode)
        finally:
            os.close(fd)
        if found != mode | stat.S_IRWXU:
            raise StateError(f"the directory {name!r} has mode {found:o}, not {mode:o}")

    def sync(self) -> None:
        """Flush every file written so far to stable storage (one syncfs for the volume)."""
        sync_filesystem(self._root_fd)

    # --- end -----------------------------------------------------------------------------

    def close(self) -> None:
        """Apply directory modes deepest first, then release every descriptor."""
        try:
            for parts in sorted(self._dir_modes, key=len, reverse=True):
                mode, mtime = self._dir_modes[parts]
                fd = os.dup(self._root_fd)
                for part in parts:
                    fd = self._enter("/".join(parts), fd, part)
                try:
                    # The owner keeps rwx so a later run can replace or remove the tree.
                    os.fchmod(fd, mode | stat.S_IRWXU)
                    if mtime is not None:
                        os.utime(fd, (mtime, mtime))
                finally:
                    os.close(fd)
        finally:
            self.release()

    def release(self) -> None:
        if self._file_fd is not None:
            os.close(self._file_fd)
            self._file_fd = None
        if self._parent_cache:
            os.close(self._parent_cache[1])
            self._parent_cache = None
        if self._root_fd >= 0:
            os.close(self._root_fd)
            self._root_fd = -1


def _is_regular_of_size(dir_fd: int, name: str, size: int | None) -> bool:
    try:
        info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return stat.S_ISREG(info.st_mode) and (size is None or info.st_size == size)


def _translate(error: OSError, member: str) -> FetchError:
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return OutOfDisk(
            f"out of disk space while writing {member!r}",
            "raise the volume's size-limit or the PVC size (extracted size plus the buffer)",
        )
    if error.errno == errno.ENAMETOOLONG:
        # The archive itself cannot be extracted here (tar fails on it too): exit 4, not 1.
        return UnsafeArchive(
            member, "its name is longer than the filesystem allows (255 bytes per component)"
        )
    return FetchError(
        f"cannot write {member!r}: {error.strerror}",
        "check that the output volume is writable by the fetcher's user and not read-only",
    )
