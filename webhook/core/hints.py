"""Warnings for annotations that look meant for the webhook but would be silently ignored.

Two mistakes give no error and no model: the keys on a workload's own metadata instead of its
pod template, and a key whose prefix is one or two edits from the configured one
(`model.example.com/source`, `models.exampel.com/source`). Neither is refused (the object is
valid, and a key outside the prefix is not ours to refuse); each gets an admission warning, which
kubectl prints at apply time.
"""

from __future__ import annotations

from collections.abc import Mapping

from webhook.core.settings import Settings
from webhook.core.workloads import TEMPLATE_PATHS

# A prefix this many character edits away (insertions, deletions, substitutions) is taken for a
# typo; so is one whose DNS labels differ in a single label that is this many edits away (a
# swapped top-level domain: models.example.org).
MAX_PREFIX_EDITS = 2
MAX_LABEL_EDITS = 3
# Neither changes the prefix's length by more than this (the matchConditions filter on it).
MAX_PREFIX_LENGTH_CHANGE = max(MAX_PREFIX_EDITS, MAX_LABEL_EDITS)


def edit_distance(left: str, right: str, limit: int) -> int:
    """The Levenshtein distance of two strings, or `limit + 1` once it is known to exceed it."""
    if abs(len(left) - len(right)) > limit:
        return limit + 1
    previous = list(range(len(right) + 1))
    for row, char in enumerate(left, start=1):
        current = [row]
        for column, other in enumerate(right, start=1):
            current.append(
                min(
                    previous[column] + 1,
                    current[column - 1] + 1,
                    previous[column - 1] + (char != other),
                )
            )
        if min(current) > limit:
            return limit + 1
        previous = current
    return previous[-1]


def is_near_miss(domain: str, prefix: str, limit: int = MAX_PREFIX_EDITS) -> bool:
    """Whether `domain` (not `prefix` itself) looks like a misspelling of `prefix`."""
    if domain == prefix:
        return False
    if edit_distance(domain, prefix, limit) <= limit:
        return True
    labels, wanted = domain.split("."), prefix.split(".")
    if len(labels) != len(wanted) or len(labels) < 2:
        return False
    differing = [(got, want) for got, want in zip(labels, wanted, strict=True) if got != want]
    return len(differing) == 1 and (
        edit_distance(*differing[0], MAX_LABEL_EDITS) <= MAX_LABEL_EDITS
    )


def near_miss_warnings(annotations: Mapping[str, object], settings: Settings) -> list[str]:
    """A warning for each key whose prefix is a near miss of the configured one."""
    prefix = settings.annotation_prefix
    limit = min(MAX_PREFIX_EDITS, max(1, len(prefix) // 6))
    warnings = []
    for key in annotations:
        domain, slash, name = key.partition("/")
        if not slash or not name or domain == prefix:
            continue
        if is_near_miss(domain.lower(), prefix, limit):
            warnings.append(
                f"{key}: the prefix {domain} is not {prefix}, so this annotation has no effect; "
                f"did you mean {prefix}/{name}?"
            )
    return warnings


def misplaced_warnings(obj: object, group: str, kind: str, settings: Settings) -> list[str]:
    """A warning when a workload's own metadata carries keys that belong on its pod template."""
    path = TEMPLATE_PATHS.get((group, kind))
    if not path or not isinstance(obj, dict):
        return []  # a Pod's metadata is where the keys belong
    metadata = obj.get("metadata")
    annotations = metadata.get("annotations") if isinstance(metadata, dict) else None
    if not isinstance(annotations, dict):
        return []
    prefix = f"{settings.annotation_prefix}/"
    keys = [key for key in annotations if isinstance(key, str) and key.startswith(prefix)]
    if not keys:
        return []
    where = ".".join((*path, "metadata", "annotations"))
    return [
        f"{', '.join(keys)} {'is' if len(keys) == 1 else 'are'} on the {kind}'s own "
        f"metadata.annotations, where the webhook never reads {'it' if len(keys) == 1 else 'them'}"
        f"; model annotations belong under {where}"
    ]


def template_annotations(template: object) -> Mapping[str, object]:
    """The annotations of a pod (template) as sent, or none when it is not shaped like one."""
    if not isinstance(template, dict):
        return {}
    metadata = template.get("metadata")
    annotations = metadata.get("annotations") if isinstance(metadata, dict) else None
    return annotations if isinstance(annotations, dict) else {}
