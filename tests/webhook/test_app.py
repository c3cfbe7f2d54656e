"""The HTTP edge in-process: routes, status codes, the admission log line, the metrics."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import httpx
import pytest

from tests.webhook.asgi import Client, admission_lines
from tests.webhook.kube import load_review
from webhook.app import create_app
from webhook.core.settings import Settings
from webhook.logs import ADMISSION_LOGGER


@pytest.fixture
def client() -> Iterator[Client]:
    yield Client(create_app(Settings()))


def test_mutate_answers_an_admission_review(client: Client) -> None:
    body = load_review("pod-llama-from-deployment.json")
    reply = client.post("/mutate", json=body)
    assert reply.status_code == 200
    assert reply.headers["content-type"] == "application/json"
    review = reply.json()
    assert review["apiVersion"] == "admission.k8s.io/v1"
    assert review["kind"] == "AdmissionReview"
    assert review["response"]["uid"] == body["request"]["uid"]
    assert review["response"]["patchType"] == "JSONPatch"


def test_refusal_is_http_200_with_allowed_false(client: Client) -> None:
    reply = client.post("/validate", json=load_review("workload-cronjob-create-bad-sha256.json"))
    assert reply.status_code == 200
    assert reply.json()["response"]["allowed"] is False
    assert reply.json()["response"]["status"]["code"] == 400


@pytest.mark.parametrize(
    "content", [b"{not json", b"[]", b'{"kind": "AdmissionReview"}', b"\xff\xfe"]
)
def test_malformed_body_is_http_400_with_a_json_error(client: Client, content: bytes) -> None:
    reply = client.post("/mutate", content=content)
    assert reply.status_code == 400
    assert set(reply.json()) == {"error"}


def test_probes(client: Client) -> None:
    assert client.get("/healthz").text == "ok"
    assert client.get("/readyz").status_code == 200


def test_readyz_is_503_outside_the_lifespan() -> None:
    app = create_app(Settings())

    async def probe() -> int:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://webhook") as client:
            return (await client.get("/readyz")).status_code

    assert asyncio.run(probe()) == 503


def test_one_json_log_line_per_admission(client: Client, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=ADMISSION_LOGGER)
    client.post("/mutate", json=load_review("pod-llama-from-deployment.json"))
    client.post("/mutate", json=load_review("pod-embedder-from-statefulset.json"))
    client.post("/validate", json=load_review("workload-deployment-create.json"))
    injected, refused, validated = admission_lines(caplog)
    assert injected["uid"] == "004d03b8-a1f6-4fb6-a572-ae5fdadd4d6f"
    assert injected["namespace"] == "ml"
    assert injected["generateName"] == "llama-595bcd6f7b-"
    assert "name" not in injected
    assert injected["decision"] == "injected"
    assert injected["models"] == ["default"]
    assert injected["duration_ms"] > 0
    assert refused["name"] == "embedder-0"
    assert refused["decision"] == "refused"
    assert "s3://" in refused["reason"]
    assert validated["endpoint"] == "validate"
    assert validated["kind"] == "Deployment"
    assert validated["decision"] == "allowed"


def test_metrics_count_results_latency_and_injections(client: Client) -> None:
    client.post("/mutate", json=load_review("pod-llama-from-deployment.json"))
    client.post("/mutate", json=load_review("pod-multi-model.json"))
    client.post("/mutate", json=load_review("pod-dry-run.json"))
    client.post("/mutate", json=load_review("pod-plain-bare.json"))
    client.post("/mutate", content=b"nope")
    text = client.get("/metrics").text
    assert (
        'model_injector_admission_requests_total{endpoint="mutate",result="injected"} 3.0' in text
    )
    assert (
        'model_injector_admission_requests_total{endpoint="mutate",result="unchanged"} 1.0' in text
    )
    assert (
        'model_injector_admission_requests_total{endpoint="mutate",result="malformed"} 1.0' in text
    )
    assert 'model_injector_admission_duration_seconds_count{endpoint="mutate"} 5.0' in text
    # the dry run is not counted as an injection
    assert 'model_injector_injections_total{namespace="ml"} 2.0' in text
