"""Minimal JSONPatch `add` operations that put new objects into a raw pod.

A list that is missing (or null) is added whole; an existing one is appended to with `/-`, or
inserted into at the front for init containers that must run first. Same for the annotation map.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from webhook.core.bodies import AddOperation, Container, Pod, Volume, VolumeMount


def escape(token: str) -> str:
    """A JSON pointer reference token (RFC 6901): `~` becomes `~0`, `/` becomes `~1`."""
    return token.replace("~", "~0").replace("/", "~1")


@dataclass
class Additions:
    annotations: dict[str, str] = field(default_factory=dict)
    volumes: list[Volume] = field(default_factory=list)
    leading_init_containers: list[Container] = field(default_factory=list)
    trailing_init_containers: list[Container] = field(default_factory=list)
    mounts: dict[int, list[VolumeMount]] = field(default_factory=dict)  # by container index
    env: dict[int, list[dict[str, Any]]] = field(default_factory=dict)  # by container index


def build_patch(pod: Pod, additions: Additions) -> list[AddOperation]:
    operations: list[AddOperation] = []
    metadata = pod.get("metadata")
    if additions.annotations:
        if metadata is None:
            operations.append(_add("/metadata", {"annotations": additions.annotations}))
        elif metadata.get("annotations") is None:
            operations.append(_add("/metadata/annotations", additions.annotations))
        else:
            for key, value in additions.annotations.items():
                operations.append(_add(f"/metadata/annotations/{escape(key)}", value))

    spec: dict[str, Any] = dict(pod.get("spec", {}))
    operations += _extend(spec.get("volumes"), "/spec/volumes", additions.volumes)
    init_containers = additions.leading_init_containers + additions.trailing_init_containers
    if spec.get("initContainers") is None:
        if init_containers:
            operations.append(_add("/spec/initContainers", init_containers))
    else:
        for index, container in enumerate(additions.leading_init_containers):
            operations.append(_add(f"/spec/initContainers/{index}", container))
        for container in additions.trailing_init_containers:
            operations.append(_add("/spec/initContainers/-", container))

    containers = spec.get("containers") or []
    for index, mounts in sorted(additions.mounts.items()):
        existing = containers[index].get("volumeMounts")
        operations += _extend(existing, f"/spec/containers/{index}/volumeMounts", mounts)
    for index, variables in sorted(additions.env.items()):
        existing = containers[index].get("env")
        operations += _extend(existing, f"/spec/containers/{index}/env", variables)
    return operations


def _extend(existing: object, path: str, items: list[Any]) -> list[AddOperation]:
    if not items:
        return []
    if existing is None:
        return [_add(path, items)]
    return [_add(f"{path}/-", item) for item in items]


def _add(path: str, value: Any) -> AddOperation:
    return {"op": "add", "path": path, "value": value}
