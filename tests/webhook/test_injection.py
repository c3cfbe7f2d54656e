"""Patch shape, reinvocation, collisions and init ordering on synthetic pods."""

from __future__ import annotations

import copy
import json

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
        "the pod already has a volume named 'model-ca', which models.example.com/ca-bundle "
        "would add; expected no volume of that name"
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
        (
            lambda pod: pod["metadata"].update(namespace=123),
            "object.metadata.namespace: expected a string",
        ),
        (lambda pod: pod["spec"].update(os="windows"), "object.spec.os: expected an object"),
        (lambda pod: pod["spec"].update(os={"name": 1}), "object.spec.os.name: expected a string"),
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


# --- names and paths of the injected objects that would clash among themselves --------------

# Each pair of models asks for a volume of the same name: the default model's CA or Google key
# volume (model-ca, model-credentials) and the model volume of a model called after it.
VOLUME_CLASHES = {
    "ca-bundle and a model named ca": (
        model_annotations(source=SOURCE, ca_bundle="corp-ca", ca__source=SOURCE),
        "models.example.com/ca.source and models.example.com/ca-bundle would both add a "
        "volume named 'model-ca'",
    ),
    "a named model's ca-bundle and a model named ca-<name>": (
        {
            **model_annotations(x__source=SOURCE, x__ca_bundle="corp-ca"),
            "models.example.com/ca-x.source": SOURCE,
        },
        "volume named 'model-ca-x'",
    ),
    "gs credentials and a model named credentials": (
        model_annotations(
            source="gs://ml-models/m.tar.zst", credentials_secret="gcs", credentials__source=SOURCE
        ),
        "would both add a volume named 'model-credentials'",
    ),
}


@pytest.mark.parametrize(
    ("annotations", "said"), VOLUME_CLASHES.values(), ids=VOLUME_CLASHES.keys()
)
def test_two_models_that_would_add_volumes_of_one_name_are_refused(
    annotations: dict[str, str], said: str
) -> None:
    settings = Settings(allowed_schemes=["https", "gs"])
    with pytest.raises(Refused) as caught:
        mutate_pod(make_pod(annotations), settings)
    assert said in caught.value.message
    assert "expected model names whose volumes do not clash" in caught.value.message


FETCH_MOUNT_CLASHES = {
    "the CA bundle's folder": ({"ca_bundle": "corp-ca"}, "/etc/model-fetch/ca"),
    "around the CA bundle": ({"ca_bundle": "corp-ca"}, "/etc/model-fetch"),
    "inside the CA bundle": ({"ca_bundle": "corp-ca"}, "/etc/model-fetch/ca/m"),
    "the whole of /etc": ({"ca_bundle": "corp-ca"}, "/etc"),
    "the Google key's folder": (
        {"source": "gs://ml-models/m", "credentials_secret": "gcs"},
        "/var/run/secrets/model-fetch",
    ),
}


@pytest.mark.parametrize(
    ("keys", "mount_path"), FETCH_MOUNT_CLASHES.values(), ids=FETCH_MOUNT_CLASHES.keys()
)
def test_a_mount_path_on_or_around_the_fetch_containers_own_mounts_is_refused(
    keys: dict[str, str], mount_path: str
) -> None:
    settings = Settings(allowed_schemes=["https", "gs"])
    annotations = model_annotations(**{"source": SOURCE, **keys, "mount_path": mount_path})
    with pytest.raises(Refused) as caught:
        mutate_pod(make_pod(annotations), settings)
    assert caught.value.message.startswith(
        f'models.example.com/mount-path: "{mount_path}" is not valid; expected a path apart from '
    )


def test_a_named_models_mount_path_is_held_to_its_own_ca_folder() -> None:
    annotations = model_annotations(
        source=SOURCE,
        tok__source=SOURCE,
        tok__ca_bundle="corp-ca",
        tok__mount_path="/etc/model-fetch/ca-tok",
    )
    with pytest.raises(Refused) as caught:
        mutate_pod(make_pod(annotations), DEFAULTS)
    assert "where the fetch container reads the CA bundle of ca-bundle" in caught.value.message


def test_a_mount_path_beside_the_fetch_containers_own_mounts_is_injected() -> None:
    # Sharing a prefix is not lying inside: /etc/model-fetch/cache is apart from .../ca.
    for mount_path in ("/etc/model-fetch/cache", "/etc/model-fetch/ca-other", "/etc/models"):
        annotations = model_annotations(source=SOURCE, ca_bundle="corp-ca", mount_path=mount_path)
        patched = apply(make_pod(annotations))
        fetch = patched["spec"]["initContainers"][0]
        assert [m["mountPath"] for m in fetch["volumeMounts"]] == [
            mount_path,
            "/etc/model-fetch/ca",
        ]


def test_a_windows_pod_that_asks_for_a_model_is_refused() -> None:
    pod = make_pod(model_annotations(source=SOURCE))
    pod["spec"]["os"] = {"name": "windows"}
    with pytest.raises(Refused) as caught:
        mutate_pod(pod, DEFAULTS)
    assert caught.value.message == (
        "spec.os.name is 'windows', but models.example.com/source asks for a model, whose fetch "
        "container runs on Linux only; expected a Linux pod (spec.os.name linux or unset)"
    )
    pod["spec"]["os"] = {"name": "linux"}
    assert apply(pod)["spec"]["initContainers"][0]["name"] == "model-fetch"
    windows_without_models = make_pod(None)
    windows_without_models["spec"]["os"] = {"name": "windows"}
    assert mutate_pod(windows_without_models, DEFAULTS).patch == []


@pytest.mark.parametrize("status", ["bogus", "", "false", "Injected"])
def test_a_status_other_than_injected_is_refused_not_taken_for_done(status: str) -> None:
    # Otherwise any value switches injection off and every check with it.
    pod = make_pod(model_annotations(source=SOURCE, sha256="abc", sourse=SOURCE, status=status))
    with pytest.raises(Refused) as caught:
        mutate_pod(pod, DEFAULTS)
    assert caught.value.message.startswith(
        f"models.example.com/status: {json.dumps(status)} is not valid; expected 'injected', "
        "which the webhook itself sets on a pod it injected"
    )
