"""One download attempt: the client, the probe, which source, the stages, the checkpointer."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

import httpx

from fetcher.commit import sync_directory_tree
from fetcher.errors import UnsafeArchive
from fetcher.http.client import make_client
from fetcher.http.exchange import Identity
from fetcher.http.ratelimit import RateLimiter, TokenBucket, Unlimited
from fetcher.http.stores import resolve
from fetcher.http.target import Target
from fetcher.pipeline import Stats, StopRequest, run
from fetcher.progress import Progress
from fetcher.request import FetchRequest
from fetcher.resume import start_afresh
from fetcher.sources import Source, SourceStats
from fetcher.sources.growing import GrowingDownload
from fetcher.sources.partfile import PartFile
from fetcher.sources.probe import Probe, probe
from fetcher.sources.ranged import ParallelDownload
from fetcher.sources.stream import MirroredStream
from fetcher.stages.chain import Stages
from fetcher.state.checkpoint import CHECKPOINT_NAME, Checkpoint
from fetcher.state.checkpointer import Checkpointer
from fetcher.units import human_bytes
from fetcher.urls import basename

log = logging.getLogger("model-fetch")


def download(
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
    if resume and not request.sha256 and not _identity_of(resume).validated:
        log.info(
            "the origin gave the file neither a strong ETag nor Last-Modified, so what earlier "
            "runs fetched cannot be shown to be the same version, and no --sha256 would tell: "
            "starting from byte 0"
        )
        start_afresh(request)
        resume = None
    with _client(request, transport) as client:
        probed = (
            probe(targets, client, request.retry, stop.event) if request.connections > 1 else None
        )
        if resume and probed:
            known = _identity_of(resume)
            # Another length is another file, whichever origin answered. So are other validators,
            # except a mirror's when a digest is given: its server may label the same bytes
            # differently, and the digest settles that at the end (as on failover).
            compare = probed.origin == 0 or not request.sha256
            same, why = known.same_file(probed.identity, compare_validators=compare)
            if not same:
                log.info("the source changed since the checkpoint (%s); starting over", why)
                start_afresh(request)
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
            state_dir=request.state_dir,
            password=request.password,
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

        # The part file is not flushed: the CRC32C of each range it holds vouches for it.
        checkpointer = Checkpointer(
            request.state_dir / CHECKPOINT_NAME,
            checkpoint,
            interval=request.checkpoint_interval,
            every_bytes=max(request.max_disk_buffer // 4, 1 << 20),
            flush=lambda: sync_directory_tree(request.output),
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
        known = _identity_of(checkpoint)
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
    if not probed.identity.validated and not request.sha256:
        log.info(
            "the origin labels the file with neither a strong ETag nor Last-Modified, so ranges "
            "of it could come from two versions, and no --sha256 would tell: fetching over one "
            "connection"
        )
        return single_stream()
    chunk = min(request.chunk_size, max(request.max_disk_buffer // request.connections, 1 << 18))
    if chunk < request.chunk_size:
        log.info(
            "ranges of %s, so %d connections fit in the %s window",
            human_bytes(chunk), request.connections, human_bytes(request.max_disk_buffer),
        )  # fmt: skip
    identity, origin = probed.identity, probed.origin

    def parallel_from(
        position: int, head: Iterator[bytes] | None = None, *, keep: bool = False
    ) -> ParallelDownload:
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
            held=checkpoint.window.ranges if keep else (),
            start=position,
            head=head,
            stats=stats,
        )

    holds = resumed and bool(checkpoint.window.ranges)
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


def _identity_of(checkpoint: Checkpoint) -> Identity:
    """The file a checkpoint was taken of, as the origins' answers are compared with it."""
    return Identity(checkpoint.length, checkpoint.etag, checkpoint.last_modified)


def max_download(max_extracted: int) -> int:
    """The most bytes an archive may take on the wire: compression never grows data by more
    than a few bytes per block, so its extracted size plus 1% and 64 MiB covers every real one.
    """
    return max_extracted + max_extracted // 100 + (64 << 20)


def _client(request: FetchRequest, transport: httpx.BaseTransport | None) -> httpx.Client:
    return make_client(
        ca_bundle=request.ca_bundle,
        authorization=request.authorization,
        read_timeout=request.retry.read_timeout,
        connect_timeout=request.connect_timeout,
        transport=transport,
    )
