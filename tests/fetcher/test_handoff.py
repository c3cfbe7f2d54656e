"""The hand-off between the push-based stages and a pull-based reader on its own thread."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest

from fetcher.stages.handoff import Handoff

Pause = Callable[[int], None]


def _lengths(chunks: Iterator[bytes], pause: Pause) -> list[int]:
    seen = []
    for chunk in chunks:
        seen.append(len(chunk))
        pause(len(chunk))
    return seen


def test_the_reader_sees_every_chunk_and_its_events_run_on_the_callers_thread() -> None:
    events: list[tuple[int, str]] = []
    handoff: Handoff[int, list[int]] = Handoff(
        _lengths, lambda n: events.append((n, threading.current_thread().name)), "reader"
    )
    for size in (3, 5, 8):
        handoff.push(b"x" * size)
        assert events[-1][0] == size  # handled before push() returned: never concurrently
    assert handoff.close() == [3, 5, 8]
    assert {name for _, name in events} == {threading.current_thread().name}


def test_a_reader_error_is_raised_on_the_callers_thread() -> None:
    def failing(chunks: Iterator[bytes], pause: Pause) -> None:
        for _ in chunks:
            raise ValueError("bad bytes")

    handoff: Handoff[int, None] = Handoff(failing, lambda n: None, "reader")
    with pytest.raises(ValueError, match="bad bytes"):
        handoff.push(b"x")
    with pytest.raises(ValueError, match="bad bytes"):
        handoff.close()


def _reader_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "doomed-reader" and t.is_alive()]


def test_an_error_in_an_event_handler_cancels_the_reader() -> None:
    def stop(n: int) -> None:
        raise KeyboardInterrupt  # as a signal's exception would, inside on_restorable

    handoff: Handoff[int, list[int]] = Handoff(_lengths, stop, "doomed-reader")
    with pytest.raises(KeyboardInterrupt):
        handoff.push(b"abc")
    assert not _reader_threads()


def test_release_ends_a_reader_waiting_for_input() -> None:
    handoff: Handoff[int, list[int]] = Handoff(_lengths, lambda n: None, "doomed-reader")
    handoff.push(b"abc")
    assert _reader_threads()  # it waits for the next chunk
    handoff.release()
    assert not _reader_threads()
