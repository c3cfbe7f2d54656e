"""model-fetch pack DIR -o FILE: the command line of the packer.

The archive's mtimes are fixed by default (SOURCE_DATE_EPOCH when set, else 0), not taken from
the files: its SHA-256 is the model's identity in the pod annotation, and the same model bytes
should give the same digest from any checkout, copy or CI run. When a file was last touched is
an accident of how it was downloaded, not part of the model. --mtime keep stores them anyway.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import TextIO

import zstandard

from fetcher.cpus import available_cpus
from fetcher.errors import FetchError, Interrupted, UsageError
from fetcher.pack.archive import pack
from fetcher.pack.seektable import MAX_FRAME_DECOMPRESSED
from fetcher.units import human_bytes, parse_seconds, parse_size

_MIN_FRAME = 64 * 1024


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="model-fetch pack",
        description="Write DIR as a reproducible tar in independent zstd frames with a seek "
        "table, and print the archive's SHA-256 (the models.example.com/sha256 value).",
    )
    parser.add_argument("directory", metavar="DIR", type=Path)
    parser.add_argument("-o", "--output", metavar="FILE", required=True, type=Path)
    parser.add_argument(
        "--frame-size", metavar="SIZE", default="32MiB",
        help="tar stream bytes per zstd frame (default %(default)s)",
    )  # fmt: skip
    parser.add_argument("--level", metavar="N", type=int, default=3, help="zstd level (1-22)")
    parser.add_argument(
        "--mtime", metavar="keep|SECONDS",
        help="member mtimes: seconds since 1970, or keep for the files' own "
        "(default SOURCE_DATE_EPOCH, else 0)",
    )  # fmt: skip
    parser.add_argument(
        "--progress-interval", metavar="SECONDS", default="5",
        help="seconds between progress lines when stderr is not a terminal",
    )  # fmt: skip
    return parser


def _mtime(value: str | None) -> int | None:
    if value == "keep":
        return None
    text = value if value is not None else os.environ.get("SOURCE_DATE_EPOCH", "0")
    if not text.isdigit():
        raise UsageError(f"--mtime (or SOURCE_DATE_EPOCH) {text!r}", "give keep or whole seconds")
    return int(text)


def _frame_size(text: str) -> int:
    size = parse_size(text, what="--frame-size")
    if not _MIN_FRAME <= size <= MAX_FRAME_DECOMPRESSED:
        raise UsageError(
            f"--frame-size {text} must be between 64KiB and 1GiB",
            "the seekable format's readers take frames of at most 1GiB",
        )
    return size


class _Progress:
    def __init__(self, stream: TextIO, interval: float) -> None:
        self._stream = stream
        self._bar = stream.isatty()
        self._interval = 0.2 if self._bar else interval
        self._start = time.monotonic()
        self._next = self._start + self._interval
        self._drawn = False

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + self._interval
        percent = 100.0 * done / total if total else 100.0
        rate = done / max(now - self._start, 1e-6)
        line = (
            f"packed {percent:5.1f}%: {human_bytes(done)} of {human_bytes(total)}, "
            f"{rate / 1e6:.1f} MB/s"
        )
        self._stream.write(f"\r{line}\033[K" if self._bar else f"model-fetch pack: {line}\n")
        self._stream.flush()
        self._drawn = self._bar

    def close(self) -> None:
        if self._drawn:
            self._stream.write("\n")


def _stop_on_sigterm() -> None:
    def handle(number: int, _frame: FrameType | None) -> None:
        raise Interrupted(number, signal.Signals(number).name)

    signal.signal(signal.SIGTERM, handle)


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        interval = parse_seconds(args.progress_interval, what="--progress-interval", zero=True)
    except UsageError as error:
        return _fail(error)
    progress = _Progress(sys.stderr, interval)
    try:
        if not 1 <= args.level <= zstandard.MAX_COMPRESSION_LEVEL:
            raise UsageError(f"--level must be 1 to {zstandard.MAX_COMPRESSION_LEVEL}")
        frame_size = _frame_size(args.frame_size)
        mtime = _mtime(args.mtime)
        _stop_on_sigterm()
        result = pack(
            args.directory,
            args.output,
            frame_size=frame_size,
            level=args.level,
            threads=available_cpus(),
            mtime=mtime,
            on_progress=progress,
        )
    except KeyboardInterrupt:
        progress.close()
        return _fail(Interrupted(signal.SIGINT, "SIGINT"))
    except FetchError as error:
        progress.close()
        return _fail(error)
    except Exception as error:  # a bug: one line; the traceback only when asked for
        progress.close()
        if os.environ.get("MODEL_FETCH_DEBUG"):
            traceback.print_exc()
        return _fail(FetchError(f"internal error ({type(error).__name__}: {error})"))
    progress.close()
    print(
        f"model-fetch pack: {result.members} entries, {human_bytes(result.content_bytes)} in "
        f"{result.frames} frames, {human_bytes(result.bytes)} written to {args.output}",
        file=sys.stderr,
    )
    print(result.sha256)
    return 0


def _fail(error: FetchError) -> int:
    print(f"model-fetch pack: error: {error.line()}", file=sys.stderr)
    return error.exit_code
