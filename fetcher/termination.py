"""The fetch's result where Kubernetes shows it: the container's termination message.

The kubelet mounts a file at the container's terminationMessagePath (/dev/termination-log
unless set otherwise) and, with terminationMessagePolicy File, shows its content in the pod's
status, `kubectl describe pod` and `kubectl get pod -o yaml`. The fetcher writes one JSON
object there: the result on success, the last line and the exit code on failure. Run by hand,
where no such file exists, it writes nothing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

DEFAULT_PATH = Path("/dev/termination-log")
LIMIT = 4096  # what the kubelet keeps of a termination message


def write_result(path: Path, result: dict[str, Any]) -> None:
    """Write result to path if the file exists; never more than LIMIT bytes; never raise."""
    try:
        if not path.is_file():
            return
        payload = _fit(result)
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.write(fd, payload)
        finally:
            os.close(fd)
    except OSError:
        return  # a missing or read-only path must never turn a result into a failure


def _fit(result: dict[str, Any]) -> bytes:
    payload = json.dumps(result, separators=(",", ":")).encode()
    if len(payload) <= LIMIT:
        return payload
    message = str(result.get("message", ""))
    # Cut the one long field, the message, keeping its end: that is where the hint is.
    overflow = len(payload) - LIMIT + len(" [...]") + 16
    cut = {**result, "message": "[...] " + message[overflow:]}
    return json.dumps(cut, separators=(",", ":")).encode()[:LIMIT]
