"""`make demo`: the whole system on one machine, step by step, in well under a minute.

What a kind cluster would do, without the cluster: certificates from certs/certs.py, a loopback
origin serving a freshly built model (.tar.zst), `model-webhook serve` over TLS answering the
AdmissionReview a real kube-apiserver sent for a Deployment-made pod, and the injected
`model-fetch` init container run with exactly its command, args and env, under its
securityContext, with its volume at its own mount path (a private mount namespace, see
tests/support/kubelet.py). Everything is written under ./demo-run/, which the next run replaces;
`--workdir DIR` (or DEMO_DIR=DIR) writes under DIR instead, which must be new, empty or an earlier
run's.
"""

from __future__ import annotations

import argparse
import base64
import copy
import errno
import hashlib
import http.client
import json
import os
import random
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import jsonpatch  # noqa: E402
import yaml  # noqa: E402

from tests.support.archives import File, py_archive  # noqa: E402
from tests.support.kubelet import (  # noqa: E402
    Kubelet,
    NamespacesUnavailable,
    check_namespaces,
    host_image,
)
from tests.support.origin import Origin  # noqa: E402
from tests.webhook.restricted import restricted_violations  # noqa: E402

DEFAULT_RUN = REPO / "demo-run"
WORKDIR_VARIABLE = "DEMO_DIR"
# Left in the work directory, so that a later run knows it may empty it.
RUN_MARK = ".model-injector-demo"
CAPTURED = REPO / "tests/data/admission/pod-llama-from-deployment.json"
PREFIX = "models.example.com"
FETCHER_IMAGE = "model-injector/fetcher:dev"
APP_IMAGE = "registry.invalid/vllm:0.9"
MODEL_PATH = "/llama-3-8b.tar.zst"
MIRROR_PATH = "/mirror/llama-3-8b.tar.zst"
MARKER = ".model-fetch.json"
SERVICE_NAME = "model-injector.model-injector.svc"
BIN = Path(sys.executable).parent
STEPS = 8

LISTING = r"""
import hashlib, json, os, sys
root = sys.argv[1]
files = []
for dirpath, dirnames, filenames in os.walk(root):
    dirnames.sort()
    for name in sorted(filenames):
        path = os.path.join(dirpath, name)
        with open(path, "rb") as handle:
            digest = hashlib.sha256(handle.read()).hexdigest()
        files.append([os.path.relpath(path, root), os.path.getsize(path), digest])
try:
    open(os.path.join(root, "written-by-app"), "x")
    write = "allowed (unexpected)"
except OSError as error:
    write = os.strerror(error.errno)
print(json.dumps({"uid": os.getuid(), "files": files, "write": write}))
"""


class DemoError(Exception):
    """A step did not do what it should; the message says which and why."""


def heading(number: int, text: str) -> None:
    bold, plain = ("\033[1m", "\033[0m") if sys.stdout.isatty() else ("", "")
    print(f"\n{bold}==> [{number}/{STEPS}] {text}{plain}", flush=True)


def indent(text: str, prefix: str = "    ") -> str:
    return "\n".join(prefix + line for line in text.rstrip("\n").splitlines())


def shown(path: Path) -> str:
    """`path` as the reader would type it: relative to the current directory when inside it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except (ValueError, OSError):  # outside it, or the current directory is gone
        return str(path)


def prepare_workdir(run: Path) -> None:
    """An empty `run`, marked as the demo's. An earlier run's files (and the default directory,
    as before) are removed; a directory holding anything else is left alone and refused."""
    if run.exists() and not run.is_dir():
        raise DemoError(f"the work directory {shown(run)} is not a directory")
    if run.exists() and run != DEFAULT_RUN and not (run / RUN_MARK).exists() and any(run.iterdir()):
        raise DemoError(
            f"the work directory {shown(run)} holds files an earlier demo run did not write; "
            "give a new or empty directory"
        )
    run.mkdir(parents=True, exist_ok=True)
    for entry in run.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    (run / RUN_MARK).write_text("written by scripts/demo.py; its next run here empties this\n")


def model_tree() -> dict[str, bytes | File]:
    """A small stand-in for a model release: config, tokenizer, two weight shards.

    The shards are seeded random bytes, as incompressible as real weights."""
    rng = random.Random(20261122)  # noqa: S311  (test data, not secrets)
    return {
        "config.json": b'{"architectures": ["LlamaForCausalLM"], "hidden_size": 4096}\n',
        "tokenizer.json": b'{"version": "1.0", "model": {"type": "BPE"}}\n' * 500,
        "weights/model-00001-of-00002.safetensors": rng.randbytes(12 * 1024 * 1024),
        "weights/model-00002-of-00002.safetensors": rng.randbytes(8 * 1024 * 1024),
        "serve.sh": File(b"#!/bin/sh\nexec vllm serve /models\n", 0o755),
    }


def make_certs(run: Path) -> Path:
    out = run / "certs"
    command = [
        sys.executable,
        str(REPO / "certs/certs.py"),
        "create",
        "--namespace",
        "model-injector",
        "--service",
        "model-injector",
        "--out",
        str(out),
    ]
    print(
        indent(
            "$ python certs/certs.py create --namespace model-injector "
            f"--service model-injector --out {shown(out)}"
        )
    )
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)  # noqa: S603
    if done.returncode != 0:
        raise DemoError(f"certs/certs.py failed: {done.stderr.strip()}")
    names = ", ".join(sorted(p.name for p in out.iterdir() if not p.name.startswith(".")))
    print(indent(f"wrote {names}"))
    print(indent(f"the serving certificate is for {SERVICE_NAME} (what the apiserver dials)"))
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def https_call(
    port: int, context: ssl.SSLContext, method: str, path: str, body: bytes | None = None
) -> tuple[int, bytes]:
    """One HTTPS request to 127.0.0.1, verifying the certificate for the Service's name."""

    class ServiceConnection(http.client.HTTPSConnection):
        def connect(self) -> None:
            raw = socket.create_connection(("127.0.0.1", port), 10)
            self.sock = context.wrap_socket(raw, server_hostname=SERVICE_NAME)

    connection = ServiceConnection(SERVICE_NAME, port, timeout=10)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        connection.request(method, path, body=body, headers=headers)
        reply = connection.getresponse()
        return reply.status, reply.read()
    finally:
        connection.close()


@contextmanager
def running_webhook(run: Path, certs: Path) -> Iterator[tuple[int, ssl.SSLContext]]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODEL_INJECTOR_")}
    settings = {
        "MODEL_INJECTOR_ALLOWED_SCHEMES": "https,http",  # http only for the loopback origin
        "MODEL_INJECTOR_ALLOWED_HOSTS": "127.0.0.1",
        "MODEL_INJECTOR_REQUIRE_SHA256": "true",
        "MODEL_INJECTOR_FETCHER_IMAGE": FETCHER_IMAGE,
    }
    env.update(settings)
    for name, value in settings.items():
        print(indent(f"{name}={value}"))
    command = [
        str(BIN / "model-webhook"),
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--tls-cert",
        str(certs / "tls.crt"),
        "--tls-key",
        str(certs / "tls.key"),
    ]
    print(
        indent(
            f"$ model-webhook serve --host 127.0.0.1 --port {port} "
            f"--tls-cert {shown(certs / 'tls.crt')} --tls-key {shown(certs / 'tls.key')}"
        )
    )
    log = (run / "webhook.log").open("wb")
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)  # noqa: S603
    try:
        context = ssl.create_default_context(cafile=str(certs / "ca-bundle.crt"))
        deadline = time.monotonic() + 20
        while True:
            try:
                if https_call(port, context, "GET", "/readyz")[0] == 200:
                    break
            except OSError:
                pass
            if process.poll() is not None:
                raise DemoError(
                    f"model-webhook serve exited with {process.returncode}; "
                    f"see {shown(run / 'webhook.log')}"
                )
            if time.monotonic() > deadline:
                raise DemoError("model-webhook serve did not become ready in 20 s")
            time.sleep(0.05)
        print(
            indent(
                f"ready: GET https://{SERVICE_NAME}:{port}/readyz -> 200, "
                "certificate verified against ca-bundle.crt"
            )
        )
        yield port, context
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def admit(port: int, context: ssl.SSLContext, review: dict[str, Any]) -> dict[str, Any]:
    status, body = https_call(
        port, context, "POST", "/mutate?timeout=5s", json.dumps(review).encode()
    )
    if status != 200:
        raise DemoError(f"/mutate answered {status}: {body.decode(errors='replace')}")
    response: dict[str, Any] = json.loads(body)["response"]
    verdict = "allowed" if response.get("allowed") else "REFUSED"
    print(indent(f"uid {response['uid']}: {verdict}"))
    for warning in response.get("warnings") or []:
        print(indent(f"warning: {warning}"))
    if not response.get("allowed"):
        raise DemoError(f"the webhook refused the pod: {response.get('status')}")
    if "patch" not in response:
        raise DemoError("the webhook allowed the pod unchanged: nothing was injected")
    operations = json.loads(base64.b64decode(response["patch"]))
    print(indent(f"patchType {response['patchType']}, {len(operations)} operations:"))
    for op in operations:
        print(indent(f"{op['op']} {op['path']}", "      "))
    pod: dict[str, Any] = jsonpatch.apply_patch(
        copy.deepcopy(review["request"]["object"]), operations
    )
    return pod


def serve_model(stack: ExitStack) -> tuple[Origin, dict[str, bytes | File], str]:
    tree = model_tree()
    archive = py_archive(tree, "zst")
    digest = hashlib.sha256(archive).hexdigest()
    origin = stack.enter_context(Origin())
    origin.add(MODEL_PATH, archive)
    origin.add(MIRROR_PATH, archive)
    print(indent(f"{origin.url(MODEL_PATH)}  ({len(archive):,} bytes, tar.zst)"))
    print(indent(f"sha256 {digest}"))
    return origin, tree, digest


def send_review(
    run: Path, port: int, context: ssl.SSLContext, origin: Origin, digest: str
) -> dict[str, Any]:
    review: dict[str, Any] = json.loads(CAPTURED.read_text())
    meta = review["request"]["object"]["metadata"]
    meta["annotations"].update(
        {
            f"{PREFIX}/source": origin.url(MODEL_PATH),
            f"{PREFIX}/mirrors": origin.url(MIRROR_PATH),
            f"{PREFIX}/sha256": digest,
        }
    )
    print(
        indent(
            f"{CAPTURED.relative_to(REPO)}: pod {meta['generateName']}* in namespace "
            f"{review['request']['namespace']}, made by the replicaset controller; "
            "only the URLs and sha256 now point here:"
        )
    )
    print(indent(yaml.safe_dump({"annotations": meta["annotations"]}), "      "))
    pod = admit(port, context, review)
    for line in (run / "webhook.log").read_text().splitlines():
        entry = json.loads(line)
        if entry.get("msg") == "admission":
            decision, models, took = entry["decision"], entry["models"], entry["duration_ms"]
            print(indent(f"webhook log: decision={decision} models={models} in {took} ms"))
    return pod


def show_init_container(pod: dict[str, Any]) -> None:
    spec = pod["spec"]
    (container,) = [c for c in spec["initContainers"] if c["name"] == "model-fetch"]
    print(indent(yaml.safe_dump([container], sort_keys=False)))
    order = ", ".join(c["name"] for c in spec["initContainers"])
    problems = restricted_violations(pod, "model-fetch")
    print(indent(f"init containers run in this order: {order}"))
    verdict = "; ".join(problems) if problems else "passes"
    print(indent(f"Pod Security 'restricted' for model-fetch: {verdict}"))
    if problems:
        raise DemoError("the injected container would be refused by a restricted namespace")


def run_fetcher(run: Path, pod: dict[str, Any]) -> Kubelet:
    fetcher = host_image(
        FETCHER_IMAGE, entrypoint=["model-fetch"], cmd=["--help"], user=(65532, 65532)
    )
    images = {FETCHER_IMAGE: fetcher, APP_IMAGE: host_image(APP_IMAGE)}
    root_ca = {"kube-root-ca.crt": {"ca.crt": "(simulated)\n"}}
    kubelet = Kubelet(pod, run / "node", images=images, config_maps=root_ca)
    started = time.monotonic()
    fetched = kubelet.run("model-fetch", timeout=60)
    elapsed = time.monotonic() - started
    print(indent(f"$ {' '.join(fetched.argv)}"))
    print(
        indent(
            f"(uid {fetched.uid}, read-only root, volume 'model' at /models; "
            "its log, as `kubectl logs -c model-fetch` shows it:)"
        )
    )
    for line in (fetched.stdout + fetched.stderr).strip().splitlines():
        print(indent(line))
    print(indent(f"exit code {fetched.returncode} after {elapsed:.2f} s"))
    if fetched.returncode != 0:
        raise DemoError(f"model-fetch failed: {fetched.termination_message.strip()}")
    return kubelet


def list_app_view(kubelet: Kubelet, tree: dict[str, bytes | File]) -> None:
    listing = kubelet.run("server", exec_argv=[sys.executable, "-c", LISTING, "/models"])
    if listing.returncode != 0:
        raise DemoError(f"listing /models in the app container failed: {listing.stderr}")
    seen = json.loads(listing.stdout)
    expected = {
        path: hashlib.sha256(entry.data if isinstance(entry, File) else entry).hexdigest()
        for path, entry in tree.items()
    }
    bad = []
    for path, size, sha in seen["files"]:
        if path == MARKER:
            check = "completion marker"
        elif sha == expected.get(path):
            check = "sha256 ok"
        else:
            check = "SHA256 MISMATCH" if path in expected else "unexpected"
            bad.append(path)
        print(indent(f"{size:>12,}  {sha[:16]}…  {check:<17}  /models/{path}"))
    bad += sorted(set(expected) - {path for path, _, _ in seen["files"]})
    print(indent(f"as uid {seen['uid']}: writing to /models -> {seen['write']}"))
    if bad or seen["write"] != os.strerror(errno.EROFS):
        raise DemoError(f"the app's view is wrong: {bad or 'the mount is writable'}")


def run_demo(stack: ExitStack, run: Path) -> None:
    heading(1, "Generate the webhook's CA and serving certificate (certs/certs.py)")
    certs = make_certs(run)
    heading(2, "Build a model archive and serve it from a loopback origin")
    origin, tree, digest = serve_model(stack)
    heading(3, "Start `model-webhook serve` over TLS")
    port, context = stack.enter_context(running_webhook(run, certs))
    heading(4, "Send the AdmissionReview the apiserver sent for a Deployment-made pod")
    pod = send_review(run, port, context, origin, digest)
    heading(5, "The patched pod's injected init container")
    show_init_container(pod)
    heading(6, "Run model-fetch exactly as the kubelet would (its command, args, env, user)")
    kubelet = run_fetcher(run, pod)
    heading(7, "What the app container `server` sees at /models (read-only mount)")
    list_app_view(kubelet, tree)
    heading(8, "The patched pod (as `kubectl get pod -o yaml` shows it, without managedFields)")
    shown = copy.deepcopy(pod)
    shown["metadata"].pop("managedFields", None)
    print(indent(yaml.safe_dump(shown, sort_keys=False)))


def parse_args(argv: Sequence[str] | None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default = os.environ.get(WORKDIR_VARIABLE) or DEFAULT_RUN
    parser.add_argument(
        "--workdir",
        type=Path,
        default=default,
        help=f"where to write everything (default ${WORKDIR_VARIABLE}, else ./demo-run/ in the "
        "repository); emptied first, so it must be new, empty or an earlier run's",
    )
    workdir: Path = parser.parse_args(argv).workdir
    return workdir.resolve()


def main(argv: Sequence[str] | None = None) -> int:
    run = parse_args(argv)
    started = time.monotonic()
    try:
        check_namespaces()
    except NamespacesUnavailable as error:
        print(f"demo: {error}", file=sys.stderr)
        return 1
    try:
        prepare_workdir(run)
        with ExitStack() as stack:
            run_demo(stack, run)
    except DemoError as error:
        print(f"\ndemo: FAILED: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ndemo: interrupted", file=sys.stderr)
        return 130
    took = time.monotonic() - started
    volume = shown(run / "node" / "volumes" / "model")
    print(f"\ndemo: done in {took:.1f} s; the pod's model volume is {volume}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
