"""From a request to a verified model directory: marker check, stream, verify, commit."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import queue
import shutil
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import certifi
import httpx

from fetcher.errors import ChecksumMismatch, FetchError, Interrupted
from fetcher.formats import Compression, Layout
from fetcher.marker import (
    Marker,
    fsync_directory,
    read_marker,
    remove_marker,
    url_fingerprint,
    write_marker,
)
from fetcher.origins import MirroredStream, RetryPolicy, StartOver
from fetcher.pipeline import Pass
from fetcher.progress import Progress
from fetcher.ratelimit import RateLimiter, TokenBucket, Unlimited
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
    compression: Compression | None = None
    layout: Layout = Layout.DETECT
    max_bandwidth: int | None = None
    max_extracted: int = 10**12
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    authorization: str | None = field(default=None, repr=False)
    ca_bundle: Path | None = None
    connect_timeout: float = 15.0


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

    work = output / WORK_DIR_NAME
    staging = work / "tree"
    if staging.exists():
        log.info("removing the unfinished tree of an earlier run; starting from byte 0")
        shutil.rmtree(staging)
    if previous:
        log.info("replacing %s (sha256 %s) with the new source", previous.source, previous.sha256)
        _remove_previous(output, previous)

    started = time.monotonic()
    urls = [request.url, *request.mirrors]
    log.info(
        "fetching %s%s into %s",
        redact(request.url),
        f" (+{len(request.mirrors)} mirror(s))" if request.mirrors else "",
        output,
    )
    limiter: RateLimiter = (
        TokenBucket(request.max_bandwidth) if request.max_bandwidth else Unlimited()
    )
    with _client(request) as client:
        stream = MirroredStream(
            urls, client, request.retry, limiter, stop.event, trust_digest=bool(request.sha256)
        )
        try:
            digest, current = _consume(stream, lambda: _new_pass(request, staging), stop, progress)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        finally:
            progress.close()

    if request.sha256 and digest != request.sha256:
        shutil.rmtree(work, ignore_errors=True)
        raise ChecksumMismatch(request.sha256, digest, current.bytes)

    try:
        entries = _commit(output, staging)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if request.workdir:
        shutil.rmtree(request.workdir, ignore_errors=True)
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
    return FetchResult(marker, already_complete=False, requests=stream.stats.requests)


def _new_pass(request: FetchRequest, staging: Path) -> Pass:
    return Pass(
        staging,
        compression=request.compression,
        layout=request.layout,
        file_name=basename(request.url),
        max_extracted=request.max_extracted,
    )


_END = object()


def _consume(
    stream: MirroredStream,
    new_pass: Callable[[], Pass],
    stop: StopRequest,
    progress: Progress,
) -> tuple[str, Pass]:
    """Feed a pass from a network thread; returns the digest of everything fed, and the pass.

    On failure, whatever the pass wrote is removed.
    """
    items: queue.Queue[object] = queue.Queue(maxsize=_QUEUE_CHUNKS)
    finished = threading.Event()

    def produce() -> None:
        def put(item: object) -> bool:
            while not finished.is_set():
                try:
                    items.put(item, timeout=0.2)
                except queue.Full:
                    continue
                return True
            return False

        try:
            for chunk in stream.chunks():
                if not put(chunk):
                    return
            put(_END)
        except BaseException as error:  # handed to the consumer, which reports it
            put(error)

    producer = threading.Thread(target=produce, name="model-fetch-network", daemon=True)
    producer.start()
    current = new_pass()
    try:
        while True:
            try:
                item = items.get(timeout=0.5)
            except queue.Empty:
                stop.check()
                continue
            if item is _END:
                break
            if isinstance(item, BaseException):
                raise item
            if isinstance(item, StartOver):
                current.abandon()
                current = new_pass()
                continue
            assert isinstance(item, bytes)
            current.feed(item)
            stop.check()
            if progress.total is None and stream.stats.identity:
                progress.total = stream.stats.identity.length
            progress.update(current.bytes, current.extracted_bytes)
        return current.finish(), current
    except BaseException:
        current.abandon()
        raise
    finally:
        finished.set()
        producer.join(timeout=5)


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
    """Flush every file written to the volume before the marker claims they are there."""
    libc_name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(libc_name, use_errno=True) if libc_name else None
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if libc is None or libc.syncfs(fd) != 0:
            os.sync()
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
