"""Kubernetes objects and AdmissionReviews as the raw JSON dicts they are.

They stay plain dicts on purpose: a round trip through typed client models drops every field the
library does not know (new API fields, alpha features), and the patch must be computed against
exactly what the apiserver sent. The TypedDicts only name the fields this webhook reads or writes.
"""

from __future__ import annotations

from typing import Any, Literal, NotRequired, TypedDict


class ObjectMeta(TypedDict, total=False):
    name: str
    generateName: str
    namespace: str
    annotations: dict[str, str]


class VolumeMount(TypedDict, total=False):
    name: str
    mountPath: str
    readOnly: bool


class Container(TypedDict, total=False):
    name: str
    image: str
    imagePullPolicy: str
    command: list[str]
    args: list[str]
    env: list[dict[str, Any]]
    envFrom: list[dict[str, Any]]
    resources: dict[str, dict[str, str]]
    securityContext: dict[str, Any]
    volumeMounts: list[VolumeMount]
    terminationMessagePolicy: str


class Volume(TypedDict, total=False):
    name: str
    emptyDir: dict[str, Any]
    persistentVolumeClaim: dict[str, Any]
    ephemeral: dict[str, Any]
    configMap: dict[str, Any]
    secret: dict[str, Any]


class PodSpec(TypedDict, total=False):
    containers: list[Container]
    initContainers: list[Container]
    ephemeralContainers: list[Container]
    volumes: list[Volume]


class Pod(TypedDict, total=False):
    apiVersion: str
    kind: str
    metadata: ObjectMeta
    spec: PodSpec


class AddOperation(TypedDict):
    op: Literal["add"]
    path: str
    value: Any


class GroupVersionKind(TypedDict):
    group: str
    version: str
    kind: str


class AdmissionRequest(TypedDict, total=False):
    uid: str
    kind: GroupVersionKind
    name: str
    namespace: str
    operation: str
    object: dict[str, Any]
    oldObject: dict[str, Any] | None
    dryRun: bool


class Status(TypedDict):
    code: int
    message: str


class AdmissionResponse(TypedDict):
    uid: str
    allowed: bool
    status: NotRequired[Status]
    patchType: NotRequired[Literal["JSONPatch"]]
    patch: NotRequired[str]
    warnings: NotRequired[list[str]]


class AdmissionReview(TypedDict):
    apiVersion: str
    kind: str
    response: AdmissionResponse
