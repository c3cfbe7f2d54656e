"""The one redaction of secrets carried by URLs, for every text the webhook shows or writes.

A URL can carry a secret in two places: its userinfo (`https://user:password@host/`) and its
query or fragment (`?X-Amz-Signature=...`, `?token=...`, `#access_token=...`). `redact` replaces
both with `***` wherever a URL appears in a text: a bare annotation value, a refusal sentence
that quotes one, a log field, a rendered manifest. The admission checks refuse such URLs (they
would land in the pod spec in clear text), so redaction is what keeps the refusal itself, and
anything else that quotes the value, from repeating the secret.

Redaction errs towards hiding: any query parameter whose name merely looks like a credential is
hidden (percent-encoded or not), a `:` then `@` before the path is read as userinfo even when the
URL is malformed, and so is a `user:password@` behind a mistyped scheme separator (`https:/`,
`https//`, `https:`, `https:\\`), since a refusal quotes exactly the values that are malformed.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

MASK = "***"

# A URL runs from its scheme to the next whitespace or angle bracket. Quotes and commas may be in
# a password, so they do not end it; a comma followed by another scheme starts the next URL (the
# mirrors annotation is a comma-separated list).
_SCHEME = r"[a-z][a-z0-9+.-]*://"
_URL = re.compile(rf"(?i)\b{_SCHEME}[^\s<>]*")
_STARTS_WITH_URL = re.compile(rf"(?i){_SCHEME}")
_NEXT_URL = re.compile(rf"(?i),(?={_SCHEME})")
# A scheme whose separator is mistyped (not `://`), and the `user:password@` behind it.
_LOOSE_SCHEME = r"[a-z][a-z0-9+.-]*(?::(?!//)[/\\]*|[/\\]{2})"
_STARTS_WITH_LOOSE_URL = re.compile(rf"(?i){_LOOSE_SCHEME}")
_LOOSE_USERINFO = re.compile(rf"(?i)\b({_LOOSE_SCHEME})[^\s:@/\\]*:\S*@")
# A parameter's value ends at the next parameter or whitespace; a quote (or an escaped one) just
# before that end is the quoting of a refusal or a log line, and is kept.
_PARAMETER = re.compile(r"([?&#;])([^=&#;?\s\"'\\]*)=([^&#;\s]*?)(?=(?:\\?[\"'])?(?:[&#;\s]|$))")
# Substrings of parameter names that carry credentials: token, access_token, X-Amz-Security-Token,
# signature, sig, X-Goog-Signature, X-Amz-Credential, key, apikey, AWSAccessKeyId, secret,
# password, pass, pwd, auth, session, ...
SECRET_NAME_PARTS = (
    "token",
    "sig",
    "key",
    "secret",
    "pass",
    "pwd",
    "auth",
    "credential",
    "session",
)


def is_secret_parameter(name: str) -> bool:
    """Whether a query or fragment parameter named `name` may carry a credential."""
    lowered = name.lower()
    for _ in range(3):  # %74oken is token to the origin; %2574oken to one that decodes twice
        lowered = unquote(lowered).lower()
    return any(part in lowered for part in SECRET_NAME_PARTS)


def secret_parameters(url: str) -> list[str]:
    """The names of the parameters of `url` that look like credentials, in order."""
    return [
        match.group(2) for match in _PARAMETER.finditer(url) if is_secret_parameter(match.group(2))
    ]


def has_userinfo(url: str) -> bool:
    """Whether `url` carries `user@` or `user:password@` before its path (or looks as if it did)."""
    _, separator, rest = url.partition("://")
    return bool(separator) and _userinfo_end(rest) > 0


def redact(text: str) -> str:
    """`text` with the userinfo and the credential-like parameters of every URL in it masked.

    `text` may be a bare value (an annotation, which may hold spaces in its password) or a
    sentence or manifest that quotes URLs.
    """
    if "@" not in text and "=" not in text:
        return text  # nothing a URL could hide a secret in
    strict = _STARTS_WITH_URL.match(text)
    start = strict or _STARTS_WITH_LOOSE_URL.match(text)
    if start:
        # A bare value: its userinfo ends at the last '@' before the path, spaces or not.
        scheme, rest = text[: start.end()], text[start.end() :]
        end = _userinfo_end(rest, loose=strict is None)
        if end:
            text = f"{scheme}{MASK}@{rest[end:]}"
    text = _URL.sub(_redact_urls, text)
    return _LOOSE_USERINFO.sub(lambda match: f"{match[1]}{MASK}@", text)


def _redact_urls(match: re.Match[str]) -> str:
    return ",".join(_redact_url(url) for url in _NEXT_URL.split(match.group(0)))


def _redact_url(url: str) -> str:
    scheme, _, rest = url.partition("://")
    end = _userinfo_end(rest)
    if end:
        rest = f"{MASK}@{rest[end:]}"
    return f"{scheme}://" + _PARAMETER.sub(_redact_parameter, rest)


def _redact_parameter(match: re.Match[str]) -> str:
    separator, name, value = match.groups()
    if value and is_secret_parameter(name):
        value = MASK
    return f"{separator}{name}={value}"


def _userinfo_end(rest: str, *, loose: bool = False) -> int:
    """Where the host starts in `rest` (the URL after `://`), past any userinfo; 0 if none.

    The authority ends at the first '/': a '?' or '#' there may be in a password, so they do not
    end it. A password with a raw '/' ends it early (`user:pa/ss@host`): a ':' followed by
    something that is not a port, then an '@' further on, is taken for userinfo all the same.
    After a mistyped separator (loose) only a `user:password@` counts, so that `name:tag@digest`
    is left alone.
    """
    if loose and not re.match(r"[^:@/\\]*:[^@]*@", rest):
        return 0
    slash = rest.find("/")
    authority = rest if slash == -1 else rest[:slash]
    if "@" in authority:
        return authority.rindex("@") + 1
    colon = authority.find(":")
    if (
        colon != -1
        and not authority.startswith("[")  # an IPv6 literal
        and not authority[colon + 1 :].isdigit()
        and "@" in rest
    ):
        return rest.rindex("@") + 1
    return 0
