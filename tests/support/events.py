"""Waiting for something to happen, not for time to pass.

Tests of kills, stalls and signals act when an event is seen (bytes the origin sent, a
checkpoint written, a line logged), never after a fixed sleep: on a busy machine a fixed sleep
is either too short (nothing happened yet) or far too long. ``wait_until`` polls a predicate;
its ``timeout`` is only a safety net for a test that would otherwise hang, generous on purpose,
and never the bound a test asserts.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["PATIENCE_S", "checkpoint_progress", "read_checkpoint", "restore_position", "wait_until"]

T = TypeVar("T")

PATIENCE_S = 60.0
"""How long to wait for an event that should come within a second on an idle machine."""

_POLL_S = 0.01


def wait_until(
    predicate: Callable[[], T], *, what: str, timeout: float = PATIENCE_S, poll: float = _POLL_S
) -> T:
    """The first truthy value of ``predicate()``; AssertionError naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"gave up after {timeout:.0f} s waiting for {what}")
        time.sleep(poll)


def read_checkpoint(path: Path) -> dict[str, Any] | None:
    """The body of the checkpoint at ``path``, or None while there is none (it is renamed
    into place whole, so a present file always parses)."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    assert isinstance(data, dict) and isinstance(data.get("body"), dict), data
    body: dict[str, Any] = data["body"]
    return body


def restore_position(path: Path) -> int | None:
    """Where a resume from the checkpoint at ``path`` would carry on; None while there is no
    checkpoint or it has no restore point yet."""
    restore = (read_checkpoint(path) or {}).get("restore") or {}
    position = restore.get("position")
    return None if position is None else int(position)


def checkpoint_progress(path: Path) -> int:
    """Bytes of the archive a checkpoint at ``path`` accounts for; 0 while there is none."""
    data = read_checkpoint(path)
    if data is None:
        return 0
    restore = data.get("restore") or {}
    ranges = (data.get("window") or {}).get("ranges") or []
    held = sum(int(end) - int(start) for start, end, _ in ranges)
    return max(int(data.get("fetched_bytes") or 0), int(restore.get("position") or 0), held)
