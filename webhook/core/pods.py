"""Checks that a raw pod (or pod template) dict has the shape the webhook relies on.

The apiserver only sends valid pods, so a failure here means the call itself is broken and is
answered as a MalformedReview, never as a crash.
"""

from __future__ import annotations

from typing import Any, cast

from webhook.core.bodies import Container, Pod
from webhook.core.errors import MalformedReview

_CONTAINER_LISTS = ("containers", "initContainers", "ephemeralContainers")


def read_pod(obj: object, where: str = "object") -> Pod:
    """`obj` typed as a Pod after checking every field this webhook reads."""
    pod = _mapping(obj, where)
    metadata = pod.get("metadata")
    if metadata is not None:
        meta = _mapping(metadata, f"{where}.metadata")
        annotations = meta.get("annotations")
        if annotations is not None:
            for key, value in _mapping(annotations, f"{where}.metadata.annotations").items():
                if not isinstance(value, str):
                    raise MalformedReview(
                        f"{where}.metadata.annotations[{key!r}]: expected a string value"
                    )
        for field in ("name", "generateName", "namespace"):
            if meta.get(field) is not None and not isinstance(meta[field], str):
                raise MalformedReview(f"{where}.metadata.{field}: expected a string")
    spec = _mapping(pod.get("spec"), f"{where}.spec")
    for field in _CONTAINER_LISTS:
        for index, container in enumerate(_list(spec.get(field), f"{where}.spec.{field}")):
            _check_container(container, f"{where}.spec.{field}[{index}]")
    for index, volume in enumerate(_list(spec.get("volumes"), f"{where}.spec.volumes")):
        _named(volume, f"{where}.spec.volumes[{index}]")
    if spec.get("os") is not None:
        _named(spec["os"], f"{where}.spec.os")
    return cast(Pod, pod)


def annotations_of(pod: Pod) -> dict[str, str]:
    return (pod.get("metadata") or {}).get("annotations") or {}


def os_of(pod: Pod) -> str | None:
    """The pod's spec.os.name (linux or windows), None when it does not say."""
    pod_os = cast(dict[str, Any], pod.get("spec", {})).get("os")
    return cast(str, pod_os["name"]) if pod_os else None  # read_pod checked it is a string


def containers_of(pod: Pod, field: str = "containers") -> list[Container]:
    spec = cast(dict[str, Any], pod.get("spec", {}))
    return cast(list[Container], spec.get(field) or [])


def _check_container(container: object, where: str) -> None:
    named = _named(container, where)
    for index, mount in enumerate(_list(named.get("volumeMounts"), f"{where}.volumeMounts")):
        mount_path = _mapping(mount, f"{where}.volumeMounts[{index}]").get("mountPath")
        if not isinstance(mount_path, str):
            raise MalformedReview(f"{where}.volumeMounts[{index}].mountPath: expected a string")
    for index, var in enumerate(_list(named.get("env"), f"{where}.env")):
        _named(var, f"{where}.env[{index}]")


def _named(obj: object, where: str) -> dict[str, Any]:
    mapping = _mapping(obj, where)
    if not isinstance(mapping.get("name"), str):
        raise MalformedReview(f"{where}.name: expected a string")
    return mapping


def _mapping(obj: object, where: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise MalformedReview(f"{where}: expected an object")
    return cast(dict[str, Any], obj)


def _list(obj: object, where: str) -> list[Any]:
    if obj is None:
        return []
    if not isinstance(obj, list):
        raise MalformedReview(f"{where}: expected a list")
    return obj
