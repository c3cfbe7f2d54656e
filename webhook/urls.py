"""Policy checks on source and mirror URLs: scheme, host pattern, and nothing secret in them."""

from __future__ import annotations

import re
from fnmatch import fnmatchcase
from urllib.parse import urlsplit

from webhook.errors import invalid_value
from webhook.settings import Settings

_SPACE_OR_CONTROL = re.compile(r"[\s\x00-\x1f\x7f-\x9f]")


def url_problem(key: str, url: str, settings: Settings) -> str | None:  # noqa: PLR0911
    """Why `url` (the value of annotation `key`) is refused, or None when it is acceptable."""
    schemes = " or ".join(f"{scheme}://" for scheme in settings.allowed_schemes)
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
    if "@" in parts.netloc:
        return invalid_value(
            key, url, "a URL without user or password (use credentials-secret instead)"
        )
    host = parts.hostname
    if not host or not port_is_valid:
        return invalid_value(key, url, f"a {schemes} URL with a valid host and port")
    patterns = settings.allowed_hosts
    if not any(fnmatchcase(host, pattern.lower()) for pattern in patterns):
        return invalid_value(
            key, url, f"a URL whose host matches one of the allowed hosts {', '.join(patterns)}"
        )
    return None


def is_http(url: str) -> bool:
    return urlsplit(url).scheme.lower() in ("http", "https")
