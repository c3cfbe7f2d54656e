"""The test origin and archive builders do what the fetcher's tests rely on them doing."""

from __future__ import annotations

import io
import socket
import tarfile
import time
from collections.abc import Iterator
from email.utils import formatdate
from pathlib import Path

import httpx
import pytest
import zstandard

from tests.support.archives import (
    Codec,
    Dir,
    File,
    Hardlink,
    Symlink,
    Tool,
    Tree,
    cli_archive,
    compress,
    make_tree,
    py_archive,
    tar_bytes,
    tree_snapshot,
    write_tree,
)
from tests.support.events import PATIENCE_S, wait_until
from tests.support.origin import Faults, Origin

DATA = bytes(range(256)) * 40  # 10240 bytes, every offset recognisable
PATH = "/model.bin"


@pytest.fixture
def origin() -> Iterator[Origin]:
    with Origin() as server:
        server.add(PATH, DATA)
        yield server


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=5.0) as c:
        yield c


def read_partial(client: httpx.Client, url: str) -> tuple[bytes, BaseException | None]:
    """Stream a GET; return the bytes received and the exception that ended it, if any."""
    got = bytearray()
    try:
        with client.stream("GET", url) as response:
            for chunk in response.iter_raw():
                got += chunk
    except httpx.HTTPError as exc:
        return bytes(got), exc
    return bytes(got), None


# plain serving


def test_get_serves_body_validators_and_keeps_the_connection_alive(
    origin: Origin, client: httpx.Client
) -> None:
    first = client.get(origin.url(PATH))
    second = client.get(origin.url(PATH))
    assert first.status_code == 200
    assert first.content == DATA
    assert first.headers["content-length"] == str(len(DATA))
    assert first.headers["accept-ranges"] == "bytes"
    assert first.headers["etag"].startswith('"')
    assert first.headers["etag"] == origin.etag(PATH)
    assert "GMT" in first.headers["last-modified"]
    assert second.content == DATA
    origin.wait_idle()
    records = origin.requests
    assert [r.connection for r in records] == [records[0].connection] * 2
    assert [(r.method, r.path, r.status, r.body_bytes) for r in records] == [
        ("GET", PATH, 200, len(DATA))
    ] * 2
    assert origin.bytes_sent(PATH) == origin.bytes_sent() == 2 * len(DATA)


def test_head_sends_headers_only(origin: Origin, client: httpx.Client) -> None:
    response = client.head(origin.url(PATH))
    assert response.status_code == 200
    assert response.headers["content-length"] == str(len(DATA))
    assert response.content == b""
    origin.wait_idle()
    assert origin.requests[0].method == "HEAD"
    assert origin.bytes_sent() == 0


def test_unknown_path_and_not_found_fault_answer_404(origin: Origin, client: httpx.Client) -> None:
    assert client.get(origin.url("/missing")).status_code == 404
    origin.set_faults(PATH, Faults(not_found=True))
    assert client.get(origin.url(PATH)).status_code == 404
    origin.set_faults(PATH, None)
    assert client.get(origin.url(PATH)).status_code == 200


def test_files_can_be_replaced_while_serving(origin: Origin, client: httpx.Client) -> None:
    old_tag = client.get(origin.url(PATH)).headers["etag"]
    origin.add(PATH, b"new bytes")
    response = client.get(origin.url(PATH))
    assert response.content == b"new bytes"
    assert response.headers["etag"] != old_tag
    origin.add(PATH, b"x", etag=None, last_modified=None)
    response = client.get(origin.url(PATH))
    assert "etag" not in response.headers
    assert "last-modified" not in response.headers
    origin.remove(PATH)
    assert client.get(origin.url(PATH)).status_code == 404


# ranges


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [
        ("bytes=0-9", 0, 10),
        ("bytes=100-", 100, len(DATA)),
        ("bytes=-5", len(DATA) - 5, len(DATA)),
        ("bytes=-99999", 0, len(DATA)),
        ("bytes=10000-99999", 10000, len(DATA)),
        ("BYTES = 7 - 7", 7, 8),
    ],
)
def test_satisfiable_range_gives_206(
    origin: Origin, client: httpx.Client, header: str, start: int, end: int
) -> None:
    response = client.get(origin.url(PATH), headers={"Range": header})
    assert response.status_code == 206
    assert response.content == DATA[start:end]
    assert response.headers["content-range"] == f"bytes {start}-{end - 1}/{len(DATA)}"
    origin.wait_idle()
    assert origin.requests[0].range == header
    assert origin.bytes_sent() == end - start


@pytest.mark.parametrize(
    "header", [f"bytes={len(DATA)}-", f"bytes={len(DATA) + 5}-{len(DATA) + 9}", "bytes=-0"]
)
def test_unsatisfiable_range_gives_416(origin: Origin, client: httpx.Client, header: str) -> None:
    response = client.get(origin.url(PATH), headers={"Range": header})
    assert response.status_code == 416
    assert response.headers["content-range"] == f"bytes */{len(DATA)}"


def test_range_on_empty_file_is_unsatisfiable(origin: Origin, client: httpx.Client) -> None:
    origin.add("/empty", b"")
    assert client.get(origin.url("/empty"), headers={"Range": "bytes=0-"}).status_code == 416
    assert client.get(origin.url("/empty")).content == b""


@pytest.mark.parametrize("header", ["bytes=0-1,5-6", "items=0-5", "bytes=abc", "bytes=9-2"])
def test_malformed_or_multi_range_is_ignored(
    origin: Origin, client: httpx.Client, header: str
) -> None:
    response = client.get(origin.url(PATH), headers={"Range": header})
    assert response.status_code == 200
    assert response.content == DATA


def test_ranges_disabled_serves_full_body_without_accept_ranges(
    origin: Origin, client: httpx.Client
) -> None:
    origin.set_faults(PATH, Faults(ranges=False))
    response = client.get(origin.url(PATH), headers={"Range": "bytes=100-"})
    assert response.status_code == 200
    assert response.content == DATA
    assert "accept-ranges" not in response.headers
    assert "content-range" not in response.headers


# conditionals


def test_if_range_with_current_etag_or_date_honours_range(
    origin: Origin, client: httpx.Client
) -> None:
    head = client.head(origin.url(PATH))
    for validator in (head.headers["etag"], head.headers["last-modified"]):
        response = client.get(
            origin.url(PATH), headers={"Range": "bytes=10-19", "If-Range": validator}
        )
        assert response.status_code == 206
        assert response.content == DATA[10:20]


@pytest.mark.parametrize(
    "validator",
    ['"stale"', "W/{etag}", formatdate(0, usegmt=True), "not a date"],
)
def test_if_range_mismatch_gives_full_200(
    origin: Origin, client: httpx.Client, validator: str
) -> None:
    etag = origin.etag(PATH)
    assert etag is not None
    response = client.get(
        origin.url(PATH),
        headers={"Range": "bytes=10-19", "If-Range": validator.format(etag=etag)},
    )
    assert response.status_code == 200
    assert response.content == DATA
    origin.wait_idle()
    assert origin.requests[0].if_range == validator.format(etag=etag)


def test_if_match(origin: Origin, client: httpx.Client) -> None:
    etag = origin.etag(PATH)
    assert etag is not None
    url = origin.url(PATH)
    ok = client.get(url, headers={"If-Match": f'"other", {etag}', "Range": "bytes=0-0"})
    assert ok.status_code == 206
    assert client.get(url, headers={"If-Match": "*"}).status_code == 200
    refused = client.get(url, headers={"If-Match": '"other"', "Range": "bytes=0-0"})
    assert refused.status_code == 412
    assert client.get(url, headers={"If-Match": f"W/{etag}"}).status_code == 412
    origin.wait_idle()
    assert origin.requests[-1].if_match == f"W/{etag}"


def test_etag_changes_after_n_requests(origin: Origin, client: httpx.Client) -> None:
    origin.set_faults(PATH, Faults(etag_changes_after=2))
    tags = [client.head(origin.url(PATH)).headers["etag"] for _ in range(4)]
    assert tags[0] == tags[1]
    assert len(set(tags)) == 3
    # A client resuming with the etag it saw first no longer gets a range.
    response = client.get(origin.url(PATH), headers={"Range": "bytes=5-", "If-Range": tags[0]})
    assert response.status_code == 200
    assert client.get(origin.url(PATH), headers={"If-Match": tags[0]}).status_code == 412


# faults


def test_statuses_queue_then_normal(origin: Origin, client: httpx.Client) -> None:
    origin.set_faults(PATH, Faults(statuses=[500, 503, 429, 200, 502], retry_after="2"))
    responses = [client.get(origin.url(PATH)) for _ in range(6)]
    assert [r.status_code for r in responses] == [500, 503, 429, 200, 502, 200]
    assert "retry-after" not in responses[0].headers
    assert responses[1].headers["retry-after"] == "2"
    assert responses[2].headers["retry-after"] == "2"
    assert responses[3].content == DATA
    origin.wait_idle()
    # Error answers kept the connection alive.
    assert len({r.connection for r in origin.requests}) == 1


def test_drop_after_closes_mid_body_then_behaves(origin: Origin, client: httpx.Client) -> None:
    origin.set_faults(PATH, Faults(drop_after=1000, drop_times=2))
    for _ in range(2):
        got, exc = read_partial(client, origin.url(PATH))
        assert isinstance(exc, httpx.RemoteProtocolError)
        assert got == DATA[:1000]
    got, exc = read_partial(client, origin.url(PATH))
    assert exc is None
    assert got == DATA
    origin.wait_idle()
    assert [(r.body_bytes, r.fault) for r in origin.requests] == [
        (1000, "drop"),
        (1000, "drop"),
        (len(DATA), None),
    ]


def test_drop_applies_to_ranged_responses_and_can_reset(
    origin: Origin, client: httpx.Client
) -> None:
    origin.set_faults(PATH, Faults(drop_after=10, drop_reset=True))
    with (
        pytest.raises(httpx.ReadError),
        client.stream("GET", origin.url(PATH), headers={"Range": "bytes=5000-"}) as response,
    ):
        assert response.status_code == 206
        response.read()
    assert client.get(origin.url(PATH), headers={"Range": "bytes=5000-"}).status_code == 206


def test_drip_sends_slowly(origin: Origin, client: httpx.Client) -> None:
    origin.set_faults(PATH, Faults(drip_bytes_per_s=20_000))
    started = time.monotonic()
    response = client.get(origin.url(PATH), headers={"Range": "bytes=0-3999"})
    elapsed = time.monotonic() - started
    assert response.content == DATA[:4000]
    assert 0.15 <= elapsed < 2.0


def test_drip_triggers_a_read_timeout(origin: Origin) -> None:
    origin.set_faults(PATH, Faults(drip_bytes_per_s=2))  # one byte every 0.5 s
    with httpx.Client(timeout=httpx.Timeout(5.0, read=0.2)) as slow:
        started = time.monotonic()
        with pytest.raises(httpx.ReadTimeout), slow.stream("GET", origin.url(PATH)) as r:
            r.read()
        assert time.monotonic() - started < 2.0


def test_first_byte_delay(origin: Origin, client: httpx.Client) -> None:
    origin.set_faults(PATH, Faults(first_byte_delay=0.3))
    started = time.monotonic()
    assert client.get(origin.url(PATH)).status_code == 200
    assert time.monotonic() - started >= 0.3


def _read_response_start(sock: socket.socket, body_bytes: int) -> tuple[bytes, bytes]:
    """The head of a response and its first body_bytes bytes, however slowly they come."""
    data = b""
    while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < body_bytes:
        chunk = sock.recv(65536)
        assert chunk, f"the origin closed after {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return head, body


def test_stall_after_hangs_until_the_client_gives_up(origin: Origin) -> None:
    origin.set_faults(PATH, Faults(stall_after=300, stall_times=1))
    with socket.create_connection(("127.0.0.1", origin.port), timeout=PATIENCE_S) as sock:
        sock.sendall(b"GET /model.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        head, body = _read_response_start(sock, 300)  # patient: a busy origin is not a stall
        assert head.startswith(b"HTTP/1.1 200")
        assert body == DATA[:300]
        # Everything the origin wrote is here; a stalled origin writes nothing more and does not
        # close, where a broken one would send the rest (data) or end the response (b"").
        sock.settimeout(0.3)
        with pytest.raises(TimeoutError):
            sock.recv(65536)
        assert [(r.body_bytes, r.fault, r.done) for r in origin.requests] == [(300, "stall", False)]
    # The client gave up and closed its side; the origin notices and ends the stalled response.
    origin.wait_idle(timeout=PATIENCE_S)
    with httpx.Client(timeout=PATIENCE_S) as patient:
        assert patient.get(origin.url(PATH)).content == DATA
    assert [(r.body_bytes, r.fault) for r in origin.requests] == [(300, "stall"), (len(DATA), None)]


def test_stop_is_prompt_with_stalled_and_idle_connections() -> None:
    server = Origin().start()
    port = server.port
    server.add(PATH, DATA, faults=Faults(stall_after=1))
    stalled = socket.create_connection(("127.0.0.1", port))
    idle = socket.create_connection(("127.0.0.1", port))
    try:
        stalled.sendall(b"GET /model.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        idle.sendall(b"HEAD /model.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        assert stalled.recv(4096).startswith(b"HTTP/1.1 200")
        assert idle.recv(4096).startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        server.stop()
        assert time.monotonic() - started < 1.5
        stalled.settimeout(2.0)
        tail = stalled.recv(65536)
        while tail:
            tail = stalled.recv(65536)
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1.0)
    finally:
        stalled.close()
        idle.close()


@pytest.mark.parametrize("announced", [len(DATA) + 500, 100])
def test_lie_content_length(origin: Origin, client: httpx.Client, announced: int) -> None:
    origin.set_faults(PATH, Faults(lie_content_length=announced, lie_times=1))
    got, exc = read_partial(client, origin.url(PATH))
    if announced > len(DATA):
        assert isinstance(exc, httpx.RemoteProtocolError)
        assert got == DATA
    else:  # the client believes the header and gets a short body
        assert exc is None
        assert got == DATA[:announced]
    with httpx.Client(timeout=5.0) as fresh:  # the old connection is closed behind its back
        assert fresh.get(origin.url(PATH)).content == DATA
    origin.wait_idle()
    assert [r.fault for r in origin.requests] == ["lie", None]
    assert origin.requests[0].body_bytes == len(DATA)


def test_authorization_is_logged_and_can_be_required(origin: Origin, client: httpx.Client) -> None:
    origin.set_faults(PATH, Faults(require_authorization="Bearer s3cret"))
    assert client.get(origin.url(PATH)).status_code == 401
    ok = client.get(origin.url(PATH), headers={"Authorization": "Bearer s3cret"})
    assert ok.content == DATA
    origin.wait_idle()
    first, second = origin.requests
    assert not first.has_authorization
    assert first.authorization is None
    assert second.has_authorization
    assert second.authorization == "Bearer s3cret"


def test_redirect(client: httpx.Client) -> None:
    with Origin() as mirror, Origin() as front:
        mirror.add(PATH, DATA)
        front.add(PATH, b"", faults=Faults(redirect_to=mirror.url(PATH)))
        response = client.get(front.url(PATH), follow_redirects=True)
        assert response.content == DATA
        assert [r.status for r in front.requests] == [302]


def test_client_disconnects_print_nothing(
    origin: Origin, capfd: pytest.CaptureFixture[str]
) -> None:
    big = DATA * 2000  # 20 MB, far more than the socket buffers hold
    origin.add("/big", big)
    for _ in range(3):
        with httpx.Client(timeout=5.0) as c, c.stream("GET", origin.url("/big")) as response:
            next(response.iter_raw())
    origin.wait_idle(timeout=5.0)
    assert origin.errors == []
    assert all(0 < r.body_bytes < len(big) for r in origin.requests)
    assert capfd.readouterr().err == ""


def test_parallel_clients_are_served_concurrently(origin: Origin) -> None:
    # Every response stalls after one byte: one after the other, the origin would never have
    # more than one in flight; concurrently, all four hang at once.
    origin.set_faults(PATH, Faults(stall_after=1))
    clients = [socket.create_connection(("127.0.0.1", origin.port)) for _ in range(4)]
    try:
        for sock in clients:
            sock.sendall(b"GET /model.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        wait_until(
            lambda: (
                [(r.status, r.body_bytes, r.done) for r in origin.requests] == [(200, 1, False)] * 4
            ),
            what="four responses in flight at once",
        )
    finally:
        for sock in clients:
            sock.close()
    assert len({r.connection for r in origin.requests}) == 4


def test_caller_faults_are_copied(origin: Origin, client: httpx.Client) -> None:
    faults = Faults(statuses=[503])
    origin.set_faults(PATH, faults)
    assert client.get(origin.url(PATH)).status_code == 503
    assert faults.statuses == [503]


# archives


SMALL_TREE: Tree = {
    "weights/a.bin": b"A" * 3000,
    "weights/nested/b.bin": bytes(range(256)),
    "bin/run.sh": File(b"#!/bin/sh\necho hi\n", 0o755),
    "latest": Symlink("weights/a.bin"),
    "weights/a-again.bin": Hardlink("weights/a.bin"),
    "cache": Dir(0o700),
    "empty.txt": b"",
}


def extract(archive: bytes, dest: Path) -> Path:
    """Reference extraction (not the fetcher): zstd across frames, others via tarfile."""
    if archive[:4] in (b"\x28\xb5\x2f\xfd", b"\x50\x2a\x4d\x18"):
        reader = zstandard.ZstdDecompressor().stream_reader(
            io.BytesIO(archive), read_across_frames=True
        )
        archive = reader.read()
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:*") as tar:
        tar.extractall(dest, filter="tar")
    return dest


def test_make_tree_is_deterministic_sized_and_compressible() -> None:
    tree = make_tree(seed=7, n_files=40, total_bytes=2_000_000)
    assert tree == make_tree(seed=7, n_files=40, total_bytes=2_000_000)
    assert tree != make_tree(seed=8, n_files=40, total_bytes=2_000_000)
    sizes = [len(v) for v in tree.values() if isinstance(v, bytes)]
    assert len(sizes) == 40
    assert sum(sizes) == 2_000_000
    assert 0 in sizes
    assert max(sizes) > 10 * (sum(sizes) / len(sizes)) / 4  # varied, not uniform
    packed = len(compress(tar_bytes(tree), "zst"))
    assert 1.5 < 2_000_000 / packed < 10


@pytest.mark.parametrize("codec", ["zst", "gz", "xz", "bz2", "none"])
def test_py_archives_round_trip(tmp_path: Path, codec: Codec) -> None:
    expected = tree_snapshot(write_tree(SMALL_TREE, tmp_path / "src"))
    archive = py_archive(SMALL_TREE, codec, parts=3)
    assert tree_snapshot(extract(archive, tmp_path / "out")) == expected


def test_multi_part_archives_really_have_several_frames() -> None:
    raw = tar_bytes(make_tree(1, 10, 300_000))
    zst = compress(raw, "zst", parts=4)
    assert zst.count(b"\x28\xb5\x2f\xfd") >= 4
    single = zstandard.ZstdDecompressor().decompressobj()
    assert len(single.decompress(zst)) < len(raw)  # one frame is not the whole archive
    skippable = compress(raw, "zst", parts=4, skippable=True)
    assert skippable.startswith(b"\x50\x2a\x4d\x18")
    gz = compress(raw, "gz", parts=3)
    assert gz.count(b"\x1f\x8b\x08") >= 3


@pytest.mark.parametrize("tool", ["zstd", "pzstd", "gzip", "xz", "bzip2", "none"])
def test_cli_archives_round_trip(tmp_path: Path, tool: Tool) -> None:
    archive = cli_archive(SMALL_TREE, tool, tmp_path / "build", dot_prefix=tool == "zstd")
    expected = tree_snapshot(tmp_path / "build" / "src")
    assert tree_snapshot(extract(archive, tmp_path / "out")) == expected
    assert expected["latest"] == ("symlink", 0, "weights/a.bin")
    assert expected["bin/run.sh"] == ("file", 0o755, b"#!/bin/sh\necho hi\n")
    assert expected["cache"] == ("dir", 0o700, b"")


def test_tree_snapshot_sees_content_and_mode_changes(tmp_path: Path) -> None:
    root = write_tree(SMALL_TREE, tmp_path / "t")
    before = tree_snapshot(root)
    (root / "empty.txt").write_bytes(b"x")
    assert tree_snapshot(root) != before
    (root / "empty.txt").write_bytes(b"")
    assert tree_snapshot(root) == before
    (root / "bin" / "run.sh").chmod(0o700)
    assert tree_snapshot(root)["bin/run.sh"][1] == 0o700
