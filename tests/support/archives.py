"""Build archives for tests, both in Python and with the real command-line tools.

A tree is a mapping of relative POSIX paths to entries::

    {
        "weights/a.bin": b"...",                    # regular file, mode 0o644
        "bin/run.sh": File(b"#!/bin/sh\\n", 0o755),   # regular file with a mode
        "latest": Symlink("weights/a.bin"),
        "weights/b.bin": Hardlink("weights/a.bin"),  # tar hard link to an earlier file
        "empty": Dir(),
    }

Parent directories are implied. ``py_archive`` builds bytes with tarfile and the Python codecs
(several parts give multi-frame zstd, multi-member gzip, multi-stream xz/bzip2); ``cli_archive``
writes the tree to disk and runs ``tar`` and ``zstd``/``pzstd``/``gzip``/``pigz``/``xz``/``bzip2``,
which is what model publishers actually run. ``tree_snapshot`` reads a directory back for
byte-for-byte comparison.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import random
import stat
import struct
import subprocess
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import lz4.frame
import zstandard

from fetcher.state.marker import MARKER_NAME

__all__ = [
    "Codec",
    "Dir",
    "File",
    "Hardlink",
    "Snapshot",
    "Symlink",
    "Tool",
    "Tree",
    "cli_archive",
    "cli_compress",
    "compress",
    "fetched_tree",
    "make_tree",
    "py_archive",
    "tar_bytes",
    "tree_snapshot",
    "write_tree",
]


@dataclass(frozen=True)
class File:
    data: bytes
    mode: int = 0o644


@dataclass(frozen=True)
class Symlink:
    target: str


@dataclass(frozen=True)
class Hardlink:
    target: str
    """Relative path of a regular file of the same tree."""


@dataclass(frozen=True)
class Dir:
    mode: int = 0o755


Entry = bytes | File | Symlink | Hardlink | Dir
Tree = Mapping[str, Entry]
Codec = Literal["zst", "gz", "xz", "bz2", "lz4", "none"]
Tool = Literal["zstd", "pzstd", "gzip", "pigz", "xz", "bzip2", "lz4", "none"]
Kind = Literal["file", "dir", "symlink", "other"]
Snapshot = dict[str, tuple[Kind, int, bytes | str]]
"""relpath -> (kind, permission bits, file bytes or link target); directories carry b""."""

_EPOCH = 1_700_000_000


def _entries(tree: Tree) -> list[tuple[str, Entry]]:
    """Tree entries with implied parent directories, parents before children."""
    out: dict[str, Entry] = {}
    for raw, entry in tree.items():
        path = raw.strip("/")
        parts = path.split("/")
        for i in range(1, len(parts)):
            out.setdefault("/".join(parts[:i]), Dir())
        out[path] = entry
    dirs = sorted(p for p, e in out.items() if isinstance(e, Dir))
    rest = [p for p in out if not isinstance(out[p], Dir)]
    # Hard links must come after their targets; keep the caller's order otherwise.
    rest.sort(key=lambda p: isinstance(out[p], Hardlink))
    return [(p, out[p]) for p in dirs + rest]


def tar_bytes(tree: Tree, *, format: int = tarfile.PAX_FORMAT, mtime: int = _EPOCH) -> bytes:
    """An uncompressed tar of ``tree``, deterministic (fixed owner, mtime and order)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=format) as tar:
        for path, entry in _entries(tree):
            info = tarfile.TarInfo(path)
            info.mtime = mtime
            info.uname = info.gname = "root"
            payload: bytes | None = None
            if isinstance(entry, Dir):
                info.type, info.mode = tarfile.DIRTYPE, entry.mode
            elif isinstance(entry, Symlink):
                info.type, info.mode, info.linkname = tarfile.SYMTYPE, 0o777, entry.target
            elif isinstance(entry, Hardlink):
                info.type, info.mode, info.linkname = tarfile.LNKTYPE, 0o644, entry.target
            else:
                file = entry if isinstance(entry, File) else File(entry)
                info.mode, payload = file.mode, file.data
                info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload) if payload is not None else None)
    return buf.getvalue()


def _split(data: bytes, parts: int) -> list[bytes]:
    if parts < 1:
        raise ValueError("parts must be >= 1")
    step = -(-len(data) // parts) or 1
    pieces = [data[i : i + step] for i in range(0, len(data), step)]
    return pieces or [b""]


def _skippable_frame(payload: bytes) -> bytes:
    return struct.pack("<II", 0x184D2A50, len(payload)) + payload


def compress(
    data: bytes,
    codec: Codec,
    *,
    parts: int = 1,
    level: int | None = None,
    skippable: bool = False,
) -> bytes:
    """Compress ``data``; ``parts`` > 1 compresses that many slices independently and
    concatenates them (zstd frames, gzip members, xz and bzip2 streams). ``skippable`` puts a
    zstd skippable frame before every zstd frame, as ``pzstd`` does."""
    if codec == "none":
        return data
    out = bytearray()
    for piece in _split(data, parts):
        if codec == "zst":
            frame = zstandard.ZstdCompressor(level=level or 3).compress(piece)
            if skippable:
                out += _skippable_frame(struct.pack("<I", len(frame)))
            out += frame
        elif codec == "gz":
            out += gzip.compress(piece, compresslevel=level or 6, mtime=0)
        elif codec == "xz":
            out += lzma.compress(piece, preset=level if level is not None else 6)
        elif codec == "bz2":
            out += bz2.compress(piece, compresslevel=level or 9)
        elif codec == "lz4":
            out += lz4.frame.compress(piece, compression_level=level or 0, content_checksum=True)
        else:
            raise ValueError(f"unknown codec {codec!r}")
    return bytes(out)


def zstd_streamed(data: bytes) -> bytes:
    """One zstd frame as ``tar -I zstd`` or any pipe writes it: no content size in its header
    (so the fetcher reads it with the single-thread decoder), a content checksum."""
    stream = zstandard.ZstdCompressor(write_content_size=False, write_checksum=True).compressobj()
    return stream.compress(data) + stream.flush()


def py_archive(
    tree: Tree,
    codec: Codec = "zst",
    *,
    parts: int = 1,
    level: int | None = None,
    skippable: bool = False,
    format: int = tarfile.PAX_FORMAT,
) -> bytes:
    """``tar_bytes(tree)`` compressed with the Python codecs."""
    return compress(
        tar_bytes(tree, format=format), codec, parts=parts, level=level, skippable=skippable
    )


def write_tree(tree: Tree, dest: Path) -> Path:
    """Write ``tree`` under ``dest`` (created) with exact modes, independent of the umask."""
    dest.mkdir(parents=True, exist_ok=True)
    entries = _entries(tree)
    for path, entry in entries:
        target = dest / path
        if isinstance(entry, Dir):
            target.mkdir(exist_ok=True)
        elif isinstance(entry, Symlink):
            target.symlink_to(entry.target)
        elif isinstance(entry, Hardlink):
            os.link(dest / entry.target, target)
        else:
            file = entry if isinstance(entry, File) else File(entry)
            target.write_bytes(file.data)
            target.chmod(file.mode)
    for path, entry in reversed(entries):  # directories last, so we can still write into them
        if isinstance(entry, Dir):
            (dest / path).chmod(entry.mode)
    return dest


_TOOL_ARGS: dict[Tool, list[str]] = {
    "zstd": ["zstd", "-q", "-c", "-T0"],
    "pzstd": ["pzstd", "-q", "-c", "-p", "2"],
    "gzip": ["gzip", "-c", "-n"],
    "pigz": ["pigz", "-c", "-n", "-p", "2"],
    "xz": ["xz", "-c", "-T0"],
    "bzip2": ["bzip2", "-c"],
    "lz4": ["lz4", "-q", "-c"],
}


def cli_compress(
    data: bytes, tool: Tool, *, level: int | None = None, options: Sequence[str] = ()
) -> bytes:
    """Compress ``data`` with the real command-line tool, via stdin and stdout; ``options``
    go to the tool as given (``--block-size=1MiB`` for xz)."""
    if tool == "none":
        return data
    args = list(_TOOL_ARGS[tool])
    if level is not None:
        args.append(f"-{level}")
    args += options
    return subprocess.run(args, input=data, capture_output=True, check=True, timeout=120).stdout


def cli_archive(
    tree: Tree,
    tool: Tool,
    workdir: Path,
    *,
    dot_prefix: bool = False,
    level: int | None = None,
    tar_format: Literal["gnu", "posix", "ustar"] = "gnu",
) -> bytes:
    """Write ``tree`` into ``workdir/src`` and archive it with GNU ``tar`` and ``tool``.

    ``tar_format`` is GNU tar's ``--format``; ``gnu`` is its default.

    ``dot_prefix`` archives ``.`` so members are named ``./a/b`` (plus a ``./`` entry), as
    ``tar -C dir -cf - .`` does; otherwise the top-level names are listed explicitly.
    """
    src = write_tree(tree, workdir / "src")
    members = ["."] if dot_prefix else sorted(os.listdir(src))
    args = ["tar", "--sort=name", "--owner=0", "--group=0", "--numeric-owner"]
    args += [f"--mtime=@{_EPOCH}", f"--format={tar_format}"]
    if tar_format == "posix":  # drop atime/ctime records so the output is deterministic
        args.append("--pax-option=delete=atime,delete=ctime")
    tar = subprocess.run(
        [*args, "-C", str(src), "-cf", "-", "--", *members],
        capture_output=True,
        check=True,
        timeout=120,
    ).stdout
    return cli_compress(tar, tool, level=level)


def tree_snapshot(root: Path) -> Snapshot:
    """Everything under ``root`` (not ``root`` itself): kind, permission bits and content.

    Symlinks are not followed; their permission bits are reported as 0 (Linux ignores them).
    Hard links show up as two files with the same bytes. mtimes are ignored.
    """
    snap: Snapshot = {}
    for dirpath, dirnames, filenames in os.walk(root):
        base = Path(dirpath)
        for name in [*dirnames, *filenames]:
            path = base / name
            rel = path.relative_to(root).as_posix()
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                snap[rel] = ("symlink", 0, os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                snap[rel] = ("dir", stat.S_IMODE(st.st_mode), b"")
            elif stat.S_ISREG(st.st_mode):
                snap[rel] = ("file", stat.S_IMODE(st.st_mode), path.read_bytes())
            else:
                snap[rel] = ("other", stat.S_IMODE(st.st_mode), b"")
    return dict(sorted(snap.items()))


def fetched_tree(out: Path) -> Snapshot:
    """``tree_snapshot`` of a finished fetch's output without its completion marker, which must
    be there as a regular file: what is left is what the archive put there."""
    snap = tree_snapshot(out)
    marker = snap.pop(MARKER_NAME, None)
    assert marker is not None and marker[0] == "file", f"no completion marker in {out}: {marker}"
    return snap


_ALPHABET = b"etaoin shrdlu\ncmfwypvbgkqjxz0123456789{}[]:,._-\"'ETAOINSHRDLU"


def _content(rng: random.Random, pool: bytes, size: int) -> bytes:
    """Pseudo-random bytes that compress moderately: slices of a low-entropy pool, with one
    segment in four incompressible."""
    out = bytearray()
    while len(out) < size:
        n = min(size - len(out), rng.randint(16, 2048))
        if rng.random() < 0.25:
            out += rng.randbytes(n)
        else:
            start = rng.randrange(0, len(pool) - n)
            out += pool[start : start + n]
    return bytes(out)


def make_tree(seed: int, n_files: int, total_bytes: int) -> dict[str, Entry]:
    """A deterministic tree of ``n_files`` regular files holding ``total_bytes`` in all.

    Sizes vary widely (one file of three holds most of the bytes; one file is empty when
    there are at least three); files sit at depths 0 to 3. Same arguments, same tree.
    """
    if n_files < 1:
        raise ValueError("n_files must be >= 1")
    rng = random.Random(seed)
    pool = bytes(rng.choices(_ALPHABET, k=64 * 1024))
    weights = [rng.lognormvariate(0, 2) for _ in range(n_files)]
    if n_files >= 3:
        weights[rng.randrange(n_files)] = 0.0
    scale = sum(weights) or 1.0
    sizes = [int(total_bytes * w / scale) for w in weights]
    sizes[max(range(n_files), key=lambda i: weights[i])] += total_bytes - sum(sizes)
    tree: dict[str, Entry] = {}
    for i, size in enumerate(sizes):
        depth = rng.randrange(4)
        dirs = [f"d{rng.randrange(3)}" for _ in range(depth)]
        path = "/".join([*dirs, f"f{i:04d}.bin"])
        tree[path] = _content(rng, pool, size)
    return tree
