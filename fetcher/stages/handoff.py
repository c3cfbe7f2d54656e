"""Runs a pull-based reader (one that iterates over chunks) inside the push-based stages.

The reader runs on a thread of its own, but never at the same time as the caller: push()
hands it a chunk and waits until it asks for the next one, and a reader that stops at a point
of interest (pause()) waits there while the caller handles the event. So the reader and the
caller's callbacks share their state without locks, the callbacks run on the caller's thread
(where a stop signal's exception belongs), and at most one chunk is ever in flight.

Errors cross back: the reader's are raised by push() or close() on the caller's thread; an
error in a callback, or release(), cancels the reader wherever it waits, so no thread is left
blocked behind an early exit.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

E = TypeVar("E")
R = TypeVar("R")


class Cancelled(BaseException):
    """Raised inside the reader when the caller gives up on it (never seen by the caller)."""


_END = object()  # to the reader: the input has ended
_CANCEL = object()  # to the reader: stop where you are
_GO_ON = object()  # to the reader: the event was handled
_WANT = object()  # to the caller: the reader wants the next chunk


@dataclass(frozen=True)
class _Event(Generic[E]):
    value: E


@dataclass(frozen=True)
class _Done(Generic[R]):
    value: R


@dataclass(frozen=True)
class _Failed:
    error: BaseException


class Handoff(Generic[E, R]):
    """reader(chunks, pause) runs on its own thread; its return value is close()'s."""

    def __init__(
        self,
        reader: Callable[[Iterator[bytes], Callable[[E], None]], R],
        on_event: Callable[[E], None],
        name: str,
    ) -> None:
        self._to_reader: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._to_caller: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._on_event = on_event
        self._reader = reader
        self._result: _Done[R] | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._running = False

    # --- the caller's side -----------------------------------------------------------------

    def push(self, data: bytes) -> None:
        """Let the reader take data; return once it has used all of it."""
        if self._error is not None:
            raise self._error
        if self._result is not None:
            return  # the reader finished early; what follows is its business (see close())
        if not self._running:
            self._running = True
            self._thread.start()
            self._wait()  # until it asks for its first chunk
            if self._result is not None:
                return
        self._to_reader.put(data)
        self._wait()

    def close(self) -> R:
        """End the input; the reader's result once it has finished."""
        if self._error is not None:
            raise self._error
        if not self._running:
            self._running = True
            self._thread.start()
            self._wait()
        if self._result is None:
            self._to_reader.put(_END)
            self._wait()
        assert self._result is not None, "the reader asked for more after the end of input"
        return self._result.value

    def release(self) -> None:
        """Stop the reader if it still waits for anything; safe to call at any time."""
        if self._running and self._result is None and self._thread.is_alive():
            self._to_reader.put(_CANCEL)
            self._thread.join(timeout=5.0)

    def _wait(self) -> None:
        """Serve the reader's events until it wants data or has finished."""
        while True:
            message = self._to_caller.get()
            if message is _WANT:
                return
            if isinstance(message, _Event):
                try:
                    self._on_event(message.value)
                except BaseException:
                    self.release()
                    raise
                self._to_reader.put(_GO_ON)
                continue
            if isinstance(message, _Done):
                self._result = message
                return
            assert isinstance(message, _Failed)
            self._error = message.error
            self._thread.join(timeout=5.0)
            raise message.error

    # --- the reader's side -----------------------------------------------------------------

    def _run(self) -> None:
        try:
            result = self._reader(self._chunks(), self._pause)
        except Cancelled:
            return
        except BaseException as error:  # handed to the caller, which raises it
            self._to_caller.put(_Failed(error))
            return
        self._to_caller.put(_Done(result))

    def _chunks(self) -> Iterator[bytes]:
        while True:
            self._to_caller.put(_WANT)
            item = self._to_reader.get()
            if item is _END:
                return
            if item is _CANCEL:
                raise Cancelled
            assert isinstance(item, bytes)
            yield item

    def _pause(self, event: E) -> None:
        self._to_caller.put(_Event(event))
        if self._to_reader.get() is _CANCEL:
            raise Cancelled
