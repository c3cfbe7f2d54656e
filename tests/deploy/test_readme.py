"""The commands README.md gives, checked where they can be without a cluster."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from tests.deploy.support import ROOT, kubectl
from tests.e2e.cluster import CLUSTER_NAME

README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_the_termination_message_one_liner_prints_each_init_container(tmp_path: Path) -> None:
    (command,) = re.findall(r"^\s*(kubectl get pod POD -o jsonpath=.*)$", README, re.MULTILINE)
    template = re.fullmatch(r"kubectl get pod POD -o jsonpath='(.*)'", command)
    assert template is not None, command
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "llama"},
        "spec": {"containers": [{"name": "server", "image": "registry.invalid/s:1"}]},
        "status": {
            "initContainerStatuses": [
                {"name": "migrate", "state": {"terminated": {"exitCode": 0, "message": "ok"}}},
                {
                    "name": "model-fetch",
                    "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                    "lastState": {"terminated": {"exitCode": 3, "message": "sha256 mismatch"}},
                },
            ]
        },
    }
    path = tmp_path / "pod.json"
    path.write_text(json.dumps(pod))
    # `annotate --local` prints the object through the same jsonpath printer, with no cluster.
    result = subprocess.run(
        [kubectl(), "annotate", "-f", str(path), "--local", "x=y", "-o", f"jsonpath={template[1]}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "migrate: ok\nmodel-fetch: sha256 mismatch\n"


def test_kind_load_names_the_cluster_make_e2e_kind_keeps() -> None:
    loads = re.findall(r"^kind load docker-image .*$", README, re.MULTILINE)
    assert loads
    for line in loads:
        assert f"--name {CLUSTER_NAME} " in line, line
