"""Fixtures and checks shared by the webhook tests: captured requests, patches, the pod schema."""

from __future__ import annotations

import base64
import copy
import json
from pathlib import Path
from typing import Any

import jsonpatch
import kubernetes_validate

ADMISSION_DATA = Path(__file__).parent.parent / "data" / "admission"
KUBERNETES_VERSION = "1.36.0"  # the apiserver that sent the captured requests


def load_review(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((ADMISSION_DATA / name).read_text())
    return data


def fixture_names(prefix: str) -> list[str]:
    return sorted(path.name for path in ADMISSION_DATA.glob(f"{prefix}*.json"))


def review_for(obj: dict[str, Any], *, namespace: str = "ml", operation: str = "CREATE") -> dict:
    """An AdmissionReview like the apiserver's, around a synthetic Pod."""
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "0f0e0d0c-0000-4000-8000-000000000001",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace,
            "operation": operation,
            "object": obj,
            "oldObject": None,
            "dryRun": False,
        },
    }


def decode_patch(response: dict[str, Any]) -> list[dict[str, Any]]:
    if "patch" not in response:
        return []
    assert response["patchType"] == "JSONPatch"
    operations: list[dict[str, Any]] = json.loads(base64.b64decode(response["patch"]))
    return operations


def apply_response(obj: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
    """`obj` after the response's patch; jsonpatch raises if the patch does not apply."""
    operations = decode_patch(response)
    assert all(operation["op"] == "add" for operation in operations)
    patched: dict[str, Any] = jsonpatch.apply_patch(copy.deepcopy(obj), operations)
    return patched


def assert_valid_pod(pod: dict[str, Any]) -> None:
    """The pod schema, and the apiserver's own checks on names and paths that no schema states."""
    kubernetes_validate.validate(pod, KUBERNETES_VERSION, strict=True)
    assert apiserver_objections(pod) == []


# Fields the apiserver forbids in containers of a pod whose spec.os.name is windows.
_LINUX_ONLY = (
    "runAsUser",
    "runAsGroup",
    "allowPrivilegeEscalation",
    "capabilities",
    "seccompProfile",
    "readOnlyRootFilesystem",
    "procMount",
    "seLinuxOptions",
)


def apiserver_objections(pod: dict[str, Any]) -> list[str]:
    """What the apiserver's pod validation would refuse among the rules a patch can break:
    duplicate volume or container names, two mounts at one path or of a missing volume in one
    container, Linux-only security fields in a Windows pod."""
    spec = pod.get("spec") or {}
    objections = []
    volumes = [volume["name"] for volume in spec.get("volumes") or []]
    objections += [f"volume {name!r} twice" for name in _duplicates(volumes)]
    containers = [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]
    objections += [f"container {n!r} twice" for n in _duplicates(c["name"] for c in containers)]
    windows = (spec.get("os") or {}).get("name") == "windows"
    for container in containers:
        mounts = container.get("volumeMounts") or []
        paths = _duplicates(mount["mountPath"] for mount in mounts)
        objections += [f"{container['name']}: two mounts at {path}" for path in paths]
        objections += [
            f"{container['name']}: a mount of the missing volume {mount['name']!r}"
            for mount in mounts
            if mount["name"] not in volumes
        ]
        if windows:
            context = container.get("securityContext") or {}
            objections += [
                f"{container['name']}: securityContext.{field} in a Windows pod"
                for field in _LINUX_ONLY
                if field in context
            ]
    return objections


def _duplicates(names: Any) -> list[str]:
    seen: set[str] = set()
    repeated = []
    for name in names:
        if name in seen:
            repeated.append(name)
        seen.add(name)
    return repeated


def injected_init_containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for c in pod["spec"].get("initContainers", []) if c["name"].startswith("model-fetch")]


def make_pod(
    annotations: dict[str, str] | None = None, containers: tuple[str, ...] = ("app",)
) -> dict[str, Any]:
    """A minimal valid Pod the way a controller submits it: generateName, no name."""
    metadata: dict[str, Any] = {"generateName": "app-", "namespace": "ml"}
    if annotations is not None:
        metadata["annotations"] = annotations
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": {
            "containers": [
                {"name": name, "image": f"registry.invalid/{name}:1"} for name in containers
            ]
        },
    }


def model_annotations(**keys: str) -> dict[str, str]:
    """source="u" gives models.example.com/source; tok__mount_path gives .../tok.mount-path."""
    return {
        "models.example.com/" + key.replace("__", ".").replace("_", "-"): value
        for key, value in keys.items()
    }
