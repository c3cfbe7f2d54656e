"""From a request to a verified model directory: lock, marker, resume, run, verify, commit."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace

import httpx

from fetcher.commit import (
    commit,
    finish_interrupted_commit,
    finish_interrupted_removal,
    remove_previous,
)
from fetcher.download import download
from fetcher.errors import ChecksumMismatch, CorruptArchive, FetchError, UnsafeArchive
from fetcher.pipeline import Stats, StopRequest
from fetcher.progress import Progress
from fetcher.request import FetchRequest
from fetcher.resume import discard_state, start_afresh, usable_checkpoint
from fetcher.sources import RangesIgnored, SourceChanged, SourceStats
from fetcher.state.checkpoint import Checkpoint, StateError
from fetcher.state.lock import DirectoryLock
from fetcher.state.marker import Marker, read_marker, url_fingerprint
from fetcher.units import human_bytes
from fetcher.urls import redact

log = logging.getLogger("model-fetch")

_SOURCE_CHANGES_TOLERATED = 2


@dataclass
class FetchResult:
    marker: Marker
    already_complete: bool
    requests: int = 0
    origin: str = ""  # the origin that served the last bytes, as logs show it
    fetched_bytes: int = 0  # received by this run
    refetched_bytes: int = 0  # received more than once over every run of this fetch
    connections: int = 1
    window_bytes: int = 0  # of fetched_bytes, those that arrived ahead of the decoder


def fetch(
    request: FetchRequest,
    *,
    stop: StopRequest,
    progress: Progress,
    transport: httpx.BaseTransport | None = None,
) -> FetchResult:
    """Fetch the model the request names into request.output, or find it there already.

    transport replaces the network (tests hand in httpx.MockTransport).
    """
    output = request.output
    output.mkdir(parents=True, exist_ok=True)
    lock = DirectoryLock(output)
    lock.acquire(wait=request.lock_wait, stop=stop.event)
    try:
        stop.check()
        return _fetch_locked(request, stop, progress, transport)
    finally:
        lock.release()


def _fetch_locked(
    request: FetchRequest,
    stop: StopRequest,
    progress: Progress,
    transport: httpx.BaseTransport | None,
) -> FetchResult:
    output = request.output
    if finish_interrupted_commit(output):
        discard_state(request)
    finish_interrupted_removal(output)
    previous = read_marker(output)
    if previous and previous.satisfies(request.url, request.sha256):
        log.info(
            "already complete: %s (sha256 %s, %d files); nothing to fetch",
            previous.source, previous.sha256, previous.files,
        )  # fmt: skip
        return FetchResult(previous, already_complete=True)
    if previous:
        log.info("replacing %s (sha256 %s) with the new source", previous.source, previous.sha256)
        remove_previous(output, previous)

    started = time.monotonic()
    log.info(
        "fetching %s%s into %s",
        redact(request.url),
        f" (+{len(request.mirrors)} mirror(s))" if request.mirrors else "",
        output,
    )
    try:
        stats, requests, fetched_here, before = _download_until_stable(
            request, stop, progress, transport
        )
    except (ChecksumMismatch, UnsafeArchive, CorruptArchive):
        discard_state(request)  # starting over is the only cure; nothing half-made stays
        raise

    elapsed = max(time.monotonic() - started, 1e-3)
    marker = Marker(
        source=redact(request.url),
        source_fingerprint=url_fingerprint(request.url),
        sha256=stats.digest,
        sha256_expected=request.sha256 is not None,
        bytes=stats.bytes,
        extracted_bytes=stats.extracted_bytes,
        files=stats.files,
        entries=[],
        duration_seconds=round(elapsed, 3),
        format=stats.format,
        completed_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )
    try:
        commit(output, marker)
    except FetchError:
        discard_state(request)
        raise
    discard_state(request)  # not on a crash in the middle: the next run finishes from the journal
    log.info(
        "done: %d files, %s extracted from %s of %s in %.1fs (%.1f MB/s fetched in this run); "
        "sha256 %s %s",
        marker.files,
        human_bytes(marker.extracted_bytes),
        human_bytes(marker.bytes),
        marker.format,
        elapsed,
        fetched_here / elapsed / 1e6,  # after a resume, what this run fetched, not the archive
        stats.digest,
        "verified" if request.sha256 else "(not checked: no --sha256 given)",
        extra={"fields": {"files": marker.files, "bytes": marker.bytes, "sha256": stats.digest}},
    )
    return FetchResult(
        marker,
        already_complete=False,
        requests=requests,
        origin=stats.origin,
        fetched_bytes=fetched_here,
        refetched_bytes=max(0, before + fetched_here - marker.bytes),
        connections=stats.connections,
        window_bytes=stats.window_bytes,
    )


def _download_until_stable(
    request: FetchRequest,
    stop: StopRequest,
    progress: Progress,
    transport: httpx.BaseTransport | None,
) -> tuple[Stats, int, int, int]:
    """Download, starting over when an origin starts serving another file mid-way, and going
    on over one connection when the origins answer ranges with the whole file.

    Returns the stats, the requests made and bytes received by this run, and the bytes
    earlier runs had received (from the checkpoint this one resumed).
    """
    requests = fetched = before = 0
    changes = attempts = 0
    while True:
        resume = usable_checkpoint(request) if changes == 0 else None
        if resume is not None and attempts == 0:
            before = resume.fetched_bytes
        attempts += 1
        stats = SourceStats()
        try:
            result = _download_resuming(
                request,
                resume=resume,
                stop=stop,
                progress=progress,
                transport=transport,
                stats=stats,
            )
        except SourceChanged as change:
            if changes == _SOURCE_CHANGES_TOLERATED:
                discard_state(request)
                raise FetchError(
                    f"the source changed {changes + 1} times while being fetched ({change})",
                    "publish the artifact under a new URL instead of overwriting it",
                ) from None
            log.warning(
                "the source changed while being fetched (%s); starting over from byte 0", change
            )
            discard_state(request)
            changes += 1
            continue
        except RangesIgnored as ignored:
            if request.connections == 1:
                raise AssertionError("ranges were ignored on a single stream") from None
            # The probe's one byte came as a range, the ranges themselves did not: what the
            # checkpoint kept stays, and one stream (which skips what it had) brings the rest.
            log.warning("%s; going on over one connection", ignored)
            request = replace(request, connections=1, grow_connections=False)
            continue
        finally:
            requests += stats.requests
            fetched += stats.bytes_received
        return result, requests, fetched, before


def _download_resuming(
    request: FetchRequest,
    *,
    resume: Checkpoint | None,
    stop: StopRequest,
    progress: Progress,
    transport: httpx.BaseTransport | None,
    stats: SourceStats,
) -> Stats:
    """Download, from the checkpoint if there is one, and check the digest.

    A resumed run whose stream then fails to decode or to verify starts over once from byte
    0: a checkpoint that passed every check can still be wrong in a way only the stream
    shows, and a fresh run tells that apart from an archive that is damaged itself.
    """
    request.state_dir.mkdir(parents=True, exist_ok=True)
    try:
        return _verified(
            request,
            download(
                request, resume=resume, stop=stop, progress=progress, transport=transport,
                stats=stats,
            ),
        )  # fmt: skip
    except StateError as error:
        if resume is None:
            raise AssertionError(f"a fresh fetch refused its own state: {error}") from None
        # The stages refused the checkpoint: it does not match the disk or the request.
        log.warning("the checkpoint cannot be resumed (%s); starting from byte 0", error)
    except (ChecksumMismatch, UnsafeArchive, CorruptArchive) as error:
        if resume is None:
            raise
        log.warning(
            "after resuming from byte %d: %s; starting once more from byte 0, to tell a "
            "damaged checkpoint from a damaged archive",
            resume.position, error.line(),
        )  # fmt: skip
    start_afresh(request)
    return _verified(
        request,
        download(
            request, resume=None, stop=stop, progress=progress, transport=transport, stats=stats
        ),
    )


def _verified(request: FetchRequest, stats: Stats) -> Stats:
    if request.sha256 and stats.digest != request.sha256:
        raise ChecksumMismatch(request.sha256, stats.digest, stats.bytes)
    return stats
