"""Offline rendering: what a Pod, or the pods of a workload, look like after admission."""

from __future__ import annotations

import copy
from typing import Any

import jsonpatch
import yaml

from webhook.core.errors import MalformedReview
from webhook.core.hints import misplaced_warnings, near_miss_warnings, template_annotations
from webhook.core.injection import Mutation, mutate_pod
from webhook.core.settings import Settings
from webhook.core.workloads import TEMPLATE_PATHS, group_of_kind, pod_template


def render_object(obj: object, settings: Settings) -> tuple[dict[str, Any], Mutation]:
    """`obj` with its pod (or pod template) mutated; raises Refused or MalformedReview."""
    if not isinstance(obj, dict):
        raise MalformedReview("expected a Kubernetes object (a mapping)")
    kind = obj.get("kind")
    group = group_of_kind(kind) if isinstance(kind, str) else None
    if group is None or not isinstance(kind, str):
        raise MalformedReview(
            f"kind {kind!r} is not a Pod or a workload with a pod template; expected one of "
            + ", ".join(sorted(kind for _, kind in TEMPLATE_PATHS))
        )
    rendered = copy.deepcopy(obj)
    template = pod_template(rendered, group, kind)
    if template is None:
        raise MalformedReview(f"{kind} has no pod template")
    mutation = mutate_pod(template, settings)
    patched = jsonpatch.apply_patch(template, mutation.patch)
    template.clear()
    template.update(patched)
    return rendered, mutation


def _hints(obj: dict[str, Any], settings: Settings) -> list[str]:
    """What /validate would warn about `obj` beyond its annotations' own warnings."""
    kind = str(obj.get("kind"))
    group = group_of_kind(kind) or ""
    template = pod_template(obj, group, kind)
    return [
        *misplaced_warnings(obj, group, kind, settings),
        *near_miss_warnings(template_annotations(template), settings),
    ]


def render_documents(text: str, settings: Settings) -> tuple[str, list[str]]:
    """Every document of a YAML (or JSON) stream rendered, and the warnings collected."""
    rendered: list[dict[str, Any]] = []
    warnings: list[str] = []
    for document in yaml.safe_load_all(text):
        if document is None:
            continue
        obj, mutation = render_object(document, settings)
        rendered.append(obj)
        warnings += mutation.warnings
        warnings += _hints(document, settings)
    return yaml.safe_dump_all(rendered, sort_keys=False), warnings
