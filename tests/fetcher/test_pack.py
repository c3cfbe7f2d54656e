"""model-fetch pack: what GNU tar, zstd and the fetcher read back, the seek table, the refusals."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import socket
import subprocess
import tarfile
from pathlib import Path

import pytest
import pyzstd
import zstandard

from fetcher.cli import main
from fetcher.pack import seektable
from tests.fetcher.conftest import run_fetch
from tests.support.archives import Dir, File, Symlink, Tree, make_tree, tree_snapshot, write_tree
from tests.support.origin import Origin

FRAME = 64 * 1024


def _tree() -> dict[str, object]:
    tree: dict[str, object] = dict(make_tree(seed=11, n_files=30, total_bytes=1_500_000))
    tree.update(
        {
            "bin/run.sh": File(b"#!/bin/sh\necho run\n", 0o700),  # -> 0755
            "private.key": File(b"not really\n", 0o600),  # -> 0644
            "empty-dir": Dir(0o700),  # -> 0755
            "latest": Symlink("bin/run.sh"),
            "deep/er/link": Symlink("../../private.key"),
            "n" * 120 + "/long-name-" + "x" * 150 + ".bin": b"long names need pax records",
            "tokenizer/vocabulário-日本.json": b'{"unicode": true}',
        }
    )
    return tree


def _expected(tree: Tree, tmp: Path) -> dict[str, tuple[str, int, bytes | str]]:
    """The tree as pack normalises it: 0644/0755 modes."""
    snap = tree_snapshot(write_tree(tree, tmp / "expected"))
    out = {}
    for name, (kind, mode, content) in snap.items():
        if kind == "file":
            out[name] = (kind, 0o755 if mode & 0o111 else 0o644, content)
        else:
            out[name] = (kind, 0o755 if kind == "dir" else mode, content)
    return out


def run_pack(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    code = main(["pack", *(str(arg) for arg in args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def packed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[Path, str, Tree]:
    tree = _tree()
    source = write_tree(tree, tmp_path / "model")
    archive = tmp_path / "model.tar.zst"
    code, out, err = run_pack(capsys, source, "-o", archive, "--frame-size", "64KiB")
    assert code == 0, err
    return archive, out.strip(), tree


def test_prints_the_sha256_of_the_archive(packed: tuple[Path, str, Tree]) -> None:
    archive, printed, _ = packed
    assert printed == hashlib.sha256(archive.read_bytes()).hexdigest()
    assert oct(archive.stat().st_mode & 0o777) == oct(0o644)
    assert [p.name for p in archive.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_gnu_tar_and_zstd_extract_it_byte_for_byte(
    packed: tuple[Path, str, Tree], tmp_path: Path
) -> None:
    archive, _, tree = packed
    out = tmp_path / "gnu"
    out.mkdir()
    subprocess.run(f"zstd -dc {archive} | tar -xf - -C {out}", shell=True, check=True, timeout=60)
    assert tree_snapshot(out) == _expected(tree, tmp_path)
    listing = subprocess.run(
        ["tar", "--numeric-owner", "-tvf", "-"],
        input=_decompress(archive.read_bytes()),
        capture_output=True,
        check=True,
    ).stdout.decode()
    assert all(" 0/0 " in line for line in listing.splitlines()), listing


def test_the_fetcher_extracts_it_against_the_printed_digest(
    packed: tuple[Path, str, Tree], tmp_path: Path
) -> None:
    archive, printed, tree = packed
    out = tmp_path / "fetched"
    with Origin() as origin:
        origin.add("/model.tar.zst", archive.read_bytes())
        code = run_fetch(
            origin.url("/model.tar.zst"), "-o", out, "--sha256", printed, "--connections", "1"
        )
    assert code == 0
    snap = {k: v for k, v in tree_snapshot(out).items() if not k.startswith(".model-fetch")}
    assert snap == _expected(tree, tmp_path)


def _frames(data: bytes) -> list[tuple[int, bytes]]:
    """(offset, bytes) of each frame, walked with the library's own frame sizes."""
    frames, offset = [], 0
    while offset < len(data):
        size = zstandard.frame_header_size(data[offset:])  # a valid header at every offset
        assert size
        length = _frame_length(data[offset:])
        frames.append((offset, data[offset : offset + length]))
        offset += length
    return frames


def _frame_length(data: bytes) -> int:
    magic = int.from_bytes(data[:4], "little")
    if magic & 0xFFFFFFF0 == 0x184D2A50:
        return 8 + int.from_bytes(data[4:8], "little")
    decompressor = zstandard.ZstdDecompressor().decompressobj()
    decompressor.decompress(data)
    return len(data) - len(decompressor.unused_data)


def test_seek_table_lists_every_frame(packed: tuple[Path, str, Tree]) -> None:
    archive, _, _ = packed
    data = archive.read_bytes()
    entries = seektable.decode(data)
    frames = _frames(data)
    assert len(frames) == len(entries) + 1  # the seek table is the last, skippable, frame
    tar_stream = b""
    for entry, (_, frame) in zip(entries, frames, strict=False):
        assert entry.compressed == len(frame)
        params = zstandard.get_frame_parameters(frame)
        assert params.has_checksum and params.content_size == entry.decompressed
        content = zstandard.ZstdDecompressor().decompress(frame)
        assert len(content) == entry.decompressed
        assert entry.checksum == int.from_bytes(frame[-4:], "little")
        tar_stream += content
    assert frames[-1][0] == sum(e.compressed for e in entries)
    assert [e.decompressed for e in entries[:-1]] == [FRAME] * (len(entries) - 1)
    assert 0 < entries[-1].decompressed <= FRAME
    assert len(entries) > 20
    with tarfile.open(fileobj=io.BytesIO(tar_stream)) as tar:
        assert tar.getmembers()[0].name == "bin"  # sorted by name


def test_an_independent_seekable_reader_agrees(packed: tuple[Path, str, Tree]) -> None:
    archive, _, _ = packed
    whole = _decompress(archive.read_bytes())
    with pyzstd.SeekableZstdFile(archive) as seekable:
        for offset in (0, FRAME - 7, 5 * FRAME + 123, len(whole) - 1000):
            seekable.seek(offset)
            assert seekable.read(2000) == whole[offset : offset + 2000]
        assert seekable.seek(0, os.SEEK_END) == len(whole)


def test_two_packs_of_the_same_tree_are_identical(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tree = _tree()
    first = write_tree(tree, tmp_path / "a" / "model")
    second = write_tree(tree, tmp_path / "b" / "model")
    for path in second.rglob("*"):  # another checkout: other mtimes
        os.utime(path, (1_000_000_000, 1_000_000_000), follow_symlinks=False)
    digests = []
    for source in (first, second, first):
        code, out, _ = run_pack(capsys, source, "-o", source.parent / "m.tar.zst")
        assert code == 0
        digests.append(out.strip())
    assert digests[0] == digests[1] == digests[2]
    code, kept, _ = run_pack(capsys, second, "-o", tmp_path / "kept.tar.zst", "--mtime", "keep")
    assert code == 0 and kept.strip() != digests[0]
    with _open_tar(tmp_path / "kept.tar.zst") as tar:
        assert {m.mtime for m in tar.getmembers()} == {1_000_000_000}


def _open_tar(path: Path) -> tarfile.TarFile:
    return tarfile.open(fileobj=io.BytesIO(_decompress(path.read_bytes())))


def _decompress(data: bytes) -> bytes:
    return zstandard.ZstdDecompressor().stream_reader(data).read()


def test_source_date_epoch_sets_the_mtimes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    source = write_tree({"a": b"x"}, tmp_path / "m")
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    assert run_pack(capsys, source, "-o", tmp_path / "m.tar.zst")[0] == 0
    with _open_tar(tmp_path / "m.tar.zst") as tar:
        assert [m.mtime for m in tar.getmembers()] == [1_700_000_000]


@pytest.mark.parametrize(
    ("name", "target"),
    [
        ("abs", "/etc/passwd"),
        ("up", "../outside"),
        ("sub/up2", "../../outside"),
        ("climb-back", "sub/../../model/a"),  # '..' after a name: the fetcher refuses it too
    ],
)
def test_symlinks_out_of_the_directory_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, target: str
) -> None:
    source = write_tree({"a": b"x", "sub/b": b"y", name: Symlink(target)}, tmp_path / "model")
    code, out, err = run_pack(capsys, source, "-o", tmp_path / "m.tar.zst")
    assert code == 2 and out == ""
    assert "symlink" in err and err.count("\n") == 1
    assert list(tmp_path.glob("*.tar.zst")) == list(tmp_path.glob(".m.tar.zst*")) == []


def test_a_symlink_resolving_out_through_another_link_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each hop is lexically inside; the chain still ends outside."""
    (tmp_path / "secret").write_text("s")
    source = write_tree({"a": b"x"}, tmp_path / "model")
    os.symlink(str(tmp_path), source / "door")  # absolute: refused on its own as well
    os.symlink("door/secret", source / "via")
    code, _, err = run_pack(capsys, source, "-o", tmp_path / "m.tar.zst")
    assert code == 2 and "door" in err


def test_special_files_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = write_tree({"a": b"x"}, tmp_path / "model")
    os.mkfifo(source / "pipe")
    code, _, err = run_pack(capsys, source, "-o", tmp_path / "m.tar.zst")
    assert code == 2 and "named pipe" in err
    (source / "pipe").unlink()
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(source / "sock"))
        code, _, err = run_pack(capsys, source, "-o", tmp_path / "m.tar.zst")
    assert code == 2 and "socket" in err
    assert not (tmp_path / "m.tar.zst").exists()


@pytest.mark.parametrize(
    "where", ["model/m.tar.zst", "model/sub/m.tar.zst", "alias/m.tar.zst", "alias/sub/m"]
)
def test_output_inside_the_directory_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str
) -> None:
    source = write_tree({"a": b"x", "sub/b": b"y"}, tmp_path / "model")
    (tmp_path / "alias").symlink_to(source)  # the same directory under another name
    code, _, err = run_pack(capsys, source, "-o", tmp_path / where)
    assert code == 2 and "inside" in err
    assert sorted(p.name for p in source.rglob("*")) == ["a", "b", "sub"]


def test_the_fetchers_own_names_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_tree({"a": b"x", ".model-fetch.json": b"{}"}, tmp_path / "model")
    code, _, err = run_pack(capsys, source, "-o", tmp_path / "m.tar.zst")
    assert code == 2 and ".model-fetch.json" in err


@pytest.mark.parametrize(
    "args",
    [["--frame-size", "1KiB"], ["--frame-size", "2GiB"], ["--level", "0"], ["--mtime", "soon"]],
)
def test_bad_options_are_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    source = write_tree({"a": b"x"}, tmp_path / "model")
    code, _, err = run_pack(capsys, source, "-o", tmp_path / "m.tar.zst", *args)
    assert code == 2 and err.startswith("model-fetch pack: error: ")


def test_a_missing_directory_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_pack(capsys, tmp_path / "nope", "-o", tmp_path / "m.tar.zst")
    assert code == 2 and "not a directory" in err


def test_an_existing_archive_is_replaced_whole(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_tree({"a": b"x" * 100_000}, tmp_path / "model")
    target = tmp_path / "m.tar.zst"
    target.write_bytes(b"old archive")
    old = tmp_path / "old-link"
    os.link(target, old)  # the old inode is left alone: a rename, not a rewrite
    code, out, _ = run_pack(capsys, source, "-o", target)
    assert code == 0 and old.read_bytes() == b"old archive"
    assert hashlib.sha256(target.read_bytes()).hexdigest() == out.strip()


def test_progress_lines_on_stderr(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = write_tree({"big": b"z" * 3_000_000, "small": b"s"}, tmp_path / "model")
    code, out, err = run_pack(
        capsys, source, "-o", tmp_path / "m.tar.zst", "--progress-interval", "0"
    )
    assert code == 0 and len(out.split()) == 1
    assert "model-fetch pack: packed 100.0%" in err


def test_the_fetch_command_line_is_unchanged(tmp_path: Path) -> None:
    """A first argument other than pack is still the URL of a fetch."""
    assert main(["pack.example", "-o", str(tmp_path / "o")]) == 2
    assert shutil.which("tar")
