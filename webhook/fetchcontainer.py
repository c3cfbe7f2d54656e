"""The objects injected for one model: its volume(s), its init container, the app mount."""

from __future__ import annotations

from webhook.bodies import Container, Volume, VolumeMount
from webhook.modelspec import ModelSpec
from webhook.settings import Settings
from webhook.urls import is_http

FETCH_COMMAND = "model-fetch"
AUTH_ENV = "AUTHORIZATION"


def fetch_args(spec: ModelSpec) -> list[str]:
    """The fetcher command line for `spec`, in the order the fetcher documents."""
    args = [spec.source]
    for mirror in spec.mirrors:
        args += ["--mirror", mirror]
    if spec.sha256:
        args += ["--sha256", spec.sha256]
    args += ["-o", spec.mount_path]
    if spec.max_bandwidth:
        args += ["--max-bandwidth", spec.max_bandwidth]
    args += ["--max-disk-buffer", spec.max_disk_buffer, "--format", spec.extract]
    if spec.ca_bundle:
        args += ["--ca-bundle", f"{spec.ca_dir}/ca.crt"]
    if spec.credentials_secret and any(is_http(url) for url in spec.urls):
        args += ["--auth-from", f"env:{AUTH_ENV}"]
    args += ["--log-format", "json"]
    return args


def model_volume(spec: ModelSpec) -> Volume:
    if spec.volume == "pvc":
        return {"name": spec.volume_name, "persistentVolumeClaim": {"claimName": spec.pvc_name}}
    if spec.volume == "ephemeral":
        claim_spec: dict[str, object] = {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": spec.size_limit}},
        }
        if spec.storage_class:
            claim_spec["storageClassName"] = spec.storage_class
        return {
            "name": spec.volume_name,
            "ephemeral": {"volumeClaimTemplate": {"spec": claim_spec}},
        }
    return {"name": spec.volume_name, "emptyDir": {"sizeLimit": spec.size_limit}}


def ca_volume(spec: ModelSpec) -> Volume:
    return {
        "name": spec.ca_volume_name,
        "configMap": {"name": spec.ca_bundle, "items": [{"key": "ca.crt", "path": "ca.crt"}]},
    }


def volumes_for(spec: ModelSpec) -> list[Volume]:
    return [model_volume(spec), *([ca_volume(spec)] if spec.ca_bundle else [])]


def app_mount(spec: ModelSpec) -> VolumeMount:
    return {"name": spec.volume_name, "mountPath": spec.mount_path, "readOnly": spec.read_only}


def fetch_container(spec: ModelSpec, settings: Settings) -> Container:
    mounts: list[VolumeMount] = [{"name": spec.volume_name, "mountPath": spec.mount_path}]
    if spec.ca_bundle:
        mounts.append({"name": spec.ca_volume_name, "mountPath": spec.ca_dir, "readOnly": True})
    # An emptyDir lives on the node's disk, so the pod reserves its size there. There is
    # deliberately no ephemeral-storage limit: the kubelet compares a pod-level limit with the
    # usage of the whole pod, emptyDir included, and would evict the pod mid-download.
    storage = (
        spec.size_limit if spec.volume == "emptyDir" else settings.fetcher_ephemeral_storage_request
    )
    container: Container = {
        "name": spec.fetch_container_name,
        "image": settings.fetcher_image,
        "imagePullPolicy": settings.fetcher_pull_policy,
        "command": [FETCH_COMMAND],
        "args": fetch_args(spec),
        "resources": {
            "requests": {
                "cpu": spec.resources.cpu_request,
                "memory": spec.resources.memory_request,
                "ephemeral-storage": storage,
            },
            "limits": {"cpu": spec.resources.cpu_limit, "memory": spec.resources.memory_limit},
        },
        "securityContext": restricted_security_context(settings),
        "volumeMounts": mounts,
        # The fetcher's last log line says what went wrong; this shows it in `kubectl describe`.
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if spec.credentials_secret:
        container["envFrom"] = [{"secretRef": {"name": spec.credentials_secret}}]
    return container


def restricted_security_context(settings: Settings) -> dict[str, object]:
    return {
        "runAsNonRoot": True,
        "runAsUser": settings.run_as_user,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
        "readOnlyRootFilesystem": True,
    }
