"""pipeline.run over the in-memory source, and fetch() over an httpx transport: no sockets."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import httpx
import pytest

from fetcher.fetch import fetch
from fetcher.formats import Layout
from fetcher.pipeline import StopRequest, run
from fetcher.progress import Progress
from fetcher.request import FetchRequest
from fetcher.sources import SourceStats
from fetcher.sources.memory import MemorySource
from fetcher.stages.chain import Stages
from fetcher.stages.digest import ResumableSha256
from fetcher.state.checkpoint import CHECKPOINT_NAME, Checkpoint, RequestIdentity, decode
from fetcher.state.checkpointer import Checkpointer
from tests.support.archives import fetched_tree, make_tree, py_archive, tree_snapshot, write_tree

TREE = make_tree(seed=3, n_files=30, total_bytes=3_000_000)
# Frames of ~100 KB of input: many boundaries, most of them inside the chunks fed.
MULTI_FRAME = py_archive(TREE, "zst", parts=30)


def _stages(tree: Path) -> Stages:
    return Stages(
        tree, compression=None, layout=Layout.DETECT, file_name="model", max_extracted=10**9
    )


def _run(archive: bytes, root: Path, *, chunk_size: int, interval: float) -> Checkpointer:
    stages = _stages(root / "tree")
    checkpointer = Checkpointer(
        root / CHECKPOINT_NAME,
        Checkpoint(RequestIdentity("memory", None, "auto")),
        interval=interval,
        every_bytes=1 << 40,
        flush=lambda: None,
    )
    source = MemorySource(archive, chunk_size=chunk_size)
    stats = run(
        source,
        stages,
        checkpointer,
        StopRequest(),
        Progress(bar=False, interval=3600),
        stats=source.stats,
        halt=threading.Event(),
        window_size=1 << 20,
        max_download=1 << 40,
    )
    assert stats.digest == hashlib.sha256(archive).hexdigest()
    assert stats.bytes == len(archive)
    return checkpointer


@pytest.mark.parametrize("chunk_size", [1, 4096, 65_537, 1 << 20, 1 << 24])
def test_the_tree_is_the_same_however_the_stream_is_cut(tmp_path: Path, chunk_size: int) -> None:
    archive = MULTI_FRAME if chunk_size > 1 else py_archive(make_tree(5, 4, 20_000), "zst", parts=3)
    tree = TREE if chunk_size > 1 else make_tree(5, 4, 20_000)
    _run(archive, tmp_path, chunk_size=chunk_size, interval=3600)
    assert tree_snapshot(tmp_path / "tree") == tree_snapshot(write_tree(tree, tmp_path / "want"))


def test_every_due_restorable_point_is_saved_even_while_a_save_is_being_written(
    tmp_path: Path,
) -> None:
    # Interval 0: a restore save is due at every restorable point. Before the fix, a save
    # asked for while the previous one was being written was declined, and a progress save
    # at a chunk end took the slot meant for the next frame boundary.
    checkpointer = _run(MULTI_FRAME, tmp_path, chunk_size=1 << 20, interval=0.0)
    frames = 30
    assert checkpointer.restore_saves >= frames
    saved = decode((tmp_path / CHECKPOINT_NAME).read_bytes())
    assert saved.restore is not None
    assert saved.restore.position == len(MULTI_FRAME)  # the last boundary is the end


def test_fetch_runs_over_an_injected_transport(tmp_path: Path) -> None:
    archive = py_archive(TREE, "gz", parts=3)
    requests: list[httpx.Request] = []

    def origin(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        pieces = (archive[at : at + 65536] for at in range(0, len(archive), 65536))
        # A generator, so that the body streams (bytes would be read in at once).
        return httpx.Response(200, content=pieces, headers={"Content-Length": str(len(archive))})

    request = FetchRequest(
        url="https://models.example/m.tar.gz",
        output=tmp_path / "out",
        sha256=hashlib.sha256(archive).hexdigest(),
        connections=1,
        grow_connections=False,
    )
    result = fetch(
        request,
        stop=StopRequest(),
        progress=Progress(bar=False, interval=3600),
        transport=httpx.MockTransport(origin),
    )
    assert result.marker.files == len(TREE)
    assert [str(r.url) for r in requests] == ["https://models.example/m.tar.gz"]
    snapshot = fetched_tree(tmp_path / "out")
    assert snapshot == tree_snapshot(write_tree(TREE, tmp_path / "want"))


def test_memory_source_counts_what_it_serves() -> None:
    source = MemorySource(b"x" * 10, start=3, chunk_size=4)
    assert b"".join(source.chunks()) == b"x" * 7
    assert source.stats.bytes_received == 7
    assert isinstance(source.stats, SourceStats)


def test_frame_ends_reported_late_carry_the_digest_at_the_frame_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Frames decoded ahead on other threads are reported once their output is out, often
    # while a later chunk is being fed: the digest state saved must still be that of the
    # bytes up to the frame's end, not of the chunk being fed.
    monkeypatch.setattr("fetcher.stages.zstd_parallel.available_cpus", lambda: 2)
    stages = _stages(tmp_path / "tree")
    points: list[tuple[int, int, bytes]] = []  # (position, chunk start then, digest state)
    fed_from = 0
    stages.on_restorable = lambda position: points.append(
        (position, fed_from, stages.restore_point(0)[0].sha256_state)
    )
    hasher = ResumableSha256()
    chunk = 200_000
    for fed_from in range(0, len(MULTI_FRAME), chunk):
        piece = MULTI_FRAME[fed_from : fed_from + chunk]
        stages.feed(piece, hasher.copy())
        hasher.update(piece)
    stages.finish()
    late = [p for p in points if p[0] < p[1]]
    assert late, "no frame end was reported after a later chunk was fed"
    assert len({p[0] for p in points}) >= 25
    for position, _, state in points:
        resumed = ResumableSha256.from_state(state)
        assert resumed.bytes_hashed == position
        assert resumed.hexdigest() == hashlib.sha256(MULTI_FRAME[:position]).hexdigest()
    assert tree_snapshot(tmp_path / "tree") == tree_snapshot(write_tree(TREE, tmp_path / "want"))
