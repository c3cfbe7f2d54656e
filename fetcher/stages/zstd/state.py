"""A point inside a zstd frame, as saved in a checkpoint and checked field by field on load."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

from fetcher.stages.midstream import MidState
from fetcher.stages.zstd import fse
from fetcher.stages.zstd.blocks import FRAME_MAGIC, FrameHeader, header_size
from fetcher.stages.zstd.entropy import SequenceTable, check_huffman, described
from fetcher.stages.zstd.errors import FormatError
from fetcher.stages.zstd.sequences import Tables
from fetcher.stages.zstd.xxh64 import Xxh64
from fetcher.state.checkpoint import StateError

CODEC = "zstd"
_TABLE_FIELDS = ("literal_lengths", "offsets", "match_lengths")  # in fse kind order


@dataclass(frozen=True)
class ZstdPoint:
    """Everything a decoder needs to carry on from a block boundary inside a frame."""

    header: FrameHeader
    frames: int  # frames complete before this one
    blocks: int  # blocks of this frame before the point
    produced: int  # this frame's output before the point
    hash_state: bytes | None  # the content checksum's running state, when the frame has one
    huffman: bytes | None
    tables: Tables
    offsets: tuple[int, int, int]
    history: bytes  # the last min(window, produced) bytes of output

    def to_mid_state(self) -> MidState:
        fields: dict[str, Any] = {
            "frame_header": _b64(self.header.raw),
            "frames": self.frames,
            "blocks": self.blocks,
            "produced": self.produced,
            "xxh64_state": _b64(self.hash_state or b""),
            "huffman": _b64(self.huffman or b""),
            "repeat_offsets": list(self.offsets),
            "history_xxh64": _digest(self.history),
        }
        for name, table in zip(_TABLE_FIELDS, self.tables, strict=True):
            fields[name] = _b64(table.description if table is not None else b"")
        return MidState(CODEC, fields, self.history)


def from_mid_state(state: MidState) -> ZstdPoint:
    """Raises StateError naming the first field that does not check out."""
    if state.codec != CODEC:
        raise StateError(f"the decoder state is for {state.codec!r}, not zstd")
    fields = state.fields
    raw = _bytes(fields, "frame_header")
    if len(raw) < 5 or int.from_bytes(raw[:4], "little") != FRAME_MAGIC:
        raise StateError("zstd state: frame_header is not a zstd frame header")
    if header_size(raw[4]) != len(raw):
        raise StateError("zstd state: frame_header has the wrong size for its flags")
    header = FrameHeader.parse(raw)
    produced = _int(fields, "produced")
    if header.content_size is not None and produced > header.content_size:
        raise StateError("zstd state: produced is more than the frame's content size")
    hash_state = _bytes(fields, "xxh64_state")
    if header.checksum:
        try:
            Xxh64.from_state(hash_state)
        except ValueError as error:
            raise StateError(f"zstd state: xxh64_state: {error}") from None
    elif hash_state:
        raise StateError("zstd state: xxh64_state is set but the frame has no checksum")
    history = state.history
    if len(history) != min(header.window, produced):
        raise StateError(
            f"zstd state: history is {len(history)} bytes, not the "
            f"{min(header.window, produced)} the frame's window and output call for"
        )
    if fields.get("history_xxh64") != _digest(history):
        raise StateError("zstd state: history does not match history_xxh64")
    return ZstdPoint(
        header=header,
        frames=_int(fields, "frames"),
        blocks=_int(fields, "blocks", low=1),
        produced=produced,
        hash_state=hash_state if header.checksum else None,
        huffman=_huffman(fields),
        tables=_tables(fields),
        offsets=_offsets(fields, header.window),
        history=history,
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _digest(data: bytes) -> str:
    hasher = Xxh64()
    hasher.update(data)
    return f"{hasher.digest():016x}"


def _bytes(fields: dict[str, Any], name: str) -> bytes:
    value = fields.get(name)
    if not isinstance(value, str):
        raise StateError(f"zstd state: {name} is missing or not a string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise StateError(f"zstd state: {name} is not base64") from None


def _int(fields: dict[str, Any], name: str, *, low: int = 0) -> int:
    value = fields.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise StateError(f"zstd state: {name} is not a whole number >= {low}: {value!r}")
    return value


def _huffman(fields: dict[str, Any]) -> bytes | None:
    description = _bytes(fields, "huffman")
    if not description:
        return None
    try:
        check_huffman(description)
    except FormatError as error:
        raise StateError(f"zstd state: huffman: {error}") from None
    return description


def _tables(fields: dict[str, Any]) -> Tables:
    tables: list[SequenceTable | None] = []
    for kind, name in zip(
        (fse.LITERAL_LENGTHS, fse.OFFSETS, fse.MATCH_LENGTHS), _TABLE_FIELDS, strict=True
    ):
        description = _bytes(fields, name)
        if not description:
            tables.append(None)
            continue
        try:
            tables.append(described(kind, description))
        except FormatError as error:
            raise StateError(f"zstd state: {name}: {error}") from None
    return (tables[0], tables[1], tables[2])


def _offsets(fields: dict[str, Any], window: int) -> tuple[int, int, int]:
    value = fields.get("repeat_offsets")
    if (
        not isinstance(value, list)
        or len(value) != 3
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        or not all(1 <= v <= max(window, 8) for v in value)
    ):
        raise StateError(
            f"zstd state: repeat_offsets is not three offsets within the window: {value!r}"
        )
    return (value[0], value[1], value[2])
