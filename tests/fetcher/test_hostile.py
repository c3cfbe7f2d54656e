"""Hostile archives and origins: each ends in its exit code and one line, fast, leaving no model.

Every case asserts the exit code, the one line (and that no traceback was printed), that no
marker and nothing outside DIR was written, and a time bound.
"""

from __future__ import annotations

import gzip
import io
import tarfile
import time
import zipfile
from pathlib import Path

import httpx
import pytest
import zstandard

from fetcher.errors import FetchError
from fetcher.fetch import fetch
from fetcher.pipeline import StopRequest
from fetcher.progress import Progress
from fetcher.request import FetchRequest
from fetcher.state.files import write_atomically
from fetcher.state.marker import MARKER_NAME
from tests.fetcher.conftest import FAST_RETRIES, run_fetch, sha256
from tests.support.archives import py_archive, tree_snapshot, write_tree, zstd_streamed
from tests.support.origin import Faults, Origin

TREE = {"weights.bin": b"w" * 200_000, "config.json": b'{"layers": 2}'}
GOOD_TAR = py_archive(TREE, "none")
HTML = b"<!DOCTYPE html><html><body>503 Service Unavailable</body></html>\n" * 20


def _fetch(
    origin: Origin, tmp_path: Path, path: str, *args: str, seconds: float = 20.0
) -> tuple[int, str]:
    out = tmp_path / "jail" / "out"
    started = time.monotonic()
    code = run_fetch(origin.url(path), "-o", out, *FAST_RETRIES, *args)
    assert time.monotonic() - started < seconds, "took longer than its bound"
    return code, str(out)


def _one_line_failure(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "internal error" not in err
    # The failure is reported from its "error:" line on; the last line says what to do.
    reported = err[err.index("model-fetch: error: ") :].strip()
    out = tmp_path / "jail" / "out"
    assert not (out / MARKER_NAME).exists()
    # Nothing outside DIR, and no half tree presented as the model.
    assert sorted(p.name for p in (tmp_path / "jail").iterdir()) == ["out"]
    assert not [p for p in out.iterdir() if p.name != ".model-fetch"]
    return reported


def _tar_with_header_field(offset: int, width: int, value: bytes) -> bytes:
    """GOOD_TAR with one field of its first header replaced, the header checksum redone."""
    data = bytearray(GOOD_TAR)
    header = data[:512]
    header[offset : offset + width] = value.ljust(width, b"\0")[:width]
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    data[:512] = header
    return bytes(data)


def _pax_tar(records: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("weights.bin")
        info.size = 10
        info.pax_headers = records
        tar.addfile(info, io.BytesIO(b"0123456789"))
    return buffer.getvalue()


# --- what is not the model -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "body", "says"),
    [
        ("/m.tar.zst", HTML, "should be zstd data but starts with `<!DOCTYPE html>"),
        ("/m.tar.gz", HTML, "should be gzip data but starts with `<!DOCTYPE html>"),
        ("/m.tgz", zstandard.compress(GOOD_TAR), "should be gzip data but starts with bytes 28 b5"),
        ("/m.tar.xz", gzip.compress(GOOD_TAR), "should be xz data but starts with bytes 1f 8b"),
        ("/m.tar.bz2", GOOD_TAR[:600], "should be bzip2 data"),
        ("/m.tar", HTML, "should be a tar archive but starts with `<!DOCTYPE html>"),
        ("/m.tar", gzip.compress(GOOD_TAR), "should be a tar archive but is"),
        (
            "/m.tar",
            gzip.compress(GOOD_TAR * 3, 0),
            "should be a tar archive but starts with bytes 1f 8b",
        ),
        ("/weights.zst", b"{}" * 100, "should be zstd data but starts with `{}{}"),
        ("/m.tar.zst", b"", "should be zstd data but starts with nothing (it is empty)"),
    ],
)
def test_a_name_that_claims_a_format_holds_the_stream_to_it(
    origin: Origin, tmp_path: Path, capsys: pytest.CaptureFixture[str], *, name: str,
    body: bytes, says: str,
) -> None:  # fmt: skip
    origin.add(name, body)
    code, _ = _fetch(origin, tmp_path, name)
    assert code == 4
    assert says in _one_line_failure(capsys, tmp_path)


def test_a_name_without_an_archive_suffix_is_stored_as_it_is(
    origin: Origin, tmp_path: Path
) -> None:
    origin.add("/weights", HTML)
    code, out = _fetch(origin, tmp_path, "/weights")
    assert code == 0
    assert Path(out, "weights").read_bytes() == HTML


@pytest.mark.parametrize("name", ["/m.7z", "/m.rar"])
def test_archives_it_cannot_read_are_refused_before_any_download(
    origin: Origin, tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    origin.add(name, b"PK\x03\x04" + bytes(100))
    code, _ = _fetch(origin, tmp_path, name)
    assert code == 2
    assert "are not read by model-fetch" in capsys.readouterr().err
    assert origin.requests == []


def test_a_tar_cut_at_a_member_boundary_is_truncated(
    origin: Origin, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Every member whole and nothing more: no end-of-archive block, and a Content-Length
    # that tells the same short length, so only the tar format can tell.
    with tarfile.open(fileobj=io.BytesIO(GOOD_TAR)) as tar:
        last = tar.getmembers()[-1]
    cut = GOOD_TAR[: last.offset_data + -(-last.size // 512) * 512]
    origin.add("/m.tar", cut)
    code, _ = _fetch(origin, tmp_path, "/m.tar", "--sha256", sha256(cut))
    assert code == 4
    assert "without its end-of-archive block" in _one_line_failure(capsys, tmp_path)


@pytest.mark.parametrize("codec", ["zst", "gz", "xz", "bz2"])
def test_a_compressed_stream_that_stops_short_is_truncated(
    origin: Origin, tmp_path: Path, capsys: pytest.CaptureFixture[str], codec: str
) -> None:
    whole = py_archive(TREE, codec)  # type: ignore[arg-type]
    cut = whole[: len(whole) - 7]
    origin.add(f"/m.tar.{codec}", cut)
    code, _ = _fetch(origin, tmp_path, f"/m.tar.{codec}")
    assert code == 4
    _one_line_failure(capsys, tmp_path)


@pytest.mark.parametrize("made", ["sized", "streamed"])
@pytest.mark.parametrize(
    "tail", [b"\x28", b"\x28\xb5\x2f", b"ab"], ids=["1-of-magic", "3-of-magic", "junk"]
)
def test_a_few_bytes_after_the_last_zstd_frame_are_refused_even_when_the_digest_agrees(
    origin: Origin, tmp_path: Path, capsys: pytest.CaptureFixture[str], tail: bytes, made: str
) -> None:
    whole = py_archive(TREE, "zst") if made == "sized" else zstd_streamed(GOOD_TAR)
    archive = whole + tail
    origin.add("/m.tar.zst", archive)
    code, _ = _fetch(origin, tmp_path, "/m.tar.zst", "--sha256", sha256(archive))
    assert code == 4
    reported = _one_line_failure(capsys, tmp_path)
    assert "zstd stream" in reported and "frame 2" in reported, reported


def test_a_body_under_a_foreign_content_encoding_is_refused(
    origin: Origin, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archive = py_archive(TREE, "zst")
    origin.add(
        "/m.tar.zst",
        gzip.compress(archive),
        faults=Faults(extra_headers=[("Content-Encoding", "gzip")]),
    )
    code, _ = _fetch(origin, tmp_path, "/m.tar.zst", "--retries", "0")
    assert code == 5
    assert "sent the body with Content-Encoding: gzip" in _one_line_failure(capsys, tmp_path)


def test_a_gz_file_labelled_gzip_by_its_server_is_the_file_itself(
    origin: Origin, tmp_path: Path
) -> None:
    archive = py_archive(TREE, "gz")
    origin.add("/m.tar.gz", archive, faults=Faults(extra_headers=[("Content-Encoding", "gzip")]))
    code, out = _fetch(origin, tmp_path, "/m.tar.gz", "--sha256", sha256(archive))
    assert code == 0
    assert Path(out, "weights.bin").read_bytes() == TREE["weights.bin"]


# --- tar headers that lie -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "says"),
    [
        # ustar size, base-256: the high bit, then a negative two's-complement number.
        (b"\xff" * 11 + b"\x00", "declares a size of -"),
        (b"\xff" * 12, "declares a size of -1"),
        (b"\x80" + b"\x7f" + b"\xff" * 10, "declares a size of"),  # larger than any disk
    ],
)
def test_a_ustar_size_out_of_range_is_refused_at_once(
    origin: Origin, tmp_path: Path, capsys: pytest.CaptureFixture[str], field: bytes, says: str
) -> None:
    archive = _tar_with_header_field(124, 12, field)
    origin.add("/m.tar", archive)
    code, _ = _fetch(origin, tmp_path, "/m.tar", seconds=10)
    assert code == 4
    assert says in _one_line_failure(capsys, tmp_path)


@pytest.mark.parametrize(
    ("records", "says"),
    [
        ({"size": "-512"}, "declares a size of -512"),
        ({"size": "abc"}, "has a pax size of 'abc'"),
        ({"size": "1e3"}, "has a pax size of '1e3'"),
        ({"mtime": "nan"}, "has a modification time of nan"),
        ({"mtime": "1e400"}, "has a modification time of inf"),
        ({"mtime": "-inf"}, "has a modification time of -inf"),
        ({"mtime": "x"}, "has a pax mtime of 'x'"),
    ],
)
def test_a_pax_record_that_is_not_a_number_is_refused(
    origin: Origin, tmp_path: Path, capsys: pytest.CaptureFixture[str], *,
    records: dict[str, str], says: str,
) -> None:  # fmt: skip
    archive = _pax_tar(records)
    origin.add("/m.tar", archive)
    code, _ = _fetch(origin, tmp_path, "/m.tar", seconds=10)
    assert code == 4
    assert says in _one_line_failure(capsys, tmp_path)


# --- bodies that do not end ---------------------------------------------------------------


def test_an_endless_tail_after_the_archive_is_refused_not_downloaded_for_ever(
    origin: Origin, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    origin.add("/m.tar", GOOD_TAR, faults=Faults(endless_zeros=True))
    code, _ = _fetch(origin, tmp_path, "/m.tar", seconds=30)
    assert code == 4
    assert "follow the end of the tar archive" in _one_line_failure(capsys, tmp_path)
    assert origin.bytes_sent("/m.tar") < 64 << 20


def test_an_endless_body_meets_the_extraction_cap(
    origin: Origin, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    origin.add("/weights", b"w" * 1000, faults=Faults(endless_zeros=True))
    code, _ = _fetch(origin, tmp_path, "/weights", "--max-extracted-size", "8MiB", seconds=30)
    assert code == 4
    assert "--max-extracted-size" in _one_line_failure(capsys, tmp_path)


def test_headers_trickling_in_meet_the_timeout_and_the_mirror_serves(
    origin: Origin, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archive = py_archive(TREE, "zst")
    origin.add("/m.tar.zst", archive, faults=Faults(trickle_head_bytes_per_s=2))
    with Origin() as mirror:
        mirror.add("/m.tar.zst", archive)
        started = time.monotonic()
        code = run_fetch(
            origin.url("/m.tar.zst"), "--mirror", mirror.url("/m.tar.zst"),
            "-o", tmp_path / "out", "--retry-wait", "0.01", "--connections", "1",
            "--timeout", "2", "--retries", "0",
        )  # fmt: skip
        elapsed = time.monotonic() - started
    assert code == 0
    err = capsys.readouterr().err
    assert "did not arrive within 2s" in err
    assert elapsed < 15  # a trickled head used to hold the fetch for as long as it trickled
    assert (tmp_path / "out" / "weights.bin").read_bytes() == TREE["weights.bin"]


# --- the fetcher's own files ---------------------------------------------------------------


@pytest.mark.parametrize(
    "name", [".model-fetch.json", ".model-fetch.json/", ".model-fetch", ".model-fetch/tree/x",
             "..model-fetch.json.tmp", ".model-fetch.lock", "./.model-fetch.json"],
)  # fmt: skip
def test_members_named_like_the_fetchers_own_files_are_refused(
    origin: Origin, tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        if name.endswith("/"):
            info = tarfile.TarInfo(name.rstrip("/"))
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        elif name == "..model-fetch.json.tmp":
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, "weights.bin"
            tar.addfile(info)
        else:
            info = tarfile.TarInfo(name)
            info.size = 3
            tar.addfile(info, io.BytesIO(b"abc"))
    origin.add("/m.tar", buffer.getvalue())
    code, _ = _fetch(origin, tmp_path, "/m.tar")
    assert code == 4
    assert "keeps for its own files" in _one_line_failure(capsys, tmp_path)


def test_the_marker_is_never_written_through_a_planted_symlink(tmp_path: Path) -> None:
    victim = tmp_path / "weights.bin"
    victim.write_bytes(b"model")
    (tmp_path / "..model-fetch.json.tmp").symlink_to(victim)
    write_atomically(tmp_path / ".model-fetch.json", b'{"marker": true}')
    assert victim.read_bytes() == b"model"
    assert (tmp_path / ".model-fetch.json").read_bytes() == b'{"marker": true}'
    assert not (tmp_path / ".model-fetch.json").is_symlink()


def test_a_deep_tree_then_a_refused_member_is_cleaned_up_without_recursion(
    origin: Origin, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("/".join(["d"] * 1500) + "/leaf")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
        bad = tarfile.TarInfo("../escape")
        bad.size = 1
        tar.addfile(bad, io.BytesIO(b"x"))
    origin.add("/m.tar", buffer.getvalue())
    code, out = _fetch(origin, tmp_path, "/m.tar")
    assert code == 4
    assert "'..' components are not allowed" in _one_line_failure(capsys, tmp_path)
    assert not Path(out, ".model-fetch").exists()


# --- origins that lie --------------------------------------------------------------------------


def _fetch_over(transport: httpx.MockTransport, url: str, tmp_path: Path) -> FetchError:
    request = FetchRequest(url=url, output=tmp_path / "out", connections=4)
    request.retry.retries = 0
    with pytest.raises(FetchError) as raised:
        fetch(request, stop=StopRequest(), progress=Progress(bar=False), transport=transport)
    assert not (tmp_path / "out" / MARKER_NAME).exists()
    return raised.value


def test_a_redirect_from_https_to_http_is_refused_saying_which(tmp_path: Path) -> None:
    def origin(request: httpx.Request) -> httpx.Response:
        if request.url.scheme == "https":
            return httpx.Response(302, headers={"Location": "http://plain.example/m.tar.zst"})
        return httpx.Response(200, content=py_archive(TREE, "zst"))

    error = _fetch_over(httpx.MockTransport(origin), "https://models.example/m.tar.zst", tmp_path)
    assert error.exit_code == 5
    assert "redirects to http://plain.example/m.tar.zst, which is not https" in error.line()


def test_a_redirect_loop_ends_as_a_refusal(tmp_path: Path) -> None:
    def origin(request: httpx.Request) -> httpx.Response:
        hop = int(request.url.params.get("hop", "0"))
        return httpx.Response(302, headers={"Location": f"/m.tar.zst?hop={hop + 1}"})

    error = _fetch_over(httpx.MockTransport(origin), "https://models.example/m.tar.zst", tmp_path)
    assert error.exit_code == 5
    assert "redirects in a loop" in error.line()


def test_a_probe_announcing_an_impossible_length_is_refused(tmp_path: Path) -> None:
    def origin(request: httpx.Request) -> httpx.Response:
        return httpx.Response(206, content=b"(", headers={"Content-Range": f"bytes 0-0/{10**18}"})

    error = _fetch_over(httpx.MockTransport(origin), "https://models.example/m.tar.zst", tmp_path)
    assert error.exit_code == 4
    assert f"announces {10**18} bytes" in error.line()


def test_the_expected_tree_helper_still_matches(tmp_path: Path) -> None:
    # Guards the fixtures above: TREE written by the test helper is what GOOD_TAR holds.
    assert tree_snapshot(write_tree(TREE, tmp_path / "t"))["weights.bin"][2] == b"w" * 200_000


# --- zip -------------------------------------------------------------------------------------


def _zip(method: int = zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", method) as archive:
        for name, data in TREE.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _flip_content_byte(archive: bytes) -> bytes:
    """One byte of the first entry's stored content changed: only its CRC-32 can tell."""
    data = bytearray(archive)
    data[30 + len("weights.bin") + 1000] ^= 0x01
    return bytes(data)


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (_flip_content_byte(_zip()), "zip entry 'weights.bin' fails its CRC-32 check"),
        (_zip(zipfile.ZIP_DEFLATED)[:-30], "central directory is missing or damaged"),
        (_zip()[:5000], "zip entry 'weights.bin' was cut short"),
        (
            _zip()[: 30 + len("weights.bin") + 200_000],
            "zip entry 2 (after 'weights.bin') was cut short",
        ),
        (HTML, "should be a zip archive but starts with `<!DOCTYPE html>"),
    ],
    ids=["crc-mismatch", "cut-in-central-directory", "cut-in-entry", "cut-at-entry-end", "html"],
)
def test_a_damaged_zip_is_exit_4_in_one_line(
    origin: Origin, tmp_path: Path, capsys: pytest.CaptureFixture[str], body: bytes, says: str
) -> None:
    origin.add("/m.zip", body)
    code, _ = _fetch(origin, tmp_path, "/m.zip")
    assert code == 4
    assert says in _one_line_failure(capsys, tmp_path)
