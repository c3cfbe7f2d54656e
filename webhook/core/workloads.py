"""Where each workload kind keeps the pod template that /validate checks."""

from __future__ import annotations

from typing import Any

# (API group, kind) -> path of the pod template inside the object; () is the object itself.
TEMPLATE_PATHS: dict[tuple[str, str], tuple[str, ...]] = {
    ("", "Pod"): (),
    ("", "ReplicationController"): ("spec", "template"),
    ("apps", "Deployment"): ("spec", "template"),
    ("apps", "StatefulSet"): ("spec", "template"),
    ("apps", "DaemonSet"): ("spec", "template"),
    ("apps", "ReplicaSet"): ("spec", "template"),
    ("batch", "Job"): ("spec", "template"),
    ("batch", "CronJob"): ("spec", "jobTemplate", "spec", "template"),
}
_KIND_GROUPS = {kind: group for group, kind in TEMPLATE_PATHS}


def group_of_kind(kind: str) -> str | None:
    """The API group of a kind read from a manifest, for offline rendering."""
    return _KIND_GROUPS.get(kind)


def pod_template(obj: object, group: str, kind: str) -> dict[str, Any] | None:
    """The pod template of a workload, or None for other kinds or a template that is absent."""
    path = TEMPLATE_PATHS.get((group, kind))
    if path is None:
        return None
    node = obj
    for step in path:
        if not isinstance(node, dict):
            return None
        node = node.get(step)
    return node if isinstance(node, dict) else None
