"""Both images as Docker builds them: what runs in them, as whom, on a read-only root.

Needs a Docker engine (`make e2e-kind` runs these too); without one they are skipped with the
reason. tests/deploy/test_images.py reads the Dockerfiles without building anything.
"""

from __future__ import annotations

import subprocess

import pytest

from tests.e2e.cluster import FETCHER_IMAGE, WEBHOOK_IMAGE, build_images, missing_docker

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]
# As the kubelet runs the injected container: its uid, no capabilities, a read-only root.
RESTRICTED = [
    "--rm", "--read-only", "--user", "65532:65532", "--cap-drop", "ALL",
    "--security-opt", "no-new-privileges", "--network", "none",
]  # fmt: skip


@pytest.fixture(scope="module")
def images() -> None:
    docker_missing = missing_docker()
    if docker_missing is not None:
        pytest.skip(reason=docker_missing)
    build_images()


def docker_run(
    image: str, *args: str, entrypoint: str | None = None
) -> subprocess.CompletedProcess[str]:
    command = ["docker", "run", *RESTRICTED]
    if entrypoint:
        command += ["--entrypoint", entrypoint]
    return subprocess.run(
        [*command, image, *args], capture_output=True, text=True, timeout=120, check=False
    )


@pytest.mark.usefixtures("images")
def test_the_fetcher_runs_read_only_as_its_numeric_user_with_the_store_extras() -> None:
    shown = docker_run(FETCHER_IMAGE, "--help")
    assert shown.returncode == 0, shown.stderr
    assert "s3://" in shown.stdout and "--connections N|auto" in shown.stdout
    probe = (
        "import os, importlib.util as u; "
        "print(os.getuid(), bool(u.find_spec('botocore')), bool(u.find_spec('google.auth')), "
        "bool(u.find_spec('fastapi')), bool(u.find_spec('uvicorn')))"
    )
    found = docker_run(FETCHER_IMAGE, "-c", probe, entrypoint="python")
    assert found.returncode == 0, found.stderr
    # The object-store extras are in; none of the webhook's dependencies are.
    assert found.stdout.split() == ["65532", "True", "True", "False", "False"]


@pytest.mark.usefixtures("images")
def test_the_webhook_runs_read_only_as_its_numeric_user() -> None:
    shown = docker_run(WEBHOOK_IMAGE, "--help")
    assert shown.returncode == 0, shown.stderr
    assert "serve" in shown.stdout and "render" in shown.stdout


@pytest.mark.parametrize("image", [FETCHER_IMAGE, WEBHOOK_IMAGE])
@pytest.mark.usefixtures("images")
def test_no_compiler_or_pip_cache_is_left_in_the_image(image: str) -> None:
    script = (
        "for tool in gcc cc c++ make; do command -v $tool; done; "
        "ls -d /root/.cache/pip /tmp/pip-* 2>/dev/null; true"
    )
    found = docker_run(image, "-c", script, entrypoint="sh")
    assert found.returncode == 0, found.stderr
    assert found.stdout.strip() == "", found.stdout
