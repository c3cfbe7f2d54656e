"""URLs as they may be shown: credentials in userinfo or query strings never reach a log."""

from __future__ import annotations

from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from fetcher.errors import UsageError

SUPPORTED_SCHEMES = ("http", "https", "s3", "gs")


def validate_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in SUPPORTED_SCHEMES or not parts.netloc:
        raise UsageError(
            f"{redact(url)!r} is not an http(s), s3 or gs URL",
            "give a URL such as https://host/path/model.tar.zst or s3://bucket/path/model.tar.zst",
        )
    return url


def redact(url: str) -> str:
    """The URL with userinfo and every query value replaced, e.g. signed-URL signatures."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    query = parts.query
    if query:
        query = urlencode([(key, "***") for key, _ in parse_qsl(query, keep_blank_values=True)])
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def basename(url: str) -> str:
    """The last path segment, the name a single-file download is stored under."""
    name = unquote(urlsplit(url).path.rsplit("/", 1)[-1])
    if name in ("", ".", "..") or "/" in name or "\0" in name:
        return "model"
    return name
