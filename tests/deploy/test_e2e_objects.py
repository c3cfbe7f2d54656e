"""What tests/e2e/test_kind.py puts in a kind cluster, admitted here without one (so in CI).

The e2e tests need Docker and kind, so a mistake in the objects they apply would surface only on
someone's laptop. Here every pod and workload they send through admission (tests/e2e/objects.py
builds them once, for both) goes the way the apiserver would send it with the `kind` overlay
deployed: to the registrations whose rules, namespaceSelector and matchConditions select it, to
the same /mutate or /validate code the webhook pods run, and through webhook.core.render (what
`model-webhook render` prints) to see the injected pod. The settings are those the webhook pods
get: the rendered overlay's ConfigMap as environment variables, and nothing else.

matchConditions are CEL; they are evaluated here as "some annotation key starts with the
configured prefix", the expression tests/deploy/test_manifests.py holds every condition to.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import kubernetes_validate
import pytest

from tests.deploy.support import (
    KUBERNETES_VERSION,
    Manifest,
    namespace_labels,
    only,
    selector_matches,
)
from tests.e2e.cluster import (
    FETCHER_IMAGE,
    WEBHOOK_IMAGE,
    WEBHOOK_NAMESPACE,
    WEBHOOK_SELECTOR,
    Kube,
    fail_with_evidence,
)
from tests.e2e.objects import (
    BAD_SHA256,
    CLAIM_NAME,
    MOUNT,
    PREFIX,
    WRONG_SHA256,
    Model,
    build_model,
    claim,
    config_map_problems,
    namespaces,
    origin_objects,
    webhook_probe,
    workloads,
)
from tests.webhook.restricted import restricted_violations
from webhook.core.errors import Refused
from webhook.core.render import render_object
from webhook.core.review import REVIEWERS
from webhook.core.settings import Settings
from webhook.core.workloads import group_of_kind, pod_template

INJECT = "inject.pods.models.example.com"
VALIDATE_WORKLOADS = "validate.workloads.models.example.com"
VALIDATE_CRONJOBS = "validate.cronjobs.models.example.com"
# The resource each kind test_kind.py creates is registered under.
RESOURCES = {"Pod": "pods", "Deployment": "deployments", "CronJob": "cronjobs"}
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"

Outcome = Literal["injected", "refused", "not sent"]


@dataclass(frozen=True)
class Expected:
    """What test_kind.py expects of one object at creation."""

    outcome: Outcome
    # The registration the apiserver calls for the object itself (None: no call at all).
    hook: str | None
    volume: Literal["emptyDir", "persistentVolumeClaim"] = "emptyDir"
    # The sha256 the fetch is given: the model's own, or WRONG_SHA256 (a checksum failure).
    sha256: Literal["model", "wrong"] = "model"


EXPECTED = {
    # Workloads are checked by /validate; the pods their controllers make are then injected.
    "llm": Expected("injected", VALIDATE_WORKLOADS),
    "llm_restart": Expected("injected", VALIDATE_WORKLOADS),
    "llm_pvc": Expected("injected", VALIDATE_WORKLOADS, volume="persistentVolumeClaim"),
    # Refused at apply, each by the registration whose name test_kind.py looks for.
    "llm_bad": Expected("refused", VALIDATE_WORKLOADS),
    "nightly_bad": Expected("refused", VALIDATE_CRONJOBS),
    "bad_pod": Expected("refused", INJECT),
    # Admitted and injected; its fetch then fails with exit 3 in the cluster.
    "mismatch_pod": Expected("injected", INJECT, sha256="wrong"),
    # With the webhook down these must still be created, so the apiserver must not call it.
    "plain_pod": Expected("not sent", None),
    "opted_out_pod": Expected("not sent", None),
    "annotated_pod": Expected("injected", INJECT),
    "availability_pod": Expected("injected", INJECT),
    # conftest.py's check that the apiserver reaches the webhook, in `default`.
    "webhook_probe": Expected("injected", INJECT),
}


@pytest.fixture(scope="module")
def model() -> Model:
    return build_model()


@pytest.fixture(scope="module")
def objects(model: Model) -> dict[str, Manifest]:
    return {**dict(workloads(model).items()), "webhook_probe": webhook_probe()}


# --- how the apiserver would see it ----------------------------------------------------------


def namespace_labels_of(name: str) -> dict[str, str]:
    """The labels of a namespace the e2e tests use, as the apiserver stores them."""
    created = {ns["metadata"]["name"]: ns["metadata"]["labels"] for ns in namespaces()}
    assert name in (*created, "default"), f"{name} is neither created by the tests nor `default`"
    return namespace_labels(name, **created.get(name, {}))


def template_annotations(obj: Manifest) -> dict[str, str]:
    template = pod_template(obj, group_of(obj), obj["kind"])
    assert template is not None, f"{obj['kind']} has no pod template"
    annotations: dict[str, str] = (template.get("metadata") or {}).get("annotations") or {}
    return annotations


def group_of(obj: Manifest) -> str:
    group = group_of_kind(obj["kind"])
    assert group is not None, obj["kind"]
    return group


def hooks_called(
    configurations: list[Manifest],
    obj: Manifest,
    prefix: str,
    labels: dict[str, str] | None = None,
) -> list[Manifest]:
    """The registrations the apiserver calls when `obj` is created; `labels` are its namespace's
    (by default those of the namespace the e2e tests create for it)."""
    group, resource = group_of(obj), RESOURCES[obj["kind"]]
    if labels is None:
        labels = namespace_labels_of(obj["metadata"]["namespace"])
    annotated = any(key.startswith(f"{prefix}/") for key in template_annotations(obj))
    called = []
    for configuration in configurations:
        if not configuration["kind"].endswith("WebhookConfiguration"):
            continue
        for hook in configuration["webhooks"]:
            selected = any(
                "CREATE" in rule["operations"]
                and group in rule["apiGroups"]
                and resource in rule["resources"]
                for rule in hook["rules"]
            )
            if selected and selector_matches(hook["namespaceSelector"], labels) and annotated:
                called.append(hook)
    return called


def review(hook: Manifest, obj: Manifest, settings: Settings) -> dict[str, Any]:
    """The webhook's answer to the AdmissionReview the apiserver sends `hook` for `obj`."""
    body = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "e2e-objects",
            "kind": {"group": group_of(obj), "version": "v1", "kind": obj["kind"]},
            "resource": {
                "group": group_of(obj),
                "version": "v1",
                "resource": RESOURCES[obj["kind"]],
            },
            "namespace": obj["metadata"]["namespace"],
            "operation": "CREATE",
            "object": obj,
            "oldObject": None,
        },
    }
    reviewer = REVIEWERS[hook["clientConfig"]["service"]["path"].removeprefix("/")]
    response: dict[str, Any] = dict(reviewer(body, settings).review["response"])
    return response


def pod_from(workload: Manifest) -> Manifest:
    """The pod a controller creates from a workload's template."""
    template = pod_template(workload, group_of(workload), workload["kind"])
    assert template is not None
    metadata = {
        **template["metadata"],
        "generateName": f"{workload['metadata']['name']}-",
        "namespace": workload["metadata"]["namespace"],
    }
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": template["spec"]}


def schema_problem(obj: Manifest) -> str | None:
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        path = ".".join(str(step) for step in error.path)
        return f"{obj['kind']} invalid at {path}: {error.message}"
    return None


def assert_refused_for_the_bad_sha256(message: str) -> None:
    """What test_kind.py finds in kubectl's error: the key and the value at fault."""
    assert f"{PREFIX}/sha256" in message
    assert BAD_SHA256 in message


def assert_injected(pod: Manifest, model: Model, expected: Expected, where: str) -> None:
    """The pod as the webhook leaves it, checked for what test_kind.py and the cluster need."""
    spec = pod["spec"]
    assert pod["metadata"]["annotations"][f"{PREFIX}/status"] == "injected", where
    (fetch,) = spec["initContainers"]
    assert fetch["name"] == "model-fetch", where
    # Loaded into kind with `kind load`, never pulled.
    assert (fetch["image"], fetch["imagePullPolicy"]) == (FETCHER_IMAGE, "Never"), where
    annotations, args = template_annotations(pod), fetch["args"]
    assert args[0] == annotations[f"{PREFIX}/source"], where
    if f"{PREFIX}/sha256" in annotations:
        digest = model.sha256 if expected.sha256 == "model" else WRONG_SHA256
        assert (args[0], args[args.index("--sha256") + 1]) == (model.url, digest), where
    (app,) = spec["containers"]
    (mount,) = [m for m in app["volumeMounts"] if m["mountPath"] == MOUNT]
    assert mount.get("readOnly") is True, where
    (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    assert expected.volume in volume, f"{where}: {volume}"
    if expected.volume == "persistentVolumeClaim":
        assert volume["persistentVolumeClaim"] == {"claimName": CLAIM_NAME}, where
    for container in (*spec["initContainers"], *spec["containers"]):
        assert restricted_violations(pod, container["name"]) == [], (where, container["name"])
    assert schema_problem(pod) is None, (where, schema_problem(pod))


# --- every object test_kind.py sends ---------------------------------------------------------


def test_every_object_test_kind_sends_has_an_expectation(objects: dict[str, Manifest]) -> None:
    assert set(objects) == set(EXPECTED)
    test_kind = (Path(__file__).parents[1] / "e2e" / "test_kind.py").read_text(encoding="utf-8")
    for name in EXPECTED:
        if name != "webhook_probe":
            assert f"workloads.{name}" in test_kind, f"test_kind.py no longer uses {name}"
    # Anything built in test_kind.py itself would escape this module: build it in workloads().
    for builder in ("deployment(", "cronjob(", "bare_pod(", "model_annotations("):
        assert builder not in test_kind, f"test_kind.py calls {builder}...) itself"


@pytest.mark.parametrize("name", list(EXPECTED))
def test_admitted_as_test_kind_expects(
    name: str,
    objects: dict[str, Manifest],
    kind: list[Manifest],
    settings: Settings,
    model: Model,
) -> None:
    obj, expected = objects[name], EXPECTED[name]
    assert schema_problem(obj) is None, schema_problem(obj)
    hooks = hooks_called(kind, obj, settings.annotation_prefix)
    assert [hook["name"] for hook in hooks] == ([expected.hook] if expected.hook else [])

    if expected.outcome == "not sent":
        # Created as it is, whether the webhook runs or not.
        assert "initContainers" not in obj["spec"]
        return

    (hook,) = hooks
    answer = review(hook, obj, settings)
    if expected.outcome == "refused":
        assert answer["allowed"] is False, answer
        assert_refused_for_the_bad_sha256(answer["status"]["message"])
        with pytest.raises(Refused) as refused:
            render_object(obj, settings)
        assert_refused_for_the_bad_sha256(refused.value.message)
        return

    assert answer["allowed"] is True, answer.get("status")
    rendered, _ = render_object(obj, settings)
    if obj["kind"] == "Pod":
        assert "patch" in answer, "allowed without injection"
        assert_injected(rendered, model, expected, name)
        return
    # A workload: its template is only validated; the pods made from it are injected.
    assert schema_problem(rendered) is None, schema_problem(rendered)
    pod = pod_from(obj)
    (pod_hook,) = hooks_called(kind, pod, settings.annotation_prefix)
    assert pod_hook["name"] == INJECT
    assert "patch" in review(pod_hook, pod, settings), f"pods of {name} would not be injected"
    assert_injected(pod_from(rendered), model, expected, name)


def test_the_guard_catches_an_object_the_webhook_refuses(
    model: Model, kind: list[Manifest], settings: Settings
) -> None:
    """A claim with a size-limit is refused; the expectations above would notice."""
    broken = workloads(model).llm_pvc
    broken["spec"]["template"]["metadata"]["annotations"][f"{PREFIX}/size-limit"] = "256Mi"
    (hook,) = hooks_called(kind, broken, settings.annotation_prefix)
    answer = review(hook, broken, settings)
    assert answer["allowed"] is False
    assert "size-limit" in answer["status"]["message"]


# --- the cluster test_kind.py talks to -------------------------------------------------------


def test_the_e2e_helpers_name_what_the_kind_overlay_deploys(
    kind: list[Manifest], settings: Settings
) -> None:
    deployment = only(kind, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == WEBHOOK_IMAGE  # the tag build_images() and `kind load` use
    assert deployment["metadata"]["namespace"] == WEBHOOK_NAMESPACE
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = dict(pair.split("=") for pair in WEBHOOK_SELECTOR.split(","))
    assert selector_matches({"matchLabels": selector}, labels)
    # conftest.py and test_kind.py name these: deployment/model-injector, certs for the Service,
    # EndpointSlices by kubernetes.io/service-name.
    assert deployment["metadata"]["name"] == "model-injector"
    assert only(kind, "Service")["metadata"]["name"] == "model-injector"
    assert settings.fetcher_image == FETCHER_IMAGE
    assert settings.default_mount_path == MOUNT
    assert settings.annotation_prefix == PREFIX


def test_the_origin_and_namespaces_are_valid_and_never_sent_to_the_webhook(
    model: Model, kind: list[Manifest], settings: Settings
) -> None:
    for obj in (*namespaces(), *origin_objects(model.archive), claim(CLAIM_NAME)):
        assert schema_problem(obj) is None, schema_problem(obj)
    for namespace in namespaces():
        assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    (origin,) = [obj for obj in origin_objects(model.archive) if obj["kind"] == "Deployment"]
    assert hooks_called(kind, origin, settings.annotation_prefix) == []
    pod = pod_from(origin)
    assert hooks_called(kind, pod, settings.annotation_prefix) == []
    assert restricted_violations(pod, "http") == []


# --- the origin's ConfigMap ------------------------------------------------------------------


def applied_command(monkeypatch: pytest.MonkeyPatch, objects: list[Manifest]) -> list[str]:
    """The kubectl command line Kube.apply runs, captured instead of run."""
    commands: list[list[str]] = []

    def fake_run(command: list[str], **_: object) -> subprocess.CompletedProcess[str]:
        commands.append(command)
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(subprocess, "run", fake_run)
    Kube("kubectl", Path(os.devnull)).apply(*objects)
    (command,) = commands
    return command


def as_client_side_apply_stores_it(config_map: Manifest) -> Manifest:
    """`kubectl apply` without --server-side keeps a copy of the object in an annotation."""
    metadata = config_map["metadata"]
    annotations = {**(metadata.get("annotations") or {}), LAST_APPLIED: json.dumps(config_map)}
    return {**config_map, "metadata": {**metadata, "annotations": annotations}}


def test_the_origin_config_map_fits_as_kube_apply_applies_it(
    model: Model, monkeypatch: pytest.MonkeyPatch
) -> None:
    origin = origin_objects(model.archive)
    (config_map,) = [obj for obj in origin if obj["kind"] == "ConfigMap"]
    command = applied_command(monkeypatch, origin)
    assert command[1:4] == ["--kubeconfig", os.devnull, "apply"]
    stored = (
        config_map if "--server-side" in command else as_client_side_apply_stores_it(config_map)
    )
    assert config_map_problems(stored) == []
    served = base64.b64decode(config_map["binaryData"]["model.tar.zst"])
    assert served == model.archive


def test_the_config_map_limits_are_the_apiservers(model: Model) -> None:
    (config_map,) = [obj for obj in origin_objects(model.archive) if obj["kind"] == "ConfigMap"]
    # The archive as it is would not survive client-side apply: a reason for --server-side.
    (problem,) = config_map_problems(as_client_side_apply_stores_it(config_map))
    assert "annotations" in problem
    (too_big,) = [
        obj for obj in origin_objects(os.urandom(1024 * 1024 + 1)) if obj["kind"] == "ConfigMap"
    ]
    assert any("binaryData" in problem for problem in config_map_problems(too_big))


# --- what the e2e tests leave behind them, and say when they fail --------------------------


def all_pod_specs(model: Model) -> list[tuple[str, dict[str, Any]]]:
    specs = []
    for name, obj in [*workloads(model).items(), ("webhook_probe", webhook_probe())]:
        template = pod_template(obj, group_of(obj), obj["kind"])
        assert template is not None, name
        specs.append((name, template["spec"]))
    for obj in origin_objects(model.archive):
        if obj["kind"] == "Deployment":
            specs.append(("origin", obj["spec"]["template"]["spec"]))
    return specs


def test_every_e2e_pod_is_deleted_in_a_second_or_two(model: Model) -> None:
    """Their PID 1 (`sleep`, `python -m http.server`) ignores SIGTERM, so each deletion waits
    the whole grace period: the default 30 s per pod, many times over a run."""
    specs = all_pod_specs(model)
    assert {name for name, _ in specs} >= {"origin", "llm", "bad_pod", "webhook_probe"}
    for name, spec in specs:
        assert 0 < spec.get("terminationGracePeriodSeconds", 30) <= 2, name


def test_a_stuck_pod_fails_with_the_whole_describe_and_events(
    capsys: pytest.CaptureFixture[str],
) -> None:
    describe = "Name: llm-1\n" + "".join(f"  line {n}\n" for n in range(5000)) + "Events: X\n"
    events = "".join(f"event {n}\n" for n in range(3000))
    with pytest.raises(AssertionError) as caught:
        fail_with_evidence("1 ready pods not reached", {"describe": describe, "events": events})
    printed = capsys.readouterr().out
    for text in (str(caught.value), printed):
        assert text.startswith("1 ready pods not reached\n----- describe\nName: llm-1\n")
        assert describe.rstrip() in text
        assert events.rstrip() in text
