"""Patch shape, reinvocation, collisions and init ordering on synthetic pods."""

from __future__ import annotations

import copy

import jsonpatch
import pytest

from tests.webhook.kube import assert_valid_pod, make_pod, model_annotations
from tests.webhook.restricted import restricted_violations
from webhook.core.errors import MalformedReview, Refused
from webhook.core.injection import mutate_pod
from webhook.core.patch import Additions, build_patch, escape
from webhook.core.settings import Settings

SOURCE = "https://models.example.com/m.tar.zst"
DEFAULTS = Settings()


def apply(pod: dict) -> dict:
    mutation = mutate_pod(pod, DEFAULTS)
    patched: dict = jsonpatch.apply_patch(copy.deepcopy(pod), mutation.patch)
    assert_valid_pod(patched)
    return patched


@pytest.mark.parametrize(
    ("token", "escaped"),
    [("models.example.com/status", "models.example.com~1status"), ("a~b/c~1", "a~0b~1c~01")],
)
def test_json_pointer_tokens_escape_tilde_before_slash(token: str, escaped: str) -> None:
    assert escape(token) == escaped


def test_missing_lists_are_added_whole() -> None:
    mutation = mutate_pod(make_pod(model_annotations(source=SOURCE)), DEFAULTS)
    paths = [operation["path"] for operation in mutation.patch]
    assert paths == [
        "/metadata/annotations/models.example.com~1status",
        "/spec/volumes",
        "/spec/initContainers",
        "/spec/containers/0/volumeMounts",
    ]


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        (None, {"op": "add", "path": "/metadata", "value": {"annotations": {"k/s": "v"}}}),
        ({}, {"op": "add", "path": "/metadata/annotations", "value": {"k/s": "v"}}),
        (
            {"annotations": None},
            {"op": "add", "path": "/metadata/annotations", "value": {"k/s": "v"}},
        ),
        (
            {"annotations": {"a": "b"}},
            {"op": "add", "path": "/metadata/annotations/k~1s", "value": "v"},
        ),
    ],
)
def test_annotation_map_is_added_whole_only_when_missing(
    metadata: dict | None, expected: dict
) -> None:
    pod: dict = {"spec": {"containers": []}}
    if metadata is not None:
        pod["metadata"] = metadata
    operations = build_patch(pod, Additions(annotations={"k/s": "v"}))  # type: ignore[arg-type]
    assert operations == [expected]
    assert jsonpatch.apply_patch(pod, operations)["metadata"]["annotations"]["k/s"] == "v"


def test_init_first_puts_fetchers_before_existing_init_containers_in_model_order() -> None:
    pod = make_pod(
        model_annotations(
            source=SOURCE,
            init_first="true",
            b__source=SOURCE,
            a__source=SOURCE,
            a__init_first="true",
        )
    )
    pod["spec"]["initContainers"] = [{"name": "setup", "image": "setup:1"}]
    patched = apply(pod)
    assert [c["name"] for c in patched["spec"]["initContainers"]] == [
        "model-fetch",
        "model-fetch-a",
        "setup",
        "model-fetch-b",
    ]


def test_reinvocation_leaves_an_injected_pod_alone() -> None:
    patched = apply(make_pod(model_annotations(source=SOURCE, tok__source=SOURCE)))
    assert mutate_pod(patched, DEFAULTS).patch == []
    # Another webhook may have dropped our annotation; the containers still mark the pod.
    del patched["metadata"]["annotations"]["models.example.com/status"]
    assert mutate_pod(patched, DEFAULTS).patch == []


def test_status_annotation_alone_marks_a_pod_as_done() -> None:
    pod = make_pod(model_annotations(source=SOURCE, status="injected"))
    assert mutate_pod(pod, DEFAULTS).patch == []


def test_existing_volume_name_is_a_collision() -> None:
    pod = make_pod(model_annotations(source=SOURCE, ca_bundle="corp-ca"))
    pod["spec"]["volumes"] = [{"name": "model-ca", "emptyDir": {}}]
    with pytest.raises(Refused) as caught:
        mutate_pod(pod, DEFAULTS)
    assert caught.value.message == (
        "the pod already has a volume named 'model-ca', which models.example.com/source would "
        "add; expected no volume of that name"
    )


def test_existing_mount_path_in_a_target_container_is_a_collision() -> None:
    pod = make_pod(model_annotations(source=SOURCE), containers=("app", "sidecar"))
    pod["spec"]["containers"][1]["volumeMounts"] = [{"name": "cache", "mountPath": "/models"}]
    pod["spec"]["volumes"] = [{"name": "cache", "emptyDir": {}}]
    with pytest.raises(Refused) as caught:
        mutate_pod(pod, DEFAULTS)
    assert caught.value.message == (
        'models.example.com/mount-path: "/models" is not valid; expected a path not already '
        "mounted in container 'sidecar'"
    )
    pod["metadata"]["annotations"]["models.example.com/containers"] = "app"
    patched = apply(pod)
    assert [m["name"] for m in patched["spec"]["containers"][1]["volumeMounts"]] == ["cache"]


def test_unknown_fields_survive_the_patch() -> None:
    pod = make_pod(model_annotations(source=SOURCE))
    pod["spec"]["futureField"] = {"kept": True}
    pod["spec"]["containers"][0]["alphaFeature"] = [1, 2]
    mutation = mutate_pod(pod, DEFAULTS)
    patched = jsonpatch.apply_patch(pod, mutation.patch)
    assert patched["spec"]["futureField"] == {"kept": True}
    assert patched["spec"]["containers"][0]["alphaFeature"] == [1, 2]


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (lambda pod: pod.update(spec=None), "object.spec: expected an object"),
        (lambda pod: pod["spec"].update(containers={}), "object.spec.containers: expected a list"),
        (
            lambda pod: pod["spec"]["containers"][0].pop("name"),
            "object.spec.containers[0].name: expected a string",
        ),
        (
            lambda pod: pod["metadata"]["annotations"].update({"x": 1}),
            "object.metadata.annotations['x']: expected a string value",
        ),
        (
            lambda pod: pod["spec"]["containers"][0].update(volumeMounts=[{"name": "v"}]),
            "object.spec.containers[0].volumeMounts[0].mountPath: expected a string",
        ),
        (lambda pod: pod["spec"].update(volumes=[3]), "object.spec.volumes[0]: expected an object"),
    ],
)
def test_misshapen_pods_are_malformed_not_crashes(breakage: object, message: str) -> None:
    pod = make_pod(model_annotations(source=SOURCE))
    breakage(pod)  # type: ignore[operator]
    with pytest.raises(MalformedReview, match=__import__("re").escape(message)):
        mutate_pod(pod, DEFAULTS)


def test_restricted_check_catches_an_unsafe_container() -> None:
    pod = make_pod(None)
    assert restricted_violations(pod, "app") == [
        "allowPrivilegeEscalation must be false",
        "capabilities must drop ALL",
        "runAsNonRoot must be true",
        "seccompProfile must be RuntimeDefault or Localhost",
    ]
    patched = apply(make_pod(model_annotations(source=SOURCE)))
    assert restricted_violations(patched, "model-fetch") == []


def test_restricted_check_catches_a_host_path_volume() -> None:
    patched = apply(make_pod(model_annotations(source=SOURCE)))
    patched["spec"]["volumes"][0] = {"name": "model", "hostPath": {"path": "/srv"}}
    assert restricted_violations(patched, "model-fetch") == ["volume model of type {'hostPath'}"]
