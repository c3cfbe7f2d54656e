"""model-fetch end to end against a real HTTP origin on 127.0.0.1."""

from __future__ import annotations

import json
import random
import tarfile
import time
from pathlib import Path

import pytest

from fetcher.state.marker import MARKER_NAME
from tests.fetcher.conftest import FAST_RETRIES, run_fetch, sha256
from tests.support.archives import (
    Dir,
    File,
    Hardlink,
    Symlink,
    Tool,
    Tree,
    cli_archive,
    cli_compress,
    fetched_tree,
    py_archive,
    tree_snapshot,
    write_tree,
)
from tests.support.origin import Faults, Origin

TREE: Tree = {
    "config.json": b'{"layers": 32}',
    "weights/shard-00.bin": random.Random(3).randbytes(400_000),  # incompressible
    "weights/shard-01.bin": b"\x01\x02" * 300_000,
    "weights/latest": Symlink("shard-01.bin"),
    "weights/alias.bin": Hardlink("weights/shard-00.bin"),
    "bin/serve.sh": File(b"#!/bin/sh\nexec server\n", 0o755),
    "empty": Dir(),
}


def _expected(tmp_path: Path, tree: object = TREE) -> dict[str, object]:
    return dict(tree_snapshot(write_tree(tree, tmp_path / "expected")))  # type: ignore[arg-type]


@pytest.mark.parametrize("tool", ["zstd", "pzstd", "gzip", "xz", "bzip2", "none"])
@pytest.mark.parametrize("tar_format", ["gnu", "posix"])
def test_archives_made_by_the_real_tools_extract_byte_for_byte(
    origin: Origin, tmp_path: Path, tool: Tool, tar_format: str
) -> None:
    archive = cli_archive(TREE, tool, tmp_path / "work", dot_prefix=True, tar_format=tar_format)  # type: ignore[arg-type]
    # Named as the tools name it: the name's claim and the magic bytes must agree.
    name = "/model.tar" + {"zstd": ".zst", "pzstd": ".zst", "gzip": ".gz", "xz": ".xz",
                           "bzip2": ".bz2", "none": ""}[tool]  # fmt: skip
    origin.add(name, archive)
    out = tmp_path / "out"
    assert run_fetch(origin.url(name), "--sha256", sha256(archive), "-o", out) == 0
    assert fetched_tree(out) == _expected(tmp_path)


@pytest.mark.parametrize("codec", ["zst", "gz", "xz", "bz2", "none"])
@pytest.mark.parametrize("parts", [1, 3])
def test_archives_made_by_python_in_one_or_many_frames(
    origin: Origin, tmp_path: Path, codec: str, parts: int
) -> None:
    archive = py_archive(TREE, codec, parts=parts)  # type: ignore[arg-type]
    origin.add("/model", archive)
    out = tmp_path / "out"
    assert run_fetch(origin.url("/model"), "--sha256", sha256(archive), "-o", out) == 0
    assert fetched_tree(out) == _expected(tmp_path)
    marker = json.loads((out / MARKER_NAME).read_text())
    assert marker["sha256"] == sha256(archive)
    assert marker["bytes"] == len(archive)
    assert marker["files"] == 6


def test_a_compressed_single_file_is_stored_without_its_suffix(
    origin: Origin, tmp_path: Path
) -> None:
    weights = b"\x00\x01 not a tar " * 50_000
    origin.add("/models/encoder.onnx.zst", cli_compress(weights, "zstd"))
    out = tmp_path / "out"
    assert run_fetch(origin.url("/models/encoder.onnx.zst"), "-o", out) == 0
    assert (out / "encoder.onnx").read_bytes() == weights
    assert sorted(p.name for p in out.iterdir()) == [MARKER_NAME, "encoder.onnx"]


def test_format_none_stores_the_bytes_as_served(origin: Origin, tmp_path: Path) -> None:
    archive = py_archive(TREE, "zst")
    origin.add("/model.tar.zst", archive)
    out = tmp_path / "out"
    assert run_fetch(origin.url("/model.tar.zst"), "--format", "none", "-o", out) == 0
    assert (out / "model.tar.zst").read_bytes() == archive


def test_format_override_wins_over_magic(origin: Origin, tmp_path: Path) -> None:
    archive = py_archive(TREE, "gz")
    origin.add("/blob", archive)
    assert run_fetch(origin.url("/blob"), "--format", "tar.zst", "-o", tmp_path / "o") == 4


def test_checksum_mismatch_exits_3_and_leaves_nothing_behind(
    origin: Origin, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archive = py_archive(TREE, "zst")
    origin.add("/model.tar.zst", archive)
    out = tmp_path / "out"
    wrong = "0" * 64
    assert run_fetch(origin.url("/model.tar.zst"), "--sha256", wrong, "-o", out) == 3
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert wrong in last
    assert sha256(archive) in last
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("connections", ["1", "4"])
def test_max_extracted_size_refuses_the_member_past_the_cap_with_exit_4(
    origin: Origin, tmp_path: Path, capsys: pytest.CaptureFixture[str], connections: str
) -> None:
    archive = py_archive({"a.bin": b"a" * 600_000, "b.bin": b"b" * 600_000}, "zst")
    origin.add("/m", archive)
    out = tmp_path / "out"
    args = ("-o", out, "--max-extracted-size", "1M", "--connections", connections)
    assert run_fetch(origin.url("/m"), *args) == 4
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "refused archive member 'b.bin'" in last
    assert "cap of 1000000 bytes (--max-extracted-size)" in last
    assert list(out.iterdir()) == []  # not even a.bin, which fitted
    assert run_fetch(origin.url("/m"), "-o", out, "--max-extracted-size", "1.2M") == 0


def test_a_rerun_with_the_same_source_and_digest_uses_no_network(
    origin: Origin, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archive = py_archive(TREE, "zst")
    origin.add("/m", archive)
    out = tmp_path / "out"
    args = (origin.url("/m"), "--sha256", sha256(archive), "-o", out)
    assert run_fetch(*args) == 0
    requests = len(origin.requests)
    origin.stop()
    assert run_fetch(*args) == 0
    assert len(origin.requests) == requests
    assert "already complete" in capsys.readouterr().err


def test_a_new_source_replaces_the_previous_model(origin: Origin, tmp_path: Path) -> None:
    first = py_archive({"v1/weights": b"old"}, "zst")
    second = py_archive({"v2/weights": b"new"}, "zst")
    origin.add("/v1", first)
    origin.add("/v2", second)
    out = tmp_path / "out"
    assert run_fetch(origin.url("/v1"), "-o", out) == 0
    assert run_fetch(origin.url("/v2"), "--sha256", sha256(second), "-o", out) == 0
    assert sorted(p.name for p in out.iterdir()) == [MARKER_NAME, "v2"]


def test_files_not_written_by_model_fetch_are_never_overwritten(
    origin: Origin, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    origin.add("/m", py_archive({"config.json": b"{}"}, "zst"))
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text("mine")
    assert run_fetch(origin.url("/m"), "-o", out) == 1
    assert (out / "config.json").read_text() == "mine"
    assert "not written by model-fetch" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["config.json"]


def test_a_dropped_connection_continues_from_the_byte_reached(
    origin: Origin, tmp_path: Path
) -> None:
    archive = py_archive(TREE, "none")
    origin.add("/m", archive, faults=Faults(drop_after=300_000, drop_times=2))
    out = tmp_path / "out"
    assert run_fetch(origin.url("/m"), "--sha256", sha256(archive), "-o", out, *FAST_RETRIES) == 0
    ranges = [r.headers.get("range") for r in origin.requests]
    assert ranges == [None, "bytes=300000-", "bytes=600000-"]
    assert origin.bytes_sent("/m") == len(archive)
    assert fetched_tree(out) == _expected(tmp_path)


def test_an_origin_that_ignores_range_is_read_past_what_was_already_had(
    origin: Origin, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archive = py_archive(TREE, "zst")
    origin.add("/m", archive, faults=Faults(ranges=False, drop_after=100_000))
    out = tmp_path / "out"
    assert run_fetch(origin.url("/m"), "--sha256", sha256(archive), "-o", out, *FAST_RETRIES) == 0
    assert [r.status for r in origin.requests] == [200, 200]
    assert "ignored the Range request" in capsys.readouterr().err
    assert fetched_tree(out) == _expected(tmp_path)


def test_a_body_shorter_than_its_content_length_is_retried(origin: Origin, tmp_path: Path) -> None:
    archive = py_archive(TREE, "gz")
    origin.add(
        "/m",
        archive,
        faults=Faults(drop_after=100_000, lie_content_length=len(archive), lie_times=1),
    )
    out = tmp_path / "out"
    assert run_fetch(origin.url("/m"), "--sha256", sha256(archive), "-o", out, *FAST_RETRIES) == 0
    ranges = [r.headers.get("range") for r in origin.requests]
    assert ranges[:2] == [None, "bytes=100000-"]
    assert fetched_tree(out) == _expected(tmp_path)


def test_a_content_length_larger_than_the_file_ends_in_416_with_everything_here(
    origin: Origin, tmp_path: Path
) -> None:
    archive = py_archive(TREE, "gz")
    origin.add("/m", archive, faults=Faults(lie_content_length=len(archive) + 5000, lie_times=1))
    out = tmp_path / "out"
    assert run_fetch(origin.url("/m"), "--sha256", sha256(archive), "-o", out, *FAST_RETRIES) == 0
    assert [r.status for r in origin.requests] == [200, 416]
    assert fetched_tree(out) == _expected(tmp_path)


def test_a_failing_origin_hands_over_to_the_mirror_at_the_byte_reached(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archive = py_archive(TREE, "none")
    with Origin() as primary, Origin() as mirror:
        primary.add("/m", archive, faults=Faults(drop_after=250_000, drop_times=None))
        mirror.add("/m", archive)
        out = tmp_path / "out"
        args = ("--mirror", mirror.url("/m"), "--sha256", sha256(archive), "--retries", "1")
        assert run_fetch(primary.url("/m"), *args, "-o", out, *FAST_RETRIES) == 0
        assert [r.headers.get("range") for r in primary.requests] == [None, "bytes=250000-"]
        assert [r.headers.get("range") for r in mirror.requests] == ["bytes=500000-"]
    assert "trying the next origin" in capsys.readouterr().err
    assert fetched_tree(out) == _expected(tmp_path)


def test_a_burst_of_5xx_is_retried_on_the_same_origin(origin: Origin, tmp_path: Path) -> None:
    archive = py_archive(TREE, "zst")
    origin.add("/m", archive, faults=Faults(statuses=[500, 502, 503]))
    assert run_fetch(origin.url("/m"), "-o", tmp_path / "out", *FAST_RETRIES) == 0
    assert [r.status for r in origin.requests] == [500, 502, 503, 200]


def test_retry_after_is_honoured_on_429(
    origin: Origin, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    origin.add("/m", py_archive(TREE, "zst"), faults=Faults(statuses=[429], retry_after="1"))
    started = time.monotonic()
    assert run_fetch(origin.url("/m"), "-o", tmp_path / "out", *FAST_RETRIES) == 0
    assert time.monotonic() - started >= 0.9  # FAST_RETRIES alone would wait 10 ms
    assert "HTTP 429 at byte 0; retry 1/5 in 1.0s" in capsys.readouterr().err
    assert [r.status for r in origin.requests] == [429, 200]


def test_a_404_is_final_for_that_origin_and_every_origin_is_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with Origin() as first, Origin() as second:
        first.add("/m", b"", faults=Faults(not_found=True))
        second.add("/m", b"x", faults=Faults(statuses=[503] * 10))
        code = run_fetch(
            first.url("/m"), "--mirror", second.url("/m"), "-o", tmp_path / "o",
            "--retries", "2", *FAST_RETRIES,
        )  # fmt: skip
        assert code == 5
        assert len(first.requests) == 1
        assert len(second.requests) == 3
        err = capsys.readouterr().err
        assert f"{first.url('/m')}: HTTP 404" in err
        assert f"{second.url('/m')}: HTTP 503 (after 3 attempts)" in err


def test_a_stalled_origin_is_abandoned_for_the_mirror(tmp_path: Path) -> None:
    archive = py_archive(TREE, "zst")
    with Origin() as slow, Origin() as mirror:
        slow.add("/m", archive, faults=Faults(drip_bytes_per_s=2000))
        mirror.add("/m", archive)
        code = run_fetch(
            slow.url("/m"), "--mirror", mirror.url("/m"), "-o", tmp_path / "o",
            "--retries", "0", "--low-speed-limit", "50K", "--low-speed-time", "0.5",
            *FAST_RETRIES,
        )  # fmt: skip
        assert code == 0
        assert len(mirror.requests) == 1


def test_an_origin_that_hangs_times_out_and_is_retried(origin: Origin, tmp_path: Path) -> None:
    archive = py_archive(TREE, "zst")
    origin.add("/m", archive, faults=Faults(stall_after=10_000, stall_times=1))
    args = ("-o", tmp_path / "o", "--retry-wait", "0.01", "--timeout", "0.5", "--connections", "1")
    assert run_fetch(origin.url("/m"), "--sha256", sha256(archive), *args) == 0
    assert [r.headers.get("range") for r in origin.requests] == [None, "bytes=10000-"]


@pytest.mark.parametrize("with_digest", [False, True])
def test_a_changed_etag_mid_run(
    origin: Origin, tmp_path: Path, capsys: pytest.CaptureFixture[str], with_digest: bool
) -> None:
    archive = py_archive(TREE, "none")
    origin.add("/m", archive, faults=Faults(drop_after=200_000, etag_changes_after=1))
    digest = ("--sha256", sha256(archive)) if with_digest else ()
    assert run_fetch(origin.url("/m"), *digest, "-o", tmp_path / "o", *FAST_RETRIES) == 0
    err = capsys.readouterr().err
    if with_digest:
        # The digest guards the result, so the new ETag alone does not void 200 kB.
        assert "starting over" not in err
        assert origin.requests[1].headers.get("range") == "bytes=200000-"
    else:
        assert "the ETag changed" in err
        assert "starting over from byte 0" in err
    assert fetched_tree(tmp_path / "o") == _expected(tmp_path)


def test_a_changed_length_starts_over_from_byte_0(
    origin: Origin, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = py_archive({"weights": b"a" * 400_000}, "none")
    new = py_archive({"weights": b"b" * 500_000}, "none")
    origin.add("/m", old, faults=Faults(drop_after=100_000))
    with Origin() as mirror:
        mirror.add("/m", new)
        code = run_fetch(
            origin.url("/m"), "--mirror", mirror.url("/m"), "-o", tmp_path / "o",
            "--retries", "0", *FAST_RETRIES,
        )  # fmt: skip
        assert code == 0
    err = capsys.readouterr().err
    assert "the length changed" in err
    assert "starting over from byte 0" in err
    # The fetch starts over from the top of the list: the source, answering again, defines
    # the model; a mirror that serves another file never wins by being asked last.
    assert (tmp_path / "o/weights").read_bytes() == b"a" * 400_000


def test_the_secret_is_sent_but_never_shown(
    origin: Origin, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    secret = "Bearer s3cr3t-t0ken-value"
    monkeypatch.setenv("MODEL_AUTH", secret)
    origin.add("/ok", py_archive(TREE, "zst"), faults=Faults(require_authorization=secret))
    origin.add("/denied", b"", faults=Faults(require_authorization="Bearer other"))
    assert run_fetch(origin.url("/ok"), "--auth-from", "env:MODEL_AUTH", "-o", tmp_path / "a") == 0
    assert origin.requests[0].headers.get("authorization") == secret
    code = run_fetch(
        origin.url("/denied?X-Amz-Signature=abcdef"), "--auth-from", "env:MODEL_AUTH",
        "-o", tmp_path / "b", "--log-format", "json",
    )  # fmt: skip
    assert code == 5
    output = capsys.readouterr()
    assert "s3cr3t" not in output.err + output.out
    assert "abcdef" not in output.err + output.out
    assert "X-Amz-Signature=%2A%2A%2A" in output.err


def test_auth_from_a_file(origin: Origin, tmp_path: Path) -> None:
    (tmp_path / "token").write_text("Bearer from-file\n")
    origin.add(
        "/m", py_archive(TREE, "zst"), faults=Faults(require_authorization="Bearer from-file")
    )
    out = tmp_path / "out"
    assert run_fetch(origin.url("/m"), "--auth-from", f"file:{tmp_path / 'token'}", "-o", out) == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--sha256", "abc"), "64 hexadecimal"),
        (("--auth-from", "env:NOT_SET_ANYWHERE"), "not set"),
        (("--auth-from", "vault:x"), "env:NAME or file:PATH"),
        (("--max-bandwidth", "fast"), "is not a size"),
        (("--format", "rar"), "unknown"),
        (("--mirror", "ftp://host/x"), "is not an http(s), s3 or gs URL"),
    ],
)
def test_usage_errors_exit_2_with_a_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: tuple[str, ...], message: str
) -> None:
    assert run_fetch("https://example.invalid/m", *args, "-o", tmp_path / "o") == 2
    assert message in capsys.readouterr().err.strip().splitlines()[-1]


def test_json_logs_are_one_object_per_line_with_progress(
    origin: Origin, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archive = py_archive(TREE, "zst")
    origin.add("/m", archive, faults=Faults(drip_bytes_per_s=len(archive) / 0.6))
    code = run_fetch(
        origin.url("/m"), "-o", tmp_path / "o", "--log-format", "json",
        "--progress-interval", "0.1",
    )  # fmt: skip
    assert code == 0
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    progress = [line for line in lines if line["msg"].startswith("progress:")]
    assert progress, lines
    assert all(line["total"] == len(archive) for line in progress)
    assert lines[-1]["msg"].startswith("done:")
    assert lines[-1]["sha256"] == sha256(archive)


def test_a_tar_without_end_blocks_but_cut_mid_member_is_corrupt(
    origin: Origin, tmp_path: Path
) -> None:
    archive = py_archive(TREE, "none")
    origin.add("/m", archive[: len(archive) // 2])
    assert run_fetch(origin.url("/m"), "-o", tmp_path / "o") == 4
    assert list((tmp_path / "o").iterdir()) == []


def test_archives_in_ustar_and_gnu_formats(origin: Origin, tmp_path: Path) -> None:
    for fmt in (tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT):
        archive = py_archive(TREE, "zst", format=fmt)
        origin.add(f"/m{fmt}", archive)
        out = tmp_path / f"out{fmt}"
        assert run_fetch(origin.url(f"/m{fmt}"), "-o", out) == 0
        assert fetched_tree(out) == _expected(tmp_path / str(fmt))


def test_a_commit_cut_short_between_renames_is_finished_by_the_next_run(
    origin: Origin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = py_archive(TREE, "zst")
    origin.add("/m", archive)
    out = tmp_path / "out"
    renames = 0
    real_rename = Path.rename

    def crash_after_two(self: Path, target: Path) -> Path:
        nonlocal renames
        renames += 1
        if renames > 2 and ".model-fetch" in str(self):
            raise KeyboardInterrupt  # stands in for kill -9 mid-commit
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", crash_after_two)
    args = (origin.url("/m"), "--sha256", sha256(archive), "-o", out)
    with pytest.raises(KeyboardInterrupt):
        run_fetch(*args)
    monkeypatch.setattr(Path, "rename", real_rename)
    assert not (out / MARKER_NAME).exists()
    requests = len(origin.requests)
    assert run_fetch(*args) == 0
    assert len(origin.requests) == requests  # finished from the journal, no download
    assert fetched_tree(out) == _expected(tmp_path)


@pytest.mark.parametrize(
    ("path", "args"),
    [
        ("/.model-fetch.json", ("--format", "none")),
        ("/.model-fetch", ("--format", "none")),
        ("/.model-fetch.json.zst", ()),  # the name once the compression's suffix is off
    ],
)
def test_a_single_file_named_like_the_fetchers_own_files_exits_2_naming_the_fix(
    origin: Origin,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    path: str,
    args: tuple[str, ...],
) -> None:
    body = b"not an archive " * 100
    origin.add(path, cli_compress(body, "zstd") if path.endswith(".zst") else body)
    out = tmp_path / "out"
    assert run_fetch(origin.url(path), *args, "-o", out) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "a name model-fetch keeps for its own files in DIR; serve it under another name" in last
    assert not (out / MARKER_NAME).exists()
