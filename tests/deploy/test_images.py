"""Dockerfile.webhook, Dockerfile.fetcher and .dockerignore, read statically (no Docker here).

What is checked is what the manifests and the webhook rely on: the numeric user the pods run as,
a final stage that installs nothing, the fetcher image free of the webhook's dependencies, an
entry point that is a real console script, and a build context holding exactly what is copied.
"""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tests.deploy.support import ROOT
from webhook.core.settings import Settings

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
IMAGES = {"Dockerfile.webhook": "model-webhook", "Dockerfile.fetcher": "model-fetch"}
TITLES = {
    "Dockerfile.webhook": "model-injector-webhook",
    "Dockerfile.fetcher": "model-injector-fetcher",
}
OCI_LABELS = {"title", "description", "source", "licenses", "version", "revision"}


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [arguments for kw, arguments in self.instructions if kw == keyword]


def instructions(path: Path) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) with line continuations joined and comments dropped."""
    logical: list[str] = []
    pending = ""
    for line in path.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or not stripped:
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical.append(pending + stripped)
        pending = ""
    assert not pending, f"{path.name} ends inside a continuation"
    result = []
    for text in logical:
        keyword, _, arguments = text.partition(" ")
        result.append((keyword.upper(), arguments.strip()))
    return result


def stages(path: Path) -> list[Stage]:
    global_args: dict[str, str] = {}
    found: list[Stage] = []
    for keyword, arguments in instructions(path):
        if keyword == "FROM":
            words = arguments.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: global_args[m.group(1)], words[0])
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            found.append(Stage(base, name))
        elif not found:
            assert keyword == "ARG", f"{path.name}: only ARG may precede the first FROM"
            key, _, default = arguments.partition("=")
            global_args[key] = default
        else:
            found[-1].instructions.append((keyword, arguments))
    return found


def key_values(arguments: str) -> dict[str, str]:
    """LABEL and ENV in their key=value form."""
    pairs = {}
    for word in shlex.split(arguments):
        key, sep, value = word.partition("=")
        assert sep, f"expected key=value, got {word!r}"
        pairs[key] = value
    return pairs


def deployment_uid() -> int:
    deployment = yaml.safe_load((ROOT / "deploy" / "base" / "deployment.yaml").read_text())
    return int(deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"])


@pytest.mark.parametrize("dockerfile", sorted(IMAGES))
def test_a_builder_stage_feeds_a_slim_final_stage(dockerfile: str) -> None:
    builder, final = stages(ROOT / dockerfile)
    assert builder.name == "builder"
    # The venv copied across points at the base image's Python: both stages must share it.
    assert builder.base == final.base == "python:3.11-slim"
    assert final.name is None


@pytest.mark.parametrize("dockerfile", sorted(IMAGES))
def test_the_final_stage_installs_nothing_and_only_takes_the_venv(dockerfile: str) -> None:
    _, final = stages(ROOT / dockerfile)
    # No RUN at all: no compiler, no package manager run, no pip cache can end up in the image.
    assert final.all("RUN") == []
    assert final.all("ADD") == []
    assert final.all("COPY") == ["--from=builder /opt/venv /opt/venv"]


@pytest.mark.parametrize("dockerfile", sorted(IMAGES))
def test_it_runs_as_the_numeric_user_the_pods_expect(dockerfile: str) -> None:
    _, final = stages(ROOT / dockerfile)
    (user,) = final.all("USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit()
    assert gid.isdigit()
    assert int(uid) == int(gid) == deployment_uid()
    # The webhook gives the injected fetch container the same user.
    assert int(uid) == Settings.model_fields["run_as_user"].default
    # USER must come after everything that needs root (here: nothing) and stay in force.
    assert final.instructions[-1][0] in ("ENTRYPOINT", "CMD")


@pytest.mark.parametrize("dockerfile", sorted(IMAGES))
def test_python_writes_nothing_to_the_read_only_root(dockerfile: str) -> None:
    _, final = stages(ROOT / dockerfile)
    environment: dict[str, str] = {}
    for arguments in final.all("ENV"):
        environment.update(key_values(arguments))
    assert environment["PYTHONDONTWRITEBYTECODE"] == "1"
    assert environment["PATH"].startswith("/opt/venv/bin:")
    assert final.all("VOLUME") == []


@pytest.mark.parametrize("dockerfile", sorted(IMAGES))
def test_the_entry_point_is_the_console_script(dockerfile: str) -> None:
    _, final = stages(ROOT / dockerfile)
    (entrypoint,) = final.all("ENTRYPOINT")
    command = json.loads(entrypoint)  # exec form: the program is PID 1 and receives SIGTERM
    assert command == [IMAGES[dockerfile]]
    assert command[0] in PYPROJECT["project"]["scripts"]


@pytest.mark.parametrize("dockerfile", sorted(IMAGES))
def test_oci_labels_describe_the_image(dockerfile: str) -> None:
    _, final = stages(ROOT / dockerfile)
    labels: dict[str, str] = {}
    for arguments in final.all("LABEL"):
        labels.update(key_values(arguments))
    prefix = "org.opencontainers.image."
    assert {key.removeprefix(prefix) for key in labels if key.startswith(prefix)} >= OCI_LABELS
    assert labels[f"{prefix}licenses"] == PYPROJECT["project"]["license"]
    assert labels[f"{prefix}title"] == TITLES[dockerfile]
    assert all(value for value in labels.values())


def install_lines(dockerfile: str) -> list[str]:
    builder, _ = stages(ROOT / dockerfile)
    return [run for run in builder.all("RUN") if " install " in run]


def test_the_fetcher_image_gets_only_the_fetcher_dependencies() -> None:
    (install,) = install_lines("Dockerfile.fetcher")
    # The only extras are the ones FETCHER_EXTRAS names, and those are object-store extras.
    assert install.endswith('"${wheel}${FETCHER_EXTRAS:+[${FETCHER_EXTRAS}]}"'), install
    assert "webhook" not in install
    builder, _ = stages(ROOT / "Dockerfile.fetcher")
    (extras_arg,) = [a for a in builder.all("ARG") if a.startswith("FETCHER_EXTRAS=")]
    default_extras = set(extras_arg.removeprefix("FETCHER_EXTRAS=").split(","))
    assert default_extras == {"s3", "gcs"}
    fetcher_extras = PYPROJECT["project"]["optional-dependencies"]
    for extra in default_extras:
        assert not any(dep.startswith(("fastapi", "uvicorn")) for dep in fetcher_extras[extra])
    (install,) = install_lines("Dockerfile.webhook")
    assert "[webhook]" in install
    assert set(PYPROJECT["project"]["optional-dependencies"]) >= {"webhook"}


def test_the_webhook_image_serves_where_the_deployment_expects() -> None:
    _, final = stages(ROOT / "Dockerfile.webhook")
    deployment = yaml.safe_load((ROOT / "deploy" / "base" / "deployment.yaml").read_text())
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    (port,) = container["ports"]
    assert final.all("EXPOSE") == [str(port["containerPort"])]
    (cmd,) = final.all("CMD")
    assert json.loads(cmd) == container["args"]


# --- .dockerignore ---------------------------------------------------------------------------


def ignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    """(negated, pattern) in file order, with Docker's path-glob semantics for * ? and **."""
    rules = []
    for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines():
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        negated = text.startswith("!")
        glob = text.removeprefix("!").strip("/")
        regex = ""
        index = 0
        while index < len(glob):
            if glob.startswith("**/", index):
                regex += "(?:.*/)?"
                index += 3
            elif glob.startswith("**", index):
                regex += ".*"
                index += 2
            elif glob[index] == "*":
                regex += "[^/]*"
                index += 1
            elif glob[index] == "?":
                regex += "[^/]"
                index += 1
            elif glob[index] == "[":
                end = glob.index("]", index)
                regex += glob[index : end + 1]
                index = end + 1
            else:
                regex += re.escape(glob[index])
                index += 1
        rules.append((negated, re.compile(regex)))
    return rules


def excluded(path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[: end + 1]) for end in range(len(parts))]
    verdict = False
    for negated, pattern in ignore_rules():
        if any(pattern.fullmatch(candidate) for candidate in candidates):
            verdict = not negated
    return verdict


def copied_sources() -> set[str]:
    sources: set[str] = set()
    for dockerfile in IMAGES:
        for stage in stages(ROOT / dockerfile):
            for arguments in stage.all("COPY"):
                words = arguments.split()
                if any(word.startswith("--from=") for word in words):
                    continue
                sources.update(word.rstrip("/") for word in words[:-1])
    return sources


def test_everything_the_images_copy_is_in_the_build_context() -> None:
    sources = copied_sources()
    assert sources >= {"pyproject.toml", "README.md", "fetcher", "webhook"}
    for source in sources:
        path = ROOT / source
        assert path.exists(), source
        files = [path] if path.is_file() else [p for p in path.rglob("*.py")]
        assert files, source
        for file in files:
            relative = file.relative_to(ROOT).as_posix()
            if "__pycache__" not in relative:
                assert not excluded(relative), f"{relative} is copied but .dockerignore drops it"


@pytest.mark.parametrize(
    "path",
    [
        ".git/HEAD",
        ".venv/bin/python",
        "tests/data/admission/README.md",
        "bench/.work/archive.tar.zst",
        "deploy/overlays/kind/generated/tls.key",
        "certs/certs.py",
        ".pytest_cache/v/cache/nodeids",
        "fetcher/__pycache__/cli.cpython-311.pyc",
        "webhook/app.pyc",
    ],
)
def test_the_build_context_leaves_out_everything_else(path: str) -> None:
    assert excluded(path)
