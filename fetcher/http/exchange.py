"""One classifier for every answer an origin gives: the stream, the ranges and the probe.

An answer is either the bytes asked for (``Served``: where they start and which file they
belong to) or one of these, raised:

- ``Retryable``: 408, 429, 5xx, a Content-Range that does not answer the question;
- ``OriginRefused`` (``StoreRefused`` for object stores): a final answer such as 404 or 403;
- ``PreconditionFailed``: 412, the file changed under an If-Match/If-Unmodified-Since;
- ``NotSatisfiable``: 416, with the length the origin reports, if any.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass

import httpx

from fetcher.http.deadline import head_deadline
from fetcher.http.retry import RETRYABLE_STATUS, OriginRefused, Retryable, retry_after
from fetcher.http.stores import refusal
from fetcher.http.target import Target
from fetcher.urls import basename

CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


@dataclass(frozen=True)
class Identity:
    """What tells two responses apart as the same file."""

    length: int | None
    etag: str | None  # strong validators only; weak ones cannot vouch for byte ranges
    last_modified: str | None

    @property
    def validated(self) -> bool:
        """Whether the origin labels the file (a strong ETag, or a Last-Modified date), so that
        bytes of two answers can be shown to come from one version of it (RFC 9110 13.1)."""
        return self.etag is not None or self.last_modified is not None

    def same_file(self, other: Identity, *, compare_validators: bool) -> tuple[bool, str]:
        """Whether other (a later answer) is this file, and if not, why. Without a length on
        either (chunked answers) only matching validators tell, or else the digest at the end
        when there is one (compare_validators False)."""
        why = self._difference(other, compare_validators=compare_validators)
        return why is None, why or ""

    def _difference(self, other: Identity, *, compare_validators: bool) -> str | None:
        if self.length is not None and other.length is not None and self.length != other.length:
            return f"the length changed from {self.length} to {other.length}"
        if not compare_validators:
            return None
        if self.etag and other.etag:
            same = self.etag == other.etag
            return None if same else f"the ETag changed from {self.etag} to {other.etag}"
        if self.last_modified and other.last_modified:
            same = self.last_modified == other.last_modified
            return (
                None
                if same
                else f"Last-Modified changed from {self.last_modified} to {other.last_modified}"
            )
        if self.length is None or other.length is None:
            return "it gives no length on one answer and no validator that would tell"
        return None


@dataclass(frozen=True)
class Served:
    status: int  # 200: the whole file from byte 0; 206: the range asked for
    start: int
    identity: Identity


class PreconditionFailed(Exception):
    """412: the file no longer has the validators the request named."""


class NotSatisfiable(Exception):
    """416: the range starts at or past the end; length is what the origin says the file has."""

    def __init__(self, length: int | None) -> None:
        super().__init__(f"range not satisfiable (length {length})")
        self.length = length


def strong_etag(response: httpx.Response) -> str | None:
    """The ETag if strong; a weak one cannot vouch for byte ranges."""
    etag = response.headers.get("etag")
    return None if not etag or etag.startswith("W/") else etag


def read_answer(
    response: httpx.Response, target: Target, *, first: int, last: int | None
) -> Served:
    """Classify the answer to a GET of bytes first..last (last None: to the end)."""
    status = response.status_code
    if status in RETRYABLE_STATUS:
        raise Retryable(f"HTTP {status}", retry_after(response))
    if status == 412:
        raise PreconditionFailed
    if status == 416:
        raise NotSatisfiable(_unsatisfied_length(response))
    if status not in (200, 206):
        raise refusal(target, response)
    encoding = response.headers.get("content-encoding", "").strip().lower()
    if encoding and encoding != "identity" and not _labels_the_file(encoding, target.url):
        # The bytes on the wire would not be the file's: the digest and the decoder must see
        # exactly what the file holds. (A server that labels a .gz file itself as gzip-encoded
        # sends the file's own bytes, and is let through.)
        raise OriginRefused(
            f"it sent the body with Content-Encoding: {encoding} although identity was asked "
            "for, so the bytes are not the file's"
        )
    validators = (strong_etag(response), response.headers.get("last-modified"))
    if status == 200:
        declared = response.headers.get("content-length", "")
        length = int(declared) if declared.isdigit() else None
        return Served(200, 0, Identity(length, *validators))
    header = response.headers.get("content-range", "")
    match = CONTENT_RANGE.match(header)
    if (
        not match
        or match.group(3) == "*"
        or int(match.group(1)) != first
        or (last is not None and int(match.group(2)) != last)
        or int(match.group(2)) >= int(match.group(3))
    ):
        wanted = f"bytes={first}-{'' if last is None else last}"
        raise Retryable(f"Content-Range {header!r} does not answer {wanted}")
    return Served(206, first, Identity(int(match.group(3)), *validators))


def _labels_the_file(encoding: str, url: str) -> bool:
    return encoding in ("gzip", "x-gzip") and basename(url).lower().endswith((".gz", ".tgz"))


def _unsatisfied_length(response: httpx.Response) -> int | None:
    value = response.headers.get("content-range", "")
    if value.startswith("bytes */") and value[8:].isdigit():
        return int(value[8:])
    return None


@contextlib.contextmanager
def open_response(
    client: httpx.Client, target: Target, headers: dict[str, str], head_budget: float
) -> Iterator[httpx.Response]:
    """GET target's URL, its response head within head_budget seconds; the body streams."""
    request = client.build_request("GET", target.url, headers=headers)
    with head_deadline(head_budget):
        response = client.send(request, auth=target.auth, stream=True)
    try:
        yield response
    finally:
        response.close()
