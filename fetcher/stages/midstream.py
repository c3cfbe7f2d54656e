"""What a decoder hands over to carry on from inside a frame or member, and who takes it.

A frame or member boundary needs nothing but the stream position. A point inside one needs
the decoder's own state: small fields (table descriptions, a running check, bit offsets) and
the output history the rest of the frame may refer back to. The history can be large (a zstd
window), so it travels beside the checkpoint in a file of its own, not inside it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# Asked by a decoder between blocks: whether a restore point is wanted soon. Cheap to call.
RestoreWanted = Callable[[], bool]


def never_wanted() -> bool:
    return False


@dataclass(frozen=True)
class MidState:
    codec: str  # "zstd", "gzip" or "xz": the decoder that can take it
    fields: dict[str, Any]  # JSON-safe values; bytes as base64 text
    history: bytes = field(repr=False)  # output the rest of the frame may refer back to


class PointReport:
    """Reports a point inside a frame or member: its MidState is readable (``state``) only
    while the on_boundary call that announces it runs."""

    def __init__(self) -> None:
        self.state: MidState | None = None

    def report(self, state: MidState, on_boundary: Callable[[int], None], offset: int) -> None:
        self.state = state
        try:
            on_boundary(offset)
        finally:
            self.state = None
