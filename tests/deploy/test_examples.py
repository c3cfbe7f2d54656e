"""deploy/examples, checked without a cluster: what `kubectl apply -k deploy/examples` installs.

The objects are rendered with kubectl's kustomize (the configMapGenerator included), validated
against the Kubernetes schema, and sent the way the apiserver would send them with the `kind`
overlay deployed (tests/deploy/test_e2e_objects.py's helpers) to the webhook's own review and
render code. The model annotations must name the exact bytes the origin serves, and every pod
must pass Pod Security "restricted", which the examples' namespace enforces.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import io
import json
import sys
import tarfile
from pathlib import Path
from types import ModuleType

import pytest
import yaml
import zstandard

from tests.deploy.support import (
    ROOT,
    Manifest,
    namespace_labels,
    only,
    render,
    selector_matches,
)
from tests.deploy.test_e2e_objects import (
    INJECT,
    LAST_APPLIED,
    VALIDATE_WORKLOADS,
    hooks_called,
    pod_from,
    review,
    schema_problem,
)
from tests.e2e.objects import config_map_problems
from tests.webhook.restricted import restricted_violations
from webhook.core.render import render_object
from webhook.core.settings import Settings

EXAMPLES = ROOT / "deploy" / "examples"
ARCHIVE = EXAMPLES / "origin" / "model.tar.zst"
NAMESPACE = "model-examples"
PREFIX = "models.example.com"
# The annotated Deployments, and the volume each one's model lands on.
APPS = {"llm": "emptyDir", "llm-pvc": "persistentVolumeClaim", "llm-from-configmap": "emptyDir"}
# The Deployment whose source, and its digest, are in a ConfigMap (source-from).
FROM_CONFIG_MAP = ("llm-from-configmap", "llm-model")


def load_generator() -> ModuleType:
    """scripts/example_model.py, which wrote the archive, imported from its path."""
    path = ROOT / "scripts" / "example_model.py"
    spec = importlib.util.spec_from_file_location("example_model", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def examples(deploy_copy: Path) -> list[Manifest]:
    return render(deploy_copy / "examples")


@pytest.fixture(scope="module")
def archive() -> bytes:
    return ARCHIVE.read_bytes()


def named(objects: list[Manifest], kind: str, name: str) -> Manifest:
    (obj,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return obj


def labels_of_namespace(examples: list[Manifest]) -> dict[str, str]:
    namespace = only(examples, "Namespace")
    return namespace_labels(namespace["metadata"]["name"], **namespace["metadata"]["labels"])


def origin_content(examples: list[Manifest]) -> Manifest:
    """The generated ConfigMap holding the archive the origin serves."""
    (config_map,) = [
        obj
        for obj in examples
        if obj["kind"] == "ConfigMap"
        and obj["metadata"]["name"].startswith("model-origin-content-")
    ]
    return config_map


def source_and_digest(examples: list[Manifest], name: str) -> tuple[str, str]:
    """Where a Deployment's model comes from: its annotations, or its source-from ConfigMap."""
    annotations = named(examples, "Deployment", name)["spec"]["template"]["metadata"]["annotations"]
    if f"{PREFIX}/source-from" in annotations:
        data = named(examples, "ConfigMap", annotations[f"{PREFIX}/source-from"])["data"]
        return data["source"], data["sha256"]
    return annotations[f"{PREFIX}/source"], annotations[f"{PREFIX}/sha256"]


def origin_of(examples: list[Manifest]) -> Manifest:
    return named(examples, "Deployment", "model-origin")


def pod_specs(examples: list[Manifest]) -> list[tuple[str, Manifest]]:
    return [
        (obj["metadata"]["name"], pod_from(obj)) for obj in examples if obj["kind"] == "Deployment"
    ]


# --- what kustomize renders ------------------------------------------------------------------


def test_the_render_is_the_listed_resources_and_the_generated_config_map(
    examples: list[Manifest],
) -> None:
    kustomization = yaml.safe_load((EXAMPLES / "kustomization.yaml").read_text(encoding="utf-8"))
    assert kustomization["namespace"] == NAMESPACE
    listed = set()
    for resource in kustomization["resources"]:
        for doc in yaml.safe_load_all((EXAMPLES / resource).read_text(encoding="utf-8")):
            listed.add((doc["kind"], doc["metadata"]["name"]))
    (generator,) = kustomization["configMapGenerator"]
    assert generator["files"] == ["origin/model.tar.zst"]
    rendered = {(obj["kind"], obj["metadata"]["name"]) for obj in examples}
    (config_map,) = rendered - listed
    assert config_map[0] == "ConfigMap"
    assert config_map[1].startswith(f"{generator['name']}-")  # the hash suffix
    assert listed == rendered - {config_map}
    for obj in examples:
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == NAMESPACE, obj["metadata"]["name"]


def test_every_object_validates_against_the_kubernetes_schema(examples: list[Manifest]) -> None:
    kinds = sorted(obj["kind"] for obj in examples)
    assert kinds == [
        "ConfigMap", "ConfigMap", "Deployment", "Deployment", "Deployment", "Deployment",
        "Namespace", "PersistentVolumeClaim", "Service",
    ]  # fmt: skip
    for obj in examples:
        assert schema_problem(obj) is None, schema_problem(obj)


# --- the origin ------------------------------------------------------------------------------


def test_the_origin_serves_the_committed_archive_at_the_annotated_url(
    examples: list[Manifest], archive: bytes
) -> None:
    origin, service = origin_of(examples), only(examples, "Service")
    config_map = origin_content(examples)
    # Not UTF-8, so kustomize puts it in binaryData, byte for byte.
    assert set(config_map["binaryData"]) == {ARCHIVE.name}
    assert "data" not in config_map
    assert base64.b64decode(config_map["binaryData"][ARCHIVE.name]) == archive

    spec = origin["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    (mount,) = container["volumeMounts"]
    (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    command = container["command"]
    assert command[:3] == ["python", "-m", "http.server"]
    assert command[command.index("--directory") + 1] == mount["mountPath"]
    (port,) = container["ports"]

    (service_port,) = service["spec"]["ports"]
    assert service_port["targetPort"] in (port["name"], port["containerPort"])
    pod_labels = origin["spec"]["template"]["metadata"]["labels"]
    assert selector_matches({"matchLabels": service["spec"]["selector"]}, pod_labels)
    assert container["readinessProbe"]["httpGet"]["path"] == f"/{ARCHIVE.name}"

    served = f"http://{service['metadata']['name']}.{NAMESPACE}.svc/{ARCHIVE.name}"
    assert service_port["port"] == 80  # the URL names no port
    for name in APPS:
        assert source_and_digest(examples, name) == (served, hashlib.sha256(archive).hexdigest())


def test_the_archive_holds_what_the_generator_writes(archive: bytes) -> None:
    expected: dict[str, bytes] = load_generator().model_files()
    raw = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(archive)).read()
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert all(m.isfile() and m.mode == 0o644 for m in members.values())
        files = {name: tar.extractfile(m).read() for name, m in members.items()}  # type: ignore[union-attr]
    assert files == expected


def test_the_config_map_fits_client_side_apply(examples: list[Manifest]) -> None:
    """README.md applies with plain `kubectl apply -k`: the whole ConfigMap is copied into its
    last-applied-configuration annotation, which must stay under the apiserver's limits."""
    config_map = origin_content(examples)
    metadata = config_map["metadata"]
    stored = {
        **config_map,
        "metadata": {**metadata, "annotations": {LAST_APPLIED: json.dumps(config_map)}},
    }
    assert config_map_problems(stored) == []


# --- admission with the kind overlay ---------------------------------------------------------


def test_the_examples_use_the_images_the_kind_overlay_loads(
    examples: list[Manifest], settings: Settings
) -> None:
    for name, pod in pod_specs(examples):
        for container in pod["spec"]["containers"]:
            assert container["image"] == settings.fetcher_image, name
            assert container["imagePullPolicy"] == "Never", name


def test_the_origin_is_never_sent_to_the_webhook(
    examples: list[Manifest], kind: list[Manifest], settings: Settings
) -> None:
    labels = labels_of_namespace(examples)
    origin = origin_of(examples)
    assert hooks_called(kind, origin, settings.annotation_prefix, labels) == []
    assert hooks_called(kind, pod_from(origin), settings.annotation_prefix, labels) == []


@pytest.mark.parametrize("name", list(APPS))
def test_an_annotated_deployment_is_admitted_and_its_pods_injected(
    name: str,
    examples: list[Manifest],
    kind: list[Manifest],
    settings: Settings,
    archive: bytes,
) -> None:
    labels = labels_of_namespace(examples)
    deployment = named(examples, "Deployment", name)
    (hook,) = hooks_called(kind, deployment, settings.annotation_prefix, labels)
    assert hook["name"] == VALIDATE_WORKLOADS
    answer = review(hook, deployment, settings)
    assert answer["allowed"] is True, answer.get("status")
    assert not answer.get("warnings"), answer["warnings"]

    pod = pod_from(deployment)
    (pod_hook,) = hooks_called(kind, pod, settings.annotation_prefix, labels)
    assert pod_hook["name"] == INJECT
    answer = review(pod_hook, pod, settings)
    assert answer["allowed"] is True, answer.get("status")
    assert "patch" in answer, "allowed without injection"

    injected, _ = render_object(pod, settings)
    spec = injected["spec"]
    assert injected["metadata"]["annotations"][f"{PREFIX}/status"] == "injected"
    (fetch,) = spec["initContainers"]
    assert fetch["name"] == "model-fetch"
    assert (fetch["image"], fetch["imagePullPolicy"]) == (settings.fetcher_image, "Never")
    assert fetch["terminationMessagePolicy"] == "File"
    args = fetch["args"]
    (app,) = spec["containers"]
    if name == FROM_CONFIG_MAP[0]:
        # Resolved by the kubelet from the ConfigMap's keys, which the first test checks.
        assert args[:2] == ["--source-from-configmap", FROM_CONFIG_MAP[1]]
        assert args[-2:] == ["--", "$(MODEL_FETCH_SOURCE)"]
        refs = {var["valueFrom"]["configMapKeyRef"]["name"] for var in fetch["env"]}
        assert refs == {FROM_CONFIG_MAP[1]}
        assert app["env"] == [{"name": "MODEL_DIR", "value": settings.default_mount_path}]
    else:
        assert args[0] == pod["metadata"]["annotations"][f"{PREFIX}/source"]
        assert args[args.index("--sha256") + 1] == hashlib.sha256(archive).hexdigest()

    (mount,) = [m for m in app["volumeMounts"] if m["mountPath"] == settings.default_mount_path]
    assert mount.get("readOnly") is True
    (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    assert APPS[name] in volume, volume
    if APPS[name] == "persistentVolumeClaim":
        claim = only(examples, "PersistentVolumeClaim")
        assert volume["persistentVolumeClaim"] == {"claimName": claim["metadata"]["name"]}
    else:
        assert volume["emptyDir"]["sizeLimit"] == "64Mi"

    assert schema_problem(injected) is None, schema_problem(injected)
    for container in (*spec["initContainers"], *spec["containers"]):
        assert restricted_violations(injected, container["name"]) == [], container["name"]


# --- Pod Security and deletion ---------------------------------------------------------------


def test_the_namespace_enforces_restricted_and_every_pod_meets_it(
    examples: list[Manifest],
) -> None:
    assert labels_of_namespace(examples)["pod-security.kubernetes.io/enforce"] == "restricted"
    specs = pod_specs(examples)
    assert {name for name, _ in specs} == {"model-origin", *APPS}
    for name, pod in specs:
        for container in pod["spec"]["containers"]:
            assert restricted_violations(pod, container["name"]) == [], (name, container["name"])


def test_every_pod_is_deleted_in_a_second_or_two(examples: list[Manifest]) -> None:
    """PID 1 (`sleep`, `python -m http.server`) ignores SIGTERM, so a deletion waits the whole
    grace period: by default 30 s."""
    for name, pod in pod_specs(examples):
        assert 0 < pod["spec"].get("terminationGracePeriodSeconds", 30) <= 2, name
