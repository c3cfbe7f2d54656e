"""Rendering deploy/ with kubectl's kustomize, and loading certs/certs.py, for the deploy tests.

Also what the apiserver and the webhook pods make of a render: the Settings a ConfigMap gives the
webhook through envFrom, and label selectors as the apiserver evaluates them."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from webhook.core.settings import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CERTS_SCRIPT = ROOT / "certs" / "certs.py"
KIND_GENERATED = Path("overlays") / "kind" / "generated"
KUBERNETES_VERSION = "1.36"  # the API schemas objects are validated against

Manifest = dict[str, Any]


def load_certs_tool() -> ModuleType:
    """certs/certs.py is a script, not an installed package: import it from its path."""
    spec = importlib.util.spec_from_file_location("model_injector_certs", CERTS_SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@dataclass(frozen=True)
class Outcome:
    returncode: int
    stderr: str


def call_certs(tool: ModuleType, *args: str) -> Outcome:
    """certs.py's main() in this process: the same code path as the script, without a start-up."""
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        try:
            code = tool.main(list(args))
        except SystemExit as exit_:  # argparse's usage errors
            code = exit_.code
    assert isinstance(code, int)
    return Outcome(code, stderr.getvalue())


def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        pytest.fail("kubectl (with its built-in kustomize) is needed to render deploy/")
    return path


def copy_deploy(destination: Path) -> Path:
    """A copy of deploy/ without any certificates a developer generated in the work tree."""

    def ignore(folder: str, names: list[str]) -> list[str]:
        if Path(folder).resolve() == (DEPLOY / KIND_GENERATED).resolve():
            return [name for name in names if name != ".gitignore"]
        return []

    target = destination / "deploy"
    shutil.copytree(DEPLOY, target, ignore=ignore)
    return target


def run_certs(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(CERTS_SCRIPT), *args], capture_output=True, text=True, timeout=60
    )


def render(kustomization: Path) -> list[Manifest]:
    result = subprocess.run(
        [kubectl(), "kustomize", str(kustomization)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, f"kubectl kustomize {kustomization} failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def only(objects: list[Manifest], kind: str) -> Manifest:
    matches = [obj for obj in objects if obj["kind"] == kind]
    assert len(matches) == 1, f"expected one {kind}, found {len(matches)}"
    return matches[0]


def settings_from(config_map: Manifest, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """What the webhook reads with envFrom this ConfigMap, and no other MODEL_INJECTOR_ variable."""
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    for key, value in config_map["data"].items():
        monkeypatch.setenv(key, value)
    return Settings()


def selector_matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A Kubernetes LabelSelector, as the apiserver evaluates it."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        key, operator = expression["key"], expression["operator"]
        values = expression.get("values") or []
        present = key in labels
        outcome = {
            "In": present and labels.get(key) in values,
            "NotIn": not present or labels[key] not in values,
            "Exists": present,
            "DoesNotExist": not present,
        }[operator]
        if not outcome:
            return False
    return True


def namespace_labels(name: str, **labels: str) -> dict[str, str]:
    """A namespace's labels as the apiserver keeps them (it adds kubernetes.io/metadata.name)."""
    return {"kubernetes.io/metadata.name": name, **labels}
