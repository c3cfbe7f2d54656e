"""The completion marker: proof in DIR that a verified model is there, and which one."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from fetcher.state.files import fsync_directory, write_atomically

MARKER_NAME = ".model-fetch.json"
_VERSION = 1


def url_fingerprint(url: str) -> str:
    """Compares sources without storing a URL that may carry a signature or token."""
    return hashlib.sha256(url.encode()).hexdigest()


@dataclass
class Marker:
    source: str  # redacted, for people
    source_fingerprint: str
    sha256: str
    sha256_expected: bool
    bytes: int
    extracted_bytes: int
    files: int
    entries: list[str]
    duration_seconds: float
    format: str
    completed_at: str
    version: int = field(default=_VERSION)

    def satisfies(self, url: str, sha256: str | None) -> bool:
        if self.source_fingerprint != url_fingerprint(url):
            return False
        return sha256 is None or sha256 == self.sha256


def read_marker(directory: Path) -> Marker | None:
    path = directory / MARKER_NAME
    try:
        data = json.loads(path.read_text())
        if data.get("version") != _VERSION:
            return None
        return Marker(**data)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (ValueError, TypeError):
        return None  # unreadable: treated as absent, so the model is fetched again


def write_marker(directory: Path, marker: Marker) -> None:
    write_atomically(directory / MARKER_NAME, json.dumps(asdict(marker), indent=2).encode())


def remove_marker(directory: Path) -> None:
    (directory / MARKER_NAME).unlink(missing_ok=True)
    fsync_directory(directory)
