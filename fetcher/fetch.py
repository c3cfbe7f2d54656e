"""From a request to a verified model directory: marker, resume, stream, verify, commit."""

from __future__ import annotations

import logging
import os
import queue
import shutil
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import certifi
import httpx

from fetcher.checkpoint import CHECKPOINT_NAME, Checkpoint, Checkpointer, load_checkpoint
from fetcher.errors import (
    ChecksumMismatch,
    CorruptArchive,
    FetchError,
    Interrupted,
    UnsafeArchive,
)
from fetcher.formats import Compression, Layout
from fetcher.marker import (
    Marker,
    fsync_directory,
    read_marker,
    remove_marker,
    url_fingerprint,
    write_marker,
)
from fetcher.origins import Identity, MirroredStream, RetryPolicy, StartOver
from fetcher.pipeline import Pass
from fetcher.progress import Progress
from fetcher.ratelimit import RateLimiter, TokenBucket, Unlimited
from fetcher.tree import sync_filesystem
from fetcher.units import human_bytes
from fetcher.urls import basename, redact

log = logging.getLogger("model-fetch")

WORK_DIR_NAME = ".model-fetch"
_QUEUE_CHUNKS = 64  # read-ahead between the network thread and the decoder: ~4 MiB


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
    connect_timeout: float = 15.0
    checkpoint_interval: float = 2.0

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

    def request(self, signal_number: int, signal_name: str) -> None:
        self.signal_number, self.signal_name = signal_number, signal_name
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

    request.state_dir.mkdir(parents=True, exist_ok=True)
    resume = _usable_checkpoint(request)
    started = time.monotonic()
    log.info(
        "fetching %s%s into %s",
        redact(request.url),
        f" (+{len(request.mirrors)} mirror(s))" if request.mirrors else "",
        output,
    )
    try:
        digest, current, requests = _download(request, resume, stop, progress)
    except (ChecksumMismatch, UnsafeArchive, CorruptArchive):
        _discard(request)  # starting over is the only cure; nothing half-made stays
        raise
    if request.sha256 and digest != request.sha256:
        _discard(request)
        raise ChecksumMismatch(request.sha256, digest, current.bytes)

    try:
        entries = _commit(output, request.staging)
    finally:
        _discard(request)
    marker = Marker(
        source=redact(request.url),
        source_fingerprint=url_fingerprint(request.url),
        sha256=digest,
        sha256_expected=request.sha256 is not None,
        bytes=current.bytes,
        extracted_bytes=current.extracted_bytes,
        files=current.tree.files_written,
        entries=entries,
        duration_seconds=round(time.monotonic() - started, 3),
        format=current.format_name(),
        completed_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )
    write_marker(output, marker)
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
    if checkpoint.completed and checkpoint.length:
        log.info(
            "this stream can only restart at byte %d (it has no frame or member boundary "
            "since): re-fetching %d bytes; the %d files already complete are read past, "
            "not written again",
            checkpoint.position,
            checkpoint.length - checkpoint.position,
            len(checkpoint.completed),
        )
    return checkpoint


def _download(
    request: FetchRequest,
    resume: Checkpoint | None,
    stop: StopRequest,
    progress: Progress,
) -> tuple[str, Pass, int]:
    limiter: RateLimiter = (
        TokenBucket(request.max_bandwidth) if request.max_bandwidth else Unlimited()
    )
    checkpoint = resume or Checkpoint(request=request.identity())
    known = Identity(checkpoint.length, checkpoint.etag, checkpoint.last_modified)
    with _client(request) as client:
        stream = MirroredStream(
            [request.url, *request.mirrors],
            client,
            request.retry,
            limiter,
            stop.event,
            trust_digest=bool(request.sha256),
            start=checkpoint.position,
            identity=known if resume else None,
        )
        checkpointer = Checkpointer(
            request.state_dir / CHECKPOINT_NAME,
            checkpoint,
            interval=request.checkpoint_interval,
            flush=lambda: _sync_filesystem(request.output),
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
            digest, current = _consume(stream, new_pass, stop, progress, checkpointer)
        finally:
            progress.close()
    return digest, current, stream.stats.requests


_END = object()


def _network_items(stream: MirroredStream, finished: threading.Event) -> queue.Queue[object]:
    """Run the stream on its own thread; its chunks, StartOvers and errors arrive in order."""
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
        try:
            for chunk in stream.chunks():
                if not put(chunk):
                    return
            put(_END)
        except BaseException as error:  # handed to the consumer, which reports it
            put(error)

    threading.Thread(target=produce, name="model-fetch-network", daemon=True).start()
    return items


def _received(items: queue.Queue[object], stop: StopRequest) -> Iterator[bytes | StartOver]:
    while True:
        try:
            item = items.get(timeout=0.5)
        except queue.Empty:
            stop.check()
            continue
        if item is _END:
            return
        if isinstance(item, BaseException):
            raise item
        assert isinstance(item, bytes | StartOver)
        yield item


def _consume(
    stream: MirroredStream,
    new_pass: Callable[[bool], Pass],
    stop: StopRequest,
    progress: Progress,
    checkpointer: Checkpointer,
) -> tuple[str, Pass]:
    """Feed passes from the network thread, checkpointing; returns the digest and the pass."""
    finished = threading.Event()
    current = new_pass(False)

    def take_full_checkpoint(position: int) -> None:
        if checkpointer.due or stop.event.is_set():
            _save_full(checkpointer, current, stream)

    current.on_restorable = take_full_checkpoint
    try:
        for item in _received(_network_items(stream, finished), stop):
            if isinstance(item, StartOver):
                current.tree.release()
                current = new_pass(True)
                current.on_restorable = take_full_checkpoint
                continue
            current.feed(item)
            if stop.event.is_set():
                _save_progress(checkpointer, current, stream)
                stop.check()
            if checkpointer.due and current.tree.completed:
                _save_progress(checkpointer, current, stream)  # no boundary in a while
            if progress.total is None and stream.stats.identity:
                progress.total = stream.stats.identity.length
            progress.update(current.bytes, current.extracted_bytes)
        return current.finish(), current
    finally:
        finished.set()
        current.tree.release()


def _remember_identity(checkpointer: Checkpointer, stream: MirroredStream) -> None:
    identity = stream.stats.identity
    if identity is not None:
        checkpoint = checkpointer.checkpoint
        checkpoint.length, checkpoint.etag = identity.length, identity.etag
        checkpoint.last_modified = identity.last_modified


def _save_full(checkpointer: Checkpointer, current: Pass, stream: MirroredStream) -> None:
    if not current.restorable:
        return
    _remember_identity(checkpointer, stream)
    checkpointer.save_full(current.state(), stream.stats.bytes_received, [])
    current.tree.completed.clear()


def _save_progress(checkpointer: Checkpointer, current: Pass, stream: MirroredStream) -> None:
    _remember_identity(checkpointer, stream)
    checkpointer.save_progress(list(current.tree.completed), stream.stats.bytes_received, [])
    current.tree.completed.clear()


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


def _commit(output: Path, staging: Path) -> list[str]:
    """Move the verified tree into place; returns the top-level names it added."""
    _sync_filesystem(staging)
    entries = sorted(path.name for path in staging.iterdir())
    for entry in entries:
        if os.path.lexists(output / entry):
            raise FetchError(
                f"{output / entry} already exists and was not written by model-fetch",
                "empty the output directory or choose another one; nothing was overwritten",
            )
    for entry in entries:
        (staging / entry).rename(output / entry)
    fsync_directory(output)
    return entries


def _sync_filesystem(path: Path) -> None:
    """Flush every file written to the volume before a marker or checkpoint vouches for it."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        sync_filesystem(fd)
    finally:
        os.close(fd)


def _client(request: FetchRequest) -> httpx.Client:
    context = ssl.create_default_context(cafile=os.environ.get("SSL_CERT_FILE") or certifi.where())
    if request.ca_bundle:
        context.load_verify_locations(cafile=str(request.ca_bundle))
    headers = {"User-Agent": "model-fetch/0.1", "Accept-Encoding": "identity"}
    if request.authorization:
        headers["Authorization"] = request.authorization
    return httpx.Client(
        verify=context,
        headers=headers,
        follow_redirects=True,
        timeout=httpx.Timeout(request.retry.read_timeout, connect=request.connect_timeout),
        trust_env=True,  # HTTPS_PROXY and NO_PROXY, as clusters behind a proxy need
    )
