"""Each refusal of the safe extractor, and proof that nothing lands outside the output root.

Every archive is extracted into <jail>/root; the jail also holds a sentinel file and a
directory that an escaping member would target. After each refusal the jail must hold exactly
what it held before, apart from the root itself.
"""

from __future__ import annotations

import io
import os
import stat
import subprocess
import tarfile
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from fetcher.errors import UnsafeArchive
from fetcher.formats import Layout
from fetcher.stages.chain import Stages
from fetcher.stages.digest import ResumableSha256
from tests.support.archives import tree_snapshot

Member = tuple[tarfile.TarInfo, bytes]


def _file(name: str, data: bytes = b"x", mode: int = 0o644) -> Member:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), mode
    return info, data


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> Member:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, b""


def _special(name: str, kind: bytes) -> Member:
    info = tarfile.TarInfo(name)
    info.type = kind
    return info, b""


def _dir(name: str) -> Member:
    info = tarfile.TarInfo(name)
    info.type, info.mode = tarfile.DIRTYPE, 0o755
    return info, b""


def build_tar(*members: Member, fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt) as archive:
        for info, data in members:
            archive.addfile(info, io.BytesIO(data) if data else None)
    return buffer.getvalue()


def extract(data: bytes, root: Path, *, step: int = 4096, cap: int = 10**9) -> Stages:
    run = Stages(root, compression=None, layout=Layout.DETECT, file_name="x", max_extracted=cap)
    hasher = ResumableSha256()
    for start in range(0, len(data), step):
        piece = data[start : start + step]
        run.feed(piece, hasher.copy())
        hasher.update(piece)
    run.finish()
    return run


def _listing(jail: Path) -> dict[str, bytes | str]:
    seen: dict[str, bytes | str] = {}
    for path in sorted(jail.rglob("*")):
        relative = str(path.relative_to(jail))
        if relative == "root" or relative.startswith("root/"):
            continue
        if path.is_symlink():
            seen[relative] = "-> " + os.readlink(path)
        elif path.is_file():
            seen[relative] = path.read_bytes()
        else:
            seen[relative] = "dir"
    return seen


@pytest.fixture
def jail(tmp_path: Path) -> Path:
    (tmp_path / "sentinel").write_bytes(b"untouched")
    (tmp_path / "target").mkdir()
    return tmp_path


CASES: dict[str, tuple[Callable[[], bytes], str]] = {
    "absolute path": (lambda: build_tar(_file("/tmp/evil")), "absolute"),
    "dot-dot at the start": (lambda: build_tar(_file("../sentinel", b"owned")), "'..'"),
    "dot-dot in the middle": (lambda: build_tar(_file("a/../../sentinel", b"owned")), "'..'"),
    "dot-dot in a GNU long name": (
        lambda: build_tar(_file("../" + "d" * 120 + "/x"), fmt=tarfile.GNU_FORMAT),
        "'..'",
    ),
    "dot-dot in a PAX path": (
        lambda: build_tar(_file("../" + "p" * 120 + "/x"), fmt=tarfile.PAX_FORMAT),
        "'..'",
    ),
    "symlink to an absolute path": (lambda: build_tar(_link("etc", "/etc")), "absolute"),
    "symlink climbing out": (lambda: build_tar(_link("out", "../target")), "leaves"),
    "symlink climbing out from a subdirectory": (
        lambda: build_tar(_dir("a"), _link("a/out", "../../target")),
        "leaves",
    ),
    "symlink chain through a link to the root": (
        lambda: build_tar(_dir("d"), _link("d/up", ".."), _link("d/esc", "up/../target")),
        "after a name",
    ),
    "write through a symlink to a directory": (
        lambda: build_tar(_dir("real"), _link("alias", "real"), _file("alias/file")),
        "symlink",
    ),
    "write through a symlink replacing a directory later": (
        lambda: build_tar(_link("alias", "."), _file("alias/sentinel", b"owned")),
        "symlink",
    ),
    "hard link to an absolute path": (
        lambda: build_tar(_link("h", "/etc/passwd", tarfile.LNKTYPE)),
        "absolute",
    ),
    "hard link climbing out": (
        lambda: build_tar(_link("h", "../sentinel", tarfile.LNKTYPE)),
        "'..'",
    ),
    "hard link to a symlink": (
        lambda: build_tar(_link("s", "x"), _link("h", "s", tarfile.LNKTYPE)),
        "not a regular file",
    ),
    "hard link to a file that is not in the archive": (
        lambda: build_tar(_link("h", "missing", tarfile.LNKTYPE)),
        "not a regular file",
    ),
    "character device": (lambda: build_tar(_special("tty", tarfile.CHRTYPE)), "device"),
    "block device": (lambda: build_tar(_special("sda", tarfile.BLKTYPE)), "device"),
    "FIFO": (lambda: build_tar(_special("pipe", tarfile.FIFOTYPE)), "FIFO"),
    "a file replacing a directory": (
        lambda: build_tar(_dir("model"), _file("model/w"), _file("model")),
        "replace a directory",
    ),
    "more bytes than the cap": (
        lambda: build_tar(_file("a", b"1" * 600), _file("b", b"2" * 600)),
        "cap",
    ),
    "a name longer than the filesystem allows": (
        lambda: build_tar(_file("d/" + "n" * 256)),
        "longer than the filesystem allows",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("step", [512, 1 << 20])
def test_refusals_name_the_member_and_nothing_escapes(jail: Path, case: str, step: int) -> None:
    make_archive, reason = CASES[case]
    before = _listing(jail)
    with pytest.raises(UnsafeArchive) as caught:
        extract(make_archive(), jail / "root", step=step, cap=1000)
    assert reason in caught.value.line()
    assert caught.value.exit_code == 4
    assert caught.value.member
    assert _listing(jail) == before
    assert (jail / "sentinel").read_bytes() == b"untouched"


def test_setuid_setgid_and_sticky_bits_are_stripped(tmp_path: Path) -> None:
    extract(build_tar(_dir("d"), _file("d/tool", b"#!", mode=0o7755)), tmp_path / "root")
    mode = (tmp_path / "root/d/tool").stat().st_mode
    assert stat.S_IMODE(mode) == 0o755


def test_allowed_links_are_created_inside(tmp_path: Path) -> None:
    archive = build_tar(
        _dir("weights"),
        _file("weights/shard-0", b"zero"),
        _link("weights/latest", "shard-0"),
        _link("top", "weights/shard-0"),
        _dir("nested"),
        _dir("nested/deeper"),
        _link("nested/deeper/up", "../../weights/shard-0"),
        _link("hard", "weights/shard-0", tarfile.LNKTYPE),
    )
    root = tmp_path / "root"
    extract(archive, root)
    assert (root / "weights/latest").read_bytes() == b"zero"
    assert os.readlink(root / "top") == "weights/shard-0"
    assert (root / "nested/deeper/up").read_bytes() == b"zero"
    assert (root / "hard").stat().st_ino == (root / "weights/shard-0").stat().st_ino


def test_later_members_replace_earlier_files_and_links(tmp_path: Path) -> None:
    archive = build_tar(_file("config", b"old"), _link("config", "other"), _file("config", b"new"))
    extract(archive, tmp_path / "root")
    assert (tmp_path / "root/config").read_bytes() == b"new"
    assert not (tmp_path / "root/config").is_symlink()


def test_read_only_directories_still_receive_their_members(tmp_path: Path) -> None:
    frozen = _dir("frozen")
    frozen[0].mode = 0o555
    extract(build_tar(frozen, _file("frozen/inside", b"ok")), tmp_path / "root")
    assert (tmp_path / "root/frozen/inside").read_bytes() == b"ok"
    assert stat.S_IMODE((tmp_path / "root/frozen").stat().st_mode) == 0o755  # owner keeps rwx


# --- zip: the same refusals, through the zip reader -------------------------------------------

ZipMember = tuple[str, bytes, int]  # name, content, st_mode (0: zipfile's default)


def build_zip(*members: ZipMember, method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", method) as archive, warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Duplicate name", UserWarning)  # wanted here
        for name, data, mode in members:
            info = zipfile.ZipInfo(name, (2024, 1, 1, 0, 0, 0))
            info.create_system, info.compress_type = 3, method
            info.external_attr = (mode or stat.S_IFREG | 0o644) << 16
            archive.writestr(info, data)
    return buffer.getvalue()


def _zfile(name: str, data: bytes = b"x", mode: int = 0o644) -> ZipMember:
    return name, data, stat.S_IFREG | mode


def _zlink(name: str, target: str) -> ZipMember:
    return name, target.encode(), stat.S_IFLNK | 0o777


def _zdir(name: str) -> ZipMember:
    return name.rstrip("/") + "/", b"", stat.S_IFDIR | 0o755


def extract_zip(data: bytes, root: Path, *, step: int = 4096, cap: int = 10**9) -> Stages:
    run = Stages(root, compression=None, layout=Layout.ZIP, file_name="x", max_extracted=cap)
    hasher = ResumableSha256()
    try:
        for start in range(0, len(data), step):
            piece = data[start : start + step]
            run.feed(piece, hasher.copy())
            hasher.update(piece)
        run.finish()
    finally:
        run.release()
    return run


def _renamed_in_central_directory(data: bytes, old: bytes, new: bytes) -> bytes:
    """The local header keeps old; the central directory says new (same length)."""
    central = data.index(b"PK\x01\x02")
    at = data.index(old, central)
    return data[:at] + new + data[at + len(old) :]


ZIP_CASES: dict[str, tuple[Callable[[], bytes], str]] = {
    "absolute path": (lambda: build_zip(_zfile("/tmp/evil")), "absolute"),
    "dot-dot at the start": (lambda: build_zip(_zfile("../sentinel", b"owned")), "'..'"),
    "dot-dot in the middle": (lambda: build_zip(_zfile("a/../../sentinel", b"owned")), "'..'"),
    "symlink to an absolute path": (lambda: build_zip(_zlink("etc", "/etc")), "absolute"),
    "symlink climbing out": (lambda: build_zip(_zlink("out", "../target")), "leaves"),
    "symlink climbing out from a subdirectory": (
        lambda: build_zip(_zdir("a"), _zlink("a/out", "../../target")),
        "leaves",
    ),
    "symlink chain through a link to the root": (
        lambda: build_zip(_zdir("d"), _zlink("d/up", ".."), _zlink("d/esc", "up/../target")),
        "after a name",
    ),
    "write through a symlink to a directory": (
        lambda: build_zip(_zdir("real"), _zlink("alias", "real"), _zfile("alias/file")),
        "symlink",
    ),
    "character device": (lambda: build_zip(("tty", b"", stat.S_IFCHR | 0o600)), "not allowed"),
    "a file replacing a directory": (
        lambda: build_zip(_zdir("model"), _zfile("model/w"), _zfile("model")),
        "replace a directory",
    ),
    "more bytes than the cap": (
        lambda: build_zip(_zfile("a", b"1" * 600), _zfile("b", b"2" * 600)),
        "cap",
    ),
    "a bomb far beyond the cap": (lambda: build_zip(_zfile("bomb", bytes(50 << 20))), "cap"),
    "a name the central directory gives otherwise": (
        lambda: _renamed_in_central_directory(
            build_zip(_zfile("good.bin"), _zfile("next.bin")), b"next.bin", b"evil.bin"
        ),
        "central directory names entry 2 'evil.bin'",
    ),
    "a name for the reserved state folder": (
        lambda: build_zip(_zfile(".model-fetch/checkpoint.json")),
        "keeps for its own files",
    ),
}


@pytest.mark.parametrize("case", list(ZIP_CASES))
@pytest.mark.parametrize("step", [512, 1 << 20])
def test_zip_refusals_name_the_member_and_nothing_escapes(jail: Path, case: str, step: int) -> None:
    make_archive, reason = ZIP_CASES[case]
    before = _listing(jail)
    with pytest.raises(UnsafeArchive) as caught:
        extract_zip(make_archive(), jail / "root", step=step, cap=1000)
    assert reason in caught.value.line()
    assert caught.value.exit_code == 4
    assert caught.value.member
    assert _listing(jail) == before
    assert (jail / "sentinel").read_bytes() == b"untouched"


# --- where the central directory says the entries are ---------------------------------------

_CENTRAL = b"PK\x01\x02"


def _central_records(data: bytes) -> list[int]:
    """Where each central directory record starts in data."""
    records, at = [], data.index(_CENTRAL)
    while at != -1:
        records.append(at)
        at = data.find(_CENTRAL, at + 4)
    return records


def _patched(data: bytes, record: int, field: int, value: int) -> bytes:
    """data with the 4-byte field at offset field of a central directory record set to value."""
    at = _central_records(data)[record] + field
    return data[:at] + value.to_bytes(4, "little") + data[at + 4 :]


_OFFSET, _SIZE = 42, 24  # of the local header; of the entry's content


def _offsets_swapped() -> bytes:
    data = build_zip(_zfile("a", b"first-AAAA"), _zfile("a", b"second-BBB"))
    first, second = (
        int.from_bytes(data[r + 42 : r + 46], "little") for r in _central_records(data)
    )
    return _patched(_patched(data, 0, _OFFSET, second), 1, _OFFSET, first)


ZIP_DIRECTORY_CASES: dict[str, tuple[Callable[[], bytes], str]] = {
    # unzip reads the second zip's entries; a stream reads the first's.
    "another zip appended": (
        lambda: build_zip(_zfile("a", b"good")) + build_zip(_zfile("a", b"EVIL")),
        "another zip appended",
    ),
    "offsets swapped": (_offsets_swapped, "places entry 1 at byte"),
    "two entries at one offset": (
        lambda: _patched(build_zip(_zfile("a", b"aaaa"), _zfile("b", b"bbbb")), 1, _OFFSET, 0),
        "places entry 2 at byte 0",
    ),
    "an offset past the directory": (
        lambda: _patched(build_zip(_zfile("a"), _zfile("b")), 1, _OFFSET, 1 << 20),
        "places entry 2 at byte 1048576",
    ),
    "bytes after the end record": (
        lambda: build_zip(_zfile("a")) + b"\0" * 10,
        "end record is not the last thing in the stream",
    ),
    "a size the directory gives otherwise": (
        lambda: _patched(build_zip(_zfile("a", b"1234"), method=zipfile.ZIP_STORED), 0, _SIZE, 3),
        "gives it 3 bytes but it held 4",
    ),
}


@pytest.mark.parametrize("case", list(ZIP_DIRECTORY_CASES))
def test_a_directory_that_points_elsewhere_than_the_stream_read_is_refused(
    jail: Path, case: str
) -> None:
    make_archive, reason = ZIP_DIRECTORY_CASES[case]
    with pytest.raises(UnsafeArchive) as caught:
        extract_zip(make_archive(), jail / "root", step=512)
    assert reason in caught.value.line()
    assert "zip tools would" in caught.value.line()
    assert caught.value.exit_code == 4


def test_a_zip_with_a_comment_and_a_zip64_directory_is_read(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.comment = b"a comment, which follows the end record"
        with archive.open("big", "w", force_zip64=True) as entry:
            entry.write(b"weights")
        archive.writestr("small", b"config")
    extract_zip(buffer.getvalue(), tmp_path / "root", step=512)
    assert (tmp_path / "root/big").read_bytes() == b"weights"
    assert (tmp_path / "root/small").read_bytes() == b"config"


# --- sizes that tar ignores -------------------------------------------------------------------


def _sized(member: Member, size: int) -> bytes:
    """The member's header alone, declaring size bytes of content that do not follow."""
    info, _ = member
    info.size = size
    return info.tobuf(tarfile.GNU_FORMAT)


def _assert_extracted_as_gnu_tar_does(archive: bytes, tmp_path: Path) -> None:
    """archive into tmp_path/root by the fetcher's stages and into tmp_path/tar by GNU tar:
    the same tree."""
    extract(archive, tmp_path / "root")
    by_tar = tmp_path / "tar"
    by_tar.mkdir()
    subprocess.run(["tar", "-x", "-C", str(by_tar)], input=archive, check=True)
    assert tree_snapshot(tmp_path / "root") == tree_snapshot(by_tar)


@pytest.mark.parametrize(
    "member",
    [_link("s", "a"), _link("h", "a", tarfile.LNKTYPE), _dir("d")],
    ids=["symlink", "hard link", "directory"],
)
def test_a_link_or_directory_that_declares_a_size_hides_nothing_that_tar_extracts(
    tmp_path: Path, member: Member
) -> None:
    # GNU tar's extraction and Python's tarfile read the next header right after such a one.
    hidden = build_tar(_file("hidden", b"HIDE!"), fmt=tarfile.GNU_FORMAT)[:1024]
    archive = (
        build_tar(_file("a", b"A"), fmt=tarfile.GNU_FORMAT)[:1024]
        + _sized(member, len(hidden))
        + hidden
        + build_tar(_file("x", b"X"), fmt=tarfile.GNU_FORMAT)
    )
    _assert_extracted_as_gnu_tar_does(archive, tmp_path)
    assert (tmp_path / "root/hidden").read_bytes() == b"HIDE!"


def test_a_hard_link_to_itself_leaves_the_file_as_tar_does(tmp_path: Path) -> None:
    archive = build_tar(_file("d/a", b"data"), _link("d/a", "d/a", tarfile.LNKTYPE), _file("b"))
    _assert_extracted_as_gnu_tar_does(archive, tmp_path)
    assert (tmp_path / "root/d/a").read_bytes() == b"data"


def test_zip_modes_links_and_duplicates_follow_tar(tmp_path: Path) -> None:
    archive = build_zip(
        _zdir("weights"),
        _zfile("weights/shard-0", b"zero"),
        _zlink("weights/latest", "shard-0"),
        _zfile("bin/tool", b"#!", mode=0o7755),
        _zfile("config", b"old"),
        _zlink("config", "other"),
        _zfile("config", b"new"),  # the last of one path wins, as in tar
        _zlink("top", "weights/shard-0"),
    )
    root = tmp_path / "root"
    extract_zip(archive, root)
    assert (root / "weights/latest").read_bytes() == b"zero"
    assert os.readlink(root / "top") == "weights/shard-0"
    assert stat.S_IMODE((root / "bin/tool").stat().st_mode) == 0o755  # no setuid, setgid, sticky
    assert (root / "config").read_bytes() == b"new"
    assert not (root / "config").is_symlink()
