"""Multi-frame zstd decoded on several threads, with the decoders' one shape (see decode.py).

Every frame (skippable ones too) becomes a job as soon as its first byte is fed. The job's
bytes are handed to a worker thread as they arrive, so a frame is decoded while it streams,
and a single-frame archive is no slower than with one thread: the worker starts on the first
bytes and its output reaches emit() at the next feed. Frames that arrive whole while earlier
ones are still decoding run on other workers at the same time (python-zstandard releases the
GIL while it decodes). Output is emitted, and frame ends reported, only in the feeding thread
and only in stream order.

Memory is bounded whatever the input: at most ``workers + 1`` frames are in flight, each
holding at most ``max_input`` compressed bytes not yet decoded (slices of the bytes objects
fed, which stay alive until then; other buffers are copied) and ``max_output`` decoded bytes
not yet emitted; a worker whose output is full waits (a bomb frame costs ``max_output``
and no more). feed() waits, emitting what is ready meanwhile, when its frame has no room.

Deadlock cannot happen: workers take jobs in stream order, so the oldest job not yet emitted
always has a worker (any worker on a younger job took it later), and the feeding thread
always drains that job's output while it waits.

Boundaries: on_boundary(offset) is called once the frame's last decoded byte has been emitted,
with the offset of its end relative to the start of the latest feed() data. A frame decoded
ahead may finish emitting during a later feed() or in finish(): then the offset is negative
(the frame ended in an earlier chunk) or, in finish(), relative to the last chunk fed.
on_frame_scanned(offset) says, during the feed() whose data holds it, where a frame decoded
on another thread ends, so that whatever goes with that point can be noted while the bytes
before it are at hand.
at_boundary is true only when no frame is open or in flight, i.e. everything fed is emitted.

A frame decoded ahead would report its end only at a later feed, a chunk or more of the
download after its bytes arrived: a kill meanwhile loses the frame. So when restore_wanted()
says a checkpoint is due, feed() waits for the frames that ended in what was fed (they decode
side by side) and reports the last of those ends before it returns.
"""

from __future__ import annotations

import threading
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from typing import IO, cast

import zstandard

from fetcher.cpus import available_cpus
from fetcher.errors import CorruptArchive
from fetcher.stages.midstream import MidState, RestoreWanted, never_wanted
from fetcher.stages.shapes import OUTPUT_CHUNK, Chunk, Emit, OnBoundary
from fetcher.stages.zstd.blocks import Event, FrameScanner

DEFAULT_MAX_INPUT = 16 << 20
DEFAULT_MAX_OUTPUT = 16 << 20


def _ignore_boundary(offset: int) -> None:
    return None


class _Cancelled(Exception):
    """Unwinds a worker out of the zstd writer once the decoder is closed."""


class _Job:
    """One frame: its compressed bytes in, its decoded bytes out, guarded by _Shared.cond."""

    def __init__(self, number: int) -> None:
        self.number = number
        self.input: deque[bytes | memoryview] = deque()
        self.input_bytes = 0
        self.closed = False  # no more input will come
        self.end: int | None = None  # stream position of the frame's end, once it is seen
        self.output: deque[bytes] = deque()
        self.output_bytes = 0
        self.done = False  # the worker is through: all output is in self.output
        self.error: BaseException | None = None


class _Shared:
    def __init__(self, max_output: int) -> None:
        self.cond = threading.Condition()
        self.pending: deque[_Job] = deque()  # jobs no worker has taken yet, in stream order
        self.cancelled = False
        self.max_output = max_output

    def cancel(self) -> None:
        with self.cond:
            self.cancelled = True
            self.cond.notify_all()


class _JobOutput:
    """Where a worker's zstd writer puts decoded chunks; waits while the job's output is full."""

    def __init__(self, shared: _Shared, job: _Job) -> None:
        self._shared = shared
        self._job = job

    def write(self, data: bytes) -> int:
        shared, job = self._shared, self._job
        with shared.cond:
            while job.output_bytes >= shared.max_output and not shared.cancelled:
                shared.cond.wait()
            if shared.cancelled:
                raise _Cancelled
            job.output.append(data)
            job.output_bytes += len(data)
            shared.cond.notify_all()
        return len(data)


def _corrupt(number: int, error: Exception) -> CorruptArchive:
    return CorruptArchive(
        f"zstd stream is corrupt in frame {number}: {error}", "the file is damaged"
    )


def _decode(shared: _Shared, job: _Job) -> None:
    writer = zstandard.ZstdDecompressor().stream_writer(
        cast(IO[bytes], _JobOutput(shared, job)), write_size=OUTPUT_CHUNK
    )
    failure: BaseException | None = None
    try:
        while True:
            with shared.cond:
                while not job.input and not job.closed and not shared.cancelled:
                    shared.cond.wait()
                if shared.cancelled:
                    return
                if not job.input:
                    break
                piece = job.input.popleft()
                job.input_bytes -= len(piece)
                shared.cond.notify_all()
            writer.write(piece)
    except _Cancelled:
        return
    except zstandard.ZstdError as error:
        failure = _corrupt(job.number, error)
    except Exception as error:  # handed to the feeding thread, which raises it in order
        failure = error
    with shared.cond:
        job.error = failure
        job.done = True
        shared.cond.notify_all()


def _work(shared: _Shared) -> None:
    while True:
        with shared.cond:
            while not shared.pending and not shared.cancelled:
                shared.cond.wait()
            if shared.cancelled:
                return
            job = shared.pending.popleft()
        _decode(shared, job)


class ParallelZstdDecoder:
    """Single- and multi-frame zstd on up to ``workers`` threads (default: the CPU quota).

    With one worker everything is decoded in the feeding thread, as the plain decoder does.
    """

    def __init__(
        self,
        emit: Emit,
        on_boundary: OnBoundary = _ignore_boundary,
        *,
        on_frame_scanned: OnBoundary = _ignore_boundary,
        restore_wanted: RestoreWanted = never_wanted,
        workers: int | None = None,
        max_input: int = DEFAULT_MAX_INPUT,
        max_output: int = DEFAULT_MAX_OUTPUT,
    ) -> None:
        self._emit = emit
        self._on_boundary = on_boundary
        self._on_frame_scanned = on_frame_scanned
        self._restore_wanted = restore_wanted
        self._workers = max(1, workers if workers is not None else available_cpus())
        self._max_in_flight = self._workers + 1
        self._piece = max(1, max_input // 4)
        self._max_input = max_input
        self._scanner = FrameScanner(follow_tables=False)  # frames restart only at their ends
        self._shared = _Shared(max_output)
        self._threads: list[threading.Thread] = []
        self._jobs: deque[_Job] = deque()  # admitted, not yet wholly emitted; oldest first
        self._open: _Job | None = None  # the job taking the current frame's bytes
        self._frames = 0
        self._fed = 0  # bytes fed before the current feed
        self._feed_start = 0
        self._inline: zstandard.ZstdDecompressionWriter | None = None
        self._inline_open = False
        self._immutable = False
        self._closed = False
        # A decoder dropped without finish() (another stage failed) still stops its workers.
        self._finalizer = weakref.finalize(self, self._shared.cancel)

    @property
    def workers(self) -> int:
        return self._workers

    def mid_state(self) -> MidState | None:
        """Frames restart only at their boundaries here."""
        return None

    def feed(self, data: Chunk) -> None:
        if self._closed:
            raise RuntimeError("feed() after the decoder was finished or failed")
        view = memoryview(data)
        # bytes cannot change under a worker: their slices are handed over without a copy
        self._immutable = isinstance(data, bytes)
        self._feed_start = self._fed
        try:
            start = 0
            for end in self._frame_ends(view):
                self._take(view[start:end])
                self._frame_end(end)
                start = end
            if start < len(view):
                self._take(view[start:])
            self._fed += len(view)
            if self._workers > 1:
                if self._jobs and self._jobs[0] is not self._open and self._restore_wanted():
                    self._drain_ended()
                self._drain(block=False)
        except BaseException:
            self.close()
            raise

    def _frame_ends(self, view: memoryview) -> Iterator[int]:
        """The offsets in view where frames end, each as soon as it is scanned."""
        try:
            for event, offset in self._scanner.scan(view):
                if event is Event.FRAME_END:
                    yield offset
        except CorruptArchive:
            self._drain_all()  # the frames before the damage come out, as they would alone
            raise

    def finish(self) -> None:
        if self._closed:
            raise RuntimeError("finish() after the decoder was finished or failed")
        try:
            open_frame = self._inline_open or self._open is not None
            self._drain_all()
            if open_frame or self._frames == 0:
                raise CorruptArchive(
                    f"zstd stream ended inside frame {max(self._frames, 1)}",
                    "the download was cut short or the file is damaged",
                )
        finally:
            self.close()

    @property
    def at_boundary(self) -> bool:
        return not self._inline_open and self._open is None and not self._jobs

    def close(self) -> None:
        """Stop the workers; the decoder takes no more input."""
        self._closed = True
        self._finalizer()
        for thread in self._threads:
            thread.join()

    # one worker: decode here

    def _take(self, piece: memoryview) -> None:
        if self._workers == 1:
            self._take_inline(piece)
        else:
            self._push(piece)

    def _frame_end(self, offset: int) -> None:
        if self._workers == 1:
            self._inline = None
            self._inline_open = False
            self._on_boundary(offset)
            return
        self._on_frame_scanned(offset)
        job = self._open
        assert job is not None  # a frame's end always follows bytes of it
        self._open = None
        with self._shared.cond:
            job.closed = True
            job.end = self._feed_start + offset
            self._shared.cond.notify_all()

    def _take_inline(self, piece: memoryview) -> None:
        if self._inline is None:
            self._frames += 1
            self._inline = zstandard.ZstdDecompressor().stream_writer(
                cast(IO[bytes], _Emitter(self._emit)), write_size=OUTPUT_CHUNK
            )
            self._inline_open = True
        try:
            self._inline.write(piece)
        except zstandard.ZstdError as error:
            raise _corrupt(self._frames, error) from None

    # several workers

    def _push(self, piece: memoryview) -> None:
        if self._open is None:
            self._admit()
        job = self._open
        assert job is not None
        room = self._max_input - self._piece
        for start in range(0, len(piece), self._piece):
            part = piece[start : start + self._piece]
            data = part if self._immutable else bytes(part)
            self._wait(lambda: job.input_bytes <= room)
            with self._shared.cond:
                job.input.append(data)
                job.input_bytes += len(data)
                self._shared.cond.notify_all()

    def _admit(self) -> None:
        self._wait(lambda: len(self._jobs) < self._max_in_flight)
        self._frames += 1
        job = _Job(self._frames)
        if len(self._threads) < self._workers:
            thread = threading.Thread(
                target=_work,
                args=(self._shared,),
                name=f"zstd-frames-{len(self._threads) + 1}",
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)
        with self._shared.cond:
            self._shared.pending.append(job)
            self._shared.cond.notify_all()
        self._jobs.append(job)
        self._open = job

    def _wait(self, ready: Callable[[], bool]) -> None:
        """Emit what the oldest job has until ready() holds (checked under the lock)."""
        shared = self._shared
        while True:
            with shared.cond:
                if ready():
                    return
                head = self._jobs[0] if self._jobs else None
                assert head is not None  # a wait is only for room that a job holds
                while not head.output and not head.done and not ready():
                    shared.cond.wait()
            self._drain(block=False)

    def _drain(self, *, block: bool) -> None:
        """Emit the oldest jobs' output in order; with block, until every job is through."""
        while self._jobs and self._drain_head(block=block):
            pass

    def _drain_ended(self) -> None:
        """Every frame whose end was fed, emitted (waiting for its worker) and reported."""
        while self._jobs and self._jobs[0] is not self._open:
            self._drain_head(block=True)

    def _drain_head(self, *, block: bool) -> bool:
        """Emit the oldest job's output; True once all of it is out and its end reported."""
        shared = self._shared
        head = self._jobs[0]
        while True:
            with shared.cond:
                while block and not head.output and not head.done:
                    shared.cond.wait()
                chunks, head.output, head.output_bytes = head.output, deque(), 0
                finished = head.done  # set after the last append: nothing more will come
                if chunks:
                    shared.cond.notify_all()
            for chunk in chunks:
                self._emit(memoryview(chunk))
            if finished:
                break
            if not block:
                return False
        if head.error is not None:
            raise head.error
        self._jobs.popleft()
        if head.end is not None:
            self._on_boundary(head.end - self._feed_start)
        return True

    def _drain_all(self) -> None:
        if self._open is not None:
            with self._shared.cond:
                self._open.closed = True
                self._shared.cond.notify_all()
            self._open = None
        self._drain(block=True)


class _Emitter:
    def __init__(self, emit: Emit) -> None:
        self._emit = emit

    def write(self, data: bytes) -> int:
        self._emit(memoryview(data))
        return len(data)
