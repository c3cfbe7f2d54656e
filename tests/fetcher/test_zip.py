"""Zip archives made by Info-ZIP, 7z and Python, fetched from a real origin, byte for byte."""

from __future__ import annotations

import errno
import io
import json
import os
import random
import signal
import struct
import subprocess
import sys
import time
import zipfile
import zlib
from pathlib import Path

import pytest

from fetcher.commit import WORK_DIR_NAME
from fetcher.state.checkpoint import CHECKPOINT_NAME
from fetcher.state.marker import MARKER_NAME
from tests.fetcher.conftest import FAST_RETRIES, run_fetch, sha256
from tests.support.archives import Dir, File, Symlink, Tree, fetched_tree, tree_snapshot, write_tree
from tests.support.origin import Faults, Origin
from tests.support.zips import cli_zip, py_zip, sevenz_zip

TREE: Tree = {
    "config.json": b'{"layers": 32}',
    "weights/shard-00.bin": random.Random(3).randbytes(400_000),  # incompressible
    "weights/shard-01.bin": b"\x01\x02" * 300_000,
    "weights/latest": Symlink("shard-01.bin"),
    "bin/serve.sh": File(b"#!/bin/sh\nexec server\n", 0o755),
    "empty": Dir(),
}
PASSWORD = "correct horse battery staple"


def _expected(tmp_path: Path, tree: Tree = TREE) -> dict[str, object]:
    return dict(tree_snapshot(write_tree(tree, tmp_path / "expected")))


def _fetch(origin: Origin, name: str, body: bytes, out: Path, *args: str | Path) -> int:
    origin.add(name, body)
    return run_fetch(origin.url(name), "-o", out, *FAST_RETRIES, *args)


def _last_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "internal error" not in err
    lines = err.strip().splitlines()
    assert lines[-1].startswith("model-fetch: error: ")
    return lines[-1]


@pytest.mark.parametrize("stream", [False, True], ids=["to-a-file", "to-a-pipe"])
def test_info_zip_archives_extract_byte_for_byte(
    origin: Origin, tmp_path: Path, *, stream: bool
) -> None:
    # zip stores a symlink uncompressed, which it cannot do on a pipe
    tree = {k: v for k, v in TREE.items() if not (stream and isinstance(v, Symlink))}
    archive = cli_zip(tree, tmp_path / "work", stream=stream)
    if stream:  # written to a pipe, every file has a data descriptor
        listed = zipfile.ZipFile(io.BytesIO(archive)).infolist()
        assert all(i.flag_bits & 0x08 for i in listed if not i.is_dir())
    out = tmp_path / "out"
    assert _fetch(origin, "/model.zip", archive, out, "--sha256", sha256(archive)) == 0
    assert fetched_tree(out) == _expected(tmp_path, tree)
    marker = json.loads((out / MARKER_NAME).read_text())
    assert marker["format"] == "zip"
    assert marker["bytes"] == len(archive)


# zipfile writes stored entries seekably only (sizes in the local header), so stored has no
# data-descriptor variant.
@pytest.mark.parametrize(
    ("method", "streamed"),
    [
        (zipfile.ZIP_STORED, False),
        (zipfile.ZIP_DEFLATED, False),
        (zipfile.ZIP_DEFLATED, True),
        (zipfile.ZIP_BZIP2, False),
        (zipfile.ZIP_BZIP2, True),
    ],
    ids=["stored", "deflate", "deflate-data-descriptors", "bzip2", "bzip2-data-descriptors"],
)
def test_python_zipfile_archives_extract_byte_for_byte(
    origin: Origin, tmp_path: Path, *, method: int, streamed: bool
) -> None:
    # Streamed, zipfile writes a directory as an empty stored entry with a data descriptor,
    # which no stream reader can tell from one with data (stream-unzip refuses it).
    tree = {k: v for k, v in TREE.items() if not (streamed and isinstance(v, Dir))}
    archive = py_zip(tree, method, streamed=streamed)
    out = tmp_path / "out"
    assert _fetch(origin, "/m", archive, out, "--format", "zip") == 0
    assert fetched_tree(out) == _expected(tmp_path, tree)


def test_deflate64_from_7z_extracts(origin: Origin, tmp_path: Path) -> None:
    tree: Tree = {"weights.bin": b"deflate64 " * 100_000, "notes.txt": b"seven"}
    archive = sevenz_zip(tree, tmp_path / "work", "-mm=Deflate64")
    assert 9 in {i.compress_type for i in zipfile.ZipFile(io.BytesIO(archive)).infolist()}
    out = tmp_path / "out"
    assert _fetch(origin, "/model.zip", archive, out) == 0
    assert fetched_tree(out) == _expected(tmp_path, tree)


@pytest.mark.parametrize(("method", "name"), [(zipfile.ZIP_LZMA, "lzma")])
def test_methods_stream_unzip_does_not_read_are_refused_in_one_line(
    origin: Origin, tmp_path: Path, capsys: pytest.CaptureFixture[str], *, method: int, name: str
) -> None:
    archive = py_zip({"a.bin": b"a" * 1000}, method)
    out = tmp_path / "out"
    assert _fetch(origin, "/model.zip", archive, out) == 4
    line = _last_line(capsys)
    assert f"compression method {method} ({name})" in line
    assert not (out / MARKER_NAME).exists()


def test_zip64_with_more_than_65535_entries(origin: Origin, tmp_path: Path) -> None:
    count = 70_000
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for n in range(count):
            archive.writestr(f"d{n % 7}/f{n:05d}", n.to_bytes(4, "little"))
    data = buffer.getvalue()
    assert data.rfind(b"PK\x06\x06") > 0  # the zip64 end of central directory record
    out = tmp_path / "out"
    started = time.monotonic()
    assert _fetch(origin, "/many.zip", data, out) == 0
    elapsed = time.monotonic() - started
    marker = json.loads((out / MARKER_NAME).read_text())
    assert marker["files"] == count
    assert (out / f"d{69998 % 7}/f69998").read_bytes() == (69998).to_bytes(4, "little")
    assert sum(len(files) for _, _, files in os.walk(out)) == count + 1  # and the marker
    print(f"\n  {count} entries in {elapsed:.1f}s")


@pytest.mark.evidence
def test_a_member_over_4_gib_of_zeros_extracts_as_a_sparse_file(
    origin: Origin, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """zip64 sizes proved on a member past 4 GiB; its zeros are holes, so no disk is used."""
    size = (4 << 30) + (16 << 20)  # past 4 GiB, in whole writes of the zeros below
    buffer = io.BytesIO()
    zeros = bytes(16 << 20)
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        with archive.open("zeros.bin", "w", force_zip64=True) as member:
            for _ in range(size // len(zeros)):
                member.write(zeros)
        archive.writestr("after.txt", b"still read")
    data = buffer.getvalue()
    out = tmp_path / "out"
    started = time.monotonic()
    assert _fetch(origin, "/big.zip", data, out) == 0
    elapsed = time.monotonic() - started
    path = out / "zeros.bin"
    assert path.stat().st_size == size
    assert path.stat().st_blocks * 512 < 1 << 20  # holes, not 4 GiB of written zeros
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(OSError) as no_data:
            os.lseek(fd, 0, os.SEEK_DATA)
        assert no_data.value.errno == errno.ENXIO
    finally:
        os.close(fd)
    assert (out / "after.txt").read_bytes() == b"still read"
    with capsys.disabled():
        print(f"\n  {size:,} bytes of zeros from a {len(data):,}-byte zip in {elapsed:.1f}s")


# --- encrypted zips --------------------------------------------------------------------------

SECRET_TREE: Tree = {
    "weights.bin": random.Random(9).randbytes(200_000),
    "config.json": b'{"secret": true}',
    "tiny": b"ab",  # under 20 bytes: what AE-2 exists for
}


def _as_ae1(archive: bytes, tree: Tree) -> bytes:
    """7z's AE-2 zip rewritten as AE-1: the vendor version 1 and the plaintext's CRC-32 in
    each header, as WinZip's AE-1 has (the ciphertext and its authentication code stay)."""
    data = bytearray(archive)
    listing = zipfile.ZipFile(io.BytesIO(archive))
    central = data.find(b"PK\x01\x02")
    for info in listing.infolist():
        if info.is_dir():
            continue
        plain = tree[info.filename]
        crc = struct.pack("<I", zlib.crc32(plain if isinstance(plain, bytes) else b""))
        local = info.header_offset
        data[local + 14 : local + 18] = crc
        name_len, extra_len = struct.unpack_from("<HH", data, local + 26)
        extra = local + 30 + name_len
        aes = data.find(b"\x01\x99", extra, extra + extra_len)
        assert data[aes + 4 : aes + 6] == b"\x02\x00"
        data[aes + 4 : aes + 6] = b"\x01\x00"
        record = _central_record(data, central, info.filename.encode())
        data[record + 16 : record + 20] = crc
        name_len, extra_len = struct.unpack_from("<HH", data, record + 28)
        extra = record + 46 + name_len
        aes = data.find(b"\x01\x99", extra, extra + extra_len)
        data[aes + 4 : aes + 6] = b"\x01\x00"
    return bytes(data)


def _central_record(data: bytearray, start: int, name: bytes) -> int:
    at = start
    while True:
        at = data.find(b"PK\x01\x02", at)
        assert at >= 0
        length = struct.unpack_from("<H", data, at + 28)[0]
        if bytes(data[at + 46 : at + 46 + length]) == name:
            return at
        at += 4


@pytest.fixture(scope="module")
def encrypted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    work = tmp_path_factory.mktemp("encrypted")
    ae2 = sevenz_zip(SECRET_TREE, work / "7z", f"-p{PASSWORD}", "-mem=AES256")
    return {
        "zipcrypto": cli_zip(SECRET_TREE, work / "zip", "-e", "-P", PASSWORD),
        "zipcrypto-streamed": cli_zip(
            SECRET_TREE, work / "zips", "-e", "-P", PASSWORD, stream=True
        ),
        "aes256-ae2": ae2,
        "aes256-ae1": _as_ae1(ae2, SECRET_TREE),
        "aes128-ae2": sevenz_zip(SECRET_TREE, work / "7z128", f"-p{PASSWORD}", "-mem=AES128"),
    }


@pytest.mark.parametrize(
    "kind", ["zipcrypto", "zipcrypto-streamed", "aes256-ae2", "aes256-ae1", "aes128-ae2"]
)
@pytest.mark.parametrize("where", ["env", "file"])
def test_encrypted_zips_extract_with_the_password_from_env_or_file(
    origin: Origin, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch, encrypted: dict[str, bytes], *, kind: str, where: str,
) -> None:  # fmt: skip
    if where == "env":
        monkeypatch.setenv("ZIP_PASSWORD", PASSWORD)
        spec = "env:ZIP_PASSWORD"
    else:
        (tmp_path / "password").write_text(PASSWORD + "\n")
        spec = f"file:{tmp_path / 'password'}"
    log = tmp_path / "termination-log"
    log.write_text("")
    out = tmp_path / "out"
    archive = encrypted[kind]
    code = _fetch(origin, "/secret.zip", archive, out, "--password-from", spec,
                  "--termination-log", log, "--log-format", "json")  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0, err
    assert fetched_tree(out) == _expected(tmp_path, SECRET_TREE)
    assert PASSWORD not in err
    assert PASSWORD not in log.read_text()
    assert json.loads(log.read_text())["status"] == "ok"


@pytest.mark.parametrize("kind", ["zipcrypto", "aes256-ae2", "aes256-ae1"])
def test_a_wrong_password_is_exit_4_naming_the_entry(
    origin: Origin, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch, encrypted: dict[str, bytes], *, kind: str,
) -> None:  # fmt: skip
    monkeypatch.setenv("ZIP_PASSWORD", "not the password")
    log = tmp_path / "termination-log"
    log.write_text("")
    out = tmp_path / "out"
    code = _fetch(origin, "/secret.zip", encrypted[kind], out, "--password-from",
                  "env:ZIP_PASSWORD", "--termination-log", log)  # fmt: skip
    assert code == 4
    line = _last_line(capsys)
    first = zipfile.ZipFile(io.BytesIO(encrypted[kind])).infolist()[0].filename
    assert f"wrong password for zip entry {first!r}" in line
    assert "not the password" not in line + log.read_text()
    assert json.loads(log.read_text())["exit_code"] == 4
    assert not (out / MARKER_NAME).exists()


def test_an_encrypted_zip_without_a_password_is_exit_2_saying_what_to_add(
    origin: Origin, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    encrypted: dict[str, bytes],
) -> None:  # fmt: skip
    out = tmp_path / "out"
    assert _fetch(origin, "/secret.zip", encrypted["aes256-ae2"], out) == 2
    line = _last_line(capsys)
    assert "is encrypted and no password was given" in line
    assert "add --password-from" in line


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("env:NO_SUCH_PASSWORD_VAR", "--password-from env:NO_SUCH_PASSWORD_VAR: the environment"),
        ("file:/nonexistent/password", "--password-from file:/nonexistent/password: No such"),
        (PASSWORD, "--password-from takes env:NAME or file:PATH"),
    ],
)
def test_a_password_source_that_cannot_be_read_is_exit_2_naming_it(
    origin: Origin, tmp_path: Path, capsys: pytest.CaptureFixture[str], spec: str, says: str
) -> None:
    out = tmp_path / "out"
    origin.add("/secret.zip", b"PK")
    assert run_fetch(origin.url("/secret.zip"), "-o", out, "--password-from", spec) == 2
    line = _last_line(capsys)
    assert says in line
    assert PASSWORD not in line
    assert origin.requests == []


def test_the_password_is_in_no_checkpoint_log_or_termination_message_after_a_stop(
    tmp_path: Path, encrypted: dict[str, bytes]
) -> None:
    """A run stopped by SIGTERM half way keeps its checkpoint: the password is not in it."""
    big: Tree = {f"part-{n}.bin": random.Random(n).randbytes(300_000) for n in range(12)}
    archive = sevenz_zip(big, tmp_path / "work", f"-p{PASSWORD}", "-mem=AES256")
    out, log = tmp_path / "out", tmp_path / "termination-log"
    log.write_text("")
    env = {**os.environ, "ZIP_PASSWORD": PASSWORD}
    with Origin() as origin:
        origin.add("/secret.zip", archive, faults=Faults(drip_bytes_per_s=1 << 20))
        command = [sys.executable, "-m", "fetcher", origin.url("/secret.zip"), "-o", str(out),
                   "--password-from", "env:ZIP_PASSWORD", "--termination-log", str(log),
                   "--checkpoint-interval", "0.1", "--connections", "1"]  # fmt: skip
        process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)

        def stop_half_way(sent: int) -> bool:
            if sent >= len(archive) // 2 and process.poll() is None:
                process.send_signal(signal.SIGTERM)
            return True

        origin.on_body_progress("/secret.zip", stop_half_way)
        _, err = process.communicate(timeout=120)
        assert process.returncode == 128 + signal.SIGTERM, err
        checkpoint = (out / WORK_DIR_NAME / CHECKPOINT_NAME).read_bytes()
        assert b'"layout":"zip"' in checkpoint  # a restore point inside the zip was saved
        for text in (err.encode(), log.read_bytes(), checkpoint):
            assert PASSWORD.encode() not in text
        origin.on_body_progress("/secret.zip", None)
        rerun = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert "resuming from a checkpoint: byte " in rerun.stderr
    assert PASSWORD not in rerun.stderr
    assert fetched_tree(out) == _expected(tmp_path, big)
