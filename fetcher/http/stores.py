"""s3:// and gs:// sources: the HTTPS URL to GET, how to sign it, and what their errors mean.

Only the credentials and the signature come from the clouds' own libraries, imported when an
s3:// or gs:// URL is used (so plain https start-up stays fast); the bytes still travel over
httpx, with the same ranged GETs, retries and mirrors as any other origin.

- s3://BUCKET/KEY: credentials from botocore's chain (AWS_ACCESS_KEY_ID and friends,
  AWS_WEB_IDENTITY_TOKEN_FILE for IRSA, container credentials, the shared files, instance
  metadata), refreshed when they expire; every request signed with SigV4. No credentials at all:
  anonymous requests, as public buckets allow. Region from AWS_REGION, AWS_DEFAULT_REGION or the
  config file (default us-east-1). A custom endpoint (--s3-endpoint, AWS_ENDPOINT_URL_S3,
  AWS_ENDPOINT_URL) reaches MinIO and other S3-compatible stores with path-style addressing.
- gs://BUCKET/KEY: Application Default Credentials from google-auth (GOOGLE_APPLICATION_CREDENTIALS,
  workload identity through the metadata server), sent as a Bearer token over GCS's XML API;
  none found: anonymous. STORAGE_EMULATOR_HOST points it at an emulator.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Generator, Mapping
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from fetcher.errors import SourceUnreachable, UsageError
from fetcher.http.retry import OriginRefused
from fetcher.http.target import Target
from fetcher.urls import redact

STORE_SCHEMES = ("s3", "gs")
_STORE_PREFIXES = tuple(f"{scheme}://" for scheme in STORE_SCHEMES)
GCS_SCOPE = "https://www.googleapis.com/auth/devstorage.read_only"
# Headers that take part in a SigV4 signature; others (User-Agent, Accept-Encoding) may be
# rewritten by proxies and are left out, as the AWS SDKs do.
_SIGNED = ("range", "if-match", "if-range", "if-none-match")
_DNS_BUCKET = re.compile(r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")
_ERROR_BODY_LIMIT = 16 * 1024


class StoreRefused(OriginRefused):
    """An object store's final answer, as one line naming the object and what to check."""


class CredentialsUnavailable(httpx.TransportError):
    """The credential chain failed to produce or refresh credentials (retried like a network
    error: the metadata server or STS may be back in a moment)."""


def is_store_url(url: str) -> bool:
    return urlsplit(url).scheme in STORE_SCHEMES


def bucket_and_key(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    bucket, key = parts.netloc, parts.path.lstrip("/")
    if not bucket or not key or parts.query or parts.fragment:
        raise UsageError(
            f"{redact(url)!r} does not name an object",
            f"give {parts.scheme}://BUCKET/KEY, e.g. {parts.scheme}://models/llama/model.tar.zst",
        )
    return bucket, key


def resolve(url: str, *, s3_endpoint: str | None = None, s3_region: str | None = None) -> Target:
    """The Target for a source or mirror URL; http(s) URLs pass through unchanged."""
    scheme = urlsplit(url).scheme
    if scheme == "s3":
        return _s3_target(url, s3_endpoint, s3_region)
    if scheme == "gs":
        return _gcs_target(url)
    return Target(url, redact(url))


# --- S3 --------------------------------------------------------------------------------------


def _s3_target(url: str, endpoint: str | None, region: str | None) -> Target:
    try:
        import botocore.session  # noqa: PLC0415 - only when an s3:// URL is used
    except ImportError:
        raise UsageError(
            f"{url} needs botocore, which this installation lacks",
            "install model-injector[s3] (the fetcher image includes it)",
        ) from None
    bucket, key = bucket_and_key(url)
    session = botocore.session.Session()
    region = (
        region
        or os.environ.get("AWS_REGION")
        or session.get_config_variable("region")
        or "us-east-1"
    )
    endpoint = (
        endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    )
    path = quote(key, safe="/~")
    if endpoint:
        base = endpoint.rstrip("/")
        if urlsplit(base).scheme not in ("http", "https"):
            raise UsageError(
                f"the S3 endpoint {redact(base)!r} is not an http(s) URL",
                "give it as https://host[:port], e.g. https://minio.storage.svc:9000",
            )
        http_url = f"{base}/{bucket}/{path}"  # path style: what MinIO and most stores need
    elif _DNS_BUCKET.match(bucket):
        http_url = f"https://{bucket}.s3.{region}.amazonaws.com/{path}"
    else:  # dots or capitals: virtual-hosted names would break TLS
        http_url = f"https://s3.{region}.amazonaws.com/{bucket}/{path}"
    shown = f"s3://{bucket}/{key}"
    try:
        credentials = session.get_credentials()
    except Exception as error:  # botocore's configuration errors: a broken profile, a bad file
        refused = StoreRefused(
            f"{shown}: the AWS credentials are configured but could not be loaded "
            f"({type(error).__name__}: {error}); check the AWS_* variables and files given to "
            "the fetch container"
        )
        return Target(http_url, shown, _Unusable(refused), "s3", region, "unusable")
    if credentials is None:
        return Target(http_url, shown, _Anonymous(), "s3", region, "anonymous")
    method = getattr(credentials, "method", "") or "configured"
    return Target(http_url, shown, _SigV4(credentials, region), "s3", region, method)


class _Anonymous(httpx.Auth):
    """No credentials: and no Authorization header meant for another origin either."""

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers.pop("Authorization", None)
        yield request


class _Unusable(httpx.Auth):
    """Credentials that were configured but cannot be used: every request ends with why."""

    def __init__(self, refused: StoreRefused) -> None:
        self._refused = refused

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        raise StoreRefused(str(self._refused))
        yield request  # pragma: no cover - makes this a generator, as httpx expects


class _SigV4(httpx.Auth):
    """Signs each request, Range included, with SigV4; botocore refreshes the credentials."""

    def __init__(self, credentials: Any, region: str) -> None:
        self._credentials = credentials
        self._region = region

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        from botocore.auth import S3SigV4Auth  # noqa: PLC0415 - loaded with botocore
        from botocore.awsrequest import AWSRequest  # noqa: PLC0415

        headers = {name: request.headers[name] for name in _SIGNED if name in request.headers}
        aws = AWSRequest(method=request.method, url=str(request.url), headers=headers)
        try:
            frozen = self._credentials.get_frozen_credentials()
        except Exception as error:  # botocore's refresh errors (STS, metadata, token file)
            raise CredentialsUnavailable(
                f"could not refresh the AWS credentials ({type(error).__name__}: {error})"
            ) from None
        S3SigV4Auth(frozen, "s3", self._region).add_auth(aws)
        request.headers.pop("Authorization", None)
        for name, value in aws.headers.items():
            if name.lower() not in _SIGNED:
                request.headers[name] = value
        yield request


# --- GCS -------------------------------------------------------------------------------------


def _gcs_target(url: str) -> Target:
    try:
        import google.auth  # noqa: PLC0415 - only when a gs:// URL is used
        import google.auth.exceptions  # noqa: PLC0415
    except ImportError:
        raise UsageError(
            f"{url} needs google-auth, which this installation lacks",
            "install model-injector[gcs] (the fetcher image includes it)",
        ) from None
    bucket, key = bucket_and_key(url)
    emulator = os.environ.get("STORAGE_EMULATOR_HOST", "").rstrip("/")
    if emulator and "://" not in emulator:
        emulator = f"http://{emulator}"
    base = emulator or "https://storage.googleapis.com"
    http_url = f"{base}/{bucket}/{quote(key, safe='/~')}"
    shown = f"gs://{bucket}/{key}"
    try:
        credentials, _project = google.auth.default(scopes=[GCS_SCOPE])
    except google.auth.exceptions.DefaultCredentialsError as error:
        key_file = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
        if not key_file:
            return Target(http_url, shown, _Anonymous(), "gs", "", "anonymous")
        # Named but unreadable: refusing beats an anonymous request that hides the mistake.
        refused = StoreRefused(
            f"{shown}: GOOGLE_APPLICATION_CREDENTIALS names {key_file}, which could not be "
            f"loaded ({type(error).__name__}: {error}); check that the credentials Secret "
            "holds a service-account or ADC JSON under the key key.json"
        )
        return Target(http_url, shown, _Unusable(refused), "gs", "", "unusable")
    kind = type(credentials).__module__.rsplit(".", 1)[-1]
    return Target(http_url, shown, _GoogleBearer(credentials), "gs", "", kind)


class _GoogleBearer(httpx.Auth):
    """google-auth credentials, refreshed when stale, sent as a Bearer token."""

    def __init__(self, credentials: Any) -> None:
        self._credentials = credentials
        self._lock = threading.Lock()
        self._transport = _GoogleTransport()

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        import google.auth.exceptions  # noqa: PLC0415 - loaded with google.auth

        headers: dict[str, str] = {}
        try:
            with self._lock:  # one refresh at a time, shared by every connection
                self._credentials.before_request(
                    self._transport, request.method, str(request.url), headers
                )
        except google.auth.exceptions.GoogleAuthError as error:
            raise CredentialsUnavailable(
                f"could not get Google credentials ({type(error).__name__}: {error})"
            ) from None
        request.headers.pop("Authorization", None)
        request.headers.update(headers)
        yield request


class _GoogleTransport:
    """google.auth.transport.Request over httpx, so refreshing needs no requests library."""

    def __call__(
        self,
        url: str,
        method: str = "GET",
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        **_kwargs: Any,
    ) -> _GoogleResponse:
        import google.auth.exceptions  # noqa: PLC0415

        try:
            with httpx.Client(timeout=timeout or 30.0, trust_env=True) as client:
                response = client.request(method, url, content=body, headers=headers)
        except httpx.HTTPError as error:
            raise google.auth.exceptions.TransportError(str(error)) from None  # type: ignore[no-untyped-call]
        return _GoogleResponse(response)


class _GoogleResponse:
    def __init__(self, response: httpx.Response) -> None:
        self.status = response.status_code
        self.headers = response.headers
        self.data = response.content


# --- errors ----------------------------------------------------------------------------------

_CODE = re.compile(rb"<Code>([^<]{1,100})</Code>")
_REGION = re.compile(rb"<Region>([^<]{1,50})</Region>")
_ENDPOINT = re.compile(rb"<Endpoint>([^<]{1,200})</Endpoint>")


def _field(pattern: re.Pattern[bytes], body: bytes) -> str:
    """One element of an XML error body, on one line and printable, or "" when absent."""
    match = pattern.search(body)
    if not match:
        return ""
    text = match.group(1).decode(errors="replace")
    return "".join(c for c in " ".join(text.split()) if c.isprintable())


def unreachable(attempts: list[str]) -> SourceUnreachable:
    """Every origin given up. An object store's refusal says best what to check, so the last
    one, if any, is the line to end with."""
    store_lines = [line for line in attempts if line.startswith(_STORE_PREFIXES)]
    return SourceUnreachable(attempts, store_lines[-1] if store_lines else "")


def given_up_line(shown: str, refused: OriginRefused) -> str:
    """One line for an origin left after a final answer; a store's refusal names the object."""
    return str(refused) if isinstance(refused, StoreRefused) else f"{shown}: {refused}"


def refusal(target: Target, response: httpx.Response) -> OriginRefused:
    """Why this origin will not serve the file; for s3:// and gs://, read from the error body.

    Reads at most a few KiB of the error body of a streamed response.
    """
    if not target.store:
        return OriginRefused(f"HTTP {response.status_code}")
    body = b""
    try:
        for data in response.iter_raw():
            body += data
            if len(body) >= _ERROR_BODY_LIMIT:
                break
    except httpx.HTTPError:
        pass
    code = _field(_CODE, body)
    status = response.status_code
    what = f"HTTP {status}{f' {code}' if code else ''}"
    if target.store == "s3":
        problem, check = _s3_problem(target, response, body, code)
    else:
        problem, check = _gcs_problem(target, status, code)
    return StoreRefused(f"{target.shown}: {problem} ({what}); {check}")


def _s3_problem(  # noqa: PLR0911 - one answer per error family
    target: Target, response: httpx.Response, body: bytes, code: str
) -> tuple[str, str]:
    status = response.status_code
    region = response.headers.get("x-amz-bucket-region") or _field(_REGION, body)
    if code in ("PermanentRedirect", "AuthorizationHeaderMalformed", "IncorrectEndpoint") or (
        status == 301 and region
    ):
        if region and region != target.region:
            return (
                f"the bucket is in region {region}, not {target.region}",
                f"give --s3-region {region} (the s3-region annotation) or set AWS_REGION={region}",
            )
        endpoint = _field(_ENDPOINT, body)
        where = f" ({endpoint})" if endpoint else ""
        return (
            f"the bucket must be addressed through another endpoint{where}",
            "give the bucket's region with --s3-region (the s3-region annotation), or the S3 "
            "endpoint of your store with --s3-endpoint",
        )
    if code in ("ExpiredToken", "TokenRefreshRequired", "RequestExpired", "ExpiredTokenException"):
        return (
            "the credentials have expired",
            "check that AWS_SESSION_TOKEN is fresh, or use IRSA / an instance role, whose "
            "credentials are refreshed; and that the node's clock is right",
        )
    if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken"):
        return (
            "the credentials were refused",
            "check AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN in the "
            "credentials Secret, and the S3 endpoint",
        )
    if code == "NoSuchBucket":
        return "the bucket does not exist", "check the bucket name, the region and the S3 endpoint"
    if code == "NoSuchKey" or status == 404:
        return (
            "the object does not exist",
            "check the key (it is case-sensitive) and that the upload finished",
        )
    if code == "AccessDenied" or status == 403:
        return "access denied", _s3_access_check(target)
    return "the request was refused", "check the URL, the region and the credentials"


def _s3_access_check(target: Target) -> str:
    if target.credentials == "anonymous":
        return (
            "no AWS credentials were found, so the request was anonymous; give the pod a role "
            "(IRSA) or a credentials Secret with AWS_ACCESS_KEY_ID, or make the object public"
        )
    return (
        f"check that the credentials (from {target.credentials}) allow s3:GetObject on it, "
        "and the bucket policy"
    )


def _gcs_problem(target: Target, status: int, code: str) -> tuple[str, str]:
    if code == "NoSuchBucket":
        return "the bucket does not exist", "check the bucket name"
    if status == 404 or code == "NoSuchKey":
        return (
            "the object does not exist",
            "check the object name (it is case-sensitive) and that the upload finished",
        )
    if status == 401 or code in ("AuthenticationRequired", "InvalidAuthentication"):
        return (
            "the credentials were refused or have expired",
            "check GOOGLE_APPLICATION_CREDENTIALS or the workload identity binding of the "
            "pod's service account",
        )
    if status == 403 or code == "AccessDenied":
        if target.credentials == "anonymous":
            return (
                "access denied",
                "no Google credentials were found, so the request was anonymous; set up "
                "workload identity or a service-account key, or make the object public",
            )
        return (
            "access denied",
            "check that the service account has storage.objects.get on it "
            "(roles/storage.objectViewer)",
        )
    return "the request was refused", "check the URL and the credentials"
