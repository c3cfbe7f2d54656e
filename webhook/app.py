"""The HTTP edge: FastAPI routes around the pure review functions, plus logs and metrics.

The admission routes are plain Starlette routes that read the raw body and answer raw JSON: the
AdmissionReview is a plain dict all the way through, and skipping FastAPI's parameter and model
machinery keeps the admission path short (it is most of the per-request cost otherwise).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST

from webhook.errors import MalformedReview
from webhook.logs import ADMISSION_LOGGER
from webhook.metrics import WebhookMetrics
from webhook.review import Outcome, Reviewer, mutate_review, validate_review
from webhook.settings import Settings

log = logging.getLogger(ADMISSION_LOGGER)


def create_app(settings: Settings, metrics: WebhookMetrics | None = None) -> FastAPI:
    metrics = metrics or WebhookMetrics()
    state = {"ready": False}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        state["ready"] = True
        yield
        state["ready"] = False

    app = FastAPI(
        title="model-injector webhook",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        lifespan=lifespan,
    )

    async def admit(request: Request, endpoint: str, reviewer: Reviewer) -> Response:
        started = time.perf_counter()
        try:
            try:
                body = json.loads(await request.body())
            except ValueError as error:
                raise MalformedReview(f"body is not JSON: {error}") from error
            outcome = reviewer(body, settings)
        except MalformedReview as error:
            metrics.observe(endpoint, "malformed", time.perf_counter() - started)
            log.warning("malformed admission review", extra={"fields": {"error": str(error)}})
            return JSONResponse({"error": str(error)}, status_code=400)
        except Exception:
            metrics.observe(endpoint, "error", time.perf_counter() - started)
            log.exception("admission review failed")
            return JSONResponse({"error": "internal error"}, status_code=500)
        content = json.dumps(outcome.review).encode()
        elapsed = time.perf_counter() - started
        _record(metrics, endpoint, outcome, elapsed)
        return Response(content=content, media_type="application/json")

    async def mutate(request: Request) -> Response:
        return await admit(request, "mutate", mutate_review)

    async def validate(request: Request) -> Response:
        return await admit(request, "validate", validate_review)

    app.add_route("/mutate", mutate, methods=["POST"])
    app.add_route("/validate", validate, methods=["POST"])

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
