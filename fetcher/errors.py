"""Every failure the fetcher reports, each carrying its process exit code.

FetchError                  1  anything else
├── UsageError              2  bad command line or environment
├── ChecksumMismatch        3  bytes served differ from --sha256
├── UnsafeArchive           4  a member would escape DIR or is not allowed
│   └── CorruptArchive      4  the stream cannot be decoded
├── SourceUnreachable       5  every origin failed after its retries
├── OutOfDisk               6  ENOSPC / EDQUOT while writing
└── Interrupted       128 + N  a signal asked us to stop
"""

from __future__ import annotations


class FetchError(Exception):
    exit_code = 1

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def line(self) -> str:
        """The one plain line printed last: what went wrong, then what to do."""
        return f"{self.message}; {self.hint}" if self.hint else self.message


class UsageError(FetchError):
    exit_code = 2


class ChecksumMismatch(FetchError):
    exit_code = 3

    def __init__(self, expected: str, actual: str, byte_count: int) -> None:
        super().__init__(
            f"sha256 mismatch after {byte_count} bytes: expected {expected}, got {actual}",
            "the origin serves different bytes than the digest names; check the sha256 "
            "annotation or the artifact at the source and mirrors",
        )
        self.expected = expected
        self.actual = actual


class UnsafeArchive(FetchError):
    exit_code = 4

    def __init__(self, member: str, reason: str) -> None:
        super().__init__(
            f"refused archive member {member!r}: {reason}",
            "nothing outside the output directory was written; rebuild the archive without it",
        )
        self.member = member


class CorruptArchive(FetchError):
    exit_code = 4


class SourceUnreachable(FetchError):
    exit_code = 5

    def __init__(self, attempts: list[str], hint: str = "") -> None:
        lines = "\n".join(f"  {a}" for a in attempts)
        super().__init__(
            f"no origin could serve the file:\n{lines}\nall origins failed after their retries",
            hint or "check the URLs, network policy and credentials, or add a --mirror",
        )
        self.attempts = attempts


class OutOfDisk(FetchError):
    exit_code = 6


class Interrupted(FetchError):
    def __init__(self, signal_number: int, signal_name: str) -> None:
        super().__init__(
            f"stopped by {signal_name}",
            "run the same command again to carry on from the last checkpoint"
            if signal_number
            else "",
        )
        self.exit_code = 128 + signal_number
