"""The objects the e2e tests put in the cluster: a model, its origin, annotated workloads."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass, fields
from typing import Any

import zstandard

from tests.e2e.cluster import FETCHER_IMAGE, Manifest, restricted_context

MODELS_NAMESPACE = "e2e-models"
OPTED_OUT_NAMESPACE = "e2e-opted-out"
ARCHIVE_NAME = "model.tar.zst"
ORIGIN_URL = f"http://origin.{MODELS_NAMESPACE}.svc.cluster.local/{ARCHIVE_NAME}"
PREFIX = "models.example.com"
MOUNT = "/models"  # the webhook's default mount path (MODEL_INJECTOR_DEFAULT_MOUNT_PATH)
CLAIM_NAME = "model-cache"
BAD_SHA256 = "not-a-digest"
# Well formed, so admitted; it names other bytes than the origin serves: the fetch exits 3.
WRONG_SHA256 = hashlib.sha256(b"not the model archive").hexdigest()
# The test pods' PID 1 ignores SIGTERM, so a deletion always waits the whole grace period.
GRACE_SECONDS = 1

# What the apiserver accepts: a ConfigMap's data plus binaryData (decoded) of at most 1 MiB, all
# annotations of an object at most 256 KiB together, and etcd's request limit (1.5 MiB) on the
# stored object. With client-side apply the last-applied-configuration annotation holds a copy
# of the whole object, so a big ConfigMap must be applied server side (see Kube.apply).
CONFIG_MAP_MAX_BYTES = 1024 * 1024
ANNOTATIONS_MAX_BYTES = 256 * 1024
OBJECT_MAX_BYTES = 1536 * 1024


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


def build_model() -> Model:
    """The model every e2e test fetches, as the in-cluster origin serves it."""
    files = model_files()
    return Model(files, tar_zst(files), ORIGIN_URL)


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
    from a ConfigMap, behind a Service. See config_map_problems for the limits the archive meets."""
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
                        # python as PID 1 has no SIGTERM handler, so the kernel ignores the
                        # signal: without this each deletion waits the default 30 s.
                        "terminationGracePeriodSeconds": GRACE_SECONDS,
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


def config_map_problems(config_map: Manifest) -> list[str]:
    """Why the apiserver would refuse `config_map` as applied server side; empty if it fits."""
    data = sum(len(value.encode()) for value in (config_map.get("data") or {}).values())
    data += sum(
        len(base64.b64decode(value)) for value in (config_map.get("binaryData") or {}).values()
    )
    annotations = config_map["metadata"].get("annotations") or {}
    annotation_bytes = sum(len(key) + len(value) for key, value in annotations.items())
    stored = len(json.dumps(config_map).encode())
    problems = []
    if data > CONFIG_MAP_MAX_BYTES:
        problems.append(f"data plus binaryData is {data:,} bytes, over {CONFIG_MAP_MAX_BYTES:,}")
    if annotation_bytes > ANNOTATIONS_MAX_BYTES:
        problems.append(
            f"annotations take {annotation_bytes:,} bytes, over {ANNOTATIONS_MAX_BYTES:,}"
        )
    if stored > OBJECT_MAX_BYTES:
        problems.append(f"the object is {stored:,} bytes as JSON, over {OBJECT_MAX_BYTES:,}")
    return problems


def namespace(name: str, **labels: str) -> Manifest:
    # Restricted is enforced, so an injected pod that broke the profile would never be created.
    enforced = {"pod-security.kubernetes.io/enforce": "restricted", **labels}
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": enforced}}


def namespaces() -> list[Manifest]:
    """The namespaces the tests use: one the webhook serves, one opted out by its label."""
    return [
        namespace(MODELS_NAMESPACE),
        namespace(OPTED_OUT_NAMESPACE, **{f"{PREFIX}/injection": "disabled"}),
    ]


def model_annotations(model: Model, **extra: str) -> dict[str, str]:
    """The model annotations, keys given without the prefix (dashes as underscores)."""
    given = {key.replace("_", "-"): value for key, value in extra.items()}
    keys = {"source": model.url, "sha256": model.sha256}
    if given.get("volume") != "pvc":
        # The default (20Gi) would be reserved on the node for every pod. A claim brings its own
        # size, and the webhook refuses size-limit next to volume pvc.
        keys["size-limit"] = "256Mi"
    keys.update(given)
    return {f"{PREFIX}/{key}": value for key, value in keys.items()}


def pod_spec() -> dict[str, Any]:
    """An app container that only waits, restricted, from an image already in the cluster."""
    return {
        # `sleep` as PID 1 ignores SIGTERM (no handler): the kubelet kills it after the grace.
        "terminationGracePeriodSeconds": GRACE_SECONDS,
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


def never_restarted(pod: Manifest) -> Manifest:
    """A failed init container fails the pod, once, instead of a CrashLoopBackOff."""
    return {**pod, "spec": {**pod["spec"], "restartPolicy": "Never"}}


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


def webhook_probe() -> Manifest:
    """A pod the webhook injects (in `default`, which every test cluster has): created with a
    server-side dry run until that works, it shows the apiserver reaches the webhook."""
    return bare_pod("probe-", "default", {f"{PREFIX}/source": ORIGIN_URL})


@dataclass(frozen=True)
class Workloads:
    """Every pod or workload test_kind.py sends through admission, built in this one place so
    that tests/deploy/test_e2e_objects.py can admit exactly these offline, without a cluster."""

    llm: Manifest
    llm_restart: Manifest
    llm_pvc: Manifest
    # The same bad sha256 on each kind of object, refused by each registration.
    llm_bad: Manifest
    nightly_bad: Manifest
    bad_pod: Manifest
    # Admitted, then its fetch fails the checksum (exit 3); never restarted, so it ends Failed.
    mismatch_pod: Manifest
    # Created while the webhook is down: only the annotated one may depend on it.
    plain_pod: Manifest
    annotated_pod: Manifest
    opted_out_pod: Manifest
    # Created in a loop while the webhook pods are evicted one at a time.
    availability_pod: Manifest

    def items(self) -> list[tuple[str, Manifest]]:
        return [(field.name, getattr(self, field.name)) for field in fields(self)]


def workloads(model: Model) -> Workloads:
    """Built afresh on each call, no two objects sharing a dict."""

    def annotated() -> dict[str, str]:
        return model_annotations(model)

    def bad() -> dict[str, str]:
        return model_annotations(model, sha256=BAD_SHA256)

    return Workloads(
        llm=deployment("llm", annotated()),
        llm_restart=deployment("llm-restart", annotated()),
        llm_pvc=deployment("llm-pvc", model_annotations(model, volume="pvc", pvc_name=CLAIM_NAME)),
        llm_bad=deployment("llm-bad", bad()),
        nightly_bad=cronjob("nightly-bad", bad()),
        bad_pod=bare_pod("bad-", MODELS_NAMESPACE, bad()),
        mismatch_pod=never_restarted(
            bare_pod("mismatch-", MODELS_NAMESPACE, model_annotations(model, sha256=WRONG_SHA256))
        ),
        plain_pod=bare_pod("plain-", MODELS_NAMESPACE, {"team": "search"}),
        annotated_pod=bare_pod("annotated-", MODELS_NAMESPACE, annotated()),
        opted_out_pod=bare_pod("opted-out-", OPTED_OUT_NAMESPACE, annotated()),
        availability_pod=bare_pod("availability-", MODELS_NAMESPACE, annotated()),
    )


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
