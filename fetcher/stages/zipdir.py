"""The zip's central directory, read at the end of the stream, checked, then applied.

A zip says twice what it holds: in a local header before each entry (what a stream reads)
and in the central directory at the end (what unzip and most tools read). An archive whose
two lists differ shows one tree to those tools and another to this fetcher, so it is refused.
The central directory alone holds each entry's unix mode, and so whether it is a symlink: the
modes are applied here, symlinks made from the target the entry's content holds, all through
the SafeTree's rules. Python's zipfile parses the directory (it finds it from the end record,
whatever precedes it in the bytes handed over).
"""

from __future__ import annotations

import hashlib
import io
import stat
import zipfile

from fetcher.errors import CorruptArchive, UnsafeArchive
from fetcher.stages.tree import SafeTree, member_parts

_UNIX = 3  # "version made by" host: the external attributes hold st_mode in their high bits
_MAX_LINK_TARGET = 4095


def names_digest(before: bytes, name: bytes) -> bytes:
    """One more link of the chain that stands for every entry name so far, in order."""
    return hashlib.sha256(before + len(name).to_bytes(4, "little") + name).digest()


def apply_central_directory(
    tree: SafeTree, trailer: bytes, entries: int, names: bytes, seen: list[bytes]
) -> None:
    """Check the directory in trailer lists the entries read (names: their digest chain;
    seen: those this run read, the last ones), then apply modes and symlinks."""
    try:
        listed = zipfile.ZipFile(io.BytesIO(trailer)).infolist()
    except (zipfile.BadZipFile, ValueError, EOFError) as error:
        raise CorruptArchive(
            f"the zip's central directory is missing or damaged ({error})",
            "the download was cut short or the archive is damaged",
        ) from None
    raw = [_raw_name(info) for info in listed]
    if len(raw) != entries:
        raise UnsafeArchive(
            "the central directory",
            f"it lists {len(raw)} entries but the stream held {entries}; zip tools would "
            "disagree on what the archive holds",
        )
    chain = b""
    for name in raw:
        chain = names_digest(chain, name)
    if chain != names:
        first = len(raw) - len(seen)
        for index, (listed_name, local) in enumerate(zip(raw[first:], seen, strict=True)):
            if listed_name != local:
                raise UnsafeArchive(
                    _text(local),
                    f"the central directory names entry {first + index + 1} "
                    f"{_text(listed_name)!r}; zip tools would disagree on what the archive holds",
                )
        raise UnsafeArchive(
            "the central directory",
            "its names differ from the local headers' (in entries read before the resume); "
            "zip tools would disagree on what the archive holds",
        )
    _apply_modes(tree, listed, raw)


def _apply_modes(tree: SafeTree, listed: list[zipfile.ZipInfo], raw: list[bytes]) -> None:
    last: dict[tuple[str, ...], int] = {}  # later entries of one path win, as in tar
    for index, stored in enumerate(raw):
        last[member_parts(_text(stored).rstrip("/") or ".", allow_root=True)] = index
    for index, info in enumerate(listed):
        name = _text(raw[index])
        parts = member_parts(name.rstrip("/") or ".", allow_root=True)
        if last[parts] != index or info.create_system != _UNIX or not info.external_attr >> 16:
            continue
        mode = info.external_attr >> 16
        is_dir_name = name.endswith("/")
        if not stat.S_IFMT(mode):  # permission bits alone, as zipfile.writestr records them
            mode |= stat.S_IFDIR if is_dir_name else stat.S_IFREG
        if stat.S_ISDIR(mode) != is_dir_name:
            raise UnsafeArchive(name, "its mode and its name disagree on whether it is a directory")
        if stat.S_ISDIR(mode):
            tree.make_dir(name.rstrip("/") or name, mode, None)
        elif stat.S_ISLNK(mode):
            tree.file_to_symlink(name, _MAX_LINK_TARGET)
        elif stat.S_ISREG(mode):
            tree.set_file_mode(name, mode)
        else:
            raise UnsafeArchive(
                name, f"zip entries of type {stat.filemode(mode)[0]!r} are not allowed"
            )


def _raw_name(info: zipfile.ZipInfo) -> bytes:
    """The name's bytes as stored (zipfile decodes them as UTF-8 or cp437, both reversible)."""
    return info.orig_filename.encode("utf-8" if info.flag_bits & 0x800 else "cp437")


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")
