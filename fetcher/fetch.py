"""From a request to a verified model directory: lock, marker, resume, run, verify, commit."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import httpx

from fetcher.commit import (
    commit,
    finish_interrupted_commit,
    finish_interrupted_removal,
    remove_previous,
    sync_directory_tree,
)
from fetcher.errors import ChecksumMismatch, CorruptArchive, FetchError, UnsafeArchive
from fetcher.http.client import make_client
from fetcher.http.exchange import Identity
from fetcher.http.ratelimit import RateLimiter, TokenBucket, Unlimited
from fetcher.http.stores import Target, resolve
from fetcher.pipeline import Stats, StopRequest, run
from fetcher.progress import Progress
from fetcher.request import FetchRequest
from fetcher.sources import Source, SourceChanged, SourceStats, Window
from fetcher.sources.growing import GrowingDownload
from fetcher.sources.partfile import PartFile
from fetcher.sources.probe import Probe, probe
from fetcher.sources.ranged import ParallelDownload
from fetcher.sources.ranges import RangeSet
from fetcher.sources.stream import MirroredStream
from fetcher.stages.chain import Stages
from fetcher.state.checkpoint import CHECKPOINT_NAME, Checkpoint, StateError, load_checkpoint
from fetcher.state.checkpointer import Checkpointer
from fetcher.state.files import remove_tree
from fetcher.state.lock import DirectoryLock
from fetcher.state.marker import Marker, read_marker, url_fingerprint
from fetcher.units import human_bytes
from fetcher.urls import basename, redact

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
        _discard(request)
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
        _discard(request)  # starting over is the only cure; nothing half-made stays
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
        _discard(request)
        raise
    _discard(request)  # not on a crash in the middle: the next run finishes from the journal
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
    )


def _usable_checkpoint(request: FetchRequest) -> Checkpoint | None:
    """The checkpoint this request can carry on from; anything else is set aside, with why."""
    checkpoint, why = load_checkpoint(request.state_dir / CHECKPOINT_NAME)
    leftovers = request.staging.exists()
    if checkpoint is not None and checkpoint.request != request.identity():
        why = "the checkpoint was taken for another source, digest or format"
        checkpoint = None
    if checkpoint is not None and (checkpoint.position or checkpoint.completed) and not leftovers:
        why = "the extracted files the checkpoint describes are gone"
        checkpoint = None
    if checkpoint is not None and checkpoint.length is None and checkpoint.position:
        why = "the checkpoint does not say which file it was taken of"
        checkpoint = None
    if checkpoint is None:
        if leftovers or why != "no checkpoint":
            log.info("%s; removing the unfinished tree and starting from byte 0", why)
        _discard(request)
        return None
    restore = checkpoint.restore
    log.info(
        "resuming from a checkpoint: byte %d of %s, %d files extracted%s",
        checkpoint.position,
        checkpoint.length if checkpoint.length is not None else "?",
        restore.tree.files_written if restore else 0,
        f", {len(checkpoint.completed)} more complete on disk" if checkpoint.completed else "",
    )
    if checkpoint.length is not None:
        held = sum(end - max(start, checkpoint.position) for start, end in checkpoint.window)
        missing = checkpoint.length - checkpoint.position - held
        if restore is None:
            log.info(
                "this stream can only restart at byte 0 (%s): re-fetching %d bytes, reusing %d "
                "held in the download window; the %d files already complete are read past, "
                "not written again",
                "no frame or member boundary had been passed when it was written",
                missing, held, len(checkpoint.completed),
            )  # fmt: skip
        else:
            log.info(
                "re-fetching %d bytes from byte %d, reusing %d held in the download window",
                missing, checkpoint.position, held,
            )  # fmt: skip
    return checkpoint


def _download_until_stable(
    request: FetchRequest,
    stop: StopRequest,
    progress: Progress,
    transport: httpx.BaseTransport | None,
) -> tuple[Stats, int, int, int]:
    """Download, starting over when an origin starts serving another file mid-way.

    Returns the stats, the requests made and bytes received by this run, and the bytes
    earlier runs had received (from the checkpoint this one resumed).
    """
    requests = fetched = before = 0
    for changes in range(_SOURCE_CHANGES_TOLERATED + 1):
        resume = _usable_checkpoint(request) if changes == 0 else None
        if resume is not None:
            before = resume.fetched_bytes
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
                _discard(request)
                raise FetchError(
                    f"the source changed {changes + 1} times while being fetched ({change})",
                    "publish the artifact under a new URL instead of overwriting it",
                ) from None
            log.warning(
                "the source changed while being fetched (%s); starting over from byte 0", change
            )
            _discard(request)
            continue
        finally:
            requests += stats.requests
            fetched += stats.bytes_received
        return result, requests, fetched, before
    raise AssertionError("unreachable")


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
            _download(
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
    _discard(request)
    request.state_dir.mkdir(parents=True, exist_ok=True)
    return _verified(
        request,
        _download(
            request, resume=None, stop=stop, progress=progress, transport=transport, stats=stats
        ),
    )


def _verified(request: FetchRequest, stats: Stats) -> Stats:
    if request.sha256 and stats.digest != request.sha256:
        raise ChecksumMismatch(request.sha256, stats.digest, stats.bytes)
    return stats


def _download(
    request: FetchRequest,
    *,
    resume: Checkpoint | None,
    stop: StopRequest,
    progress: Progress,
    transport: httpx.BaseTransport | None,
    stats: SourceStats,
) -> Stats:
    limiter: RateLimiter = (
        TokenBucket(request.max_bandwidth) if request.max_bandwidth else Unlimited()
    )
    targets = [
        resolve(url, s3_endpoint=request.s3_endpoint, s3_region=request.s3_region)
        for url in request.urls
    ]
    for target in targets:
        if target.store:
            log.info(
                "%s: %s credentials%s",
                target.shown, target.credentials,
                f", region {target.region}" if target.region else "",
            )  # fmt: skip
    with _client(request, transport) as client:
        probed = (
            probe(targets, client, request.retry, stop.event) if request.connections > 1 else None
        )
        if resume and probed:
            known = Identity(resume.length, resume.etag, resume.last_modified)
            # Another length is another file, whichever origin answered. So are other validators,
            # except a mirror's when a digest is given: its server may label the same bytes
            # differently, and the digest settles that at the end (as on failover).
            compare = probed.origin == 0 or not request.sha256
            same, why = known.same_file(probed.identity, compare_validators=compare)
            if not same:
                log.info("the source changed since the checkpoint (%s); starting over", why)
                _discard(request)
                request.state_dir.mkdir(parents=True, exist_ok=True)
                resume = None
        checkpoint = resume or Checkpoint(request=request.identity())
        stages = Stages(
            request.staging,
            compression=request.compression,
            layout=request.layout,
            file_name=basename(request.url),
            max_extracted=request.max_extracted,
            resume=checkpoint.restore,
            already_complete=dict(checkpoint.completed),
        )
        # The sources stop when the decoder is done with them, not at the signal itself.
        halt = threading.Event()
        source = _source(
            request,
            targets=targets,
            client=client,
            limiter=limiter,
            halt=halt,
            checkpoint=checkpoint,
            probed=probed,
            stats=stats,
        )

        def flush() -> None:
            sync_directory_tree(request.output)
            if isinstance(source, Window):
                source.sync()  # the part file may live on another volume (--workdir)

        checkpointer = Checkpointer(
            request.state_dir / CHECKPOINT_NAME,
            checkpoint,
            interval=request.checkpoint_interval,
            every_bytes=max(request.max_disk_buffer // 4, 1 << 20),
            flush=flush,
        )
        try:
            return run(
                source,
                stages,
                checkpointer,
                stop,
                progress,
                stats=stats,
                halt=halt,
                window_size=request.max_disk_buffer,
                max_download=max_download(request.max_extracted),
            )
        finally:
            progress.close()
            source.close()


def _source(
    request: FetchRequest,
    *,
    targets: list[Target],
    client: httpx.Client,
    limiter: RateLimiter,
    halt: threading.Event,
    checkpoint: Checkpoint,
    probed: Probe | None,
    stats: SourceStats,
) -> Source:
    resumed = checkpoint.length is not None

    def single_stream() -> MirroredStream:
        known = Identity(checkpoint.length, checkpoint.etag, checkpoint.last_modified)
        return MirroredStream(
            targets,
            client,
            request.retry,
            limiter,
            halt,
            trust_digest=bool(request.sha256),
            start=checkpoint.position,
            identity=known if resumed else None,
            stats=stats,
        )

    if probed is None or not probed.ranges or not probed.identity.length:
        if probed is not None and not probed.ranges:
            log.info("the origin does not honour Range requests: fetching over one connection")
        return single_stream()
    length = probed.identity.length
    if length > max_download(request.max_extracted):
        raise UnsafeArchive(
            "the download",
            f"the source announces {length} bytes, more than --max-extracted-size allows for "
            "an archive",
        )
    chunk = min(request.chunk_size, max(request.max_disk_buffer // request.connections, 1 << 18))
    if chunk < request.chunk_size:
        log.info(
            "ranges of %s, so %d connections fit in the %s window",
            human_bytes(chunk), request.connections, human_bytes(request.max_disk_buffer),
        )  # fmt: skip
    identity, origin = probed.identity, probed.origin

    def parallel_from(position: int, *, keep: bool = False) -> ParallelDownload:
        part = PartFile(request.state_dir / "download.part", length, keep=keep)
        return ParallelDownload(
            targets,
            client,
            policy=request.retry,
            limiter=limiter,
            stop=halt,
            part=part,
            identity=identity,
            identity_origin=origin,
            connections=request.connections,
            chunk_size=chunk,
            buffer=request.max_disk_buffer,
            have=RangeSet(checkpoint.window if keep else ()),
            start=position,
            stats=stats,
        )

    holds = resumed and bool(checkpoint.window)
    if not request.grow_connections or holds:  # a window to reuse: straight to ranges
        return parallel_from(checkpoint.position, keep=resumed)
    return GrowingDownload(
        single_stream(),
        parallel_from,
        start=checkpoint.position,
        length=length,
        connections=request.connections,
        max_bandwidth=request.max_bandwidth,
    )


def max_download(max_extracted: int) -> int:
    """The most bytes an archive may take on the wire: compression never grows data by more
    than a few bytes per block, so its extracted size plus 1% and 64 MiB covers every real one.
    """
    return max_extracted + max_extracted // 100 + (64 << 20)


def _discard(request: FetchRequest) -> None:
    """Remove all state: the staged tree, the checkpoint, the state directory."""
    for state in (request.staging.parent, request.workdir):
        if state is None:
            continue
        try:
            remove_tree(state)
        except OSError as error:
            log.warning("could not remove %s (%s); a later run clears it", state, error.strerror)


def _client(request: FetchRequest, transport: httpx.BaseTransport | None) -> httpx.Client:
    return make_client(
        ca_bundle=request.ca_bundle,
        authorization=request.authorization,
        read_timeout=request.retry.read_timeout,
        connect_timeout=request.connect_timeout,
        transport=transport,
    )
