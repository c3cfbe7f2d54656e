"""Putting a verified tree in place, and taking an old one away; safe to kill at any point.

The tree is extracted under DIR/.model-fetch/tree, so it moves into DIR by renames on one
filesystem. Before the first rename the marker is written into a journal beside the tree; a
run killed between two renames is finished by the next one instead of being mistaken for
foreign files. The marker itself comes last: it is the proof that DIR holds the model.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict
from pathlib import Path

from fetcher.errors import FetchError
from fetcher.state.files import fsync_directory, remove_tree, write_atomically
from fetcher.state.libc import sync_filesystem
from fetcher.state.marker import Marker, remove_marker, write_marker

log = logging.getLogger("model-fetch")

WORK_DIR_NAME = ".model-fetch"
COMMIT_JOURNAL = "commit.json"
REMOVAL_JOURNAL = "remove.json"


def staging_dir(output: Path) -> Path:
    return output / WORK_DIR_NAME / "tree"


def commit(output: Path, marker: Marker) -> None:
    """Move the verified tree into place, then write the marker."""
    staging = staging_dir(output)
    sync_directory_tree(staging)
    marker.entries = sorted(path.name for path in staging.iterdir())
    for entry in marker.entries:
        if os.path.lexists(output / entry):
            raise FetchError(
                f"{output / entry} already exists and was not written by model-fetch",
                "empty the output directory or choose another one; nothing was overwritten",
            )
    write_atomically(output / WORK_DIR_NAME / COMMIT_JOURNAL, json.dumps(asdict(marker)).encode())
    _finish(output, marker)


def finish_interrupted_commit(output: Path) -> bool:
    """A verified tree whose move into place was cut short: complete it; True if there was one."""
    journal = output / WORK_DIR_NAME / COMMIT_JOURNAL
    try:
        marker = Marker(**json.loads(journal.read_text()))
    except FileNotFoundError:
        return False
    except (ValueError, TypeError) as error:
        log.warning("ignoring an unreadable commit journal (%s)", error)
        return False
    log.info("finishing the move into place of %s, verified by an earlier run", marker.source)
    _finish(output, marker)
    return True


def _finish(output: Path, marker: Marker) -> None:
    staging = staging_dir(output)
    for entry in marker.entries:
        if os.path.lexists(staging / entry):
            (staging / entry).rename(output / entry)
    fsync_directory(output)
    write_marker(output, marker)


def remove_previous(output: Path, previous: Marker) -> None:
    """Take away the files of the model the marker describes; resumable at every step.

    The entries to remove go into a journal first, then the marker goes (so a crash never
    leaves a marker over a partial tree), then the entries; a run killed on the way finishes
    the removal from the journal instead of finding files it did not write.
    """
    journal = output / WORK_DIR_NAME / REMOVAL_JOURNAL
    journal.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(journal, json.dumps(previous.entries).encode())
    _remove_journalled(output, journal, previous.entries)


def finish_interrupted_removal(output: Path) -> None:
    journal = output / WORK_DIR_NAME / REMOVAL_JOURNAL
    try:
        entries = json.loads(journal.read_text())
    except FileNotFoundError:
        return
    except ValueError:
        entries = None
    if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
        log.warning("ignoring an unreadable removal journal")
        journal.unlink()
        return
    log.info("finishing the removal of the previous model (%d entries)", len(entries))
    _remove_journalled(output, journal, entries)


def _remove_journalled(output: Path, journal: Path, entries: list[str]) -> None:
    """Marker first, then the entries, then the journal that named them."""
    remove_marker(output)
    _remove_entries(output, entries)
    journal.unlink()


def _remove_entries(output: Path, entries: list[str]) -> None:
    for entry in entries:
        if not entry or "/" in entry or entry in (".", "..", WORK_DIR_NAME):
            continue  # a journal names top-level entries of DIR, never anything else
        remove_tree(output / entry)


def sync_directory_tree(path: Path) -> None:
    """Flush every file written to the volume before a marker or checkpoint vouches for it."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        sync_filesystem(fd)
    finally:
        os.close(fd)
