"""The HTTP edge: FastAPI routes around the pure review functions, plus logs and metrics.

/mutate and /validate are raw ASGI endpoints: they read the body, hand the decoded dict to the
review function and send the encoded answer, with no Request or Response objects in between. The
app dispatches a POST to either path straight to its endpoint, ahead of FastAPI's middleware and
router, which serve everything else (probes, /metrics, the 404s and 405s). On this path the
framework was most of the per-request cost; what is left is the review itself.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
from fastapi import FastAPI, Response
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from webhook.core.errors import MalformedReview
from webhook.core.redact import redact
from webhook.core.review import Outcome, Reviewer, mutate_review, validate_review
from webhook.core.settings import Settings
from webhook.logs import ADMISSION_LOGGER
from webhook.metrics import WebhookMetrics

log = logging.getLogger(ADMISSION_LOGGER)

_JSON_TYPE = (b"content-type", b"application/json")


class AdmissionEndpoint:
    """POST an AdmissionReview, get an AdmissionReview back (or 400/500 with a JSON error)."""

    def __init__(
        self, endpoint: str, reviewer: Reviewer, settings: Settings, metrics: WebhookMetrics
    ) -> None:
        self.endpoint = endpoint
        self.reviewer = reviewer
        self.settings = settings
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        body = await _read_body(receive)
        if body is None:
            return  # the client went away before sending the whole body
        try:
            try:
                review = orjson.loads(body)
            except ValueError as error:
                raise MalformedReview(f"body is not JSON: {error}") from error
            outcome = self.reviewer(review, self.settings)
            content = orjson.dumps(outcome.review)
        except MalformedReview as error:
            self.metrics.observe(self.endpoint, "malformed", time.perf_counter() - started)
            log.warning("malformed admission review", extra={"fields": {"error": str(error)}})
            await _send_json(send, 400, orjson.dumps({"error": redact(str(error))}))
            return
        except Exception:
            self.metrics.observe(self.endpoint, "error", time.perf_counter() - started)
            log.exception("admission review failed")
            await _send_json(send, 500, b'{"error":"internal error"}')
            return
        elapsed = time.perf_counter() - started
        await _send_json(send, 200, content)
        # Counted and logged once the answer is on its way, not before it.
        _record(self.metrics, self.endpoint, outcome, elapsed)


class WebhookApp(FastAPI):
    """FastAPI, except that a POST to an admission path goes straight to its endpoint."""

    def __init__(self, admission: dict[str, AdmissionEndpoint], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.admission = admission

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            endpoint = self.admission.get(scope["path"])
            if endpoint is not None:
                await endpoint(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def create_app(settings: Settings, metrics: WebhookMetrics | None = None) -> WebhookApp:
    metrics = metrics or WebhookMetrics()
    state = {"ready": False}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        state["ready"] = True
        yield
        state["ready"] = False

    admission = {
        "/mutate": AdmissionEndpoint("mutate", mutate_review, settings, metrics),
        "/validate": AdmissionEndpoint("validate", validate_review, settings, metrics),
    }
    app = WebhookApp(
        admission,
        title="model-injector webhook",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        lifespan=lifespan,
    )
    # Also routed the ordinary way, so that other methods get 405 and a mounted or wrapped app
    # (whose __call__ is not ours) still reaches them.
    for path, endpoint in admission.items():
        app.router.routes.append(Route(path, endpoint, methods=["POST"], include_in_schema=False))

    @app.get("/healthz")
    async def healthz() -> Response:
        return PlainTextResponse("ok")

    @app.get("/readyz")
    async def readyz() -> Response:
        if state["ready"]:
            return PlainTextResponse("ready")
        return PlainTextResponse("not ready", status_code=503)

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    return app


async def _read_body(receive: Receive) -> bytes | None:
    message = await receive()
    if message["type"] != "http.request":
        return None
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        return body
    chunks = [body]
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _send_json(send: Send, status: int, content: bytes) -> None:
    headers = [_JSON_TYPE, (b"content-length", str(len(content)).encode("ascii"))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": content})


def _record(metrics: WebhookMetrics, endpoint: str, outcome: Outcome, elapsed: float) -> None:
    metrics.observe(endpoint, outcome.decision, elapsed)
    identity = outcome.identity
    dry_run = bool(outcome.request.get("dryRun"))
    if outcome.decision == "injected" and not dry_run:
        metrics.injected(identity["namespace"])
    response = outcome.review["response"]
    fields: dict[str, object] = {
        "endpoint": endpoint,
        "uid": outcome.request["uid"],
        **identity,
        "kind": outcome.request["kind"]["kind"],
        "operation": outcome.request.get("operation"),
        "dryRun": dry_run,
        "decision": outcome.decision,
        "models": list(outcome.models),
        "duration_ms": round(elapsed * 1000, 3),
    }
    if "status" in response:
        fields["reason"] = response["status"]["message"]
    log.info("admission", extra={"fields": fields})
