"""Sizes, rates and durations as people write them: 256MiB, 1.5G, 200MB/s, 0.5."""

from __future__ import annotations

import math
import re

from fetcher.errors import UsageError

_MULTIPLIERS = {
    "": 1,
    "k": 10**3,
    "m": 10**6,
    "g": 10**9,
    "t": 10**12,
    "ki": 2**10,
    "mi": 2**20,
    "gi": 2**30,
    "ti": 2**40,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?)?b?\s*$", re.IGNORECASE)


def parse_size(text: str, *, what: str = "size") -> int:
    """Bytes from '512', '64K', '256MiB', '1.5G' (K/M/G decimal, Ki/Mi/Gi binary)."""
    match = _SIZE.match(text)
    if not match:
        raise UsageError(
            f"{what} {text!r} is not a size",
            "write a number with an optional unit: 500M, 256MiB, 2G, 1Gi",
        )
    number, unit = match.groups()
    value = int(float(number) * _MULTIPLIERS[(unit or "").lower()])
    if value <= 0:
        raise UsageError(f"{what} {text!r} must be greater than zero")
    return value


def parse_rate(text: str, *, what: str = "rate") -> int:
    """Bytes per second from '200MB/s', '50Mi', '1G/s'."""
    stripped = text.strip()
    if stripped.lower().endswith("/s"):
        stripped = stripped[:-2]
    return parse_size(stripped, what=what)


def parse_seconds(text: str, *, what: str, zero: bool = False) -> float:
    """Seconds from '30' or '0.5': a finite number, above 0 (or 0 too, where zero)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
        least = "0 or more" if zero else "more than 0"
        raise UsageError(f"{what} {text!r} is not a number of seconds", f"give {least}: 30, 0.5")
    return value


def human_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(count) < 1024:
            return f"{count:.1f} {unit}" if unit != "B" else f"{int(count)} B"
        count /= 1024
    return f"{count:.1f} TiB"
