"""Generated annotations and pod shapes through the HTTP edge: no 500s, every patch applies."""

from __future__ import annotations

import asyncio
import base64
import copy
import json
from typing import Any

import jsonpatch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.webhook.kube import assert_valid_pod, review_for
from tests.webhook.restricted import restricted_violations
from webhook.app import create_app
from webhook.core.settings import Settings

APP = create_app(Settings(allowed_schemes=["https", "http", "s3", "gs"], require_sha256=False))
PREFIX = "models.example.com/"

VALUES: dict[str, list[str]] = {
    "source": [
        "https://models.example.com/m.tar.zst",
        "http://cache.local:8080/m",
        "s3://b/k",
        "gs://ml-models/k",
    ],
    "sha256": ["ab" * 32, "AB" * 32],
    "mirrors": ["https://a.example.com/m", "https://a.example.com/m,https://b.example.com/m"],
    "mount-path": ["/models", "/data/m", "/cache", "/models/tok"],
    "containers": ["app", "app,sidecar"],
    "read-only": ["true", "false", "False"],
    "volume": ["emptyDir", "ephemeral"],
    "size-limit": ["5Gi", "500M", "1e9"],
    "extract": ["auto", "none"],
    "max-bandwidth": ["200MB/s", "10Mi"],
    "max-disk-buffer": ["256MiB", "1G"],
    "ca-bundle": ["corp-ca"],
    "credentials-secret": ["hf-token"],
    "cpu-request": ["100m", "500m"],
    "cpu-limit": ["1", "2"],
    "memory-request": ["64Mi"],
    "memory-limit": ["1Gi"],
    "init-first": ["true", "false"],
    "status": ["injected"],
}
# Values that are valid on their own but refused in some combinations, or simply wrong.
ODD_VALUES: dict[str, list[str]] = {
    "sha256": ["abc"],
    # The fetch container's own mounts: the CA bundle's, the Google key file's, one around both.
    "mount-path": ["relative", "/", "/etc/model-fetch/ca", "/var/run/secrets/model-fetch", "/etc"],
    "containers": ["ghost", "sidecar"],
    "volume": ["pvc", "hostPath"],
    "pvc-name": ["model-store"],
    "storage-class": ["fast-ssd"],
    "size-limit": ["lots"],
    "cpu-request": ["4"],
    "memory-limit": ["32Mi"],
    "status": ["bogus", "false"],
}
# "ca" and "credentials": named so that their volumes are the default model's CA and key volumes.
MODEL_SCOPES = ["", "tok.", "embed-2.", "ca.", "credentials."]
ODD_SCOPES = ["Bad.", "default.", "x" * 52 + "."]
RARE_KEYS = ["status", "unknown-key"]
TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=30)


def rarely(draw: st.DrawFn) -> bool:
    # sampled_from leans towards its first elements, so this is True about one time in ten
    return draw(st.sampled_from([False] * 9 + [True]))


@st.composite
def annotation_maps(draw: st.DrawFn) -> dict[str, str]:
    """Mostly well-formed maps, so that many pods are injected; now and then something odd."""
    annotations: dict[str, str] = {}
    if not rarely(draw):
        annotations[PREFIX + "source"] = draw(st.sampled_from(VALUES["source"]))
    for _ in range(draw(st.integers(0, 4))):
        rare = rarely(draw)
        name = draw(st.sampled_from([*RARE_KEYS, *ODD_VALUES] if rare else [*VALUES][1:-1]))
        scopes = ODD_SCOPES if rarely(draw) else MODEL_SCOPES
        scope = "" if name == "status" else draw(st.sampled_from(scopes))
        if scope and not rarely(draw):
            annotations[PREFIX + scope + "source"] = VALUES["source"][0]
        choices = VALUES.get(name, [])
        if rarely(draw) or not choices:
            value = draw(TEXT | st.sampled_from(ODD_VALUES.get(name, [""])))
        else:
            value = draw(st.sampled_from(choices))
        annotations[PREFIX + scope + name] = value
    if draw(st.booleans()):
        annotations["example.org/other"] = draw(TEXT)
    return annotations


CONTAINER_NAMES = ["app", "sidecar", "metrics", "model-fetch"]
MOUNT_PATHS = ["/models", "/cache", "/models/tok", "/var/run/secrets/kubernetes.io/serviceaccount"]


@st.composite
def pods(draw: st.DrawFn) -> dict[str, Any]:
    annotations = draw(annotation_maps())
    metadata: dict[str, Any] = {"generateName": "app-"}
    if annotations or draw(st.booleans()):
        metadata["annotations"] = annotations
    volume_names = draw(
        st.lists(st.sampled_from(["cache", "model", "model-ca", "data"]), unique=True)
    )
    names = draw(
        st.lists(st.sampled_from(CONTAINER_NAMES[:3]), min_size=1, max_size=3, unique=True)
    )

    def container(name: str) -> dict[str, Any]:
        result: dict[str, Any] = {"name": name, "image": f"registry.invalid/{name}:1"}
        if volume_names and draw(st.booleans()):
            paths = draw(st.lists(st.sampled_from(MOUNT_PATHS), max_size=2, unique=True))
            result["volumeMounts"] = [
                {"name": draw(st.sampled_from(volume_names)), "mountPath": path} for path in paths
            ]
        return result

    spec: dict[str, Any] = {"containers": [container(name) for name in names]}
    if rarely(draw):
        spec["os"] = {"name": draw(st.sampled_from(["linux", "windows"]))}
    if volume_names or draw(st.booleans()):
        spec["volumes"] = [{"name": name, "emptyDir": {}} for name in volume_names]
    init_pool = ["setup", "migrate", "model-fetch"] if rarely(draw) else ["setup", "migrate"]
    init_names = draw(st.lists(st.sampled_from(init_pool), unique=True))
    if init_names or draw(st.booleans()):
        spec["initContainers"] = [container(name) for name in init_names]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


def post(path: str, body: bytes) -> tuple[int, Any]:
    """One request straight into the ASGI app: the same code path uvicorn drives."""
    messages: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "https",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 8443),
    }
    asyncio.run(APP(scope, receive, send))
    status = next(m["status"] for m in messages if m["type"] == "http.response.start")
    content = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
    return status, json.loads(content)


def mutate(pod: dict[str, Any]) -> dict[str, Any]:
    status, review = post("/mutate", json.dumps(review_for(pod)).encode())
    assert status == 200, review
    response: dict[str, Any] = review["response"]
    return response


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pods())
def test_every_answer_is_a_review_and_every_patch_applies(pod: dict[str, Any]) -> None:
    assert_valid_pod(pod)
    response = mutate(copy.deepcopy(pod))
    event("refused" if not response["allowed"] else "patched" if "patch" in response else "as is")
    if not response["allowed"]:
        assert response["status"]["code"] == 400
        assert response["status"]["message"]
        return
    if "patch" not in response:
        return
    operations = json.loads(base64.b64decode(response["patch"]))
    assert {operation["op"] for operation in operations} == {"add"}
    patched = jsonpatch.apply_patch(pod, operations)
    assert_valid_pod(patched)
    for container in patched["spec"]["initContainers"]:
        if container["name"].startswith("model-fetch"):
            assert restricted_violations(patched, container["name"]) == []
    again = mutate(patched)
    assert again["allowed"] is True
    assert "patch" not in again


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | TEXT,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(TEXT, children, max_size=3),
    max_leaves=10,
)


@st.composite
def damaged_reviews(draw: st.DrawFn) -> Any:
    review = review_for(draw(pods()))
    path = draw(
        st.sampled_from(
            [
                (),
                ("request",),
                ("request", "object"),
                ("request", "object", "metadata"),
                ("request", "object", "spec"),
            ]
        )
    )
    node: Any = review
    for step in path:
        node = node[step]
    node[draw(st.sampled_from([*node, "extra"]))] = draw(JSON)
    return review


@settings(max_examples=150, deadline=None)
@given(st.one_of(JSON, damaged_reviews()), st.sampled_from(["/mutate", "/validate"]))
def test_arbitrary_bodies_never_cause_a_server_error(body: Any, path: str) -> None:
    status, answer = post(path, json.dumps(body).encode())
    assert status in (200, 400)
    if status == 400:
        assert set(answer) == {"error"}
    else:
        assert answer["kind"] == "AdmissionReview"
        assert isinstance(answer["response"]["allowed"], bool)
