"""`model-webhook render` offline, and the command line itself."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.webhook.kube import assert_valid_pod, load_review
from webhook.cli import main

DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: llama
  namespace: ml
spec:
  replicas: 2
  selector:
    matchLabels: {app: llama}
  template:
    metadata:
      labels: {app: llama}
      annotations:
        models.example.com/source: https://models.example.com/llama.tar.zst
        models.example.com/sha256: ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad
    spec:
      containers:
      - name: server
        image: registry.invalid/vllm:0.9
"""


@pytest.fixture(autouse=True)
def default_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("MODEL_INJECTOR_"):
            monkeypatch.delenv(name)


def test_render_a_deployment_mutates_only_its_pod_template(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = tmp_path / "deployment.yaml"
    manifest.write_text(DEPLOYMENT)
    assert main(["render", "-f", str(manifest)]) == 0
    rendered = yaml.safe_load(capsys.readouterr().out)
    original = yaml.safe_load(DEPLOYMENT)
    assert rendered["spec"]["replicas"] == 2
    assert rendered["metadata"] == original["metadata"]
    template = rendered["spec"]["template"]
    assert template["metadata"]["annotations"]["models.example.com/status"] == "injected"
    assert [c["name"] for c in template["spec"]["initContainers"]] == ["model-fetch"]
    assert template["spec"]["containers"][0]["volumeMounts"] == [
        {"name": "model", "mountPath": "/models", "readOnly": True}
    ]


def test_render_a_captured_pod_from_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pod = load_review("pod-batch-score-from-job.json")["request"]["object"]
    manifest = tmp_path / "pod.json"
    manifest.write_text(json.dumps(pod))
    assert main(["render", "-f", str(manifest)]) == 0
    captured = capsys.readouterr()
    rendered = yaml.safe_load(captured.out)
    assert_valid_pod(rendered)
    assert rendered["spec"]["initContainers"][0]["name"] == "model-fetch"
    assert captured.err == (
        "warning: models.example.com/sha256 is not set: the download will not be verified\n"
    )


def test_render_reads_every_document_from_stdin(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": []}}
    monkeypatch.setattr(sys, "stdin", io.StringIO(DEPLOYMENT + "---\n" + yaml.safe_dump(pod)))
    assert main(["render", "-f", "-"]) == 0
    documents = list(yaml.safe_load_all(capsys.readouterr().out))
    assert [document["kind"] for document in documents] == ["Deployment", "Pod"]
    assert documents[1] == pod


def test_render_refusal_exits_1_with_the_admission_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = tmp_path / "bad.yaml"
    manifest.write_text(DEPLOYMENT.replace("ba7816bf", "zz7816bf"))
    assert main(["render", "-f", str(manifest)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith('refused: models.example.com/sha256: "zz7816bf')


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n", "kind 'ConfigMap' is not a Pod"),
        ("kind: Deployment\nspec: {}\n", "Deployment has no pod template"),
        ("kind: [unclosed\n", "is not YAML or JSON"),
        ("- just\n- a list\n", "expected a Kubernetes object"),
    ],
)
def test_render_of_unusable_input_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, message: str
) -> None:
    manifest = tmp_path / "input.yaml"
    manifest.write_text(content)
    assert main(["render", "-f", str(manifest)]) == 2
    assert message in capsys.readouterr().err


def test_missing_file_and_bad_configuration_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["render", "-f", str(tmp_path / "absent.yaml")]) == 2
    assert "cannot read" in capsys.readouterr().err
    monkeypatch.setenv("MODEL_INJECTOR_DEFAULT_SIZE_LIMIT", "huge")
    assert main(["render", "-f", str(tmp_path / "absent.yaml")]) == 2
    assert "invalid configuration" in capsys.readouterr().err


def test_serve_requires_the_certificate_files() -> None:
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--port", "8443"])
    assert exited.value.code == 2


def test_console_script_and_module_render_the_same(tmp_path: Path) -> None:
    manifest = tmp_path / "deployment.yaml"
    manifest.write_text(DEPLOYMENT)
    script = Path(sys.executable).parent / "model-webhook"
    by_script = subprocess.run(
        [script, "render", "-f", manifest], capture_output=True, check=True, text=True
    )
    by_module = subprocess.run(
        [sys.executable, "-m", "webhook", "render", "-f", manifest],
        capture_output=True,
        check=True,
        text=True,
    )
    assert by_script.stdout == by_module.stdout
    assert "model-fetch" in by_script.stdout
