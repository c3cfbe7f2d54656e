"""One origin as every source sees it, whatever its scheme."""

from __future__ import annotations

from dataclasses import dataclass, field

import httpx


@dataclass(frozen=True)
class Target:
    """One origin as httpx sees it: the URL, its signer, and how logs and errors name it."""

    url: str
    shown: str
    auth: httpx.Auth | None = field(default=None, compare=False)
    store: str = ""  # "s3", "gs", or "" for plain http(s)
    region: str = ""
    credentials: str = ""  # where they came from, e.g. "env", "iam-role", "anonymous"
