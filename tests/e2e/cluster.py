"""A kind cluster for the end-to-end tests, driven through the kind, docker and kubectl CLIs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import yaml

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_NAME = os.environ.get("E2E_KIND_CLUSTER", "model-injector-e2e")
WEBHOOK_IMAGE = "model-injector/webhook:dev"
FETCHER_IMAGE = "model-injector/fetcher:dev"
WEBHOOK_NAMESPACE = "model-injector"
WEBHOOK_SELECTOR = "app.kubernetes.io/name=model-injector,app.kubernetes.io/component=webhook"

Manifest = dict[str, Any]
FIELD_MANAGER = "model-injector-e2e"
APPLY = ("apply", "--server-side", "--force-conflicts", f"--field-manager={FIELD_MANAGER}")


def missing_docker_or_kind() -> str | None:
    """Why the e2e tests cannot run here, or None when Docker and kind are both usable."""
    if shutil.which("kind") is None:
        return "needs Docker and kind: `kind` is not on PATH (install kind, then make e2e-kind)"
    return missing_docker()


def missing_docker() -> str | None:
    """Why no image can be built here, or None when a Docker engine answers."""
    if shutil.which("docker") is None:
        return "needs Docker: `docker` is not on PATH"
    try:
        info = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return "needs Docker: `docker info` did not answer within 60 s"
    if info.returncode != 0:
        lines = (info.stderr or info.stdout).strip().splitlines()
        why = lines[-1] if lines else f"exit status {info.returncode}"
        return f"needs Docker: `docker info` failed, so there is no engine ({why})"
    return None


def fail_with_evidence(summary: str, evidence: Mapping[str, str]) -> NoReturn:
    """Fail with what the cluster said, whole: `kubectl describe` and the events are the reason
    a pod is stuck, and their useful part is anywhere in them.

    Each section is printed to stdout (pytest shows a failed test's captured output in full, at
    any verbosity) and is also the assertion message, untruncated, for a reader of the exception.
    """
    sections = "".join(f"\n----- {title}\n{text.rstrip()}\n" for title, text in evidence.items())
    print(f"{summary}{sections}")
    raise AssertionError(f"{summary}{sections}")


def run(command: Sequence[str], *, timeout: float = 600, input_text: str | None = None) -> str:
    """Run a tool; on failure raise with its output, which is what a developer needs to see."""
    result = subprocess.run(
        list(command), input=input_text, capture_output=True, text=True, timeout=timeout
    )
    if result.returncode != 0:
        raise AssertionError(
            f"`{' '.join(command)}` exited {result.returncode}\n"
            f"--- stdout\n{result.stdout[-4000:]}\n--- stderr\n{result.stderr[-4000:]}"
        )
    return result.stdout


@dataclass(frozen=True)
class Kind:
    name: str
    kubeconfig: Path

    def exists(self) -> bool:
        return self.name in run(["kind", "get", "clusters"], timeout=60).split()

    def create(self) -> None:
        command = ["kind", "create", "cluster", "--name", self.name]
        command += ["--kubeconfig", str(self.kubeconfig), "--wait", "180s"]
        node_image = os.environ.get("E2E_KIND_NODE_IMAGE")
        if node_image:
            command += ["--image", node_image]
        run(command, timeout=600)

    def write_kubeconfig(self) -> None:
        config = run(["kind", "get", "kubeconfig", "--name", self.name], timeout=60)
        self.kubeconfig.write_text(config, encoding="utf-8")

    def delete(self) -> None:
        run(["kind", "delete", "cluster", "--name", self.name], timeout=300)

    def load(self, *images: str) -> None:
        run(["kind", "load", "docker-image", "--name", self.name, *images], timeout=600)


def build_images() -> None:
    """Both images from the work tree, with the tags the kind overlay deploys."""
    for dockerfile, tag in (
        ("Dockerfile.webhook", WEBHOOK_IMAGE),
        ("Dockerfile.fetcher", FETCHER_IMAGE),
    ):
        run(["docker", "build", "-f", str(ROOT / dockerfile), "-t", tag, str(ROOT)], timeout=1200)


@dataclass(frozen=True)
class Kube:
    kubectl: str
    kubeconfig: Path

    def run(
        self, *args: str, input_text: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        command = [self.kubectl, "--kubeconfig", str(self.kubeconfig), *args]
        result = subprocess.run(
            command, input=input_text, capture_output=True, text=True, timeout=timeout
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"`kubectl {' '.join(args)}` exited {result.returncode}\n{result.stderr[-4000:]}"
            )
        return result

    def get(self, *args: str) -> Any:
        return json.loads(self.run("get", *args, "-o", "json").stdout)

    def apply(self, *objects: Manifest, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Server-side apply. Client-side apply would copy each object into its
        last-applied-configuration annotation, which the origin's ConfigMap does not fit."""
        return self.run(*APPLY, "-f", "-", input_text=yaml.safe_dump_all(objects), check=check)

    def dry_run_create(self, obj: Manifest) -> subprocess.CompletedProcess[str]:
        """Create through the whole admission chain (webhooks included) without persisting."""
        return self.run(
            "create", "--dry-run=server", "-o", "json", "-f", "-",
            input_text=json.dumps(obj), check=False, timeout=30,
        )  # fmt: skip

    def until_answered(
        self, obj: Manifest, timeout: float = 90
    ) -> subprocess.CompletedProcess[str]:
        """dry_run_create, again while the apiserver cannot reach the webhook: a Ready pod joins
        the Service's EndpointSlice, and then the node's proxy rules, a moment later."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.dry_run_create(obj)
            if "failed calling webhook" not in result.stderr or time.monotonic() > deadline:
                return result
            time.sleep(1)

    def pods(self, namespace: str, selector: str) -> list[Manifest]:
        """Pods matching `selector` that are not on their way out."""
        items = self.get("pods", "-n", namespace, "-l", selector)["items"]
        return [pod for pod in items if not pod["metadata"].get("deletionTimestamp")]

    def wait_ready(
        self, namespace: str, selector: str, count: int, timeout: float = 240
    ) -> list[Manifest]:
        """Exactly `count` live pods, all Ready; on timeout, fail with what the cluster says."""
        deadline = time.monotonic() + timeout
        pods: list[Manifest] = []
        while time.monotonic() < deadline:
            pods = self.pods(namespace, selector)
            if len(pods) == count and all(is_ready(pod) for pod in pods):
                return pods
            time.sleep(1)
        describe = self.run("describe", "pods", "-n", namespace, "-l", selector, check=False)
        events = self.run("get", "events", "-n", namespace, "--sort-by=.lastTimestamp", check=False)
        fail_with_evidence(
            f"{count} ready pods matching {selector} in {namespace} not reached "
            f"in {timeout:.0f} s; "
            f"have {[(p['metadata']['name'], is_ready(p)) for p in pods]}",
            {
                f"kubectl describe pods -n {namespace} -l {selector}": describe.stdout
                + describe.stderr,
                f"kubectl get events -n {namespace}": events.stdout + events.stderr,
            },
        )

    def exec(
        self, namespace: str, pod: str, container: str, *command: str
    ) -> subprocess.CompletedProcess[str]:
        return self.run("exec", "-n", namespace, pod, "-c", container, "--", *command, check=False)

    def logs(self, namespace: str, pod: str, container: str) -> str:
        return self.run("logs", "-n", namespace, pod, "-c", container).stdout


def is_ready(pod: Manifest) -> bool:
    conditions = pod.get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def restricted_context() -> dict[str, Any]:
    """A container securityContext that passes the Pod Security "restricted" profile."""
    return {
        "runAsNonRoot": True,
        "runAsUser": 65532,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
