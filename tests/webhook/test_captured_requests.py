"""The captured kube-apiserver requests, end to end through the pure review functions."""

from __future__ import annotations

import copy

import pytest

from tests.webhook.kube import (
    apply_response,
    assert_valid_pod,
    decode_patch,
    fixture_names,
    injected_init_containers,
    load_review,
)
from tests.webhook.restricted import restricted_violations
from webhook.core.review import mutate_review, validate_review
from webhook.core.settings import Settings

DEFAULTS = Settings()
WITH_S3 = Settings(allowed_schemes=["https", "s3"])
INJECTED_FIXTURES = [
    "pod-batch-score-from-job.json",
    "pod-dry-run.json",
    "pod-embedder-from-statefulset.json",
    "pod-llama-after-template-update.json",
    "pod-llama-from-deployment.json",
    "pod-multi-model.json",
]


def mutated(name: str, settings: Settings = WITH_S3) -> tuple[dict, dict]:
    review = load_review(name)
    response = mutate_review(review, settings).review["response"]
    assert response["allowed"] is True, response
    return apply_response(review["request"]["object"], response), response


def test_every_pod_fixture_is_covered() -> None:
    assert set(INJECTED_FIXTURES) | {
        "pod-plain-bare.json",
        "pod-plain-from-deployment.json",
    } == set(fixture_names("pod-"))


@pytest.mark.parametrize("name", INJECTED_FIXTURES)
def test_patched_pod_is_valid_restricted_and_stable(name: str) -> None:
    pod, response = mutated(name)
    assert_valid_pod(pod)
    fetchers = injected_init_containers(pod)
    assert fetchers
    for container in fetchers:
        assert restricted_violations(pod, container["name"]) == []
    again = mutate_review(_with_object(load_review(name), pod), WITH_S3)
    assert again.decision == "unchanged"
    assert decode_patch(again.review["response"]) == []
    assert response["uid"] == load_review(name)["request"]["uid"]


@pytest.mark.parametrize("name", ["pod-plain-bare.json", "pod-plain-from-deployment.json"])
def test_pods_without_models_pass_unchanged(name: str) -> None:
    outcome = mutate_review(load_review(name), DEFAULTS)
    assert outcome.decision == "unchanged"
    assert outcome.review["response"] == {
        "uid": load_review(name)["request"]["uid"],
        "allowed": True,
    }


def test_deployment_pod_gets_the_documented_fetch_command() -> None:
    pod, response = mutated("pod-llama-from-deployment.json", DEFAULTS)
    assert "warnings" not in response
    init_names = [c["name"] for c in pod["spec"]["initContainers"]]
    assert init_names == ["migrate", "model-fetch"]
    fetch = pod["spec"]["initContainers"][1]
    assert fetch["image"] == "ghcr.io/example/model-fetcher:0.1.0"
    assert fetch["command"] == ["model-fetch"]
    assert fetch["args"] == [
        "https://models.example.com/llama-3-8b.tar.zst",
        "--mirror",
        "https://internal-cache.models.svc.cluster.local/llama-3-8b.tar.zst",
        "--sha256",
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        "-o",
        "/models",
        "--max-bandwidth",
        "200MB/s",
        "--max-disk-buffer",
        "1GiB",
        "--format",
        "auto",
        "--log-format",
        "json",
    ]
    assert fetch["volumeMounts"] == [{"name": "model", "mountPath": "/models"}]
    assert fetch["resources"] == {
        "requests": {"cpu": "100m", "memory": "128Mi", "ephemeral-storage": "20Gi"},
        "limits": {"cpu": "1", "memory": "512Mi"},
    }
    assert "envFrom" not in fetch
    assert {"name": "model", "emptyDir": {"sizeLimit": "20Gi"}} in pod["spec"]["volumes"]
    for container in pod["spec"]["containers"]:
        assert {"name": "model", "mountPath": "/models", "readOnly": True} in container[
            "volumeMounts"
        ]
    assert pod["metadata"]["annotations"]["models.example.com/status"] == "injected"
    assert pod["metadata"]["annotations"]["prometheus.io/scrape"] == "true"


def test_patch_appends_to_existing_lists_and_escapes_the_annotation_key() -> None:
    _, response = mutated("pod-llama-from-deployment.json", DEFAULTS)
    paths = [operation["path"] for operation in decode_patch(response)]
    assert paths == [
        "/metadata/annotations/models.example.com~1status",
        "/spec/volumes/-",
        "/spec/initContainers/-",
        "/spec/containers/0/volumeMounts/-",
        "/spec/containers/1/volumeMounts/-",
    ]


def test_template_update_pod_fetches_the_new_digest() -> None:
    pod, _ = mutated("pod-llama-after-template-update.json", DEFAULTS)
    args = injected_init_containers(pod)[0]["args"]
    assert args[args.index("--sha256") + 1] == "0" * 64


def test_statefulset_pod_with_s3_is_refused_unless_policy_allows_the_scheme() -> None:
    refused = mutate_review(load_review("pod-embedder-from-statefulset.json"), DEFAULTS)
    assert refused.decision == "refused"
    assert refused.review["response"]["status"] == {
        "code": 400,
        "message": 'models.example.com/source: "s3://ml-artifacts/embedder/v7/model.tar.gz" is '
        "not valid; expected a https:// URL (scheme s3:// is not allowed)",
    }
    assert refused.identity == {"namespace": "ml", "name": "embedder-0"}

    pod, response = mutated("pod-embedder-from-statefulset.json", WITH_S3)
    assert response["warnings"] == [
        "models.example.com/sha256 is not set: the download will not be verified"
    ]
    (fetch,) = injected_init_containers(pod)
    assert fetch["envFrom"] == [{"secretRef": {"name": "s3-reader"}}]
    assert "--auth-from" not in fetch["args"]  # the Authorization header is for http(s) only
    assert fetch["resources"]["requests"]["ephemeral-storage"] == "64Mi"
    assert {"name": "model", "persistentVolumeClaim": {"claimName": "model-store"}} in pod["spec"][
        "volumes"
    ]
    app = pod["spec"]["containers"][0]
    assert "envFrom" not in app  # the Secret never reaches the app container


def test_job_pod_stores_a_single_file_at_its_mount_path() -> None:
    pod, _ = mutated("pod-batch-score-from-job.json", DEFAULTS)
    args = injected_init_containers(pod)[0]["args"]
    assert args[args.index("--format") + 1] == "none"
    assert args[args.index("-o") + 1] == "/opt/model"
    mounts = pod["spec"]["containers"][0]["volumeMounts"]
    assert {"name": "model", "mountPath": "/opt/model", "readOnly": True} in mounts


def test_named_model_gets_its_own_volume_container_and_targets() -> None:
    pod, response = mutated("pod-multi-model.json", DEFAULTS)
    fetchers = {c["name"]: c for c in injected_init_containers(pod)}
    assert set(fetchers) == {"model-fetch", "model-fetch-tokenizer"}
    assert fetchers["model-fetch-tokenizer"]["args"][:3] == [
        "https://models.example.com/llm/tokenizer.tar.gz",
        "-o",
        "/tokenizer",
    ]
    assert fetchers["model-fetch"]["resources"]["requests"]["ephemeral-storage"] == "40Gi"
    mounts = {c["name"]: [m["name"] for m in c["volumeMounts"]] for c in pod["spec"]["containers"]}
    assert mounts["llm"][-2:] == ["model", "model-tokenizer"]
    assert mounts["proxy"][-1] == "model-tokenizer"
    assert "model" not in mounts["proxy"]
    assert response["warnings"] == [
        "models.example.com/tokenizer.sha256 is not set: the download will not be verified"
    ]


def test_dry_run_is_answered_exactly_like_a_real_request() -> None:
    review = load_review("pod-dry-run.json")
    assert review["request"]["dryRun"] is True
    real = copy.deepcopy(review)
    real["request"]["dryRun"] = False
    assert mutate_review(review, DEFAULTS).review == mutate_review(real, DEFAULTS).review


@pytest.mark.parametrize(
    "name",
    [
        "workload-deployment-create.json",
        "workload-deployment-update.json",
        "workload-job-create.json",
        "workload-replicaset-create.json",
    ],
)
def test_valid_workloads_are_allowed(name: str) -> None:
    outcome = validate_review(load_review(name), DEFAULTS)
    assert outcome.review["response"]["allowed"] is True
    assert outcome.review["response"]["uid"] == load_review(name)["request"]["uid"]
    assert "patch" not in outcome.review["response"]


def test_cronjob_with_bad_digest_is_refused_with_the_same_message_as_its_pods() -> None:
    review = load_review("workload-cronjob-create-bad-sha256.json")
    outcome = validate_review(review, DEFAULTS)
    response = outcome.review["response"]
    assert response["allowed"] is False
    assert response["status"]["code"] == 400
    message = response["status"]["message"]
    assert message == (
        'models.example.com/sha256: "not-a-digest" is not valid; expected 64 hexadecimal '
        "characters (the sha256 of the bytes at source)"
    )
    template = review["request"]["object"]["spec"]["jobTemplate"]["spec"]["template"]
    pod = {"apiVersion": "v1", "kind": "Pod", **template}
    pod_review = load_review("pod-plain-bare.json")
    pod_review["request"]["object"] = pod
    assert mutate_review(pod_review, DEFAULTS).review["response"]["status"]["message"] == message


def test_statefulset_validation_follows_the_scheme_policy() -> None:
    review = load_review("workload-statefulset-create.json")
    assert validate_review(review, DEFAULTS).decision == "refused"
    assert validate_review(review, WITH_S3).decision == "allowed"


def _with_object(review: dict, obj: dict) -> dict:
    review["request"]["object"] = obj
    return review
