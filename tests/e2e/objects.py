"""The objects the e2e tests put in the cluster: a model, its origin, annotated workloads."""

from __future__ import annotations

import base64
import hashlib
import io
import tarfile
from dataclasses import dataclass
from typing import Any

import zstandard

from tests.e2e.cluster import FETCHER_IMAGE, Manifest, restricted_context

MODELS_NAMESPACE = "e2e-models"
OPTED_OUT_NAMESPACE = "e2e-opted-out"
ARCHIVE_NAME = "model.tar.zst"
PREFIX = "models.example.com"


@dataclass(frozen=True)
class Model:
    files: dict[str, bytes]
    archive: bytes
    url: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.archive).hexdigest()

    def file_digests(self) -> dict[str, str]:
        return {path: hashlib.sha256(data).hexdigest() for path, data in self.files.items()}


def model_files() -> dict[str, bytes]:
    """A small model-shaped tree; random weights so compression cannot hide a wrong byte."""
    seed = hashlib.sha256(b"model-injector e2e").digest()
    weights = [
        b"".join(
            hashlib.sha256(seed + bytes([shard]) + n.to_bytes(4)).digest() for n in range(5000)
        )
        for shard in (1, 2)
    ]
    vocabulary = "\n".join(f"token-{index}" for index in range(20_000)).encode()
    return {
        "config.json": b'{"architectures": ["TinyForCausalLM"], "hidden_size": 64}\n',
        "tokenizer/vocab.txt": vocabulary,
        "weights/model-00001-of-00002.safetensors": weights[0],
        "weights/model-00002-of-00002.safetensors": weights[1],
    }


def tar_zst(files: dict[str, bytes]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, data in sorted(files.items()):
            info = tarfile.TarInfo(path)
            info.size = len(data)
            info.mode = 0o644
            info.mtime = 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
    return zstandard.ZstdCompressor(level=10).compress(raw.getvalue())


def origin_objects(archive: bytes) -> list[Manifest]:
    """`python -m http.server` (from the fetcher image, so nothing is pulled) serving the archive
    from a ConfigMap, behind a Service. Archives stay well under the ConfigMap's 1 MiB."""
    labels = {"app": "origin"}
    return [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "origin-content", "namespace": MODELS_NAMESPACE},
            "binaryData": {ARCHIVE_NAME: base64.b64encode(archive).decode()},
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "origin", "namespace": MODELS_NAMESPACE},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "containers": [
                            {
                                "name": "http",
                                "image": FETCHER_IMAGE,
                                "imagePullPolicy": "Never",
                                "command": ["python", "-m", "http.server", "8080",
                                            "--directory", "/srv"],
                                "ports": [{"name": "http", "containerPort": 8080}],
                                "readinessProbe": {
                                    "httpGet": {"path": f"/{ARCHIVE_NAME}", "port": "http"},
                                    "periodSeconds": 2,
                                },
                                "securityContext": restricted_context(),
                                "volumeMounts": [{"name": "content", "mountPath": "/srv"}],
                            }
                        ],
                        "volumes": [
                            {"name": "content", "configMap": {"name": "origin-content"}}
                        ],
                    },
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "origin", "namespace": MODELS_NAMESPACE},
            "spec": {"selector": labels, "ports": [{"port": 80, "targetPort": "http"}]},
        },
    ]  # fmt: skip


def namespace(name: str, **labels: str) -> Manifest:
    # Restricted is enforced, so an injected pod that broke the profile would never be created.
    enforced = {"pod-security.kubernetes.io/enforce": "restricted", **labels}
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": enforced}}


def model_annotations(model: Model, **extra: str) -> dict[str, str]:
    """The model annotations, keys given without the prefix (dashes as underscores)."""
    keys = {
        "source": model.url,
        "sha256": model.sha256,
        # The default (20Gi) would be reserved on the node for every pod.
        "size-limit": "256Mi",
        **{key.replace("_", "-"): value for key, value in extra.items()},
    }
    return {f"{PREFIX}/{key}": value for key, value in keys.items()}


def pod_spec() -> dict[str, Any]:
    """An app container that only waits, restricted, from an image already in the cluster."""
    return {
        "terminationGracePeriodSeconds": 2,
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [
            {
                "name": "app",
                "image": FETCHER_IMAGE,
                "imagePullPolicy": "Never",
                "command": ["sleep", "infinity"],
                "resources": {
                    "requests": {"cpu": "10m", "memory": "16Mi"},
                    "limits": {"cpu": "100m", "memory": "64Mi"},
                },
                "securityContext": restricted_context(),
            }
        ],
    }


def deployment(name: str, pod_annotations: dict[str, str], *, replicas: int = 1) -> Manifest:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": MODELS_NAMESPACE},
        "spec": {
            "replicas": replicas,
            # One pod at a time: with a PVC the old pod lets go of the claim first.
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels, "annotations": pod_annotations},
                "spec": pod_spec(),
            },
        },
    }


def cronjob(name: str, pod_annotations: dict[str, str]) -> Manifest:
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": name, "namespace": MODELS_NAMESPACE},
        "spec": {
            "schedule": "0 3 * * *",
            "suspend": True,
            "jobTemplate": {
                "spec": {
                    "template": {
                        "metadata": {"annotations": pod_annotations},
                        "spec": {**pod_spec(), "restartPolicy": "Never"},
                    }
                }
            },
        },
    }


def bare_pod(generate_name: str, namespace_name: str, pod_annotations: dict[str, str]) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": generate_name,
            "namespace": namespace_name,
            "annotations": pod_annotations,
        },
        "spec": pod_spec(),
    }


def claim(name: str) -> Manifest:
    """On kind's default StorageClass (local-path), bound once a pod uses it."""
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "namespace": MODELS_NAMESPACE},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "256Mi"}},
        },
    }


# Run inside the app container: the sha256 of every file under the mount, as JSON.
DIGEST_TREE = """
import hashlib, json, os, sys
root = sys.argv[1]
digests = {}
for folder, _, names in os.walk(root):
    for name in names:
        path = os.path.join(folder, name)
        with open(path, "rb") as handle:
            digests[os.path.relpath(path, root)] = hashlib.sha256(handle.read()).hexdigest()
print(json.dumps(digests))
"""
