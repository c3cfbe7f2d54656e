"""From a request to a verified model directory: marker, resume, stream, verify, commit."""

from __future__ import annotations

import json
import logging
import os
import queue
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx

from fetcher.errors import (
    ChecksumMismatch,
    CorruptArchive,
    FetchError,
    Interrupted,
    UnsafeArchive,
)
from fetcher.formats import Compression, Layout
from fetcher.http.client import make_client
from fetcher.http.exchange import Identity, RetryPolicy
from fetcher.http.ratelimit import RateLimiter, TokenBucket, Unlimited
from fetcher.http.stores import Target, resolve
from fetcher.progress import Progress
from fetcher.sources.growing import GrowingDownload
from fetcher.sources.partfile import PartFile
from fetcher.sources.ranged import ParallelDownload, Probe, SourceChanged, probe
from fetcher.sources.ranges import RangeSet
from fetcher.sources.stream import MirroredStream, StartOver, StreamStats
from fetcher.stages.chain import Pass
from fetcher.stages.digest import ResumableSha256
from fetcher.stages.tree import sync_filesystem
from fetcher.state.checkpoint import CHECKPOINT_NAME, Checkpoint, Checkpointer, load_checkpoint
from fetcher.state.marker import (
    Marker,
    fsync_directory,
    read_marker,
    remove_marker,
    url_fingerprint,
    write_atomically,
    write_marker,
)
from fetcher.units import human_bytes
from fetcher.urls import basename, redact

log = logging.getLogger("model-fetch")

WORK_DIR_NAME = ".model-fetch"
# --connections auto grows to this many, and only when one connection leaves the decoder idle.
AUTO_CONNECTIONS = 8
COMMIT_JOURNAL = "commit.json"
_QUEUE_CHUNKS = 8  # read-ahead between the network thread and the decoder: ~8 MiB


@dataclass
class FetchRequest:
    url: str
    output: Path
    mirrors: list[str] = field(default_factory=list)
    sha256: str | None = None
    workdir: Path | None = None
    format: str = "auto"
    compression: Compression | None = None
    layout: Layout = Layout.DETECT
    max_bandwidth: int | None = None
    max_extracted: int = 10**12
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    authorization: str | None = field(default=None, repr=False)
    ca_bundle: Path | None = None
    s3_endpoint: str | None = None
    s3_region: str | None = None
    connect_timeout: float = 15.0
    checkpoint_interval: float = 2.0
    connections: int = 4
    grow_connections: bool = False  # start with one connection, grow when it is the wait
    chunk_size: int = 16 << 20
    max_disk_buffer: int = 1 << 30

    @property
    def urls(self) -> list[str]:
        return [self.url, *self.mirrors]

    @property
    def state_dir(self) -> Path:
        return self.workdir or self.output / WORK_DIR_NAME

    @property
    def staging(self) -> Path:
        # Always inside DIR, so the verified tree moves into place by rename.
        return self.output / WORK_DIR_NAME / "tree"

    def identity(self) -> dict[str, Any]:
        """What a checkpoint must have been taken for to be resumed by this request."""
        return {
            "source": url_fingerprint(self.url),
            "sha256": self.sha256,
            "format": self.format,
        }


class StopRequest:
    """Set from a signal handler; every loop checks it between chunks."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signal_number = 0
        self.signal_name = ""
        self.requested_at = 0.0

    def request(self, signal_number: int, signal_name: str) -> None:
        self.signal_number, self.signal_name = signal_number, signal_name
        self.requested_at = time.monotonic()
        self.event.set()

    def check(self) -> None:
        if self.event.is_set():
            raise Interrupted(self.signal_number, self.signal_name or "a stop request")


@dataclass
class FetchResult:
    marker: Marker
    already_complete: bool
    requests: int = 0


def fetch(request: FetchRequest, *, stop: StopRequest, progress: Progress) -> FetchResult:
    output = request.output
    output.mkdir(parents=True, exist_ok=True)
    _finish_interrupted_commit(request)
    previous = read_marker(output)
    if previous and previous.satisfies(request.url, request.sha256):
        log.info(
            "already complete: %s (sha256 %s, %d files); nothing to fetch",
            previous.source, previous.sha256, previous.files,
        )  # fmt: skip
        return FetchResult(previous, already_complete=True)
    if previous:
        log.info("replacing %s (sha256 %s) with the new source", previous.source, previous.sha256)
        _remove_previous(output, previous)

    resume = _usable_checkpoint(request)
    request.state_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    log.info(
        "fetching %s%s into %s",
        redact(request.url),
        f" (+{len(request.mirrors)} mirror(s))" if request.mirrors else "",
        output,
    )
    try:
        digest, current, requests = _download_until_stable(request, resume, stop, progress)
    except (ChecksumMismatch, UnsafeArchive, CorruptArchive):
        _discard(request)  # starting over is the only cure; nothing half-made stays
        raise
    if request.sha256 and digest != request.sha256:
        _discard(request)
        raise ChecksumMismatch(request.sha256, digest, current.bytes)

    marker = Marker(
        source=redact(request.url),
        source_fingerprint=url_fingerprint(request.url),
        sha256=digest,
        sha256_expected=request.sha256 is not None,
        bytes=current.bytes,
        extracted_bytes=current.extracted_bytes,
        files=current.tree.files_written,
        entries=[],
        duration_seconds=round(time.monotonic() - started, 3),
        format=current.format_name(),
        completed_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )
    try:
        _commit(output, marker)
    except FetchError:
        _discard(request)
        raise
    _discard(request)
    elapsed = max(marker.duration_seconds, 1e-3)
    log.info(
        "done: %d files, %s extracted from %s of %s in %.1fs (%.1f MB/s); sha256 %s %s",
        marker.files,
        human_bytes(marker.extracted_bytes),
        human_bytes(marker.bytes),
        marker.format,
        elapsed,
        marker.bytes / elapsed / 1e6,
        digest,
        "verified" if request.sha256 else "(not checked: no --sha256 given)",
        extra={"fields": {"files": marker.files, "bytes": marker.bytes, "sha256": digest}},
    )
    return FetchResult(marker, already_complete=False, requests=requests)


def _usable_checkpoint(request: FetchRequest) -> Checkpoint | None:
    """The checkpoint this request can carry on from; anything else is cleared, with why."""
    checkpoint, why = load_checkpoint(request.state_dir / CHECKPOINT_NAME)
    leftovers = request.staging.exists()
    if checkpoint is not None and checkpoint.request != request.identity():
        why = "the checkpoint was taken for another source, digest or format"
        checkpoint = None
    if checkpoint is not None and (checkpoint.position or checkpoint.completed) and not leftovers:
        why = "the extracted files the checkpoint describes are gone"
        checkpoint = None
    if checkpoint is None:
        if leftovers:
            log.info("%s; removing the unfinished tree and starting from byte 0", why)
        _discard(request)
        return None
    log.info(
        "resuming from a checkpoint: byte %d of %s, %d files extracted%s",
        checkpoint.position,
        checkpoint.length if checkpoint.length is not None else "?",
        checkpoint.restore["tree"]["files_written"] if checkpoint.restore else 0,
        f", {len(checkpoint.completed)} more complete on disk" if checkpoint.completed else "",
    )
    if checkpoint.length is not None:
        held = sum(end - max(start, checkpoint.position) for start, end in checkpoint.chunks)
        missing = checkpoint.length - checkpoint.position - held
        if checkpoint.restore is None:
            log.info(
                "this stream can only restart at byte 0 (no frame or member boundary was "
                "checkpointed): re-fetching %d bytes, reusing %d held in the download window; "
                "the %d files already complete are read past, not written again",
                missing, held, len(checkpoint.completed),
            )  # fmt: skip
        else:
            log.info(
                "re-fetching %d bytes from byte %d, reusing %d held in the download window",
                missing, checkpoint.position, held,
            )  # fmt: skip
    return checkpoint


_SOURCE_CHANGES_TOLERATED = 2


def _download_until_stable(
    request: FetchRequest, resume: Checkpoint | None, stop: StopRequest, progress: Progress
) -> tuple[str, Pass, int]:
    """Download, starting over when an origin starts serving another file mid-way."""
    for changes in range(_SOURCE_CHANGES_TOLERATED + 1):
        try:
            return _download(request, resume, stop, progress)
        except SourceChanged as change:
            if changes == _SOURCE_CHANGES_TOLERATED:
                _discard(request)
                raise FetchError(
                    f"the source changed {changes + 1} times while being fetched ({change})",
                    "publish the artifact under a new URL instead of overwriting it",
                ) from None
            log.warning("the source changed while being fetched (%s); starting over", change)
            _discard(request)
            request.state_dir.mkdir(parents=True, exist_ok=True)
            resume = None
    raise AssertionError("unreachable")


def _download(
    request: FetchRequest,
    resume: Checkpoint | None,
    stop: StopRequest,
    progress: Progress,
) -> tuple[str, Pass, int]:
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
    with _client(request) as client:
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
        # The sources stop when the decoder is done with them, not at the signal itself: after
        # a signal the decoder may still need the rest of a frame to reach a clean checkpoint.
        halt = threading.Event()
        source = _source(
            request,
            targets,
            client,
            limiter=limiter,
            halt=halt,
            checkpoint=checkpoint,
            probed=probed,
            resumed=bool(resume),
        )

        def flush() -> None:
            _sync_filesystem(request.output)
            source.sync()  # the part file may live on another volume (--workdir)

        checkpointer = Checkpointer(
            request.state_dir / CHECKPOINT_NAME,
            checkpoint,
            interval=request.checkpoint_interval,
            every_bytes=max(request.max_disk_buffer // 4, 1 << 20),
            flush=flush,
        )

        def new_pass(restart: bool) -> Pass:
            if restart:
                checkpoint.restore, checkpoint.completed = None, []
                shutil.rmtree(request.staging, ignore_errors=True)
            restore = None if restart else checkpoint.restore
            completed = {} if restart else dict(checkpoint.completed)
            return Pass(
                request.staging,
                compression=request.compression,
                layout=request.layout,
                file_name=basename(request.url),
                max_extracted=request.max_extracted,
                resume=restore,
                already_complete=completed,
            )

        try:
            digest, current = _consume(
                source,
                new_pass,
                halt=halt,
                stop=stop,
                progress=progress,
                checkpointer=checkpointer,
                request=request,
            )
        finally:
            progress.close()
            source.close()
    return digest, current, source.stats.requests


def _source(
    request: FetchRequest,
    targets: list[Target],
    client: httpx.Client,
    *,
    limiter: RateLimiter,
    halt: threading.Event,
    checkpoint: Checkpoint,
    probed: Probe | None,
    resumed: bool,
) -> Source:
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
        )

    if probed is not None and probed.ranges and probed.identity.length:
        length = probed.identity.length
        chunk = min(
            request.chunk_size, max(request.max_disk_buffer // request.connections, 1 << 18)
        )
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
                have=RangeSet(checkpoint.chunks if keep else ()),
                start=position,
            )

        holds = resumed and bool(checkpoint.chunks)
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
    if probed is not None and not probed.ranges:
        log.info("the origin does not honour Range requests: fetching over one connection")
    return single_stream()


class Source(Protocol):
    """Where ordered bytes come from: one stream with failover, or parallel ranges."""

    @property
    def stats(self) -> StreamStats: ...

    def chunks(self) -> Iterator[bytes | StartOver]: ...

    def holdings(self) -> list[tuple[int, int]]: ...

    def release_below(self, position: int) -> None: ...

    def sync(self) -> None: ...

    def close(self) -> None: ...


# After a signal, decoding goes on (with what has already arrived) up to the next frame or
# member end, so the checkpoint lands where a restart loses nothing; for at most this long.
_STOP_GRACE = 2.0
_BATCH_BYTES = 1 << 20
_BATCH_SECONDS = 0.05


@dataclass
class _Hashed:
    data: bytes
    hash_before: ResumableSha256


@dataclass
class _End:
    hasher: ResumableSha256


def _batched(chunks: Iterator[bytes | StartOver]) -> Iterator[bytes | StartOver]:
    """Network reads (64 KiB) joined into ~1 MiB pieces: fewer hand-overs, same order.

    An empty chunk is a source's word that it is about to wait: what is held goes on at once,
    since the source may be waiting for the decoder to work through exactly these bytes.
    """
    pending: list[bytes] = []
    size = 0
    started = 0.0
    for item in chunks:
        if isinstance(item, StartOver):
            pending, size = [], 0
            yield item
            continue
        if not item:
            if pending:
                yield b"".join(pending)
                pending, size = [], 0
            continue
        if not pending:
            started = time.monotonic()
        pending.append(item)
        size += len(item)
        if size >= _BATCH_BYTES or time.monotonic() - started >= _BATCH_SECONDS:
            yield b"".join(pending)
            pending, size = [], 0
    if pending:
        yield b"".join(pending)


def _network_items(
    source: Source, hasher: ResumableSha256, finished: threading.Event
) -> queue.Queue[object]:
    """Run the source and the digest on their own thread; items arrive in order.

    Each chunk travels with the digest state before it, so decoding (on the caller's thread)
    and hashing (here) run in parallel.
    """
    items: queue.Queue[object] = queue.Queue(maxsize=_QUEUE_CHUNKS)

    def put(item: object) -> bool:
        while not finished.is_set():
            try:
                items.put(item, timeout=0.2)
            except queue.Full:
                continue
            return True
        return False

    def produce() -> None:
        digest = hasher
        try:
            for item in _batched(source.chunks()):
                if isinstance(item, StartOver):
                    digest = ResumableSha256()
                    if not put(item):
                        return
                    continue
                before = digest.copy()
                digest.update(item)
                if not put(_Hashed(item, before)):
                    return
            put(_End(digest))
        except BaseException as error:  # handed to the consumer, which reports it
            put(error)

    threading.Thread(target=produce, name="model-fetch-network", daemon=True).start()
    return items


def _received(
    items: queue.Queue[object], stop: StopRequest
) -> Iterator[_Hashed | StartOver | _End | None]:
    """The network thread's items in order; None whenever nothing came for a moment."""
    while True:
        try:
            item = items.get(timeout=0.2)
        except queue.Empty:
            if stop.event.is_set() and time.monotonic() - stop.requested_at > _STOP_GRACE:
                stop.check()
            yield None
            continue
        if isinstance(item, BaseException):
            raise item
        assert isinstance(item, _Hashed | StartOver | _End)
        yield item
        if isinstance(item, _End):
            return


def _consume(
    source: Source,
    new_pass: Callable[[bool], Pass],
    *,
    halt: threading.Event,
    stop: StopRequest,
    progress: Progress,
    checkpointer: Checkpointer,
    request: FetchRequest,
) -> tuple[str, Pass]:
    """Feed passes from the source, checkpointing; returns the digest and the pass."""
    current = new_pass(False)
    saver = _Saver(checkpointer, source, request.max_disk_buffer)

    def take_full_checkpoint(position: int) -> None:
        if stop.event.is_set():
            saver.last(current, restorable=True)  # the first clean point after the signal
            stop.check()
        if checkpointer.due(position):
            saver.full(current)

    current.on_restorable = take_full_checkpoint
    restore = checkpointer.checkpoint.restore
    hasher = (
        ResumableSha256.from_state(bytes.fromhex(restore["sha256_state"]))
        if restore
        else ResumableSha256()
    )
    try:
        for item in _received(_network_items(source, hasher, halt), stop):
            if item is None:
                # Waiting for bytes: a checkpoint now may be what frees the window for them.
                if checkpointer.due(current.bytes):
                    saver.between_chunks(current)
                continue
            if isinstance(item, _End):
                current.finish()
                return item.hasher.hexdigest(), current
            if isinstance(item, StartOver):
                current.tree.release()
                current = new_pass(True)
                current.on_restorable = take_full_checkpoint
                continue
            current.feed(item.data, item.hash_before)
            if stop.event.is_set() and time.monotonic() - stop.requested_at > _STOP_GRACE:
                saver.last(current, restorable=current.at_boundary)  # no clean point in time
                stop.check()
            if checkpointer.due(current.bytes):
                saver.progress(current)  # no restorable point for a while
            if progress.total is None and source.stats.identity:
                progress.total = source.stats.identity.length
            progress.update(current.bytes, current.extracted_bytes)
        raise AssertionError("the network thread ended without a last item")
    except Interrupted:
        saver.last(current, restorable=current.at_boundary)
        stop.check()  # the signal's own number and name
        raise
    finally:
        halt.set()
        checkpointer.wait(reraise=False)  # never write into a state directory being removed
        current.tree.release()


class _Saver:
    """Takes checkpoints, then hands back the window's space they no longer need."""

    def __init__(self, checkpointer: Checkpointer, source: Source, buffer: int) -> None:
        self._checkpointer = checkpointer
        self._source = source
        self._buffer = buffer
        self._closed = False

    def _remember_identity(self) -> None:
        identity = self._source.stats.identity
        if identity is not None:
            checkpoint = self._checkpointer.checkpoint
            checkpoint.length, checkpoint.etag = identity.length, identity.etag
            checkpoint.last_modified = identity.last_modified

    def _holdings_from(self, position: int) -> list[tuple[int, int]]:
        return [
            (max(start, position), end) for start, end in self._source.holdings() if end > position
        ]

    def full(self, current: Pass) -> None:
        """Every stage restorable here: the window below this position is never read again."""
        if not current.restorable:
            return
        self._remember_identity()
        position = current.bytes
        accepted = self._checkpointer.save_full(
            current.state(),
            self._source.stats.bytes_received,
            self._holdings_from(position),
            then=lambda: self._source.release_below(position),
        )
        if accepted:
            current.tree.completed.clear()

    def progress(self, current: Pass) -> None:
        """Not restorable here: record finished files; keep at most half a window behind."""
        self._remember_identity()
        restart = self._checkpointer.checkpoint.position
        keep_from = max(restart, current.bytes - self._buffer // 2)
        accepted = self._checkpointer.save_progress(
            list(current.tree.completed),
            self._source.stats.bytes_received,
            self._holdings_from(keep_from),
            current.bytes,
            then=lambda: self._source.release_below(keep_from),
        )
        if accepted:
            current.tree.completed.clear()

    def between_chunks(self, current: Pass) -> None:
        """Between chunks: a full checkpoint if the decoder stands at a boundary."""
        if current.restorable and current.at_boundary:
            self.full(current)
        else:
            self.progress(current)

    def last(self, current: Pass, *, restorable: bool) -> None:
        """On the way out after a signal: one more checkpoint, on disk before exiting."""
        if self._closed:
            return
        self._closed = True
        self._checkpointer.wait()
        if current.restorable and restorable:
            self.full(current)
        else:
            self.progress(current)
        self._checkpointer.wait()


def _discard(request: FetchRequest) -> None:
    """Remove all state: the staged tree, the checkpoint, the state directory."""
    shutil.rmtree(request.output / WORK_DIR_NAME, ignore_errors=True)
    if request.workdir:
        shutil.rmtree(request.workdir, ignore_errors=True)


def _remove_previous(output: Path, previous: Marker) -> None:
    remove_marker(output)  # first, so a crash below never leaves a marker over a partial tree
    for entry in previous.entries:
        path = output / entry
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def _commit(output: Path, marker: Marker) -> None:
    """Move the verified tree into place, then write the marker; safe to kill at any point.

    The marker goes first into a journal beside the staged tree, so a run killed between two
    renames is finished by the next run instead of being mistaken for foreign files.
    """
    work = output / WORK_DIR_NAME
    staging = work / "tree"
    _sync_filesystem(staging)
    marker.entries = sorted(path.name for path in staging.iterdir())
    for entry in marker.entries:
        if os.path.lexists(output / entry):
            raise FetchError(
                f"{output / entry} already exists and was not written by model-fetch",
                "empty the output directory or choose another one; nothing was overwritten",
            )
    write_atomically(work / COMMIT_JOURNAL, json.dumps(asdict(marker)).encode())
    _finish_commit(output, marker)


def _finish_commit(output: Path, marker: Marker) -> None:
    staging = output / WORK_DIR_NAME / "tree"
    for entry in marker.entries:
        if os.path.lexists(staging / entry):
            (staging / entry).rename(output / entry)
    fsync_directory(output)
    write_marker(output, marker)


def _finish_interrupted_commit(request: FetchRequest) -> None:
    """A verified tree whose move into place was cut short: complete it first."""
    journal = request.output / WORK_DIR_NAME / COMMIT_JOURNAL
    try:
        marker = Marker(**json.loads(journal.read_text()))
    except FileNotFoundError:
        return
    except (ValueError, TypeError) as error:
        log.warning("ignoring an unreadable commit journal (%s)", error)
        return
    log.info("finishing the move into place of %s, verified by an earlier run", marker.source)
    _finish_commit(request.output, marker)
    _discard(request)


def _sync_filesystem(path: Path) -> None:
    """Flush every file written to the volume before a marker or checkpoint vouches for it."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        sync_filesystem(fd)
    finally:
        os.close(fd)


def _client(request: FetchRequest) -> httpx.Client:
    return make_client(
        ca_bundle=request.ca_bundle,
        authorization=request.authorization,
        read_timeout=request.retry.read_timeout,
        connect_timeout=request.connect_timeout,
    )
