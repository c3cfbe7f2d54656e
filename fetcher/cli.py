"""model-fetch: the command line of the fetcher, its exit codes and its signal handling."""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from fetcher.errors import FetchError, UsageError
from fetcher.fetch import fetch
from fetcher.formats import (
    FORMAT_CHOICES,
    Compression,
    Layout,
    implied_by_name,
    parse_format,
    unread_suffix,
)
from fetcher.http.retry import RetryPolicy
from fetcher.http.stores import bucket_and_key, is_store_url
from fetcher.logs import configure
from fetcher.pipeline import StopRequest
from fetcher.progress import Progress
from fetcher.request import AUTO_CONNECTIONS, FetchRequest
from fetcher.sourcefrom import add_options as add_source_from_options
from fetcher.sourcefrom import from_args as source_from_configmap
from fetcher.state.libc import keep_freed_memory
from fetcher.termination import DEFAULT_PATH as DEFAULT_TERMINATION_LOG
from fetcher.termination import write_result
from fetcher.units import parse_rate, parse_seconds, parse_size
from fetcher.urls import basename, redact, validate_url

_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")

EPILOG = """\
exit codes: 0 success, 2 usage, 3 checksum mismatch, 4 unsafe or corrupt archive,
5 source unreachable after all retries and mirrors, 6 out of disk, 1 anything else,
128+N after signal N.

sizes take K/M/G (decimal) and Ki/Mi/Gi (binary); a rate may end in /s.
--auth-from env:NAME or file:PATH names where the Authorization header value is kept
(e.g. "Bearer ..."); the value itself never appears in arguments or logs. --password-from
names an encrypted zip's password (ZipCrypto or WinZip AES) the same way.

s3:// URLs use the AWS credential chain (AWS_ACCESS_KEY_ID..., IRSA, container and instance
credentials; none: anonymous) and AWS_REGION; gs:// URLs use Google Application Default
Credentials (GOOGLE_APPLICATION_CREDENTIALS, workload identity; none: anonymous).
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="model-fetch",
        description="Download, verify and extract a model into DIR while it streams.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "url", metavar="URL", help="http(s), s3:// or gs:// URL of the archive or file"
    )
    parser.add_argument("-o", "--output", metavar="DIR", required=True, type=Path)
    parser.add_argument(
        "--mirror", metavar="URL", action="append", default=[],
        help="another URL serving the same bytes, tried in order after URL",
    )  # fmt: skip
    parser.add_argument("--sha256", metavar="HEX", help="digest of the bytes served")
    parser.add_argument(
        "--workdir", metavar="DIR", type=Path,
        help="where state files live (default: a hidden folder in DIR, removed on success)",
    )  # fmt: skip
    parser.add_argument(
        "--connections", metavar="N|auto", default="auto",
        help=f"parallel ranged GETs; auto: one connection, growing to {AUTO_CONNECTIONS} when "
        "it cannot keep the decoder busy (default auto)",
    )  # fmt: skip
    parser.add_argument("--chunk-size", metavar="SIZE", default="16MiB")
    parser.add_argument("--max-bandwidth", metavar="RATE")
    parser.add_argument("--max-disk-buffer", metavar="SIZE", default="1GiB")
    parser.add_argument("--max-extracted-size", metavar="SIZE", default="1T")
    parser.add_argument("--format", default="auto", metavar="|".join(FORMAT_CHOICES))
    parser.add_argument("--retries", metavar="N", type=int, default=5, help="per origin")
    parser.add_argument(
        "--retry-wait", metavar="SECONDS", default="0.5",
        help="first backoff; doubles per retry, with jitter, up to 30s",
    )  # fmt: skip
    parser.add_argument(
        "--timeout", metavar="SECONDS", default="30",
        help="give up on a read that returns nothing for this long",
    )  # fmt: skip
    parser.add_argument("--low-speed-limit", metavar="RATE", default="1K")
    parser.add_argument(
        "--low-speed-time", metavar="SECONDS", default="60",
        help="a connection slower than --low-speed-limit for this long is retried",
    )  # fmt: skip
    parser.add_argument(
        "--checkpoint-interval", metavar="SECONDS", default="2",
        help="how often progress is made durable for a resume after a crash",
    )  # fmt: skip
    parser.add_argument(
        "--lock-wait", metavar="SECONDS", default="300",
        help="how long to wait for another model-fetch working in DIR to finish",
    )  # fmt: skip
    parser.add_argument("--auth-from", metavar="env:NAME|file:PATH")
    parser.add_argument(
        "--password-from", metavar="env:NAME|file:PATH",
        help="where the password of an encrypted zip is kept (its value never in arguments)",
    )  # fmt: skip
    parser.add_argument("--ca-bundle", metavar="FILE", type=Path)
    parser.add_argument(
        "--s3-endpoint", metavar="URL",
        help="S3-compatible endpoint for s3:// URLs, path-style (default: AWS_ENDPOINT_URL, "
        "else AWS)",
    )  # fmt: skip
    parser.add_argument(
        "--s3-region", metavar="REGION",
        help="region of the s3:// buckets (default: AWS_REGION, the AWS config, else us-east-1)",
    )  # fmt: skip
    parser.add_argument("--log-format", choices=("text", "json"), default="text")
    parser.add_argument(
        "--termination-log", metavar="FILE", type=Path, default=DEFAULT_TERMINATION_LOG,
        help="where the result goes when that file exists (what Kubernetes shows as the "
        "container's termination message; default %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--progress-interval", metavar="SECONDS", default="5",
        help="seconds between progress lines when stderr is not a terminal",
    )  # fmt: skip
    add_source_from_options(parser)
    return parser


def read_secret(spec: str, option: str = "--auth-from") -> str:
    """The value kept where spec (env:NAME or file:PATH) says; errors name the place, never
    the value."""
    kind, _, where = spec.partition(":")
    if kind == "env":
        value = os.environ.get(where)
        if not value:
            raise UsageError(
                f"{option} env:{where}: the environment variable is not set",
                f"add the key {where} to the credentials Secret",
            )
    elif kind == "file":
        try:
            value = Path(where).read_text().strip()
        except OSError as error:
            raise UsageError(f"{option} file:{where}: {error.strerror}") from None
        except UnicodeDecodeError:
            raise UsageError(f"{option} file:{where}: the file is not UTF-8 text") from None
        if not value:
            raise UsageError(f"{option} file:{where}: the file is empty")
    else:
        # Not echoed: what was given in place of a place may be the secret itself.
        raise UsageError(f"{option} takes env:NAME or file:PATH", "name where the value is kept")
    if "\n" in value or "\r" in value:
        raise UsageError(f"{option} {kind}:{where}: the value spans several lines")
    return value


def read_authorization(spec: str) -> str:
    return read_secret(spec, "--auth-from")


def read_password(spec: str) -> bytes:
    """A zip password as the bytes the archiver used: its UTF-8 encoding."""
    return read_secret(spec, "--password-from").encode("utf-8")


def _connections(value: str) -> tuple[int, bool]:
    """--connections as (how many at most, whether to start with one and grow)."""
    if value == "auto":
        return AUTO_CONNECTIONS, True
    if not value.isdigit() or int(value) < 1:
        raise UsageError(
            f"--connections must be a whole number of at least 1, or auto; not {value!r}"
        )
    return int(value), False


def _format_from_name(
    url: str, compression: Compression | None, layout: Layout
) -> tuple[Compression | None, Layout]:
    """With --format auto, a name that claims a format holds the stream to it."""
    name = basename(url)
    unread = unread_suffix(name)
    if unread:
        raise UsageError(
            f"{name}: {unread} archives are not read by model-fetch",
            "repack it as .tar.zst (model-fetch reads tar, tar.zst, tar.gz, tar.xz, tar.bz2, "
            "tar.lz4 and zip), "
            "or give --format none to store the file as it is",
        )
    implied = implied_by_name(name)
    return implied if implied else (compression, layout)


def request_from_args(args: argparse.Namespace) -> FetchRequest:
    if args.source_from_configmap is not None:
        source = source_from_configmap(args)
        args.url, args.mirror, args.sha256 = source.url, source.mirrors, source.sha256
    for url in (args.url, *args.mirror):
        validate_url(url)
        if is_store_url(url):
            bucket_and_key(url)
    if args.sha256 is not None and not _HEX64.match(args.sha256):
        raise UsageError("--sha256 must be 64 hexadecimal characters")
    connections, grow = _connections(args.connections)
    if args.retries < 0:
        raise UsageError("--retries must be at least 0")
    if args.ca_bundle and not args.ca_bundle.is_file():
        raise UsageError(f"--ca-bundle {args.ca_bundle}: no such file")
    compression, layout = parse_format(args.format)
    if args.format == "auto":
        compression, layout = _format_from_name(args.url, compression, layout)
    return FetchRequest(
        url=args.url,
        mirrors=list(args.mirror),
        output=args.output,
        sha256=args.sha256.lower() if args.sha256 else None,
        workdir=args.workdir,
        format=args.format,
        compression=compression,
        layout=layout,
        max_bandwidth=(
            parse_rate(args.max_bandwidth, what="--max-bandwidth") if args.max_bandwidth else None
        ),
        max_extracted=parse_size(args.max_extracted_size, what="--max-extracted-size"),
        retry=RetryPolicy(
            retries=args.retries,
            base_wait=parse_seconds(args.retry_wait, what="--retry-wait", zero=True),
            read_timeout=parse_seconds(args.timeout, what="--timeout"),
            low_speed_limit=parse_rate(args.low_speed_limit, what="--low-speed-limit"),
            low_speed_time=parse_seconds(args.low_speed_time, what="--low-speed-time"),
        ),
        authorization=read_authorization(args.auth_from) if args.auth_from else None,
        password=read_password(args.password_from) if args.password_from else None,
        ca_bundle=args.ca_bundle,
        s3_endpoint=args.s3_endpoint,
        s3_region=args.s3_region,
        checkpoint_interval=parse_seconds(
            args.checkpoint_interval, what="--checkpoint-interval", zero=True
        ),
        connections=connections,
        grow_connections=grow,
        chunk_size=parse_size(args.chunk_size, what="--chunk-size"),
        max_disk_buffer=parse_size(args.max_disk_buffer, what="--max-disk-buffer"),
        lock_wait=parse_seconds(args.lock_wait, what="--lock-wait", zero=True),
    )


def _install_signal_handlers(stop: StopRequest) -> None:
    def handle(number: int, _frame: FrameType | None) -> None:
        if stop.event.is_set():
            os._exit(128 + number)  # a second signal: leave at once
        stop.request(number, signal.Signals(number).name)

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    keep_freed_memory()
    if argv[:1] == ["pack"]:
        from fetcher.pack.cli import main as pack_main  # noqa: PLC0415  # fetches never load it

        return pack_main(argv[1:])
    args = build_parser().parse_args(argv)
    log = configure(args.log_format)
    stop = StopRequest()
    _install_signal_handlers(stop)
    started = time.monotonic()
    try:
        request = request_from_args(args)
        interval = parse_seconds(args.progress_interval, what="--progress-interval", zero=True)
        progress = Progress(bar=sys.stderr.isatty(), interval=interval)
        result = fetch(request, stop=stop, progress=progress)
    except FetchError as error:
        return _fail(log, args, error.line(), error.exit_code)
    except Exception as error:  # a bug: one line; the traceback only when asked for
        if os.environ.get("MODEL_FETCH_DEBUG"):
            traceback.print_exc()
        return _fail(
            log,
            args,
            f"internal error ({type(error).__name__}: {error}); this is a bug in model-fetch: "
            "please report it, with the output of a rerun with MODEL_FETCH_DEBUG=1",
            1,
        )
    marker = result.marker
    write_result(
        args.termination_log,
        {
            "status": "ok",
            "already_complete": result.already_complete,
            "source": marker.source,
            "origin": result.origin or marker.source,
            "mirror": _mirror_index(args, result.origin),
            "sha256": marker.sha256,
            "sha256_verified": marker.sha256_expected,
            "bytes": marker.bytes,
            "fetched_bytes": result.fetched_bytes,
            "refetched_bytes": result.refetched_bytes,
            "extracted_bytes": marker.extracted_bytes,
            "files": marker.files,
            "format": marker.format,
            "connections": result.connections,
            "window_bytes": result.window_bytes,
            "seconds": round(time.monotonic() - started, 3),
        },
    )
    return 0


def _mirror_index(args: argparse.Namespace, origin: str) -> int | None:
    """0 for the source, N for the Nth --mirror, None when it did not come from the network."""
    shown = [redact(url) for url in (args.url, *args.mirror)]
    return shown.index(origin) if origin in shown else None


def _fail(log: logging.Logger, args: argparse.Namespace, line: str, code: int) -> int:
    _report(log, line, args.log_format)
    write_result(args.termination_log, {"status": "error", "exit_code": code, "message": line})
    return code


def _report(log: logging.Logger, line: str, log_format: str) -> None:
    if log_format == "json":
        log.error(line)
    else:
        # Several lines (one per origin tried) stay readable; the last one says what to do.
        print(f"model-fetch: error: {line}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
