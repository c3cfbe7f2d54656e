"""Policy checks on source and mirror URLs: scheme, host pattern, and nothing secret in them.

For http(s) URLs the allowed-host patterns match the host name. For object-store URLs
(s3://BUCKET/KEY, gs://BUCKET/KEY) only the patterns that name a scheme (`s3://team-*`) are
matched, against `s3://BUCKET` or `gs://BUCKET`, so a pattern written for hosts never admits a
bucket by accident; `*` alone admits everything.
"""

from __future__ import annotations

import re
from fnmatch import fnmatchcase
from urllib.parse import SplitResult, urlsplit

from webhook.core.errors import invalid_value
from webhook.core.redact import has_userinfo, secret_parameters
from webhook.core.settings import Settings

STORE_SCHEMES = ("s3", "gs")
_IN_CLEAR = (
    "it would be written into the pod spec in clear text; put the credentials in a Secret and "
    "name it in credentials-secret"
)
_SPACE_OR_CONTROL = re.compile(r"[\s\x00-\x1f\x7f-\x9f]")
# S3: 3-63 characters, no underscores. GCS also allows underscores, and up to 222 with dots.
_BUCKET = {
    "s3": re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"),
    "gs": re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$"),
}


def url_problem(key: str, url: str, settings: Settings) -> str | None:  # noqa: PLR0911
    """Why `url` (the value of annotation `key`) is refused, or None when it is acceptable."""
    schemes = " or ".join(f"{scheme}://" for scheme in settings.allowed_schemes)
    # Checked first, so that the reason given is the one that matters: the URL is written into
    # the init container's args, readable by anyone who may read the pod.
    if has_userinfo(url):
        return invalid_value(key, url, f"a URL without user or password: {_IN_CLEAR}")
    secrets = secret_parameters(url)
    if secrets:
        return invalid_value(
            key, url, f"a URL without credentials in it ({', '.join(secrets)}): {_IN_CLEAR}"
        )
    if _SPACE_OR_CONTROL.search(url) or not url.isprintable():
        return invalid_value(key, url, "a URL without spaces or control characters")
    try:
        parts = urlsplit(url)
        port_is_valid = parts.port is None or parts.port > 0
    except ValueError:
        return invalid_value(key, url, f"a well-formed {schemes} URL")
    scheme = parts.scheme.lower()
    if not scheme or not parts.netloc:
        return invalid_value(key, url, f"an absolute {schemes} URL with a host")
    if scheme not in settings.allowed_schemes:
        return invalid_value(key, url, f"a {schemes} URL (scheme {scheme}:// is not allowed)")
    if scheme in STORE_SCHEMES:
        return _object_problem(key, url, parts, settings)
    host = parts.hostname
    if not host or not port_is_valid:
        return invalid_value(key, url, f"a {schemes} URL with a valid host and port")
    patterns = settings.allowed_hosts
    if not any(fnmatchcase(host, pattern.lower()) for pattern in patterns):
        return invalid_value(
            key, url, f"a URL whose host matches one of the allowed hosts {', '.join(patterns)}"
        )
    return None


def _object_problem(key: str, url: str, parts: SplitResult, settings: Settings) -> str | None:
    scheme = parts.scheme.lower()
    bucket, object_key = parts.netloc, parts.path.lstrip("/")
    if not _BUCKET[scheme].match(bucket) or not object_key or parts.query or parts.fragment:
        return invalid_value(
            key,
            url,
            f"{scheme}://BUCKET/KEY with a valid bucket name (lower-case letters, digits, "
            f"'-' and '.') and an object key, without query or fragment",
        )
    named = f"{scheme}://{bucket}"
    bucket_patterns = [p for p in settings.allowed_hosts if p == "*" or "://" in p]
    if not any(fnmatchcase(named, pattern) for pattern in bucket_patterns):
        patterns = settings.allowed_hosts
        return invalid_value(
            key,
            url,
            f"an object whose bucket ({named}) matches one of the allowed hosts "
            f"{', '.join(patterns)}",
        )
    return None


def scheme_of(url: str) -> str:
    """The scheme, lower-cased; "" when there is none. Never raises, even on a malformed URL."""
    scheme, separator, _ = url.partition("://")
    return scheme.lower() if separator else ""


def is_http(url: str) -> bool:
    return scheme_of(url) in ("http", "https")
