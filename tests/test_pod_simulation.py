"""The kind-cluster path without a cluster: apiserver -> webhook over TLS -> patch -> kubelet.

A real `model-webhook serve` process, with a CA and serving certificate from certs/certs.py,
answers the AdmissionReview kube-apiserver v1.36 sent for a Deployment-made pod (only its model
annotations are pointed at a loopback origin serving a tar.zst built here). The patch is applied
as the apiserver applies it, then the injected `model-fetch` init container runs with exactly its
command, args and env, under its securityContext, in a mount namespace where its volume sits at
its mountPath (tests/support/kubelet.py). Finally the app containers, with their read-only mount,
see the verified tree and cannot write to it.

The source-from, password-secret and env cases resolve the injected env as the kubelet does,
from dicts standing for the ConfigMap and the Secret, and expand `$(VAR)` in the args by the
Kubernetes rules: what the fetcher validates is exactly what a node would hand it.

The object-store cases put the same archive in moto's S3 (IAM and signatures enforced) and in a
GCS emulator, both on 127.0.0.1, and hand the fetch container its keys through a Secret exactly
as the injected envFrom and secret volume deliver them.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import http.client
import json
import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonpatch
import pytest

from tests.support.archives import File, Symlink, Tree, py_archive, tree_snapshot, write_tree
from tests.support.kubelet import (
    ContainerConfigError,
    ContainerResult,
    Image,
    Kubelet,
    check_namespaces,
    host_image,
)
from tests.support.objectstores import (
    ACCESS_TOKEN,
    JWT_BEARER,
    TokenServer,
    gcs_emulator,
    s3_with_iam,
    service_account_key,
)
from tests.support.origin import Faults, Origin, TLSOrigin
from tests.webhook.certs import issue, make_authority
from tests.webhook.restricted import restricted_violations

REPO = Path(__file__).resolve().parents[1]
CAPTURED = REPO / "tests/data/admission/pod-llama-from-deployment.json"
PREFIX = "models.example.com"
FETCHER_IMAGE = "model-injector/fetcher:sim"
SERVICE_NAME = "model-injector.model-injector.svc"  # what the apiserver dials and verifies
MODEL_PATH = "/llama-3-8b.tar.zst"
MIRROR_PATH = "/mirror/llama-3-8b.tar.zst"
TOKEN = "Bearer hf_simulated_0123456789"
BUCKET = "ml-models"
OBJECT_KEY = "llama/llama-3-8b.tar.zst"

MODEL_TREE: Tree = {
    "config.json": b'{"architectures": ["LlamaForCausalLM"], "hidden_size": 4096}\n',
    "tokenizer/tokenizer.json": b'{"version": "1.0", "model": {"type": "BPE"}}\n' * 200,
    "weights/model-00001-of-00002.safetensors": bytes(range(256)) * 8192,  # 2 MiB
    "weights/model-00002-of-00002.safetensors": hashlib.sha256(b"w").digest() * 40000,
    "bin/serve.sh": File(b"#!/bin/sh\nexec vllm serve /models\n", 0o755),
    "model.safetensors": Symlink("weights/model-00001-of-00002.safetensors"),
}

# Run inside the app containers: what they see at the mount, and what they may do there.
PROBE = r"""
import errno, hashlib, json, os, sys
root = sys.argv[1]
def attempt(action):
    try:
        action()
    except OSError as error:
        return errno.errorcode[error.errno]
    return "ok"
files, modes = {}, {}
for dirpath, dirnames, filenames in os.walk(root):
    for name in dirnames + filenames:
        path = os.path.join(dirpath, name)
        rel = os.path.relpath(path, root)
        modes[rel] = os.lstat(path).st_mode & 0o7777
        if name in filenames:
            with open(path, "rb") as handle:
                files[rel] = hashlib.sha256(handle.read()).hexdigest()
some_file = os.path.join(root, "config.json")
print(json.dumps({
    "uid": os.getuid(),
    "gid": os.getgid(),
    "files": files,
    "modes": modes,
    "create": attempt(lambda: open(os.path.join(root, "written-by-app"), "x").close()),
    "append": attempt(lambda: open(some_file, "a").close()),
    "mkdir": attempt(lambda: os.mkdir(os.path.join(root, "dir-by-app"))),
    "unlink": attempt(lambda: os.unlink(some_file)),
    "cache": attempt(lambda: open("/cache/scratch", "x").close()),
    "token": open("/var/run/secrets/kubernetes.io/serviceaccount/namespace").read(),
}))
"""


def _file(path: str) -> File:
    """The regular file at ``path`` of MODEL_TREE, following a symlink."""
    entry = MODEL_TREE[path]
    if isinstance(entry, Symlink):
        return _file(entry.target)
    if isinstance(entry, bytes):
        return File(entry)
    assert isinstance(entry, File)
    return entry


def _expected_files() -> dict[str, str]:
    """sha256 of every file an app sees, symlinks followed to their target's bytes."""
    return {path: hashlib.sha256(_file(path).data).hexdigest() for path in MODEL_TREE}


@pytest.fixture(scope="module", autouse=True)
def namespaces() -> None:
    # Not a skip: without namespaces this test cannot say anything, and CI must notice.
    check_namespaces()


@pytest.fixture(scope="module")
def archive() -> bytes:
    return py_archive(MODEL_TREE, "zst", parts=3)


@pytest.fixture(scope="module")
def webhook_certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("certs")
    subprocess.run(
        [sys.executable, str(REPO / "certs/certs.py"), "create", "--out", str(out)],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return out


class ServiceConnection(http.client.HTTPSConnection):
    """Dials 127.0.0.1 but verifies the certificate for the Service name, as the apiserver
    verifies `<service>.<namespace>.svc` against the webhook configuration's caBundle."""

    def __init__(self, port: int, context: ssl.SSLContext) -> None:
        super().__init__(SERVICE_NAME, port, timeout=10)
        self._verify = context

    def connect(self) -> None:
        raw = socket.create_connection(("127.0.0.1", self.port), self.timeout)
        self.sock = self._verify.wrap_socket(raw, server_hostname=SERVICE_NAME)


@dataclass
class Webhook:
    port: int
    context: ssl.SSLContext
    process: subprocess.Popen[bytes]

    def review(self, body: Mapping[str, Any]) -> dict[str, Any]:
        connection = ServiceConnection(self.port, self.context)
        try:
            connection.request(
                "POST",
                "/mutate?timeout=5s",
                body=json.dumps(body),
                headers={"Content-Type": "application/json"},
            )
            reply = connection.getresponse()
            payload = reply.read()
        finally:
            connection.close()
        assert reply.status == 200, payload
        answer: dict[str, Any] = json.loads(payload)
        return answer


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def webhook(webhook_certs: Path) -> Iterator[Webhook]:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODEL_INJECTOR_")}
    env.update(
        MODEL_INJECTOR_ALLOWED_SCHEMES="https,http,s3,gs",
        MODEL_INJECTOR_ALLOWED_HOSTS=f"127.0.0.1,s3://{BUCKET},gs://{BUCKET}",
        MODEL_INJECTOR_REQUIRE_SHA256="true",
        MODEL_INJECTOR_FETCHER_IMAGE=FETCHER_IMAGE,
    )
    command = [
        str(Path(sys.executable).parent / "model-webhook"), "serve",
        "--host", "127.0.0.1", "--port", str(port),
        "--tls-cert", str(webhook_certs / "tls.crt"),
        "--tls-key", str(webhook_certs / "tls.key"),
    ]  # fmt: skip
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    context = ssl.create_default_context(cafile=str(webhook_certs / "ca-bundle.crt"))
    deadline = time.monotonic() + 15
    while True:
        try:
            probe = ServiceConnection(port, context)
            probe.request("GET", "/readyz")
            ready = probe.getresponse().status == 200
            probe.close()
            if ready:
                break
        except OSError:
            pass
        if process.poll() is not None:
            stderr = process.stderr.read().decode() if process.stderr else ""
            pytest.fail(f"model-webhook serve exited with {process.returncode}: {stderr}")
        assert time.monotonic() < deadline, "model-webhook serve did not become ready"
        time.sleep(0.05)
    try:
        yield Webhook(port, context, process)
    finally:
        process.terminate()
        process.wait(timeout=30)
        if process.stderr is not None:
            process.stderr.close()


@pytest.fixture(scope="module")
def images() -> dict[str, Image]:
    """The fetcher image as Dockerfile.fetcher builds it, and stand-ins for the app images."""
    fetcher = host_image(
        FETCHER_IMAGE, entrypoint=["model-fetch"], cmd=["--help"], user=(65532, 65532)
    )
    return {
        FETCHER_IMAGE: fetcher,
        "registry.invalid/vllm:0.9": host_image("registry.invalid/vllm:0.9"),
        "registry.invalid/exporter:2.1": host_image("registry.invalid/exporter:2.1"),
    }


def captured_review(annotations: Mapping[str, str | None]) -> dict[str, Any]:
    """The captured request, with only the model annotations changed (None removes one)."""
    review: dict[str, Any] = json.loads(CAPTURED.read_text())
    captured = review["request"]["object"]["metadata"]["annotations"]
    for key, value in annotations.items():
        captured.pop(f"{PREFIX}/{key}", None)
        if value is not None:
            captured[f"{PREFIX}/{key}"] = value
    return review


def admit(webhook: Webhook, review: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """POST the review as the apiserver does; return the response and the patched pod."""
    answer = webhook.review(review)
    assert answer["apiVersion"] == "admission.k8s.io/v1"
    assert answer["kind"] == "AdmissionReview"
    response = answer["response"]
    assert response["uid"] == review["request"]["uid"]
    assert response["allowed"] is True, response
    assert response["patchType"] == "JSONPatch"
    operations = json.loads(base64.b64decode(response["patch"]))
    assert {op["op"] for op in operations} == {"add"}
    pod = jsonpatch.apply_patch(copy.deepcopy(review["request"]["object"]), operations)
    return response, pod


def fetch_container(pod: Mapping[str, Any]) -> dict[str, Any]:
    (container,) = [c for c in pod["spec"]["initContainers"] if c["name"] == "model-fetch"]
    return dict(container)


def probe_app(kubelet: Kubelet, name: str, mount_path: str) -> dict[str, Any]:
    result = kubelet.run(name, exec_argv=[sys.executable, "-c", PROBE, mount_path])
    assert result.returncode == 0, result.stderr
    seen: dict[str, Any] = json.loads(result.stdout)
    return seen


def assert_fetched(result: ContainerResult, container: Mapping[str, Any]) -> None:
    assert result.returncode == 0, result.stdout + result.stderr
    # exactly the injected command line, container paths and all
    assert result.argv == [*container["command"], *container["args"]]
    assert result.uid == 65532


def _serve_model(origin: Origin, archive: bytes, faults: Faults | None = None) -> None:
    origin.add(MODEL_PATH, archive, faults=faults)
    origin.add(MIRROR_PATH, archive)


def test_deployment_pod_gets_its_model_through_the_injected_init_container(
    tmp_path: Path, webhook: Webhook, images: dict[str, Image], archive: bytes
) -> None:
    digest = hashlib.sha256(archive).hexdigest()
    with Origin() as origin:
        # The first response breaks off mid-archive: the fetcher must resume with a Range.
        _serve_model(origin, archive, Faults(drop_after=len(archive) // 2))
        review = captured_review(
            {
                "source": origin.url(MODEL_PATH),
                "mirrors": origin.url(MIRROR_PATH),
                "sha256": digest,
            }
        )
        _, pod = admit(webhook, review)
        spec = pod["spec"]

        # What the apiserver stores: the existing init container still runs first, the app
        # containers mount the model read-only, everything else of the request is untouched.
        assert [c["name"] for c in spec["initContainers"]] == ["migrate", "model-fetch"]
        container = fetch_container(pod)
        assert container["image"] == FETCHER_IMAGE
        assert container["command"] == ["model-fetch"]
        args = container["args"]
        assert args[0] == origin.url(MODEL_PATH)
        assert args[args.index("--mirror") + 1] == origin.url(MIRROR_PATH)
        assert args[args.index("--sha256") + 1] == digest
        assert args[args.index("-o") + 1] == "/models"
        assert container["volumeMounts"] == [{"name": "model", "mountPath": "/models"}]
        assert {"name": "model", "emptyDir": {"sizeLimit": "20Gi"}} in spec["volumes"]
        for app in spec["containers"]:
            assert {"name": "model", "mountPath": "/models", "readOnly": True} in app[
                "volumeMounts"
            ]
        assert pod["metadata"]["annotations"][f"{PREFIX}/status"] == "injected"
        assert "name" not in pod["metadata"]  # the replicaset controller's pod: generateName
        original = review["request"]["object"]
        assert spec["containers"][0]["resources"] == original["spec"]["containers"][0]["resources"]
        assert spec["securityContext"] == original["spec"]["securityContext"]

        # What a namespace enforcing Pod Security "restricted" admits, and what keeps a failure
        # readable in `kubectl describe pod`.
        assert restricted_violations(pod, "model-fetch") == []
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["terminationMessagePolicy"] == "File"
        resources = container["resources"]
        assert set(resources["requests"]) >= {"cpu", "memory", "ephemeral-storage"}
        assert set(resources["limits"]) == {"cpu", "memory"}  # no ephemeral-storage limit

        kubelet = Kubelet(pod, tmp_path / "node", images=images, config_maps=_root_ca())
        fetched = kubelet.run("model-fetch")
        assert_fetched(fetched, container)
        statuses = [r.status for r in origin.requests if r.path == MODEL_PATH]
        assert 206 in statuses, statuses  # resumed, not restarted from byte 0

    # What `kubectl get pod -o yaml` shows as the fetch container's termination message.
    result = json.loads(fetched.termination_message)
    assert result["status"] == "ok"
    assert result["sha256"] == digest and result["sha256_verified"] is True
    assert result["bytes"] == len(archive)
    assert result["files"] > 0 and result["extracted_bytes"] > 0
    assert result["mirror"] in (0, 1)
    assert result["fetched_bytes"] >= len(archive)

    # On the node's disk: the tree byte for byte, plus the completion marker.
    volume = kubelet.volume_dir("model")
    snapshot = tree_snapshot(volume)
    marker = json.loads(snapshot.pop(".model-fetch.json")[2])
    assert marker["sha256"] == digest
    for path, entry in MODEL_TREE.items():
        kind, mode, content = snapshot.pop(path)
        if isinstance(entry, Symlink):
            assert (kind, content) == ("symlink", entry.target)
        else:
            assert (kind, mode, content) == ("file", _file(path).mode, _file(path).data)
    assert {path for path, (kind, _, _) in snapshot.items() if kind != "dir"} == set()

    # Inside each app container: the verified files, readable by the app's own uid (the fetcher
    # ran as 65532), and a mount that refuses every write with EROFS.
    expected = _expected_files()
    for name in ("server", "metrics"):
        seen = probe_app(kubelet, name, "/models")
        assert (seen["uid"], seen["gid"]) == (1000, 1000)
        files = dict(seen["files"])
        assert files.pop(".model-fetch.json")
        assert files == expected
        for rel, mode in seen["modes"].items():
            assert mode & 0o444 == 0o444, f"{rel} is not readable by other users: {mode:o}"
        assert seen["create"] == seen["append"] == seen["mkdir"] == seen["unlink"] == "EROFS"
        assert seen["token"] == "ml"
        # Only the model mount is read-only: the server's own emptyDir still takes writes.
        assert seen["cache"] == ("ok" if name == "server" else "ENOENT")


def _root_ca() -> dict[str, dict[str, str]]:
    """kube-root-ca.crt, which the apiserver's service-account volume projects into apps."""
    return {"kube-root-ca.crt": {"ca.crt": "-----BEGIN CERTIFICATE-----\n(simulated)\n"}}


def test_credentials_secret_reaches_only_the_fetch_container(
    tmp_path: Path, webhook: Webhook, images: dict[str, Image], archive: bytes
) -> None:
    with Origin() as origin:
        origin.add(MODEL_PATH, archive, faults=Faults(require_authorization=TOKEN))
        origin.add(MIRROR_PATH, archive, faults=Faults(require_authorization=TOKEN))
        review = captured_review(
            {
                "source": origin.url(MODEL_PATH),
                "mirrors": origin.url(MIRROR_PATH),
                "sha256": hashlib.sha256(archive).hexdigest(),
                "credentials-secret": "hf-token",
            }
        )
        _, pod = admit(webhook, review)
        container = fetch_container(pod)
        assert container["envFrom"] == [{"secretRef": {"name": "hf-token"}}]
        assert container["args"][-4:-2] == ["--auth-from", "env:AUTHORIZATION"]
        assert TOKEN not in json.dumps(pod)
        for app in pod["spec"]["containers"]:
            assert "envFrom" not in app

        # The Secret as `kubectl create secret generic hf-token --from-literal=...` makes it.
        secrets = {"hf-token": {"AUTHORIZATION": TOKEN, "HF_HOME": "/models/.hf"}}
        kubelet = Kubelet(
            pod, tmp_path / "node", images=images, secrets=secrets, config_maps=_root_ca()
        )
        fetched = kubelet.run("model-fetch")
        assert_fetched(fetched, container)
        assert fetched.env["AUTHORIZATION"] == TOKEN
        assert fetched.env["HF_HOME"] == "/models/.hf"  # other keys arrive as they are
        requests = origin.requests
        assert requests, "the origin saw no request"
        assert {r.authorization for r in requests} == {TOKEN}
        assert {r.status for r in requests} <= {200, 206}
        assert TOKEN not in fetched.stdout + fetched.stderr

    assert probe_app(kubelet, "server", "/models")["files"].keys() >= _expected_files().keys()
    # A Secret that does not exist stops the container before it starts, as on a node.
    with pytest.raises(ContainerConfigError, match='secret "hf-token" not found'):
        Kubelet(pod, tmp_path / "other-node", images=images).run("model-fetch")


def test_https_origin_trusted_through_the_ca_bundle_configmap(
    tmp_path: Path, webhook: Webhook, images: dict[str, Image], archive: bytes
) -> None:
    authority = make_authority()
    serving = issue(authority)
    (tmp_path / "origin.crt").write_bytes(serving.cert_pem)
    (tmp_path / "origin.key").write_bytes(serving.key_pem)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp_path / "origin.crt", tmp_path / "origin.key")
    with TLSOrigin(context) as origin:
        _serve_model(origin, archive)
        review = captured_review(
            {
                "source": origin.url(MODEL_PATH),
                "mirrors": origin.url(MIRROR_PATH),
                "sha256": hashlib.sha256(archive).hexdigest(),
                "ca-bundle": "origin-ca",
            }
        )
        _, pod = admit(webhook, review)
        container = fetch_container(pod)
        args = container["args"]
        ca_path = args[args.index("--ca-bundle") + 1]
        assert ca_path == "/etc/model-fetch/ca/ca.crt"
        # A container path: it exists only in the container's view, not on this machine.
        assert not Path(ca_path).exists()
        assert restricted_violations(pod, "model-fetch") == []

        config_maps = {**_root_ca(), "origin-ca": {"ca.crt": authority.pem().decode()}}
        kubelet = Kubelet(pod, tmp_path / "node", images=images, config_maps=config_maps)
        fetched = kubelet.run("model-fetch")
        assert_fetched(fetched, container)
        assert {r.status for r in origin.requests} <= {200, 206}

    assert probe_app(kubelet, "metrics", "/models")["files"].keys() >= _expected_files().keys()


def failure_reason(result: ContainerResult) -> str:
    """The termination message of a failed fetch: with terminationMessagePolicy File, exactly
    what model-fetch wrote to /dev/termination-log (its last line and its exit code)."""
    message = result.termination_message.strip()
    assert message, (
        "model-fetch wrote nothing to /dev/termination-log; with terminationMessagePolicy File "
        f"`kubectl describe pod` would show no reason. Its stderr:\n{result.stderr}"
    )
    assert str(result.returncode) in message, message
    return message


def test_checksum_mismatch_fails_the_init_container_with_a_readable_message(
    tmp_path: Path, webhook: Webhook, images: dict[str, Image], archive: bytes
) -> None:
    wrong = hashlib.sha256(b"an older model").hexdigest()
    with Origin() as origin:
        _serve_model(origin, archive)
        review = captured_review(
            {"source": origin.url(MODEL_PATH), "mirrors": origin.url(MIRROR_PATH), "sha256": wrong}
        )
        _, pod = admit(webhook, review)
        kubelet = Kubelet(pod, tmp_path / "node", images=images, config_maps=_root_ca())
        fetched = kubelet.run("model-fetch")

    assert fetched.returncode == 3, fetched.stderr
    # `kubectl describe pod` shows what the fetcher wrote to /dev/termination-log (policy File):
    # its last line, which says what went wrong, and the exit code.
    reason = failure_reason(fetched)
    assert wrong in reason, reason
    assert "sha256" in reason or "checksum" in reason, reason
    # Nothing that looks like a finished model is left for the app containers.
    assert not (kubelet.volume_dir("model") / ".model-fetch.json").exists()


def test_an_unreachable_source_fails_with_exit_5_and_a_capped_message(
    tmp_path: Path, webhook: Webhook, images: dict[str, Image], archive: bytes
) -> None:
    with Origin() as origin:
        # Every origin answers 404: the last line names them all, far more than 4 KiB of it.
        mirrors = ",".join(origin.url(f"/gone/mirror-{n:03d}/model.tar.zst") for n in range(80))
        review = captured_review(
            {
                "source": origin.url("/gone/model.tar.zst"),
                "mirrors": mirrors,
                "sha256": hashlib.sha256(archive).hexdigest(),
            }
        )
        _, pod = admit(webhook, review)
        kubelet = Kubelet(pod, tmp_path / "node", images=images, config_maps=_root_ca())
        fetched = kubelet.run("model-fetch")

    assert fetched.returncode == 5, fetched.stderr
    assert len(fetched.termination_message.encode()) <= 4096
    reason = json.loads(failure_reason(fetched))  # whole JSON: cut by the fetcher, not the kubelet
    assert reason["status"] == "error" and reason["exit_code"] == 5
    assert reason["message"].endswith("or add a --mirror"), reason["message"]
    assert not (kubelet.volume_dir("model") / ".model-fetch.json").exists()


def test_restarted_fetch_container_finds_the_model_and_touches_no_network(
    tmp_path: Path, webhook: Webhook, images: dict[str, Image], archive: bytes
) -> None:
    with Origin() as origin:
        _serve_model(origin, archive)
        review = captured_review(
            {
                "source": origin.url(MODEL_PATH),
                "mirrors": origin.url(MIRROR_PATH),
                "sha256": hashlib.sha256(archive).hexdigest(),
            }
        )
        _, pod = admit(webhook, review)
        kubelet = Kubelet(pod, tmp_path / "node", images=images, config_maps=_root_ca())
        assert_fetched(kubelet.run("model-fetch"), fetch_container(pod))
        origin.clear_log()
        # The kubelet restarts an init container in place: same pod, same emptyDir.
        again = kubelet.run("model-fetch")
        assert_fetched(again, fetch_container(pod))
        assert origin.requests == []

        # The fetch container itself ran on a read-only root: no writable /tmp to lean on.
        probe = (
            "import errno\n"
            "try: open('/tmp/x', 'x')\n"
            "except OSError as e: print(errno.errorcode[e.errno])"
        )
        readonly = kubelet.run("model-fetch", exec_argv=[sys.executable, "-c", probe])
        assert readonly.stdout.strip() == "EROFS"


def _assert_only_fetcher_sees(pod: Mapping[str, Any], secret_name: str) -> None:
    """The credentials Secret reaches the fetch container and nothing the app runs."""
    for app in pod["spec"]["containers"]:
        assert "envFrom" not in app
        assert all(var["name"] != "GOOGLE_APPLICATION_CREDENTIALS" for var in app.get("env", []))
        assert "model-credentials" not in {mount["name"] for mount in app["volumeMounts"]}
        assert secret_name not in json.dumps(app)


def test_s3_source_signed_with_keys_from_the_credentials_secret(
    tmp_path: Path, webhook: Webhook, images: dict[str, Image], archive: bytes
) -> None:
    digest = hashlib.sha256(archive).hexdigest()
    with s3_with_iam({(BUCKET, OBJECT_KEY): archive}) as s3:
        review = captured_review(
            {
                "source": f"s3://{BUCKET}/{OBJECT_KEY}",
                "mirrors": None,  # the captured pod's in-cluster cache
                "sha256": digest,
                "s3-endpoint": s3.url,
                "s3-region": "us-east-1",
                "credentials-secret": "s3-reader",
            }
        )
        _, pod = admit(webhook, review)
        container = fetch_container(pod)
        args = container["args"]
        assert args[args.index("--s3-endpoint") + 1] == s3.url
        assert "--auth-from" not in args  # no http(s) origin to send a header to
        assert container["envFrom"] == [{"secretRef": {"name": "s3-reader"}}]
        assert restricted_violations(pod, "model-fetch") == []
        _assert_only_fetcher_sees(pod, "s3-reader")

        # `kubectl create secret generic s3-reader --from-literal=AWS_ACCESS_KEY_ID=...`
        secrets = {
            "s3-reader": {"AWS_ACCESS_KEY_ID": s3.reader[0], "AWS_SECRET_ACCESS_KEY": s3.reader[1]},
            "s3-outsider": {
                "AWS_ACCESS_KEY_ID": s3.outsider[0],
                "AWS_SECRET_ACCESS_KEY": s3.outsider[1],
            },
        }
        kubelet = Kubelet(
            pod, tmp_path / "node", images=images, secrets=secrets, config_maps=_root_ca()
        )
        fetched = kubelet.run("model-fetch")
        assert_fetched(fetched, container)
        assert s3.reader[1] not in fetched.stdout + fetched.stderr
        assert f"sha256 {digest} verified" in fetched.stderr

        # The same pod with keys that may not read the object: refused, with what to check.
        denied_review = captured_review(
            {
                "source": f"s3://{BUCKET}/{OBJECT_KEY}",
                "mirrors": None,
                "sha256": digest,
                "s3-endpoint": s3.url,
                "credentials-secret": "s3-outsider",
            }
        )
        _, denied_pod = admit(webhook, denied_review)
        denied = Kubelet(
            denied_pod, tmp_path / "other", images=images, secrets=secrets, config_maps=_root_ca()
        ).run("model-fetch")
        assert denied.returncode == 5, denied.stderr
        reason = failure_reason(denied)
        assert f"s3://{BUCKET}/{OBJECT_KEY}: access denied" in reason, reason
        assert "s3:GetObject" in reason, reason
        assert s3.outsider[1] not in reason
        assert s3.outsider[1] not in denied.stdout + denied.stderr

    seen = probe_app(kubelet, "server", "/models")
    files = dict(seen["files"])
    assert files.pop(".model-fetch.json")
    assert files == _expected_files()
    assert seen["create"] == "EROFS"


def test_gs_source_with_a_service_account_key_from_the_credentials_secret(
    tmp_path: Path, webhook: Webhook, images: dict[str, Image], archive: bytes
) -> None:
    digest = hashlib.sha256(archive).hexdigest()
    with gcs_emulator({(BUCKET, OBJECT_KEY): archive}) as gcs, TokenServer() as tokens:
        review = captured_review(
            {
                "source": f"gs://{BUCKET}/{OBJECT_KEY}",
                "mirrors": None,
                "sha256": digest,
                "credentials-secret": "gcs-key",
            }
        )
        _, pod = admit(webhook, review)
        container = fetch_container(pod)
        key_path = "/var/run/secrets/model-fetch/key.json"
        assert container["env"] == [{"name": "GOOGLE_APPLICATION_CREDENTIALS", "value": key_path}]
        assert restricted_violations(pod, "model-fetch") == []
        _assert_only_fetcher_sees(pod, "gcs-key")

        # `kubectl create secret generic gcs-key --from-file=key.json=...`; the emulator's
        # address rides along, as an in-cluster fake-gcs deployment would be configured.
        key = service_account_key(tokens.token_uri)
        secrets = {"gcs-key": {"key.json": key, "STORAGE_EMULATOR_HOST": gcs}}
        kubelet = Kubelet(
            pod, tmp_path / "node", images=images, secrets=secrets, config_maps=_root_ca()
        )
        fetched = kubelet.run("model-fetch")
        assert_fetched(fetched, container)
        assert [grant["grant_type"] for grant in tokens.grants] == [JWT_BEARER]
        private_key_line = json.loads(key)["private_key"].splitlines()[1]
        for secret in (ACCESS_TOKEN, private_key_line):
            assert secret not in fetched.stdout + fetched.stderr

        # A Secret without key.json stops the container before it starts, as on a node.
        with pytest.raises(ContainerConfigError, match=r"key 'key\.json' is not in the projected"):
            Kubelet(
                pod,
                tmp_path / "other",
                images=images,
                secrets={"gcs-key": {"credentials.json": key}},
                config_maps=_root_ca(),
            ).run("model-fetch")

    files = dict(probe_app(kubelet, "metrics", "/models")["files"])
    assert files.pop(".model-fetch.json")
    assert files == _expected_files()


# --- source-from, password-secret, env --------------------------------------------------------

CONFIG_MAP = "llm-config"
CLAIM = "llm-cache"
NEW_MODEL_PATH = "/llama-3.1-8b.tar.zst"
NEW_MIRROR_PATH = "/mirror/llama-3.1-8b.tar.zst"
NEW_TREE: Tree = {
    "config.json": b'{"architectures": ["LlamaForCausalLM"], "rope_scaling": {"factor": 8}}\n',
    "weights/model.safetensors": hashlib.sha256(b"v3.1").digest() * 50000,
}
SOURCE_FROM = {"source": None, "sha256": None, "mirrors": None, "source-from": CONFIG_MAP}

# Run inside an app container: where the env annotation's variable points, and what is there.
ENV_PROBE = r"""
import hashlib, json, os, sys
root = os.environ[sys.argv[1]]
files = {}
for dirpath, _, filenames in os.walk(root):
    for name in filenames:
        path = os.path.join(dirpath, name)
        with open(path, "rb") as handle:
            files[os.path.relpath(path, root)] = hashlib.sha256(handle.read()).hexdigest()
print(json.dumps({"root": root, "files": files}))
"""


def probe_env(kubelet: Kubelet, name: str, variable: str) -> dict[str, Any]:
    result = kubelet.run(name, exec_argv=[sys.executable, "-c", ENV_PROBE, variable])
    assert result.returncode == 0, result.stderr
    seen: dict[str, Any] = json.loads(result.stdout)
    return seen


def _digests(tree: Tree) -> dict[str, str]:
    return {
        path: hashlib.sha256(entry.data if isinstance(entry, File) else entry).hexdigest()
        for path, entry in tree.items()
        if isinstance(entry, (bytes, File))
    }


def _claim(tmp_path: Path) -> dict[str, Path]:
    """The PersistentVolumeClaim's volume: one directory every pod of the test mounts."""
    volume = tmp_path / "pv" / CLAIM
    volume.mkdir(parents=True)
    return {CLAIM: volume}


def test_source_from_fetches_what_the_configmap_names_and_a_changed_configmap_replaces_it(
    tmp_path: Path, webhook: Webhook, images: dict[str, Image], archive: bytes
) -> None:
    new_archive = py_archive(NEW_TREE, "zst")
    digest, new_hex = hashlib.sha256(archive).hexdigest(), hashlib.sha256(new_archive).hexdigest()
    claims = _claim(tmp_path)
    with Origin() as origin:
        _serve_model(origin, archive)
        origin.add(NEW_MODEL_PATH, new_archive)
        origin.add(NEW_MIRROR_PATH, new_archive)
        review = captured_review(
            {**SOURCE_FROM, "volume": "pvc", "pvc-name": CLAIM, "env": "MODEL_DIR"}
        )
        _, pod = admit(webhook, review)
        container = fetch_container(pod)
        assert origin.url(MODEL_PATH) not in json.dumps(pod)  # the URL is the ConfigMap's
        assert container["args"][-2:] == ["--", "$(MODEL_FETCH_SOURCE)"]
        assert restricted_violations(pod, "model-fetch") == []

        # `kubectl create configmap llm-config --from-literal=source=... --from-file=sha256`:
        # the file's final newline comes along.
        config_maps = {
            **_root_ca(),
            CONFIG_MAP: {"source": origin.url(MODEL_PATH), "sha256": digest + "\n"},
        }
        first = Kubelet(
            pod, tmp_path / "node-a", images=images, config_maps=config_maps, claims=claims
        )
        fetched = first.run("model-fetch")
        assert result_ok(fetched, digest)
        # The kubelet's expansion: keys the ConfigMap has are values, the absent optional
        # mirrors key stays a literal reference, which the fetcher reads as no mirrors.
        assert fetched.argv[:9] == [
            "model-fetch",
            "--source-from-configmap",
            CONFIG_MAP,
            "--allowed-schemes",
            "https,http,s3,gs",
            "--allowed-hosts",
            f"127.0.0.1,s3://{BUCKET},gs://{BUCKET}",
            f"--sha256={digest}\n",
            "--mirror=$(MODEL_FETCH_MIRRORS)",
        ]
        assert fetched.argv[-1] == origin.url(MODEL_PATH)
        assert "MODEL_FETCH_MIRRORS" not in fetched.env
        for name in ("server", "metrics"):
            seen = probe_env(first, name, "MODEL_DIR")
            assert seen["root"] == "/models"
            files = dict(seen["files"])
            assert files.pop(".model-fetch.json")
            assert files == _expected_files()

        # The ConfigMap is edited; a pod started again without a rollout (same claim) reads it.
        config_maps[CONFIG_MAP] = {
            "source": origin.url(NEW_MODEL_PATH),
            "sha256": new_hex,
            "mirrors": origin.url(NEW_MIRROR_PATH),
        }
        origin.clear_log()
        second = Kubelet(
            pod, tmp_path / "node-b", images=images, config_maps=config_maps, claims=claims
        )
        replaced = second.run("model-fetch")
        assert result_ok(replaced, new_hex)
        assert replaced.argv[8] == f"--mirror={origin.url(NEW_MIRROR_PATH)}"
        assert {r.path for r in origin.requests} <= {NEW_MODEL_PATH, NEW_MIRROR_PATH}
        assert origin.requests
        assert "replacing" in replaced.stderr

        # Started once more with the ConfigMap unchanged: the marker answers, no network.
        origin.clear_log()
        assert result_ok(second.run("model-fetch"), new_hex)
        assert origin.requests == []

    seen = probe_env(second, "server", "MODEL_DIR")
    files = dict(seen["files"])
    assert json.loads((claims[CLAIM] / ".model-fetch.json").read_text())["sha256"] == new_hex
    assert files.pop(".model-fetch.json")
    assert files == _digests(NEW_TREE)  # nothing of the old model is left


def result_ok(result: ContainerResult, digest: str) -> bool:
    """A fetch that ended well and verified `digest`, as its termination message says."""
    assert result.returncode == 0, result.stdout + result.stderr
    message = json.loads(result.termination_message)
    assert message["status"] == "ok"
    assert message["sha256"] == digest and message["sha256_verified"] is True
    return True


@pytest.mark.parametrize("value", ["", "  \n", "not-a-digest", "sha256:" + "ab" * 32])
def test_a_configmap_with_a_bad_sha256_fails_the_fetch_with_exit_2_naming_the_key(
    tmp_path: Path, webhook: Webhook, images: dict[str, Image], archive: bytes, value: str
) -> None:
    with Origin() as origin:
        _serve_model(origin, archive)
        _, pod = admit(webhook, captured_review(SOURCE_FROM))
        config_maps = {
            **_root_ca(),
            CONFIG_MAP: {"source": origin.url(MODEL_PATH), "sha256": value},
        }
        kubelet = Kubelet(pod, tmp_path / "node", images=images, config_maps=config_maps)
        fetched = kubelet.run("model-fetch")
        assert origin.requests == []  # refused before any download

    assert fetched.returncode == 2, fetched.stderr
    reason = json.loads(failure_reason(fetched))
    assert reason["exit_code"] == 2
    assert reason["message"].startswith(f'ConfigMap "{CONFIG_MAP}" key "sha256"'), reason
    assert "\n" not in reason["message"]
    assert not (kubelet.volume_dir("model") / ".model-fetch.json").exists()


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ({"sha256": "ab" * 32}, f"couldn't find key source in ConfigMap ml/{CONFIG_MAP}"),
        # The webhook requires a digest (MODEL_INJECTOR_REQUIRE_SHA256): so does the env ref.
        (
            {"source": "https://h/m.tar.zst"},
            f"couldn't find key sha256 in ConfigMap ml/{CONFIG_MAP}",
        ),
        (None, f'configmap "{CONFIG_MAP}" not found'),
    ],
    ids=["no-source", "no-sha256-under-policy", "no-configmap"],
)
def test_a_configmap_without_a_required_key_never_starts_the_fetch_container(
    tmp_path: Path,
    webhook: Webhook,
    images: dict[str, Image],
    data: dict[str, str] | None,
    reason: str,
) -> None:
    _, pod = admit(webhook, captured_review(SOURCE_FROM))
    config_maps = {**_root_ca(), **({CONFIG_MAP: data} if data is not None else {})}
    kubelet = Kubelet(pod, tmp_path / "node", images=images, config_maps=config_maps)
    # CreateContainerConfigError: the kubelet retries, reading the ConfigMap again each time.
    with pytest.raises(ContainerConfigError, match=reason):
        kubelet.run("model-fetch")


ZIP_PASSWORD = "correct horse $(battery) staple"
ZIP_TREE: Tree = {
    "config.json": b'{"architectures": ["LlamaForCausalLM"]}\n',
    "tokenizer/tokenizer.json": b'{"version": "1.0"}\n' * 500,
    "weights/model.safetensors": bytes(range(256)) * 4096,
}


def _aes_zip(tmp_path: Path) -> bytes:
    """A zip with AES-256 encrypted entries, made by 7-Zip itself."""
    source = write_tree(ZIP_TREE, tmp_path / "zip-src")
    target = tmp_path / "model.zip"
    subprocess.run(
        ["7z", "a", "-tzip", "-mem=AES256", f"-p{ZIP_PASSWORD}", str(target), "."],
        cwd=source,
        check=True,
        capture_output=True,
        timeout=120,
    )
    return target.read_bytes()


def test_password_secret_opens_an_aes_zip_in_the_fetch_container_alone(
    tmp_path: Path, webhook: Webhook, images: dict[str, Image]
) -> None:
    archive = _aes_zip(tmp_path)
    digest = hashlib.sha256(archive).hexdigest()
    with Origin() as origin:
        origin.add("/llama.zip", archive)
        review = captured_review(
            {
                "source": origin.url("/llama.zip"),
                "sha256": digest,
                "mirrors": None,
                "password-secret": "model-zip/password",
                "env": "MODEL_DIR",
            }
        )
        _, pod = admit(webhook, review)
        container = fetch_container(pod)
        assert container["env"] == [
            {
                "name": "MODEL_FETCH_PASSWORD",
                "valueFrom": {"secretKeyRef": {"name": "model-zip", "key": "password"}},
            }
        ]
        assert container["args"][-4:-2] == ["--password-from", "env:MODEL_FETCH_PASSWORD"]
        assert ZIP_PASSWORD not in json.dumps(pod)
        for app in pod["spec"]["containers"]:
            assert "model-zip" not in json.dumps(app)
        assert restricted_violations(pod, "model-fetch") == []

        # `kubectl create secret generic model-zip --from-literal=password=...`
        secrets = {"model-zip": {"password": ZIP_PASSWORD}}
        kubelet = Kubelet(
            pod, tmp_path / "node", images=images, secrets=secrets, config_maps=_root_ca()
        )
        fetched = kubelet.run("model-fetch")
        assert_fetched(fetched, container)
        assert fetched.env["MODEL_FETCH_PASSWORD"] == ZIP_PASSWORD
        assert ZIP_PASSWORD not in " ".join(fetched.argv)
        assert ZIP_PASSWORD not in fetched.stdout + fetched.stderr + fetched.termination_message
        assert result_ok(fetched, digest)

    for name in ("server", "metrics"):
        seen = probe_env(kubelet, name, "MODEL_DIR")
        assert seen["root"] == "/models"
        files = dict(seen["files"])
        assert files.pop(".model-fetch.json")
        assert files == _digests(ZIP_TREE)
        app = kubelet.run(name, exec_argv=["env"])
        assert ZIP_PASSWORD not in app.stdout
