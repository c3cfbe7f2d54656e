"""The one error of the zstd internals: bytes that RFC 8878 does not allow."""

from __future__ import annotations


class FormatError(ValueError):
    """What was parsed is not valid zstd; the caller decides what that means for it."""
