"""AdmissionReview handling: what is reviewed, what passes untouched, what is malformed."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.webhook.kube import decode_patch, load_review, make_pod, model_annotations, review_for
from webhook.core.errors import MalformedReview
from webhook.core.review import mutate_review, validate_review
from webhook.core.settings import Settings

DEFAULTS = Settings()
SOURCE = "https://models.example.com/m.tar.zst"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "expected a JSON object"),
        ({"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview"}, "apiVersion"),
        ({"apiVersion": "admission.k8s.io/v1", "kind": "Pod"}, "apiVersion"),
        ({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}, "request object"),
        (
            {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {}},
            "request.uid",
        ),
        (
            {
                "apiVersion": "admission.k8s.io/v1",
                "kind": "AdmissionReview",
                "request": {"uid": "u", "kind": "Pod"},
            },
            "request.kind",
        ),
    ],
)
def test_bodies_that_are_not_admission_reviews_are_malformed(body: Any, message: str) -> None:
    for review in (mutate_review, validate_review):
        with pytest.raises(MalformedReview, match=message):
            review(body, DEFAULTS)


@pytest.mark.parametrize(
    ("field", "value"),
    [("object", "pod"), ("oldObject", []), ("namespace", 3), ("operation", 7)],
)
def test_request_fields_of_the_wrong_type_are_malformed(field: str, value: Any) -> None:
    body = review_for(make_pod(model_annotations(source=SOURCE)))
    body["request"][field] = value
    with pytest.raises(MalformedReview, match=f"request.{field}"):
        mutate_review(body, DEFAULTS)


def test_response_echoes_api_version_kind_and_uid() -> None:
    outcome = mutate_review(review_for(make_pod(model_annotations(source=SOURCE))), DEFAULTS)
    assert outcome.review["apiVersion"] == "admission.k8s.io/v1"
    assert outcome.review["kind"] == "AdmissionReview"
    response = outcome.review["response"]
    assert response["uid"] == "0f0e0d0c-0000-4000-8000-000000000001"
    assert response["allowed"] is True
    assert response["patchType"] == "JSONPatch"
    assert decode_patch(response)
    assert outcome.decision == "injected"
    assert outcome.models == ("default",)
    assert outcome.identity == {"namespace": "ml", "generateName": "app-"}


@pytest.mark.parametrize("operation", ["UPDATE", "DELETE", "CONNECT"])
def test_only_pod_creation_is_mutated(operation: str) -> None:
    body = review_for(make_pod(model_annotations(source=SOURCE)), operation=operation)
    outcome = mutate_review(body, DEFAULTS)
    assert outcome.decision == "unchanged"
    assert outcome.review["response"] == {"uid": body["request"]["uid"], "allowed": True}


def test_objects_that_are_not_pods_pass_unchanged() -> None:
    body = load_review("workload-deployment-create.json")
    outcome = mutate_review(body, DEFAULTS)
    assert outcome.review["response"] == {"uid": body["request"]["uid"], "allowed": True}


def test_validate_ignores_kinds_without_a_pod_template() -> None:
    body = review_for({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}})
    body["request"]["kind"] = {"group": "", "version": "v1", "kind": "ConfigMap"}
    assert validate_review(body, DEFAULTS).review["response"]["allowed"] is True


def test_validate_checks_bare_pods_and_daemonsets_too() -> None:
    pod = make_pod(model_annotations(source=SOURCE, containers="missing"))
    assert validate_review(review_for(pod), DEFAULTS).decision == "refused"
    daemonset = {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": "d"},
        "spec": {"template": {"metadata": pod["metadata"], "spec": pod["spec"]}},
    }
    body = review_for(daemonset)
    body["request"]["kind"] = {"group": "apps", "version": "v1", "kind": "DaemonSet"}
    outcome = validate_review(body, DEFAULTS)
    assert outcome.review["response"]["status"]["message"].startswith(
        'models.example.com/containers: "missing" is not valid'
    )


def test_update_that_keeps_a_bad_template_is_allowed_with_a_warning() -> None:
    body = load_review("workload-cronjob-create-bad-sha256.json")
    body["request"]["operation"] = "UPDATE"
    body["request"]["oldObject"] = copy.deepcopy(body["request"]["object"])
    body["request"]["object"]["metadata"]["labels"] = {"team": "eval"}
    response = validate_review(body, DEFAULTS).review["response"]
    assert response["allowed"] is True
    assert response["warnings"][0].startswith("pod template unchanged, so allowed despite: ")

    template = body["request"]["object"]["spec"]["jobTemplate"]["spec"]["template"]
    template["metadata"]["annotations"]["models.example.com/extract"] = "none"
    assert validate_review(body, DEFAULTS).review["response"]["allowed"] is False


def test_validate_passes_warnings_for_missing_digest() -> None:
    response = validate_review(load_review("workload-job-create.json"), DEFAULTS).review["response"]
    assert response["warnings"] == [
        "models.example.com/sha256 is not set: the download will not be verified"
    ]


@pytest.mark.parametrize("namespace", [123, {}, ["ml"], None])
def test_a_workload_namespace_that_is_not_a_string_never_reaches_the_logs(
    namespace: object,
) -> None:
    # The request's fields are checked; a workload's own metadata is not read as a pod's is.
    review = load_review("workload-deployment-create.json")
    del review["request"]["namespace"]
    review["request"]["object"]["metadata"]["namespace"] = namespace
    outcome = validate_review(review, Settings())
    assert outcome.identity["namespace"] == ""
    assert all(isinstance(value, str) for value in outcome.identity.values())


def test_a_pod_namespace_that_is_not_a_string_is_malformed() -> None:
    pod = make_pod(model_annotations(source="https://models.example.com/m.tar.zst"))
    pod["metadata"]["namespace"] = 123
    review = review_for(pod)
    del review["request"]["namespace"]
    with pytest.raises(MalformedReview, match=r"object\.metadata\.namespace: expected a string"):
        mutate_review(review, Settings())
