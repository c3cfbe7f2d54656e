"""The source, digest and mirrors as a ConfigMap's keys deliver them (--source-from-configmap).

The webhook gives the fetch container env vars from the ConfigMap's keys and passes them as
`$(VAR)` references in the arguments, which the kubelet expands when the container starts. What
arrives was never checked by anyone, so it is checked here, and every refusal names the
ConfigMap and the key to fix:

- `source` is required: an empty, malformed or unexpanded value is an error;
- `sha256` is optional (unless policy requires it, and then the kubelet refuses to start the
  container without it): an unexpanded reference means the key is absent, so no digest was
  given; a present value must be 64 hex characters, and an empty one is an error, not "none";
- `mirrors` is optional: an unexpanded reference means none; a present value is a
  comma-separated list of URLs with no empty entry.

Every URL is also held to the webhook's scheme and host policy, which it passes along
(--allowed-schemes, --allowed-hosts) because it never saw the URLs: the same patterns, matched
the same way (a host pattern matches an http(s) host; only a pattern naming a scheme,
`s3://team-*`, matches a bucket; `*` alone matches everything).

Surrounding whitespace is dropped first (`kubectl create configmap --from-file` keeps a file's
final newline), as the webhook drops it around annotation values.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
from dataclasses import dataclass
from fnmatch import fnmatchcase
from urllib.parse import urlsplit

from fetcher.errors import UsageError
from fetcher.urls import redact, validate_url

log = logging.getLogger("model-fetch")

OPTION = "--source-from-configmap"
# What the kubelet leaves in place of `$(NAME)` when NAME is not defined (an optional key that
# the ConfigMap does not have).
_UNEXPANDED = re.compile(r"\$\([-._a-zA-Z][-._a-zA-Z0-9]*\)")
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_SPACE_OR_CONTROL = re.compile(r"[\s\x00-\x1f\x7f-\x9f]")
_SHOWN = 80  # characters of a refused value quoted in the error line


@dataclass(frozen=True)
class Delivered:
    url: str
    mirrors: list[str]
    sha256: str | None


@dataclass(frozen=True)
class Policy:
    schemes: tuple[str, ...] | None  # None: any scheme the fetcher reads
    hosts: tuple[str, ...]


def add_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("values delivered by a ConfigMap")
    group.add_argument(
        OPTION,
        metavar="NAME",
        help="URL, --sha256 and --mirror came from the keys source, sha256 and mirrors of "
        "ConfigMap NAME (as the kubelet expands $(VAR) references): check them as such, read "
        "a --mirror value as a comma-separated list, and name the key in any error",
    )
    group.add_argument(
        "--allowed-schemes",
        metavar="LIST",
        help=f"with {OPTION}: the URL schemes admitted, such as https,s3 (default: all)",
    )
    group.add_argument(
        "--allowed-hosts",
        metavar="PATTERNS",
        default="*",
        help=f"with {OPTION}: host patterns admitted, such as *.example.com,s3://team-* "
        "(default: *)",
    )


def from_args(args: argparse.Namespace) -> Delivered:
    """The values as the fetch should use them; raises UsageError naming the key at fault."""
    keys = _Keys(args.source_from_configmap, _policy(args.allowed_schemes, args.allowed_hosts))
    return Delivered(
        url=keys.url("source", args.url),
        mirrors=[
            mirror
            for value in args.mirror
            if not _is_unexpanded(value)
            for mirror in keys.mirrors(value)
        ],
        sha256=keys.sha256(args.sha256),
    )


def _policy(schemes: str | None, hosts: str) -> Policy:
    def items(text: str) -> tuple[str, ...]:
        return tuple(item.strip() for item in text.split(",") if item.strip())

    return Policy(
        schemes=tuple(s.lower() for s in items(schemes)) if schemes is not None else None,
        hosts=items(hosts),
    )


def _is_unexpanded(value: str) -> bool:
    return _UNEXPANDED.fullmatch(value.strip()) is not None


class _Keys:
    def __init__(self, config_map: str, policy: Policy) -> None:
        self.config_map = config_map
        self.policy = policy

    def error(self, key: str, problem: str, hint: str) -> UsageError:
        """`problem` follows the key: "is empty", or ": <value> is not ..."."""
        return UsageError(f'ConfigMap "{self.config_map}" key "{key}"{problem}', hint)

    def url(self, key: str, value: str) -> str:
        value = value.strip()
        if _is_unexpanded(value):
            raise self.error(key, " is missing", "add the URL of the model under that key")
        if not value:
            raise self.error(key, " is empty", "put the URL of the model under that key")
        if _SPACE_OR_CONTROL.search(value):
            raise self.error(
                key, " has spaces, line breaks or control characters", "expected one URL"
            )
        try:
            validate_url(value)
        except UsageError as error:
            raise self.error(key, f": {error.message}", error.hint) from None
        refused = _refused_by(self.policy, value)
        if refused:
            raise self.error(key, f": {redact(value)!r} {refused}", "ask for it to be allowed")
        return value

    def mirrors(self, value: str) -> list[str]:
        items = [item.strip() for item in value.split(",")]
        if not all(items):
            raise self.error(
                "mirrors",
                " has an empty entry" if value.strip() else " is empty",
                "expected comma-separated URLs serving the same bytes as the source "
                "(or no mirrors key at all)",
            )
        return [self.url("mirrors", item) for item in items]

    def sha256(self, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip()
        if _is_unexpanded(value):
            log.warning(
                'ConfigMap "%s" has no key "sha256": the download will not be verified',
                self.config_map,
            )
            return None
        expected = "expected the 64 hexadecimal characters of the sha256 of the bytes at the source"
        if not value:
            raise self.error("sha256", " is empty", f"{expected} (or no sha256 key at all)")
        if not _HEX64.fullmatch(value):
            raise self.error(
                "sha256", f": {_shown(value)} is not 64 hexadecimal characters", expected
            )
        return value.lower()


def _refused_by(policy: Policy, url: str) -> str | None:
    """Why the policy refuses `url` (already a valid URL), or None."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if policy.schemes is not None and scheme not in policy.schemes:
        allowed = ", ".join(f"{s}://" for s in policy.schemes)
        return f"is not allowed: its scheme is not one of {allowed}"
    if scheme in ("s3", "gs"):
        named = f"{scheme}://{parts.netloc}"
        patterns = [p for p in policy.hosts if p == "*" or "://" in p]
    else:
        named = (parts.hostname or "").lower()
        patterns = [p.lower() for p in policy.hosts]
    if any(fnmatchcase(named, pattern) for pattern in patterns):
        return None
    return f"is not allowed: {named} matches none of the allowed hosts {', '.join(policy.hosts)}"


def _shown(value: str) -> str:
    """A value quoted on one line, cut short: a ConfigMap key may hold a whole file."""
    if len(value) > _SHOWN:
        return json.dumps(value[:_SHOWN]) + f" (and {len(value) - _SHOWN} more characters)"
    return json.dumps(value)
