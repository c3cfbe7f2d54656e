"""A throwaway kind cluster with both images loaded and the `kind` overlay deployed.

Run with `make e2e-kind`. Without Docker or kind every test is skipped with the reason. A plain
`pytest` (as `make test` runs it) deselects these tests: they are asked for with `-m e2e` or by
naming tests/e2e.

Environment: E2E_KIND_CLUSTER (cluster name, default model-injector-e2e), E2E_KIND_NODE_IMAGE
(kindest/node image), E2E_KIND_KEEP=1 (leave the cluster running afterwards for a look around),
E2E_KIND_REUSE=1 (use an existing cluster of that name instead of recreating it).
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
    ARCHIVE_NAME,
    MODELS_NAMESPACE,
    OPTED_OUT_NAMESPACE,
    Model,
    model_files,
    namespace,
    origin_objects,
    tar_zst,
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
            report.sections.append((title, (result.stdout + result.stderr)[-6000:]))
    return report


@pytest.fixture(scope="session")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kube]:
    """A kind cluster running the webhook from the `kind` overlay with fresh certificates."""
    problem = missing_docker_or_kind()
    if problem is not None:
        pytest.skip(problem)
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
    kube.run("apply", "-k", str(deploy / "overlays" / "kind"), timeout=120)
    kube.run(
        "rollout", "status", "-n", WEBHOOK_NAMESPACE, "deployment/model-injector",
        "--timeout=240s", timeout=300,
    )  # fmt: skip
    kube.wait_ready(WEBHOOK_NAMESPACE, WEBHOOK_SELECTOR, 2)


@pytest.fixture(scope="session")
def model(kube: Kube) -> Model:
    files = model_files()
    archive = tar_zst(files)
    assert len(archive) < 700_000, "keep the archive well inside a ConfigMap"
    kube.apply(
        namespace(MODELS_NAMESPACE),
        namespace(OPTED_OUT_NAMESPACE, **{"models.example.com/injection": "disabled"}),
    )
    kube.apply(*origin_objects(archive))
    kube.wait_ready(MODELS_NAMESPACE, "app=origin", 1)
    url = f"http://origin.{MODELS_NAMESPACE}.svc.cluster.local/{ARCHIVE_NAME}"
    return Model(files, archive, url)
