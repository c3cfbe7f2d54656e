"""Which decoder and which writer a byte stream needs, from --format or its magic bytes."""

from __future__ import annotations

import enum
import tarfile

from fetcher.errors import UsageError


class Compression(enum.Enum):
    NONE = "none"
    ZSTD = "zst"
    GZIP = "gz"
    XZ = "xz"
    BZIP2 = "bz2"
    LZ4 = "lz4"


class Layout(enum.Enum):
    """What the decompressed bytes are: a tar or zip archive, a single file, or not known yet.

    A zip is read only when its name or --format says so, never from its magic bytes: many
    files that are zip archives inside (PyTorch .pt, .npz, .keras) are models stored whole.
    """

    TAR = "tar"
    ZIP = "zip"
    FILE = "file"
    DETECT = "detect"


FORMAT_CHOICES = (
    "auto",
    "tar",
    "tar.zst",
    "tar.gz",
    "tar.xz",
    "tar.bz2",
    "tar.lz4",
    "zip",
    "zst",
    "gz",
    "xz",
    "bz2",
    "lz4",
    "none",
)

# Enough leading bytes to recognise every compression's magic number.
SNIFF_COMPRESSION_BYTES = 6
# A tar header block carries "ustar" at offset 257; the whole block holds its checksum.
SNIFF_TAR_BYTES = 512

_MAGIC = (
    (b"\x28\xb5\x2f\xfd", Compression.ZSTD),
    (b"\x1f\x8b", Compression.GZIP),
    (b"\xfd7zXZ\x00", Compression.XZ),
    (b"BZh", Compression.BZIP2),
    (b"\x04\x22\x4d\x18", Compression.LZ4),
)
SUFFIXES = {
    Compression.ZSTD: (".zst", ".zstd"),
    Compression.GZIP: (".gz", ".gzip"),
    Compression.XZ: (".xz",),
    Compression.BZIP2: (".bz2",),
    Compression.LZ4: (".lz4",),
    Compression.NONE: (),
}


def parse_format(text: str) -> tuple[Compression | None, Layout]:
    """(compression, layout) for a --format value; None compression means detect by magic."""
    if text not in FORMAT_CHOICES:
        raise UsageError(f"--format {text!r} is unknown", f"use one of {', '.join(FORMAT_CHOICES)}")
    if text == "auto":
        return None, Layout.DETECT
    if text == "none":
        return Compression.NONE, Layout.FILE
    if text == "tar":
        return Compression.NONE, Layout.TAR
    if text == "zip":
        return Compression.NONE, Layout.ZIP
    if text.startswith("tar."):
        return Compression(text.removeprefix("tar.")), Layout.TAR
    return Compression(text), Layout.DETECT


def detect_compression(head: bytes) -> Compression:
    if len(head) >= 4 and head[0] & 0xF0 == 0x50 and head[1:4] == b"\x2a\x4d\x18":
        return Compression.ZSTD  # a zstd skippable frame, as pzstd writes first
    for magic, compression in _MAGIC:
        if head.startswith(magic):
            return compression
    return Compression.NONE


def looks_like_tar(block: bytes) -> bool:
    """True when the first 512 decoded bytes are a valid tar header (ustar, gnu or v7)."""
    if len(block) < SNIFF_TAR_BYTES:
        return False
    try:
        tarfile.TarInfo.frombuf(block[:SNIFF_TAR_BYTES], "utf-8", "surrogateescape")
    except tarfile.HeaderError:
        return False
    return True


def strip_suffix(name: str, compression: Compression) -> str:
    """model.bin.zst -> model.bin: a compressed single file is stored decompressed."""
    for suffix in SUFFIXES[compression]:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


# What a file's name says it is. A name that claims a format is held to it: an HTML error page
# served for model.tar.zst is refused, not stored as the model.
_NAMED = (
    ((".tar.zst", ".tar.zstd", ".tzst"), Compression.ZSTD, Layout.TAR),
    ((".tar.gz", ".tgz"), Compression.GZIP, Layout.TAR),
    ((".tar.xz", ".txz"), Compression.XZ, Layout.TAR),
    ((".tar.bz2", ".tbz2", ".tbz"), Compression.BZIP2, Layout.TAR),
    ((".tar.lz4",), Compression.LZ4, Layout.TAR),
    ((".tar",), Compression.NONE, Layout.TAR),
    ((".zip",), Compression.NONE, Layout.ZIP),
    ((".zst", ".zstd"), Compression.ZSTD, Layout.DETECT),
    ((".gz", ".gzip"), Compression.GZIP, Layout.DETECT),
    ((".xz",), Compression.XZ, Layout.DETECT),
    ((".bz2",), Compression.BZIP2, Layout.DETECT),
    ((".lz4",), Compression.LZ4, Layout.DETECT),
)
# Formats people name archives with that this fetcher does not read (README says why).
UNREAD_SUFFIXES = (".7z", ".rar")


def implied_by_name(name: str) -> tuple[Compression, Layout] | None:
    """The format a file name claims, or None when it claims none this fetcher reads."""
    lowered = name.lower()
    for suffixes, compression, layout in _NAMED:
        if lowered.endswith(suffixes):
            return compression, layout
    return None


def unread_suffix(name: str) -> str | None:
    lowered = name.lower()
    return next((s for s in UNREAD_SUFFIXES if lowered.endswith(s)), None)


def preview(head: bytes, limit: int = 24) -> str:
    """The first bytes as a person would recognise them: text in backquotes, else hex."""
    sample = head[:limit]
    if not sample:
        return "nothing (it is empty)"
    text = sample.decode("latin-1")
    printable = sum(c.isprintable() or c in "\r\n\t" for c in text)
    if printable >= 0.9 * len(text):
        shown = " ".join(text.split())
        return f"`{shown}`" + ("..." if len(head) > limit else "")
    return "bytes " + sample.hex(" ") + (" ..." if len(head) > limit else "")
