"""What a fetch was asked to do: one object built from the command line in one place."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from fetcher.commit import WORK_DIR_NAME, staging_dir
from fetcher.formats import Compression, Layout
from fetcher.http.retry import RetryPolicy
from fetcher.state.checkpoint import RequestIdentity
from fetcher.state.marker import url_fingerprint

# --connections auto grows to this many, and only when one connection leaves the decoder idle.
AUTO_CONNECTIONS = 8


@dataclass
class FetchRequest:
    url: str
    output: Path
    mirrors: list[str] = field(default_factory=list)
    sha256: str | None = None
    workdir: Path | None = None
    format: str = "auto"
    compression: Compression | None = None
    layout: Layout = Layout.DETECT
    max_bandwidth: int | None = None
    max_extracted: int = 10**12
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    authorization: str | None = field(default=None, repr=False)
    password: bytes | None = field(default=None, repr=False)  # of an encrypted zip
    ca_bundle: Path | None = None
    s3_endpoint: str | None = None
    s3_region: str | None = None
    connect_timeout: float = 15.0
    checkpoint_interval: float = 2.0
    connections: int = AUTO_CONNECTIONS
    grow_connections: bool = True  # start with one connection, grow when it is the wait
    chunk_size: int = 16 << 20
    max_disk_buffer: int = 1 << 30
    lock_wait: float = 300.0

    @property
    def urls(self) -> list[str]:
        return [self.url, *self.mirrors]

    @property
    def state_dir(self) -> Path:
        return self.workdir or self.output / WORK_DIR_NAME

    @property
    def staging(self) -> Path:
        # Always inside DIR, so the verified tree moves into place by rename.
        return staging_dir(self.output)

    def identity(self) -> RequestIdentity:
        """What a checkpoint must have been taken for to be resumed by this request."""
        return RequestIdentity(url_fingerprint(self.url), self.sha256, self.format)
