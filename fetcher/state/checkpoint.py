"""The checkpoint: enough to carry on after kill -9 exactly where the last one was taken.

One JSON document, written atomically after every file it mentions has been flushed. Each
stage's state is its own typed record with its own version, so a change to one stage's state
refuses only checkpoints of that stage, by name, instead of surfacing as a KeyError at resume.
The document carries a SHA-256 of its body: a damaged or hand-edited checkpoint is set aside
with one line and the fetch starts over. Nothing in it is trusted without being checked, here
for shape and range, and by the stages for agreement with what is on disk.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from fetcher.state.files import write_atomically

CHECKPOINT_NAME = "checkpoint.json"
VERSION = 2

T = TypeVar("T")
Json = dict[str, Any]


class StateError(ValueError):
    """A checkpoint that cannot be used; the message says which field and why."""


# --- typed readers: every field is checked before it is used ---------------------------------


def _get(data: Mapping[str, Any], key: str, where: str) -> Any:
    if not isinstance(data, Mapping):
        raise StateError(f"{where} is not an object")
    if key not in data:
        raise StateError(f"{where}.{key} is missing")
    return data[key]


def _int(data: Mapping[str, Any], key: str, where: str, *, low: int = 0) -> int:
    value = _get(data, key, where)
    if not isinstance(value, int) or isinstance(value, bool) or value < low or value >= 1 << 63:
        raise StateError(f"{where}.{key} is not a whole number >= {low}: {value!r}")
    return value


def _bool(data: Mapping[str, Any], key: str, where: str) -> bool:
    value = _get(data, key, where)
    if not isinstance(value, bool):
        raise StateError(f"{where}.{key} is not true or false: {value!r}")
    return value


def _str(data: Mapping[str, Any], key: str, where: str) -> str:
    value = _get(data, key, where)
    if not isinstance(value, str):
        raise StateError(f"{where}.{key} is not a string: {value!r}")
    return value


def _optional(
    data: Mapping[str, Any], key: str, where: str, read: Callable[[Any, str], T]
) -> T | None:
    value = _get(data, key, where)
    return None if value is None else read(value, f"{where}.{key}")


def _opt_str(data: Mapping[str, Any], key: str, where: str) -> str | None:
    return _optional(data, key, where, _as_str)


def _as_str(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise StateError(f"{where} is not a string: {value!r}")
    return value


# Times a filesystem can store (the tar reader refuses others): about the years -1200 to 5100.
MAX_TIME = 1e11


def _as_time(value: Any, where: str) -> float:
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not math.isfinite(value)
        or abs(value) > MAX_TIME
    ):
        raise StateError(f"{where} is not a time a file can have: {value!r}")
    return float(value)


def _is_name(part: Any) -> bool:
    """One path component inside the tree: never empty, '.', '..', with a slash or NUL, or
    longer than a filesystem allows."""
    return (
        isinstance(part, str)
        and part not in ("", ".", "..")
        and "/" not in part
        and "\0" not in part
        and len(part.encode("utf-8", "surrogateescape")) <= 255
    )


def _bytes(data: Mapping[str, Any], key: str, where: str, *, limit: int = 1 << 20) -> bytes:
    text = _str(data, key, where)
    try:
        value = base64.b64decode(text, validate=True)
    except ValueError:
        raise StateError(f"{where}.{key} is not base64") from None
    if len(value) > limit:
        raise StateError(f"{where}.{key} holds {len(value)} bytes, more than {limit}")
    return value


def _list(data: Mapping[str, Any], key: str, where: str) -> list[Any]:
    value = _get(data, key, where)
    if not isinstance(value, list):
        raise StateError(f"{where}.{key} is not a list")
    return value


def _text_map(data: Mapping[str, Any], key: str, where: str) -> dict[str, str]:
    value = _get(data, key, where)
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise StateError(f"{where}.{key} is not a map of strings")
    return dict(value)


def _version(data: Mapping[str, Any], where: str, expected: int) -> None:
    found = _get(data, "v", where)
    if found != expected:
        raise StateError(f"{where} has version {found!r}; this fetcher reads version {expected}")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# --- the stages' states --------------------------------------------------------------------


@dataclass(frozen=True)
class OpenFile:
    """The regular file being written at the restore point, and how far."""

    parts: tuple[str, ...]
    mode: int
    offset: int
    skipping: bool  # read past: it was already complete on disk
    size: int  # what its header declared (0 for a single file, whose size is not known)

    def to_json(self) -> Json:
        return {"parts": list(self.parts), "mode": self.mode, "offset": self.offset,
                "skipping": self.skipping, "size": self.size}  # fmt: skip

    @classmethod
    def from_json(cls, data: Any, where: str) -> OpenFile:
        parts = _list(data, "parts", where)
        if not parts or not all(_is_name(p) for p in parts):
            raise StateError(f"{where}.parts is not a relative path inside the tree")
        return cls(tuple(parts), _int(data, "mode", where), _int(data, "offset", where),
                   _bool(data, "skipping", where), _int(data, "size", where))  # fmt: skip


@dataclass(frozen=True)
class DirMode:
    parts: tuple[str, ...]
    mode: int
    mtime: float | None


@dataclass(frozen=True)
class TreeState:
    VERSION = 2
    bytes_written: int
    files_written: int
    dir_modes: tuple[DirMode, ...] = ()
    open_file: OpenFile | None = None

    def to_json(self) -> Json:
        return {
            "v": self.VERSION,
            "bytes_written": self.bytes_written,
            "files_written": self.files_written,
            "dir_modes": [[list(d.parts), d.mode, d.mtime] for d in self.dir_modes],
            "open_file": self.open_file.to_json() if self.open_file else None,
        }

    @classmethod
    def from_json(cls, data: Any, where: str = "tree") -> TreeState:
        _version(data, where, cls.VERSION)
        modes = []
        for index, entry in enumerate(_list(data, "dir_modes", where)):
            at = f"{where}.dir_modes[{index}]"
            if not isinstance(entry, list) or len(entry) != 3 or not isinstance(entry[0], list):
                raise StateError(f"{at} is not [parts, mode, mtime]")
            parts, mode, mtime = entry
            if not all(_is_name(p) for p in parts):
                raise StateError(f"{at} is not a relative path")
            if not isinstance(mode, int) or isinstance(mode, bool) or not 0 <= mode <= 0o7777:
                raise StateError(f"{at} has a bad mode {mode!r}")
            modes.append(
                DirMode(tuple(parts), mode, None if mtime is None else _as_time(mtime, at))
            )
        return cls(
            _int(data, "bytes_written", where),
            _int(data, "files_written", where),
            tuple(modes),
            _optional(data, "open_file", where, OpenFile.from_json),
        )


@dataclass(frozen=True)
class TarState:
    VERSION = 1
    header: bytes  # the part of a 512-byte header block read so far
    remaining: int  # content bytes left in the current member
    padding: int
    collecting: str | None  # type flag of an extended header being read
    extended: bytes
    overrides: dict[str, str]
    pax_globals: dict[str, str]
    in_file: bool
    mtime: float | None
    ended: bool
    members: int

    def to_json(self) -> Json:
        return {
            "v": self.VERSION,
            "header": _b64(self.header),
            "remaining": self.remaining,
            "padding": self.padding,
            "collecting": self.collecting,
            "extended": _b64(self.extended),
            "overrides": self.overrides,
            "globals": self.pax_globals,
            "in_file": self.in_file,
            "mtime": self.mtime,
            "ended": self.ended,
            "members": self.members,
        }

    @classmethod
    def from_json(cls, data: Any, where: str = "tar") -> TarState:
        _version(data, where, cls.VERSION)
        header = _bytes(data, "header", where, limit=511)
        padding = _int(data, "padding", where)
        if padding >= 512:
            raise StateError(f"{where}.padding is {padding}, not less than a block")
        collecting = _opt_str(data, "collecting", where)
        if collecting is not None and len(collecting) != 1:
            raise StateError(f"{where}.collecting is not a tar type flag")
        return cls(
            header,
            _int(data, "remaining", where),
            padding,
            collecting,
            _bytes(data, "extended", where),
            _text_map(data, "overrides", where),
            _text_map(data, "globals", where),
            _bool(data, "in_file", where),
            _optional(data, "mtime", where, _as_time),
            _bool(data, "ended", where),
            _int(data, "members", where),
        )


@dataclass(frozen=True)
class ZipState:
    """A zip read up to an entry boundary: how many entries, and which one comes next."""

    VERSION = 1
    entries: int  # complete before the restore point
    names: bytes  # digest chain of their names (zipdir.names_digest), b"" before the first
    next_name: bytes  # the local header at the restore point must name this entry

    def to_json(self) -> Json:
        return {"v": self.VERSION, "entries": self.entries, "names": self.names.hex(),
                "next_name": _b64(self.next_name)}  # fmt: skip

    @classmethod
    def from_json(cls, data: Any, where: str = "zip") -> ZipState:
        _version(data, where, cls.VERSION)
        entries = _int(data, "entries", where)
        try:
            names = bytes.fromhex(_str(data, "names", where))
        except ValueError:
            raise StateError(f"{where}.names is not hexadecimal") from None
        if len(names) != (32 if entries else 0):
            raise StateError(f"{where}.names is not the digest of {entries} entry names")
        next_name = _bytes(data, "next_name", where, limit=0xFFFF)  # a header's 16-bit length
        if not next_name:
            raise StateError(f"{where}.next_name is empty")
        return cls(entries, names, next_name)


LAYOUTS = ("tar", "zip", "file", "detect")


@dataclass(frozen=True)
class SinkState:
    VERSION = 1
    layout: str
    head: bytes = b""  # decoded bytes held while the layout is still being detected
    tar: TarState | None = None
    zip: ZipState | None = None

    def to_json(self) -> Json:
        return {"v": self.VERSION, "layout": self.layout, "head": _b64(self.head),
                "tar": self.tar.to_json() if self.tar else None,
                "zip": self.zip.to_json() if self.zip else None}  # fmt: skip

    @classmethod
    def from_json(cls, data: Any, where: str = "sink") -> SinkState:
        _version(data, where, cls.VERSION)
        layout = _str(data, "layout", where)
        if layout not in LAYOUTS:
            raise StateError(f"{where}.layout {layout!r} is not one of {', '.join(LAYOUTS)}")
        tar = _optional(data, "tar", where, TarState.from_json)
        if (layout == "tar") != (tar is not None):
            raise StateError(f"{where}: a tar state goes with the tar layout, and only with it")
        # Checkpoints written before zip was read have no zip field.
        zip_state = _optional(data, "zip", where, ZipState.from_json) if "zip" in data else None
        if (layout == "zip") != (zip_state is not None):
            raise StateError(f"{where}: a zip state goes with the zip layout, and only with it")
        return cls(layout, _bytes(data, "head", where, limit=511), tar, zip_state)


COMPRESSIONS = ("none", "zst", "gz", "xz", "bz2", "lz4")


HISTORY_PREFIX = "history-"
# The decoder's own fields stay small; the history they go with is a file of its own.
MAX_DECODER_FIELDS = 256 << 10
MAX_HISTORY = 1 << 31


@dataclass(frozen=True)
class DecoderPoint:
    """A decoder's state inside a frame or member, and the history file that goes with it."""

    VERSION = 1
    codec: str
    fields: Json
    history_serial: int  # the file is HISTORY_PREFIX + serial + ".bin" in the state directory
    history_size: int
    history_sha256: str

    @property
    def history_name(self) -> str:
        return history_name(self.history_serial)

    def to_json(self) -> Json:
        return {"v": self.VERSION, "codec": self.codec, "fields": self.fields,
                "history_serial": self.history_serial, "history_size": self.history_size,
                "history_sha256": self.history_sha256}  # fmt: skip

    @classmethod
    def from_json(cls, data: Any, where: str = "decoder") -> DecoderPoint:
        _version(data, where, cls.VERSION)
        codec = _str(data, "codec", where)
        if codec not in MID_STREAM_CODECS:
            raise StateError(f"{where}.codec {codec!r} is unknown")
        fields = _get(data, "fields", where)
        if not isinstance(fields, dict):
            raise StateError(f"{where}.fields is not an object")
        if len(json.dumps(fields)) > MAX_DECODER_FIELDS:
            raise StateError(f"{where}.fields is larger than {MAX_DECODER_FIELDS} bytes")
        size = _int(data, "history_size", where)
        if size > MAX_HISTORY:
            raise StateError(f"{where}.history_size {size} is larger than {MAX_HISTORY}")
        digest = _str(data, "history_sha256", where)
        if len(digest) != 64 or not all(c in "0123456789abcdef" for c in digest):
            raise StateError(f"{where}.history_sha256 is not a SHA-256 in hexadecimal")
        return cls(codec, fields, _int(data, "history_serial", where), size, digest)


def history_name(serial: int) -> str:
    return f"{HISTORY_PREFIX}{serial}.bin"


def history_serial(name: str) -> int | None:
    """The serial in a history file's name, None for any other name."""
    middle = name.removeprefix(HISTORY_PREFIX).removesuffix(".bin")
    if len(middle) + len(HISTORY_PREFIX) + 4 != len(name) or not middle.isdigit():
        return None
    return int(middle)


MID_STREAM_CODECS = ("zstd", "gzip", "xz")


@dataclass(frozen=True)
class RestorePoint:
    """Every stage's state at one stream position: a run can carry on from here."""

    VERSION = 2
    position: int
    sha256_state: bytes
    compression: str
    sink: SinkState
    tree: TreeState
    decoder: DecoderPoint | None = None  # None: the position is a frame or member boundary

    def to_json(self) -> Json:
        return {
            "v": self.VERSION,
            "position": self.position,
            "sha256_state": self.sha256_state.hex(),
            "compression": self.compression,
            "sink": self.sink.to_json(),
            "tree": self.tree.to_json(),
            "decoder": self.decoder.to_json() if self.decoder else None,
        }

    @classmethod
    def from_json(cls, data: Any, where: str = "restore") -> RestorePoint:
        _version(data, where, cls.VERSION)
        compression = _str(data, "compression", where)
        if compression not in COMPRESSIONS:
            raise StateError(f"{where}.compression {compression!r} is unknown")
        try:
            digest_state = bytes.fromhex(_str(data, "sha256_state", where))
        except ValueError:
            raise StateError(f"{where}.sha256_state is not hexadecimal") from None
        return cls(
            _int(data, "position", where),
            digest_state,
            compression,
            SinkState.from_json(_get(data, "sink", where), f"{where}.sink"),
            TreeState.from_json(_get(data, "tree", where), f"{where}.tree"),
            _optional(data, "decoder", where, DecoderPoint.from_json),
        )


# --- the download window ----------------------------------------------------------------------


@dataclass(frozen=True)
class HeldRange:
    """Bytes [start, end) of the archive in the part file, and the CRC32C they were written with.

    Nothing flushes the part file before a checkpoint names its ranges: a range is reused only
    once its bytes, read back, still give this CRC32C.
    """

    start: int
    end: int
    crc32c: int


@dataclass(frozen=True)
class WindowState:
    """The ranges of the archive the part file holds ahead of the restore point."""

    VERSION = 1
    ranges: tuple[HeldRange, ...] = ()

    def total(self, start: int = 0) -> int:
        return sum(r.end - max(r.start, start) for r in self.ranges if r.end > start)

    def to_json(self) -> Json:
        return {"v": self.VERSION, "ranges": [[r.start, r.end, r.crc32c] for r in self.ranges]}

    @classmethod
    def from_json(cls, data: Any, where: str = "window") -> WindowState:
        _version(data, where, cls.VERSION)
        ranges: list[HeldRange] = []
        for index, entry in enumerate(_list(data, "ranges", where)):
            if not (isinstance(entry, list) and len(entry) == 3 and all(map(_whole, entry))
                    and entry[0] < entry[1] and entry[2] < 1 << 32):  # fmt: skip
                raise StateError(
                    f"{where}.ranges[{index}] is not [start, end, crc32c] with start < end"
                )
            if ranges and entry[0] < ranges[-1].end:
                raise StateError(f"{where}.ranges[{index}] overlaps or precedes the one before")
            ranges.append(HeldRange(entry[0], entry[1], entry[2]))
        return cls(tuple(ranges))


@dataclass(frozen=True)
class CompletedFile:
    """A file finished and flushed after the restore point: a rerun reads past it.

    Keyed by its ordinal in the stream, never by name alone: an archive may hold one path
    twice, and only the same member of the stream is the same file.
    """

    ordinal: int
    path: str
    size: int


@dataclass(frozen=True)
class RequestIdentity:
    """What a checkpoint was taken for: another command line never resumes it."""

    source: str  # fingerprint of the source URL
    sha256: str | None
    format: str

    def to_json(self) -> Json:
        return {"source": self.source, "sha256": self.sha256, "format": self.format}

    @classmethod
    def from_json(cls, data: Any, where: str = "request") -> RequestIdentity:
        return cls(_str(data, "source", where), _opt_str(data, "sha256", where),
                   _str(data, "format", where))  # fmt: skip


@dataclass
class Checkpoint:
    request: RequestIdentity
    # What the origin served: another file never resumes this state.
    length: int | None = None
    etag: str | None = None
    last_modified: str | None = None
    restore: RestorePoint | None = None  # None: the stream restarts at byte 0
    completed: dict[int, CompletedFile] = field(default_factory=dict)
    # Byte ranges of the archive held in the part file (parallel downloads).
    window: WindowState = field(default_factory=WindowState)
    fetched_bytes: int = 0

    @property
    def position(self) -> int:
        return self.restore.position if self.restore else 0

    def to_json(self) -> Json:
        return {
            "request": self.request.to_json(),
            "length": self.length,
            "etag": self.etag,
            "last_modified": self.last_modified,
            "restore": self.restore.to_json() if self.restore else None,
            "completed": [[c.ordinal, c.path, c.size] for c in self.completed.values()],
            "window": self.window.to_json(),
            "fetched_bytes": self.fetched_bytes,
        }

    @classmethod
    def from_json(cls, body: Any) -> Checkpoint:
        where = "checkpoint"
        completed: dict[int, CompletedFile] = {}
        for index, entry in enumerate(_list(body, "completed", where)):
            at = f"{where}.completed[{index}]"
            if not (isinstance(entry, list) and len(entry) == 3 and isinstance(entry[1], str)
                    and all(_whole(v) for v in (entry[0], entry[2]))):  # fmt: skip
                raise StateError(f"{at} is not [ordinal, path, size]")
            completed[entry[0]] = CompletedFile(entry[0], entry[1], entry[2])
        window = WindowState.from_json(_get(body, "window", where), f"{where}.window")
        length = _optional(body, "length", where, _as_whole)
        if length is not None and window.ranges and window.ranges[-1].end > length:
            raise StateError(f"{where}.window reaches past the file's {length} bytes")
        restore = _optional(body, "restore", where, RestorePoint.from_json)
        if restore is not None and length is not None and restore.position > length:
            raise StateError(f"{where}.restore.position is past the file's {length} bytes")
        return cls(
            RequestIdentity.from_json(_get(body, "request", where)),
            length,
            _opt_str(body, "etag", where),
            _opt_str(body, "last_modified", where),
            restore,
            completed,
            window,
            _int(body, "fetched_bytes", where),
        )

    def encode(self) -> bytes:
        body = json.dumps(self.to_json(), separators=(",", ":"), sort_keys=True)
        digest = hashlib.sha256(body.encode()).hexdigest()
        return f'{{"version":{VERSION},"sha256":"{digest}","body":{body}}}'.encode()


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 63


def _as_whole(value: Any, where: str) -> int:
    if not _whole(value):
        raise StateError(f"{where} is not a whole number: {value!r}")
    return int(value)


def decode(blob: bytes) -> Checkpoint:
    """The checkpoint in blob; StateError naming what is wrong with it."""
    try:
        document = json.loads(blob)
    except ValueError as error:
        raise StateError(f"it is not JSON: {error}") from None
    if not isinstance(document, dict):
        raise StateError("it is not a JSON object")
    if document.get("version") != VERSION:
        raise StateError(f"it has version {document.get('version')!r}, not {VERSION}")
    body = document.get("body")
    expected = document.get("sha256")
    actual = hashlib.sha256(
        json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
    ).hexdigest()
    if not isinstance(expected, str) or expected != actual:
        raise StateError("its checksum does not match its content (damaged or edited)")
    return Checkpoint.from_json(body)


def load_checkpoint(path: Path) -> tuple[Checkpoint | None, str]:
    """The checkpoint at path, or None and why there is none to use."""
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        return None, "no checkpoint"
    except OSError as error:
        return None, f"the checkpoint is unreadable ({error.strerror})"
    try:
        return decode(blob), ""
    except StateError as error:
        if str(error).startswith("it is not JSON"):
            return None, f"the checkpoint is unreadable ({error})"
        return None, f"the checkpoint cannot be used: {error}"
    except RecursionError:
        return None, "the checkpoint cannot be used: it is nested too deeply"


def save_checkpoint(path: Path, blob: bytes) -> None:
    write_atomically(path, blob)
