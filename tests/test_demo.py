"""scripts/demo.py (`make demo`) run as a reader runs it, into a directory of the test's own.

The demo prints what it checked; this holds the printout to the files it left on disk. It takes
about two seconds. Like tests/test_pod_simulation.py it needs user and mount namespaces, and
fails (never skips) without them.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import stat
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "demo.py"
PREFIX = "models.example.com"
MARKER = ".model-fetch.json"
# "      12,582,912  52fd5b3793922372…  sha256 ok          /models/weights/model-00001-…"
LISTED = re.compile(r"^ +([\d,]+)  ([0-9a-f]{16})…  (.+?) +/models/(\S+)$")


def load_demo() -> ModuleType:
    """The script's own model tree and constants, from its path (it is not a package)."""
    spec = importlib.util.spec_from_file_location("model_injector_demo", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


DEMO = load_demo()


def run_demo(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != DEMO.WORKDIR_VARIABLE}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One run into <tmp>/run, from <tmp>: the work directory and what the demo printed."""
    cwd = tmp_path_factory.mktemp("demo")
    result = run_demo(cwd, "--workdir", "run")
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return cwd / "run", result.stdout


def section(output: str, step: int) -> str:
    """What the demo printed under its step `step` heading."""
    parts = re.split(r"^==> \[(\d+)/\d+\] .*$", output, flags=re.MULTILINE)
    steps = dict(zip(parts[1::2], parts[2::2], strict=True))
    return steps[str(step)]


def expected_tree() -> dict[str, tuple[bytes, int]]:
    return {
        path: (entry.data, entry.mode) if isinstance(entry, DEMO.File) else (entry, 0o644)
        for path, entry in DEMO.model_tree().items()
    }


def test_the_app_sees_every_model_file_as_listed_and_on_disk(demo: tuple[Path, str]) -> None:
    run, output = demo
    listed = {
        match[4]: (int(match[1].replace(",", "")), match[2], match[3])
        for line in section(output, 7).splitlines()
        if (match := LISTED.match(line))
    }
    tree = expected_tree()
    assert set(listed) == {*tree, MARKER}
    for path, (data, _) in tree.items():
        assert listed[path] == (len(data), hashlib.sha256(data).hexdigest()[:16], "sha256 ok")
    assert listed[MARKER][2] == "completion marker"
    assert "writing to /models -> Read-only file system" in section(output, 7)

    # The volume the demo names at the end holds those same bytes, modes and the marker.
    (volume,) = re.findall(r"the pod's model volume is (\S+)$", output, flags=re.MULTILINE)
    assert Path(volume) == Path("run/node/volumes/model")
    root = run / "node" / "volumes" / "model"
    on_disk = {
        path.relative_to(root).as_posix(): path for path in root.rglob("*") if path.is_file()
    }
    assert set(on_disk) == {*tree, MARKER}
    for path, (data, mode) in tree.items():
        assert on_disk[path].read_bytes() == data, path
        assert stat.S_IMODE(on_disk[path].stat().st_mode) == mode, path
    marker = on_disk[MARKER]
    assert listed[MARKER][:2] == (marker.stat().st_size, sha256_of(marker)[:16])
    (digest,) = re.findall(r"^ +sha256 ([0-9a-f]{64})$", section(output, 2), flags=re.MULTILINE)
    assert json.loads(marker.read_text())["sha256"] == digest


def test_the_patched_pod_is_printed_with_the_injected_fetcher(demo: tuple[Path, str]) -> None:
    _, output = demo
    shown = section(output, 8).split("\ndemo: done")[0]
    pod: dict[str, Any] = yaml.safe_load(textwrap.dedent(shown))
    assert pod["kind"] == "Pod"
    assert pod["metadata"]["annotations"][f"{PREFIX}/status"] == "injected"
    assert "managedFields" not in pod["metadata"]
    spec = pod["spec"]
    (fetch,) = [c for c in spec["initContainers"] if c["name"] == "model-fetch"]
    assert fetch["image"] == DEMO.FETCHER_IMAGE
    (digest,) = re.findall(r"^ +sha256 ([0-9a-f]{64})$", section(output, 2), flags=re.MULTILINE)
    args = fetch["args"]
    assert args[args.index("--sha256") + 1] == digest
    assert args[args.index("-o") + 1] == "/models"
    (volume,) = [v for v in spec["volumes"] if v["name"] == "model"]
    assert "emptyDir" in volume
    mount = {"name": "model", "mountPath": "/models", "readOnly": True}
    for container in spec["containers"]:
        assert mount in container["volumeMounts"], container["name"]
    # Step 5 printed the same container the pod holds.
    printed = textwrap.dedent(section(output, 5)).split("init containers run")[0]
    assert yaml.safe_load(printed) == [fetch]


def test_the_work_directory_holds_the_certificates_and_the_webhook_log(
    demo: tuple[Path, str],
) -> None:
    run, output = demo
    (wrote,) = re.findall(r"^ +wrote (.+)$", section(output, 1), flags=re.MULTILINE)
    names = wrote.split(", ")
    assert {"ca.crt", "tls.crt", "tls.key", "ca-bundle.crt"} <= set(names)
    assert sorted(p.name for p in (run / "certs").iterdir() if not p.name.startswith(".")) == names
    assert "--out run/certs" in section(output, 1)
    entries = [json.loads(line) for line in (run / "webhook.log").read_text().splitlines()]
    (admission,) = [entry for entry in entries if entry.get("msg") == "admission"]
    assert admission["decision"] == "injected"
    assert f"decision=injected models={admission['models']}" in section(output, 4)


def test_a_directory_the_demo_did_not_write_is_left_alone(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine\n")
    result = run_demo(tmp_path, "--workdir", str(tmp_path))
    assert result.returncode == 1
    assert "holds files an earlier demo run did not write" in result.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
