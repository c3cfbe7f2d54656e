"""Commands the benchmark needs, installed from Debian with apt-get when they are missing."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

_updated = False


def _find(command: str, candidates: Sequence[str]) -> Path | None:
    found = shutil.which(command) or next((c for c in candidates if Path(c).exists()), None)
    return Path(found) if found else None


def ensure(command: str, package: str, candidates: Sequence[str] = ()) -> Path:
    """Path of ``command``, running ``apt-get install -y PACKAGE`` first if there is none.

    ``candidates`` are absolute paths tried after ``PATH`` (e.g. ``/usr/sbin/nginx``).
    """
    found = _find(command, candidates)
    if found:
        return found
    if os.geteuid() != 0:
        raise SystemExit(f"{command} is missing and we are not root: apt-get install -y {package}")
    global _updated  # noqa: PLW0603 - one apt-get update per process is plenty
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    print(f"installing {package} from Debian ...", flush=True)
    if not _updated:
        subprocess.run(["apt-get", "update", "-q"], check=True, env=env)
        _updated = True
    subprocess.run(
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", package], check=True, env=env
    )
    found = _find(command, candidates)
    if not found:
        raise SystemExit(f"apt-get installed {package} but no {command} command was found")
    return found
