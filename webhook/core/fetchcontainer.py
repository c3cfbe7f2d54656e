"""The objects injected for one model: its volume(s), its init container, the app mount."""

from __future__ import annotations

from typing import Any

from webhook.core.bodies import Container, Volume, VolumeMount
from webhook.core.modelspec import (
    CONFIGMAP_MIRRORS_KEY,
    CONFIGMAP_SHA256_KEY,
    CONFIGMAP_SOURCE_KEY,
    GCS_KEY_FILE,
    MIRRORS_ENV,
    PASSWORD_ENV,
    SHA256_ENV,
    SOURCE_ENV,
    ModelSpec,
)
from webhook.core.settings import Settings
from webhook.core.urls import is_http

FETCH_COMMAND = "model-fetch"
AUTH_ENV = "AUTHORIZATION"
GOOGLE_CREDENTIALS_ENV = "GOOGLE_APPLICATION_CREDENTIALS"


def literal(value: str) -> str:
    """`value` as the kubelet must pass it on: it expands `$(VAR)` in args and env values, and
    `$$` is the escape that leaves one `$`."""
    return value.replace("$", "$$")


def reference(name: str) -> str:
    """What the kubelet replaces with the value of env var `name`, when it is defined."""
    return f"$({name})"


def fetch_args(spec: ModelSpec, settings: Settings) -> list[str]:
    """The fetcher command line for `spec`, in the order the fetcher documents."""
    if spec.source_from:
        # The URLs are known only when the container starts: the fetcher holds them to the
        # policy the webhook would have held the annotations to. `--opt=value` and a URL
        # after `--`: a value that starts with '-' stays a value.
        args = [
            "--source-from-configmap",
            spec.source_from,
            "--allowed-schemes",
            literal(",".join(settings.allowed_schemes)),
            "--allowed-hosts",
            literal(",".join(settings.allowed_hosts)),
            f"--sha256={reference(SHA256_ENV)}",
            f"--mirror={reference(MIRRORS_ENV)}",
        ]
    else:
        args = [literal(spec.source)]
        for mirror in spec.mirrors:
            args += ["--mirror", literal(mirror)]
    if spec.sha256:
        args += ["--sha256", spec.sha256]
    args += ["-o", literal(spec.mount_path)]
    if spec.max_bandwidth:
        args += ["--max-bandwidth", spec.max_bandwidth]
    args += ["--max-disk-buffer", spec.max_disk_buffer, "--format", spec.extract]
    if spec.ca_bundle:
        args += ["--ca-bundle", f"{spec.ca_dir}/ca.crt"]
    if spec.s3_endpoint:
        args += ["--s3-endpoint", literal(spec.s3_endpoint)]
    if spec.s3_region:
        args += ["--s3-region", spec.s3_region]
    if spec.credentials_secret and any(is_http(url) for url in spec.urls):
        args += ["--auth-from", f"env:{AUTH_ENV}"]
    if spec.password_secret:
        args += ["--password-from", f"env:{PASSWORD_ENV}"]
    args += ["--log-format", "json"]
    if spec.source_from:
        args += ["--", reference(SOURCE_ENV)]
    return args


def fetch_env(spec: ModelSpec, settings: Settings) -> list[dict[str, Any]]:
    """The fetch container's env: references to Secret and ConfigMap keys, never their values.

    A source-from ConfigMap's source key is required, so a ConfigMap without it stops the
    container with the kubelet's own "couldn't find key source in ConfigMap" reason. Its sha256
    key is too when policy requires a digest; otherwise an absent key leaves the variable
    undefined and `$(MODEL_FETCH_SHA256)` unexpanded, which the fetcher reads as no digest.
    """
    env: list[dict[str, Any]] = []
    if spec.gcs_key_file:
        env.append({"name": GOOGLE_CREDENTIALS_ENV, "value": literal(spec.gcs_key_file)})
    if spec.source_from:
        env += [
            _config_map_key(SOURCE_ENV, spec.source_from, CONFIGMAP_SOURCE_KEY, optional=False),
            _config_map_key(
                SHA256_ENV,
                spec.source_from,
                CONFIGMAP_SHA256_KEY,
                optional=not settings.require_sha256,
            ),
            _config_map_key(MIRRORS_ENV, spec.source_from, CONFIGMAP_MIRRORS_KEY, optional=True),
        ]
    if spec.password_secret:
        secret = spec.password_secret
        env.append(
            {
                "name": PASSWORD_ENV,
                "valueFrom": {"secretKeyRef": {"name": secret.name, "key": secret.key}},
            }
        )
    return env


def _config_map_key(name: str, config_map: str, key: str, *, optional: bool) -> dict[str, Any]:
    ref: dict[str, Any] = {"name": config_map, "key": key}
    if optional:
        ref["optional"] = True
    return {"name": name, "valueFrom": {"configMapKeyRef": ref}}


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


def credentials_volume(spec: ModelSpec) -> Volume:
    """The credentials Secret's Google key file, for gs:// sources (ADC reads a file, not env).

    Only that key is projected, so a Secret without it stops the pod with the kubelet's own
    "couldn't find key" event instead of a silently anonymous download.
    """
    return {
        "name": spec.credentials_volume_name,
        "secret": {
            "secretName": spec.credentials_secret,
            "items": [{"key": GCS_KEY_FILE, "path": GCS_KEY_FILE}],
        },
    }


def volumes_for(spec: ModelSpec) -> list[Volume]:
    volumes = [model_volume(spec)]
    if spec.ca_bundle:
        volumes.append(ca_volume(spec))
    if spec.gcs_key_file:
        volumes.append(credentials_volume(spec))
    return volumes


def app_mount(spec: ModelSpec) -> VolumeMount:
    return {"name": spec.volume_name, "mountPath": spec.mount_path, "readOnly": spec.read_only}


def app_env(spec: ModelSpec) -> dict[str, str] | None:
    """The env annotation's variable, pointing an app container at the mount."""
    if spec.env is None:
        return None
    return {"name": spec.env, "value": literal(spec.mount_path)}


def fetch_container(spec: ModelSpec, settings: Settings) -> Container:
    mounts: list[VolumeMount] = [{"name": spec.volume_name, "mountPath": spec.mount_path}]
    if spec.ca_bundle:
        mounts.append({"name": spec.ca_volume_name, "mountPath": spec.ca_dir, "readOnly": True})
    if spec.gcs_key_file:
        mounts.append(
            {
                "name": spec.credentials_volume_name,
                "mountPath": spec.credentials_dir,
                "readOnly": True,
            }
        )
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
        "args": fetch_args(spec, settings),
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
        # The fetcher writes its result JSON, or on failure its last line and exit code, to
        # /dev/termination-log; `kubectl describe` and the pod's status show exactly that (never
        # a log tail, which could hold anything an origin answered).
        "terminationMessagePolicy": "File",
    }
    if spec.credentials_secret:
        container["envFrom"] = [{"secretRef": {"name": spec.credentials_secret}}]
    env = fetch_env(spec, settings)
    if env:
        container["env"] = env
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
