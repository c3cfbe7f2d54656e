"""`model-webhook serve` and `model-webhook render`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import pydantic
import yaml

from webhook.core.errors import MalformedReview, Refused
from webhook.core.redact import redact
from webhook.core.settings import Settings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="model-webhook",
        description="Admission webhook that injects the model fetcher into annotated pods.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve /mutate and /validate over HTTPS")
    serve.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")  # noqa: S104
    serve.add_argument("--port", type=int, default=8443, help="port to listen on (default 8443)")
    serve.add_argument("--tls-cert", type=Path, required=True, help="PEM certificate chain")
    serve.add_argument("--tls-key", type=Path, required=True, help="PEM private key")
    render = commands.add_parser("render", help="print a Pod or workload as admission leaves it")
    render.add_argument(
        "-f", "--filename", required=True, help="YAML or JSON manifest, or - for stdin"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings()
    except (pydantic.ValidationError, OSError, ValueError) as error:
        print(f"model-webhook: invalid configuration: {error}", file=sys.stderr)
        return 2
    if args.command == "serve":
        from webhook.server import serve  # noqa: PLC0415  (render must not need uvicorn)

        return serve(settings, args.host, args.port, args.tls_cert, args.tls_key)
    return _render(args.filename, settings)


def _render(filename: str, settings: Settings) -> int:
    from webhook.core.render import render_documents  # noqa: PLC0415

    try:
        text = sys.stdin.read() if filename == "-" else Path(filename).read_text(encoding="utf-8")
        output, warnings = render_documents(text, settings)
    except OSError as error:
        _error(f"model-webhook: cannot read {filename}: {error}")
        return 2
    except yaml.YAMLError as error:
        # A YAML error quotes the offending line, which may be anything the file holds.
        _error(f"model-webhook: {filename} is not YAML or JSON: {error}")
        return 2
    except MalformedReview as error:
        _error(f"model-webhook: {filename}: {error}")
        return 2
    except Refused as refused:
        _error(f"refused: {refused.message}")
        return 1
    for warning in warnings:
        _error(f"warning: {warning}")
    # The object itself is printed as it is: a model URL that carries a secret is refused above,
    # and the user's own fields are theirs to print.
    sys.stdout.write(output)
    return 0


def _error(line: str) -> None:
    print(redact(line), file=sys.stderr)
