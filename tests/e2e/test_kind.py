"""The whole system in a kind cluster: admission, the fetch, restarts, refusals, webhook outages.

Needs Docker and kind (`make e2e-kind`); see conftest.py for the cluster and its options.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from typing import Any

import pytest

from fetcher.state.marker import MARKER_NAME
from tests.e2e.cluster import FETCHER_IMAGE, WEBHOOK_NAMESPACE, WEBHOOK_SELECTOR, Kube, Manifest
from tests.e2e.objects import (
    BAD_SHA256,
    CLAIM_NAME,
    DIGEST_TREE,
    MODELS_NAMESPACE,
    MOUNT,
    PREFIX,
    WRONG_SHA256,
    Model,
    Workloads,
    claim,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]


def model_pods(kube: Kube, workload: Manifest, count: int) -> list[Manifest]:
    return kube.wait_ready(MODELS_NAMESPACE, f"app={workload['metadata']['name']}", count)


def assert_model_in(kube: Kube, pod: Manifest, model: Model) -> None:
    """What the app container sees: every file, byte for byte, read-only, and the marker."""
    name = pod["metadata"]["name"]
    assert pod["metadata"]["annotations"][f"{PREFIX}/status"] == "injected"
    (fetch,) = [c for c in pod["spec"]["initContainers"] if c["name"] == "model-fetch"]
    assert fetch["image"] == FETCHER_IMAGE

    listing = kube.exec(MODELS_NAMESPACE, name, "app", "python", "-c", DIGEST_TREE, MOUNT)
    assert listing.returncode == 0, listing.stderr
    digests: dict[str, str] = json.loads(listing.stdout)
    assert {path: digests.get(path) for path in model.files} == model.file_digests()
    assert set(digests) - set(model.files) == {MARKER_NAME}

    marker = kube.exec(MODELS_NAMESPACE, name, "app", "cat", f"{MOUNT}/{MARKER_NAME}")
    assert json.loads(marker.stdout)["sha256"] == model.sha256

    write = kube.exec(MODELS_NAMESPACE, name, "app", "touch", f"{MOUNT}/written-by-app")
    assert write.returncode != 0
    assert "Read-only file system" in write.stderr


# What README.md tells a user to run, for the fetch container alone.
FETCH_MESSAGE = '{.status.initContainerStatuses[?(@.name=="model-fetch")].state.terminated.message}'


def fetch_message(kube: Kube, pod: Manifest) -> dict[str, Any]:
    """The fetch container's termination message (terminationMessagePolicy File): the JSON the
    fetcher wrote to /dev/termination-log."""
    name = pod["metadata"]["name"]
    text = kube.run(
        "get", "pod", "-n", MODELS_NAMESPACE, name, "-o", f"jsonpath={FETCH_MESSAGE}"
    ).stdout  # fmt: skip
    assert text, f"{name}: model-fetch has no termination message"
    message: dict[str, Any] = json.loads(text)
    return message


def assert_fetched(message: dict[str, Any], model: Model, *, already_complete: bool) -> None:
    assert message["status"] == "ok", message
    assert message["sha256"] == model.sha256, message
    assert message["sha256_verified"] is True, message
    assert message["files"] > 0, message
    assert message["already_complete"] is already_complete, message


def fetch_log(kube: Kube, pod: Manifest) -> str:
    return kube.logs(MODELS_NAMESPACE, pod["metadata"]["name"], "model-fetch")


def delete_pod(kube: Kube, namespace: str, pod: Manifest) -> None:
    kube.run("delete", "pod", "-n", namespace, pod["metadata"]["name"], "--wait=true", timeout=120)


# --- the model arrives -----------------------------------------------------------------------


def test_an_annotated_deployment_starts_with_its_model(
    kube: Kube, model: Model, workloads: Workloads
) -> None:
    kube.apply(workloads.llm)
    (pod,) = model_pods(kube, workloads.llm, 1)
    assert_model_in(kube, pod, model)
    assert "already complete" not in fetch_log(kube, pod)
    assert_fetched(fetch_message(kube, pod), model, already_complete=False)


def test_a_second_replica_gets_the_model_too(
    kube: Kube, model: Model, workloads: Workloads
) -> None:
    kube.apply(workloads.llm)
    model_pods(kube, workloads.llm, 1)
    kube.run("scale", "-n", MODELS_NAMESPACE, "deployment/llm", "--replicas=2")
    pods = model_pods(kube, workloads.llm, 2)
    for pod in pods:
        assert_model_in(kube, pod, model)


def test_a_replaced_pod_fetches_the_model_again(
    kube: Kube, model: Model, workloads: Workloads
) -> None:
    kube.apply(workloads.llm_restart)
    (first,) = model_pods(kube, workloads.llm_restart, 1)
    delete_pod(kube, MODELS_NAMESPACE, first)
    (second,) = model_pods(kube, workloads.llm_restart, 1)
    assert second["metadata"]["uid"] != first["metadata"]["uid"]
    assert_model_in(kube, second, model)


def test_with_a_pvc_a_restart_does_not_download_again(
    kube: Kube, model: Model, workloads: Workloads
) -> None:
    kube.apply(claim(CLAIM_NAME))
    kube.apply(workloads.llm_pvc)
    (first,) = model_pods(kube, workloads.llm_pvc, 1)
    volumes = first["spec"]["volumes"]
    assert {"claimName": CLAIM_NAME} in [v.get("persistentVolumeClaim") for v in volumes]
    assert_model_in(kube, first, model)
    assert "already complete" not in fetch_log(kube, first)
    assert_fetched(fetch_message(kube, first), model, already_complete=False)

    delete_pod(kube, MODELS_NAMESPACE, first)
    (second,) = model_pods(kube, workloads.llm_pvc, 1)
    assert second["metadata"]["uid"] != first["metadata"]["uid"]
    assert "already complete" in fetch_log(kube, second)
    assert_model_in(kube, second, model)
    assert_fetched(fetch_message(kube, second), model, already_complete=True)


def test_a_checksum_mismatch_fails_the_fetch_with_exit_3_in_its_message(
    kube: Kube, model: Model, workloads: Workloads
) -> None:
    created = kube.run("create", "-o", "json", "-f", "-",
                       input_text=json.dumps(workloads.mismatch_pod))  # fmt: skip
    pod: Manifest = json.loads(created.stdout)
    name = pod["metadata"]["name"]
    try:
        deadline = time.monotonic() + 240
        while True:
            pod = kube.get("pod", "-n", MODELS_NAMESPACE, name)
            statuses = pod.get("status", {}).get("initContainerStatuses", [])
            (fetch,) = [s for s in statuses if s["name"] == "model-fetch"] or [{}]
            if "terminated" in fetch.get("state", {}):
                break
            assert time.monotonic() < deadline, f"{name}: model-fetch never finished: {fetch}"
            time.sleep(1)
        assert fetch["state"]["terminated"]["exitCode"] == 3
        message = fetch_message(kube, pod)
        assert message["status"] == "error", message
        assert message["exit_code"] == 3, message
        assert "sha256 mismatch" in message["message"], message
        assert WRONG_SHA256 in message["message"], message
        assert model.sha256 in message["message"], message
        # restartPolicy Never: the failed fetch fails the pod, and the app never starts.
        assert kube.get("pod", "-n", MODELS_NAMESPACE, name)["status"]["phase"] == "Failed"
    finally:
        delete_pod(kube, MODELS_NAMESPACE, pod)


# --- refusals and reach ----------------------------------------------------------------------


def test_a_bad_annotation_is_refused_at_apply_with_the_webhooks_message(
    kube: Kube, model: Model, workloads: Workloads
) -> None:
    result = kube.apply(workloads.llm_bad, check=False)
    assert result.returncode != 0
    assert 'admission webhook "validate.workloads.models.example.com" denied' in result.stderr
    assert f"{PREFIX}/sha256" in result.stderr
    assert BAD_SHA256 in result.stderr
    missing = kube.run("get", "deployment", "-n", MODELS_NAMESPACE, "llm-bad", check=False)
    assert "NotFound" in missing.stderr

    # A CronJob's template sits deeper and has its own registration.
    result = kube.apply(workloads.nightly_bad, check=False)
    assert result.returncode != 0
    assert 'admission webhook "validate.cronjobs.models.example.com" denied' in result.stderr
    assert BAD_SHA256 in result.stderr

    # And a bare pod is refused by the mutating webhook itself.
    refused = kube.dry_run_create(workloads.bad_pod)
    assert refused.returncode != 0
    assert 'admission webhook "inject.pods.models.example.com" denied' in refused.stderr
    assert BAD_SHA256 in refused.stderr


def test_only_annotated_pods_in_ordinary_namespaces_depend_on_the_webhook(
    kube: Kube, model: Model, workloads: Workloads
) -> None:
    """With the webhook scaled to zero: failurePolicy Fail refuses annotated pods, and nothing
    else notices, because matchConditions and namespaceSelector keep the call from happening."""
    plain, annotated = workloads.plain_pod, workloads.annotated_pod
    opted_out = workloads.opted_out_pod

    kube.run("scale", "-n", WEBHOOK_NAMESPACE, "deployment/model-injector", "--replicas=0")
    try:
        kube.wait_ready(WEBHOOK_NAMESPACE, WEBHOOK_SELECTOR, 0)
        endpoints_gone(kube)
        refused = kube.dry_run_create(annotated)
        assert refused.returncode != 0
        assert "failed calling webhook" in refused.stderr
        for pod in (plain, opted_out):
            created = kube.dry_run_create(pod)
            assert created.returncode == 0, created.stderr
            assert "initContainers" not in json.loads(created.stdout)["spec"]
    finally:
        kube.run("scale", "-n", WEBHOOK_NAMESPACE, "deployment/model-injector", "--replicas=2")
        kube.wait_ready(WEBHOOK_NAMESPACE, WEBHOOK_SELECTOR, 2)

    # Ready pods reach the Service's endpoints (and the node's proxy rules) a moment later.
    injected = kube.until_answered(annotated)
    assert injected.returncode == 0, injected.stderr
    init = json.loads(injected.stdout)["spec"]["initContainers"]
    assert [c["name"] for c in init] == ["model-fetch"]


def endpoints_gone(kube: Kube, timeout: float = 120) -> None:
    """No endpoint at all, not even a terminating one: the node's proxy still sends traffic to
    terminating pods that serve while a Service has no ready endpoint."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        slices = kube.get(
            "endpointslices", "-n", WEBHOOK_NAMESPACE,
            "-l", "kubernetes.io/service-name=model-injector",
        )["items"]  # fmt: skip
        if not any(slice_.get("endpoints") for slice_ in slices):
            return
        time.sleep(1)
    raise AssertionError("the webhook Service still has endpoints with no pods")


# --- availability ----------------------------------------------------------------------------


class Admissions:
    """Creates annotated pods (server-side dry run: admitted, injected, not stored) in a loop."""

    def __init__(self, kube: Kube, pod: Manifest) -> None:
        self.kube = kube
        self.pod = pod
        self.admitted = 0
        self.refusals: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> Admissions:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                result = self.kube.dry_run_create(self.pod)
            except subprocess.TimeoutExpired as error:
                self.refusals.append(f"no answer: {error}")
                continue
            if result.returncode != 0:
                self.refusals.append(result.stderr.strip())
                continue
            created: dict[str, Any] = json.loads(result.stdout)
            names = [c["name"] for c in created["spec"].get("initContainers", [])]
            if names != ["model-fetch"]:
                self.refusals.append(f"admitted without injection: {names}")
                continue
            self.admitted += 1


def evict(kube: Kube, pod: Manifest) -> tuple[bool, str]:
    name = pod["metadata"]["name"]
    eviction = {
        "apiVersion": "policy/v1",
        "kind": "Eviction",
        "metadata": {"name": name, "namespace": WEBHOOK_NAMESPACE},
    }
    result = kube.run(
        "create", "--raw", f"/api/v1/namespaces/{WEBHOOK_NAMESPACE}/pods/{name}/eviction",
        "-f", "-", input_text=json.dumps(eviction), check=False,
    )  # fmt: skip
    return result.returncode == 0, result.stderr


def evict_when_allowed(kube: Kube, pod: Manifest, timeout: float = 60) -> None:
    """Evict, waiting for the budget to allow it: the disruption controller counts a pod that
    just became Ready a moment after wait_ready has seen it."""
    deadline = time.monotonic() + timeout
    while True:
        evicted, message = evict(kube, pod)
        if evicted:
            return
        if "disruption budget" not in message or time.monotonic() > deadline:
            raise AssertionError(f"could not evict {pod['metadata']['name']}: {message}")
        time.sleep(1)


def test_webhook_pods_go_one_at_a_time_without_refusing_a_pod(
    kube: Kube, workloads: Workloads
) -> None:
    first, second = kube.wait_ready(WEBHOOK_NAMESPACE, WEBHOOK_SELECTOR, 2)
    with Admissions(kube, workloads.availability_pod) as admissions:
        time.sleep(3)
        evict_when_allowed(kube, first)
        # The budget allows one disruption: with the first pod leaving, the second must stay.
        evicted, message = evict(kube, second)
        assert not evicted
        assert "disruption budget" in message
        kube.wait_ready(WEBHOOK_NAMESPACE, WEBHOOK_SELECTOR, 2)

        evict_when_allowed(kube, second)
        kube.wait_ready(WEBHOOK_NAMESPACE, WEBHOOK_SELECTOR, 2)

        # A plain delete (no eviction API) takes the same graceful path.
        third, _ = kube.wait_ready(WEBHOOK_NAMESPACE, WEBHOOK_SELECTOR, 2)
        delete_pod(kube, WEBHOOK_NAMESPACE, third)
        kube.wait_ready(WEBHOOK_NAMESPACE, WEBHOOK_SELECTOR, 2)
        time.sleep(3)
    assert admissions.refusals == []
    assert admissions.admitted >= 20
