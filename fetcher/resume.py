"""Whether a checkpoint left by an earlier run can be carried on from, and clearing one."""

from __future__ import annotations

import logging

from fetcher.request import FetchRequest
from fetcher.state.checkpoint import CHECKPOINT_NAME, Checkpoint, RestorePoint, load_checkpoint
from fetcher.state.files import remove_tree

log = logging.getLogger("model-fetch")


def start_afresh(request: FetchRequest) -> None:
    """Remove all state, and make the state directory again for a run from byte 0."""
    discard_state(request)
    request.state_dir.mkdir(parents=True, exist_ok=True)


def usable_checkpoint(request: FetchRequest) -> Checkpoint | None:
    """The checkpoint this request can carry on from; anything else is set aside, with why."""
    checkpoint, why = load_checkpoint(request.state_dir / CHECKPOINT_NAME)
    leftovers = request.staging.exists()
    if checkpoint is not None and checkpoint.request != request.identity():
        why = "the checkpoint was taken for another source, digest or format"
        checkpoint = None
    if checkpoint is not None and (checkpoint.position or checkpoint.completed) and not leftovers:
        why = "the extracted files the checkpoint describes are gone"
        checkpoint = None
    if checkpoint is not None and checkpoint.length is None and checkpoint.position:
        why = "the checkpoint does not say which file it was taken of"
        checkpoint = None
    if checkpoint is None:
        if leftovers or why != "no checkpoint":
            log.info("%s; removing the unfinished tree and starting from byte 0", why)
        discard_state(request)
        return None
    restore = checkpoint.restore
    log.info(
        "resuming from a checkpoint: byte %d of %s, %d files extracted%s",
        checkpoint.position,
        checkpoint.length if checkpoint.length is not None else "?",
        restore.tree.files_written if restore else 0,
        f", {len(checkpoint.completed)} more complete on disk" if checkpoint.completed else "",
    )
    if checkpoint.length is not None:
        held = checkpoint.window.total(checkpoint.position)
        missing = checkpoint.length - checkpoint.position - held
        if restore is None:
            log.info(
                "this stream can only restart at byte 0 (%s): re-fetching %d bytes, reusing %d "
                "held in the download window; the %d files already complete are read past, "
                "not written again",
                "no frame or member boundary had been passed when it was written",
                missing, held, len(checkpoint.completed),
            )  # fmt: skip
        else:
            log.info(
                "re-fetching %d bytes from byte %d%s, reusing %d held in the download window",
                missing, checkpoint.position, _where_inside(restore), held,
            )  # fmt: skip
    return checkpoint


def _where_inside(restore: RestorePoint) -> str:
    if restore.decoder is None:
        return " (a frame or member boundary)"
    inside = {"zstd": "a zstd frame", "gzip": "a gzip member", "xz": "an xz stream"}
    return (
        f" (inside {inside.get(restore.decoder.codec, restore.decoder.codec)}, with "
        f"{restore.decoder.history_size} bytes of its output history kept)"
    )


def discard_state(request: FetchRequest) -> None:
    """Remove all state: the staged tree, the checkpoint, the state directory."""
    for state in (request.staging.parent, request.workdir):
        if state is None:
            continue
        try:
            remove_tree(state)
        except OSError as error:
            log.warning("could not remove %s (%s); a later run clears it", state, error.strerror)
