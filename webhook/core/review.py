"""AdmissionReview in, AdmissionReview out: the whole of /mutate and /validate without HTTP.

A body that is not an AdmissionReview v1 raises MalformedReview (the HTTP edge answers 400);
annotations that cannot be honoured are an ordinary answer with `allowed: false` and code 400.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, cast

from webhook.core.bodies import AddOperation, AdmissionRequest, AdmissionResponse, AdmissionReview
from webhook.core.errors import MalformedReview, Refused
from webhook.core.hints import misplaced_warnings, near_miss_warnings, template_annotations
from webhook.core.injection import mutate_pod
from webhook.core.redact import redact
from webhook.core.settings import Settings
from webhook.core.workloads import pod_template

API_VERSION = "admission.k8s.io/v1"
KIND = "AdmissionReview"

Decision = Literal["injected", "unchanged", "allowed", "refused"]


@dataclass(frozen=True)
class Outcome:
    """The answer plus what the edge logs and counts about it."""

    review: AdmissionReview
    decision: Decision
    request: AdmissionRequest
    models: tuple[str, ...] = ()

    @property
    def identity(self) -> dict[str, str]:
        """namespace plus name, or generateName for controller-made pods that have no name yet."""
        obj = self.request.get("object") or {}
        metadata = obj.get("metadata")
        if not isinstance(metadata, dict):
            metadata = {}
        # The request's own fields are checked strings; an object's metadata is checked only
        # where a pod is read, and a workload's is not: a number there must not reach the logs.
        name = _text(metadata.get("name")) or self.request.get("name")
        namespace = self.request.get("namespace") or _text(metadata.get("namespace"))
        fields = {"namespace": namespace}
        if name:
            fields["name"] = name
        else:
            fields["generateName"] = _text(metadata.get("generateName"))
        return fields


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def mutate_review(body: object, settings: Settings) -> Outcome:
    request = read_request(body)
    obj = request.get("object")
    is_pod_creation = (
        _group_kind(request) == ("", "Pod")
        and request.get("operation") == "CREATE"
        and obj is not None
    )
    if not is_pod_creation:
        return _allow(request, "unchanged")
    try:
        mutation = mutate_pod(obj, settings)
    except Refused as refused:
        return _refuse(request, refused)
    decision: Decision = "injected" if mutation.patch else "unchanged"
    warnings = (*mutation.warnings, *near_miss_warnings(template_annotations(obj), settings))
    return _allow(request, decision, mutation.patch, warnings, mutation.models)


def validate_review(body: object, settings: Settings) -> Outcome:
    request = read_request(body)
    if request.get("operation") not in ("CREATE", "UPDATE"):
        return _allow(request, "allowed")
    group, kind = _group_kind(request)
    template = pod_template(request.get("object"), group, kind)
    if template is None:
        return _allow(request, "allowed")
    hints = (
        *misplaced_warnings(request.get("object"), group, kind, settings),
        *near_miss_warnings(template_annotations(template), settings),
    )
    try:
        mutation = mutate_pod(template, settings)
    except Refused as refused:
        if template == pod_template(request.get("oldObject"), group, kind):
            # An update that leaves the template alone (labels, finalizers during deletion)
            # must not be blocked by annotations that predate the webhook.
            warning = f"pod template unchanged, so allowed despite: {refused.message}"
            return _allow(request, "allowed", warnings=(warning, *hints))
        return _refuse(request, refused)
    warnings = (*mutation.warnings, *hints)
    return _allow(request, "allowed", warnings=warnings, models=mutation.models)


def read_request(body: object) -> AdmissionRequest:
    if not isinstance(body, dict):
        raise MalformedReview("expected a JSON object holding an AdmissionReview")
    if body.get("apiVersion") != API_VERSION or body.get("kind") != KIND:
        raise MalformedReview(f"expected apiVersion {API_VERSION} and kind {KIND}")
    request = body.get("request")
    if not isinstance(request, dict):
        raise MalformedReview("expected a request object in the AdmissionReview")
    if not isinstance(request.get("uid"), str) or not request["uid"]:
        raise MalformedReview("request.uid: expected a non-empty string")
    gvk = request.get("kind")
    if not isinstance(gvk, dict) or not all(
        isinstance(gvk.get(field), str) for field in ("group", "kind")
    ):
        raise MalformedReview("request.kind: expected an object with group, version and kind")
    for field in ("namespace", "name", "operation"):
        if request.get(field) is not None and not isinstance(request[field], str):
            raise MalformedReview(f"request.{field}: expected a string")
    for field in ("object", "oldObject"):
        if request.get(field) is not None and not isinstance(request[field], dict):
            raise MalformedReview(f"request.{field}: expected an object or null")
    return cast(AdmissionRequest, request)


def encode_patch(patch: list[AddOperation]) -> str:
    return base64.b64encode(json.dumps(patch, separators=(",", ":")).encode()).decode()


def _group_kind(request: AdmissionRequest) -> tuple[str, str]:
    return request["kind"]["group"], request["kind"]["kind"]


def _allow(
    request: AdmissionRequest,
    decision: Decision,
    patch: list[AddOperation] | None = None,
    warnings: tuple[str, ...] = (),
    models: tuple[str, ...] = (),
) -> Outcome:
    response: AdmissionResponse = {"uid": request["uid"], "allowed": True}
    if patch:
        response["patchType"] = "JSONPatch"
        response["patch"] = encode_patch(patch)
    if warnings:
        response["warnings"] = [redact(warning) for warning in warnings]
    return Outcome(_wrap(response), decision, request, models)


def _refuse(request: AdmissionRequest, refused: Refused) -> Outcome:
    response: AdmissionResponse = {
        "uid": request["uid"],
        "allowed": False,
        "status": {"code": 400, "message": refused.message},
    }
    return Outcome(_wrap(response), "refused", request)


def _wrap(response: AdmissionResponse) -> AdmissionReview:
    return {"apiVersion": API_VERSION, "kind": KIND, "response": response}


Reviewer = Callable[[object, Settings], Outcome]
REVIEWERS: dict[str, Reviewer] = {"mutate": mutate_review, "validate": validate_review}
