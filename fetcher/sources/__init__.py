"""Where the ordered bytes of the archive come from: one stream, parallel ranges, or both.

A source is two methods: ``chunks()`` yields the file's bytes in order from the position it
was made for, and ``close()``. Failures it cannot retry past are raised: ``SourceChanged``
when an origin now serves another file (the fetch then starts over), ``SourceUnreachable``
when every origin gave up. A source that keeps bytes on disk ahead of the decoder is also a
``Window``: it says which ranges it holds (with the CRC32C each was written with, so that no
flush is needed before a checkpoint names them) and takes back the space behind a checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from fetcher.http.exchange import Identity
from fetcher.state.checkpoint import HeldRange


class SourceChanged(Exception):
    """An origin now serves another file than the one being assembled."""


class RangesIgnored(Exception):
    """Every origin is left, and one was left for answering a range with the whole file
    (some honour only the probe's one byte): the fetch goes on over one stream."""


@dataclass
class SourceStats:
    """What a source has done so far; shared with the pipeline, which reports it."""

    bytes_received: int = 0
    requests: int = 0
    origin: str = ""
    connections: int = 1  # the most used at once
    window_bytes: int = 0  # received ahead of the decoder, so through the part file
    identity: Identity | None = None
    notes: list[str] = field(default_factory=list)


class Source(Protocol):
    def chunks(self) -> Iterator[bytes]: ...

    def close(self) -> None: ...


@runtime_checkable
class Window(Protocol):
    """Bytes held on disk ahead of the decoder, reusable by a later run."""

    def holdings(self) -> list[HeldRange]: ...

    def release_below(self, position: int) -> None: ...
