"""`make demo` installs what scripts/demo.py runs and nothing of the dev extra; `make test` all.

What each target installs is read from `make -n -B` (make's own reading of the Makefile, every
recipe printed, nothing run). What the demo needs is every third-party module that scripts/demo.py
and the programs it starts (`model-webhook serve`, `model-fetch`, certs/certs.py) import,
following the project's own modules; each is mapped to its distribution in this environment and
must be in the requirement closure of what the demo target installs.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
LOCAL_PACKAGES = ("tests", "webhook", "fetcher")
# What the demo runs: the script, and the programs it starts as processes.
DEMO_ENTRY_POINTS = (
    "scripts/demo.py",
    "webhook/cli.py",
    "webhook/server.py",
    "fetcher/cli.py",
    "certs/certs.py",
)
# The dev extra's slow or heavy parts, which the demo must never wait for.
NEVER_FOR_THE_DEMO = {"moto", "matplotlib", "kubernetes", "gcp-storage-emulator", "mypy"}
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
PROJECT = PYPROJECT["project"]


def installed_extras(target: str) -> set[str]:
    make = shutil.which("make")
    assert make is not None, "make is not installed: the project's set-up is make demo / make test"
    result = subprocess.run(
        [make, "-n", "-B", "-C", str(ROOT), target],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    installs = re.findall(r"pip install .*-e '\.\[([^\]]*)\]'", result.stdout)
    assert installs, f"`make {target}` installs nothing with pip -e:\n{result.stdout}"
    return {extra.strip() for line in installs for extra in line.split(",")}


def requirement_closure(extras: set[str]) -> set[str]:
    """The distributions `pip install -e '.[extras]'` brings in, by this environment's metadata."""
    wanted = [Requirement(text) for text in PROJECT["dependencies"]]
    for extra in extras:
        wanted += [Requirement(text) for text in PROJECT["optional-dependencies"][extra]]
    closure: set[str] = set()
    while wanted:
        requirement = wanted.pop()
        name = canonicalize_name(requirement.name)
        if name == canonicalize_name(PROJECT["name"]):
            wanted += [
                Requirement(text)
                for extra in requirement.extras
                for text in PROJECT["optional-dependencies"][extra]
            ]
            continue
        if name in closure:
            continue
        closure.add(name)
        for text in metadata.requires(requirement.name) or []:
            dependency = Requirement(text)
            if dependency.marker is None or dependency.marker.evaluate({"extra": ""}):
                wanted.append(dependency)
    return closure


def _module_file(name: str) -> Path | None:
    path = ROOT.joinpath(*name.split("."))
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    return None


def third_party_imports() -> dict[str, bool]:
    """Top-level module -> whether some import of it runs at import time (not in a function)."""
    found: dict[str, bool] = {}
    seen: set[Path] = set()
    todo = [ROOT / entry for entry in DEMO_ENTRY_POINTS]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        lazy = {
            id(node)
            for function in ast.walk(tree)
            if isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef)
            for node in ast.walk(function)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in LOCAL_PACKAGES:
                    parts = name.split(".")
                    for end in range(1, len(parts) + 1):
                        module = _module_file(".".join(parts[:end]))
                        if module is not None:
                            todo.append(module)
                elif top not in sys.stdlib_module_names and top != "__future__":
                    found[top] = found.get(top, False) or id(node) not in lazy
    return found


def distributions_of(module: str) -> set[str]:
    names = metadata.packages_distributions().get(module)
    assert names, f"no installed distribution provides the module {module}"
    return {canonicalize_name(name) for name in names}


def test_the_demo_installs_only_what_it_imports() -> None:
    extras = installed_extras("demo")
    assert "dev" not in extras
    closure = requirement_closure(extras)
    object_store_extras = requirement_closure({"s3", "gcs"}) - requirement_closure(set())
    for module, at_import in sorted(third_party_imports().items()):
        distributions = distributions_of(module)
        if distributions & closure:
            continue
        # botocore and google-auth: loaded only for s3:// and gs:// URLs, never by the demo.
        assert distributions <= object_store_extras, f"`make demo` omits {module}"
        assert not at_import, f"{module} is imported at import time, not only when used"
    assert not NEVER_FOR_THE_DEMO & closure


def test_make_test_still_installs_everything() -> None:
    assert {"webhook", "dev"} <= installed_extras("test")
    assert requirement_closure({"webhook", "dev"}) >= NEVER_FOR_THE_DEMO
