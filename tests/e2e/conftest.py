"""A throwaway kind cluster with both images loaded and the `kind` overlay deployed.

Run with `make e2e-kind`. Without Docker or kind every test is skipped with the reason. A plain
`pytest` (as `make test` runs it) deselects these tests: they are asked for with `-m e2e` or by
naming tests/e2e.

Environment: E2E_KIND_CLUSTER (cluster name, default model-injector-e2e), E2E_KIND_NODE_IMAGE
(kindest/node image), E2E_KIND_KEEP=1 (leave the cluster running afterwards for a look around),
E2E_KIND_REUSE=1 (use an existing cluster of that name instead of recreating it; the webhook is
restarted on the fresh images and certificates, and the tests' namespaces are recreated).

The node image must be Kubernetes 1.30 or later (the webhook's preStop sleep, matchConditions).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from tests.deploy.support import KIND_GENERATED, copy_deploy, run_certs
from tests.e2e.cluster import (
    CLUSTER_NAME,
    FETCHER_IMAGE,
    WEBHOOK_IMAGE,
    WEBHOOK_NAMESPACE,
    WEBHOOK_SELECTOR,
    Kind,
    Kube,
    build_images,
    missing_docker_or_kind,
)
from tests.e2e.objects import (
    MODELS_NAMESPACE,
    OPTED_OUT_NAMESPACE,
    Model,
    Workloads,
    build_model,
    config_map_problems,
    namespaces,
    origin_objects,
    webhook_probe,
    workloads,
)


def _e2e_requested(config: pytest.Config) -> bool:
    markexpr = config.option.markexpr or ""
    if "e2e" in markexpr and "not e2e" not in markexpr:
        return True
    e2e_dir = Path(__file__).parent.resolve()
    for arg in config.args:
        path = Path(arg.split("::")[0]).resolve()
        if path == e2e_dir or e2e_dir in path.parents:
            return True
    return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Keep a plain `pytest` from creating a cluster: e2e tests run only when asked for."""
    if _e2e_requested(config):
        return
    deselected = [item for item in items if item.get_closest_marker("e2e")]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if not item.get_closest_marker("e2e")]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """On a failure, attach what the webhook and the cluster said, for the person reading CI."""
    report = yield
    kube = getattr(item, "funcargs", {}).get("kube")
    if report.failed and isinstance(kube, Kube):
        for title, args in (
            ("webhook logs", ["logs", "-n", WEBHOOK_NAMESPACE, "-l", WEBHOOK_SELECTOR,
                              "--tail=60", "--prefix"]),
            ("pods", ["get", "pods", "-A", "-o", "wide"]),
            ("events", ["get", "events", "-n", MODELS_NAMESPACE, "--sort-by=.lastTimestamp"]),
        ):  # fmt: skip
            result = kube.run(*args, check=False, timeout=30)
            report.sections.append((title, result.stdout + result.stderr))
    return report


@pytest.fixture(scope="session")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kube]:
    """A kind cluster running the webhook from the `kind` overlay with fresh certificates."""
    docker_or_kind_missing = missing_docker_or_kind()
    if docker_or_kind_missing is not None:
        pytest.skip(reason=docker_or_kind_missing)
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl is needed next to Docker and kind for the e2e tests")
    work = tmp_path_factory.mktemp("e2e")
    cluster = Kind(CLUSTER_NAME, work / "kubeconfig")
    reuse = os.environ.get("E2E_KIND_REUSE") == "1" and cluster.exists()
    if not reuse:
        if cluster.exists():
            cluster.delete()
        cluster.create()
    cluster.write_kubeconfig()
    try:
        build_images()
        cluster.load(WEBHOOK_IMAGE, FETCHER_IMAGE)
        client = Kube(kubectl, cluster.kubeconfig)
        deploy_webhook(client, work)
        yield client
    finally:
        if os.environ.get("E2E_KIND_KEEP") != "1" and not reuse:
            cluster.delete()


def deploy_webhook(kube: Kube, work: Path) -> None:
    """certs/certs.py into a copy of deploy/ (the work tree is left alone), then apply -k."""
    deploy = copy_deploy(work)
    result = run_certs(
        "create", "--namespace", WEBHOOK_NAMESPACE, "--service", "model-injector",
        "--out", str(deploy / KIND_GENERATED),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    deployment = ("-n", WEBHOOK_NAMESPACE, "deployment/model-injector")
    existed = kube.run("get", *deployment, check=False).returncode == 0
    kube.run("apply", "-k", str(deploy / "overlays" / "kind"), timeout=120)
    if existed:
        # A reused cluster: its webhook pods run the image that had the :dev tag before, and
        # serve the old certificate (which the new caBundle does not trust) until the kubelet
        # next refreshes the Secret.
        kube.run("rollout", "restart", *deployment)
    kube.run("rollout", "status", *deployment, "--timeout=240s", timeout=300)
    kube.wait_ready(WEBHOOK_NAMESPACE, WEBHOOK_SELECTOR, 2)
    # Ready pods join the Service's endpoints, then the node's proxy rules, a moment later:
    # the first annotated apply must not race that.
    probe = kube.until_answered(webhook_probe())
    assert probe.returncode == 0, f"the webhook does not answer the apiserver:\n{probe.stderr}"


@pytest.fixture(scope="session")
def model(kube: Kube) -> Model:
    model = build_model()
    origin = origin_objects(model.archive)
    (config_map,) = [obj for obj in origin if obj["kind"] == "ConfigMap"]
    # The limits that apply to it as Kube.apply applies it (server side): 1 MiB of data.
    problems = config_map_problems(config_map)
    assert not problems, f"the archive does not fit the origin's ConfigMap: {problems}"
    # A reused cluster keeps what the last run left, a claim holding the model among it.
    kube.run(
        "delete", "namespace", MODELS_NAMESPACE, OPTED_OUT_NAMESPACE,
        "--ignore-not-found", "--wait=true", timeout=300,
    )  # fmt: skip
    kube.apply(*namespaces())
    kube.apply(*origin)
    kube.wait_ready(MODELS_NAMESPACE, "app=origin", 1)
    return model


@pytest.fixture(scope="session", name="workloads")
def workloads_fixture(model: Model) -> Workloads:
    """What the tests apply or create, the same objects tests/deploy/test_e2e_objects.py admits."""
    return workloads(model)
