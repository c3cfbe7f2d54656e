"""The zip's central directory, read at the end of the stream, checked, then applied.

A zip says twice what it holds: in a local header before each entry (what a stream reads)
and in the central directory at the end (what unzip and most tools read). An archive whose
two lists differ shows one tree to those tools and another to this fetcher, so it is refused.
The central directory alone holds each entry's unix mode, and so whether it is a symlink: the
modes are applied here, symlinks made from the target the entry's content holds, all through
the SafeTree's rules. Python's zipfile parses the directory.

Same names are not enough: tools find the directory from the end record and each entry from
the offset the directory gives it. So the end record must end the stream, the directory must
sit where the end record says (a zip appended to another is read by unzip from the second's
directory), its entries must point at local headers in stream order, one each (swapped or shared
offsets send unzip to other data), and each must hold as many bytes as the entry read here.
"""

from __future__ import annotations

import hashlib
import io
import stat
import struct
import zipfile

from fetcher.errors import CorruptArchive, UnsafeArchive
from fetcher.stages.tree import SafeTree, member_parts

_UNIX = 3  # "version made by" host: the external attributes hold st_mode in their high bits
_MAX_LINK_TARGET = 4095
_END = b"PK\x05\x06"
_END_SIZE = 22
_END64 = b"PK\x06\x06"
_END64_SIZE = 56
_LOCATOR = b"PK\x06\x07"
_LOCATOR_SIZE = 20


def names_digest(before: bytes, name: bytes) -> bytes:
    """One more link of the chain that stands for every entry name so far, in order."""
    return hashlib.sha256(before + len(name).to_bytes(4, "little") + name).digest()


def apply_central_directory(
    tree: SafeTree,
    trailer: bytes,
    *,
    trailer_at: int,
    entries: int,
    names: bytes,
    seen: list[bytes],
    sizes: list[int],
) -> None:
    """Check the directory in trailer (which starts at stream offset trailer_at) lists the
    entries read (names: their digest chain; seen and sizes: the names and byte counts of those
    this run read, the last ones), where they were read, then apply modes and symlinks."""
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
    directory_at, directory_offset = _directory_position(trailer)
    if trailer_at + directory_at != directory_offset:
        raise UnsafeArchive(
            "the central directory",
            f"the end record places it at byte {directory_offset} but it starts at byte "
            f"{trailer_at + directory_at} (another zip appended, or bytes before the first "
            "entry); zip tools would disagree on what the archive holds",
        )
    _check_offsets(listed, directory_at - directory_offset, directory_offset)
    for info, size, name in zip(listed[len(listed) - len(sizes) :], sizes, seen, strict=True):
        if info.file_size != size:
            raise UnsafeArchive(
                _text(name),
                f"the central directory gives it {info.file_size} bytes but it held {size}; "
                "zip tools would disagree on what the archive holds",
            )
    _apply_modes(tree, listed, raw)


def _directory_position(trailer: bytes) -> tuple[int, int]:
    """Where the central directory starts in trailer, and the offset the end record gives it.
    The end record (and its comment) must be the last bytes of the stream."""
    earliest = max(0, len(trailer) - _END_SIZE - 0xFFFF)
    at = trailer.rfind(_END, earliest)
    while at >= 0 and at + _END_SIZE + _comment_length(trailer, at) != len(trailer):
        at = trailer.rfind(_END, earliest, at + len(_END) - 1)  # the one before
    if at < 0:
        raise UnsafeArchive(
            "the end of the zip",
            "its end record is not the last thing in the stream (bytes appended?); zip tools "
            "would disagree on what the archive holds",
        )
    size, offset = struct.unpack_from("<II", trailer, at + 12)
    record = at
    locator = at - _LOCATOR_SIZE
    if locator >= 0 and trailer[locator : locator + 4] == _LOCATOR:
        record = locator - _END64_SIZE
        if record < 0 or trailer[record : record + 4] != _END64:
            raise CorruptArchive(
                "the zip64 end record is missing or not where its locator says",
                "the archive is damaged",
            )
        size, offset = struct.unpack_from("<QQ", trailer, record + 40)
    return record - size, offset


def _comment_length(trailer: bytes, end_record: int) -> int:
    return int.from_bytes(trailer[end_record + 20 : end_record + 22], "little")


def _check_offsets(listed: list[zipfile.ZipInfo], shift: int, directory_offset: int) -> None:
    """The local header offsets the directory gives (zipfile moved them by shift), in order."""
    previous = -1
    for index, info in enumerate(listed):
        offset = info.header_offset - shift
        if (offset == 0) != (index == 0) or offset <= previous or offset >= directory_offset:
            raise UnsafeArchive(
                _text(_raw_name(info)),
                f"the central directory places entry {index + 1} at byte {offset}, which is not "
                "after the entry before it and before the directory; zip tools would read "
                "other data for it",
            )
        previous = offset


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
