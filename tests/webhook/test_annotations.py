"""The annotation contract: accepted values, and the precise refusals of everything else."""

from __future__ import annotations

import pytest

from tests.webhook.kube import apply_response, assert_valid_pod, make_pod, model_annotations
from tests.webhook.kube import review_for as review
from webhook.core.errors import Refused
from webhook.core.injection import mutate_pod
from webhook.core.review import mutate_review
from webhook.core.settings import Settings

SOURCE = "https://models.example.com/m.tar.zst"
DIGEST = "ab" * 32
DEFAULTS = Settings()


def refusal(annotations: dict[str, str], settings: Settings = DEFAULTS, **pod: object) -> str:
    with pytest.raises(Refused) as caught:
        mutate_pod(make_pod(annotations, **pod), settings)  # type: ignore[arg-type]
    return caught.value.message


def fetch_of(annotations: dict[str, str], settings: Settings = DEFAULTS) -> dict:
    pod = make_pod(annotations)
    response = mutate_review(review(pod), settings).review["response"]
    patched = apply_response(pod, response)
    assert_valid_pod(patched)
    return patched


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        (
            {"source": SOURCE, "sha256": "not-a-digest"},
            'models.example.com/sha256: "not-a-digest" is not valid; expected 64 hexadecimal '
            "characters (the sha256 of the bytes at source)",
        ),
        (
            {"source": SOURCE, "sha256": "ab" * 31},
            f'models.example.com/sha256: "{"ab" * 31}" is not valid; expected 64 hexadecimal',
        ),
        (
            {"source": "models.example.com/m.tar"},
            'models.example.com/source: "models.example.com/m.tar" is not valid; expected an '
            "absolute https:// URL with a host",
        ),
        (
            {"source": "http://models.example.com/m.tar"},
            "expected a https:// URL (scheme http:// is not allowed)",
        ),
        (
            {"source": "https://user:pw@models.example.com/m.tar"},
            "expected a URL without user or password: it would be written into the pod spec in "
            "clear text; put the credentials in a Secret and name it in credentials-secret",
        ),
        ({"source": "https://models.example.com:99999/m"}, "expected a well-formed https:// URL"),
        ({"source": "https://models.example.com:0/m"}, "with a valid host and port"),
        ({"source": "https://models.example.com/a b"}, "without spaces or control characters"),
        ({"source": "https://[::1/m"}, "expected a well-formed https:// URL"),
        (
            {"source": SOURCE, "mirrors": "https://a.example.com/m,,https://b.example.com/m"},
            "models.example.com/mirrors: ",
        ),
        (
            {"source": SOURCE, "mirrors": "ftp://mirror.example.com/m"},
            'models.example.com/mirrors: "ftp://mirror.example.com/m" is not valid',
        ),
        (
            {"source": SOURCE, "sorce": SOURCE},
            'models.example.com/sorce: unknown annotation key (value "https://models.example.com'
            '/m.tar.zst"); expected one of source, sha256, mirrors,',
        ),
        (
            {"source": SOURCE, "size_limit": "20GB"},
            'models.example.com/size-limit: "20GB" is not valid; expected a positive Kubernetes '
            "quantity such as 20Gi or 500M",
        ),
        ({"source": SOURCE, "cpu_request": "fast"}, 'models.example.com/cpu-request: "fast"'),
        ({"source": SOURCE, "memory_limit": "0"}, 'models.example.com/memory-limit: "0"'),
        (
            {"source": SOURCE, "cpu_request": "4"},
            'models.example.com/cpu-request: "4" is not valid; expected a cpu request no greater '
            "than the cpu limit (request 4, limit 1; set models.example.com/cpu-limit as well)",
        ),
        (
            {"source": SOURCE, "max_bandwidth": "fast"},
            'models.example.com/max-bandwidth: "fast" is not valid; expected a rate such as '
            "200MB/s",
        ),
        (
            {"source": SOURCE, "max_disk_buffer": "1TB"},
            'models.example.com/max-disk-buffer: "1TB" is not valid; expected a size such as',
        ),
        (
            {"source": SOURCE, "volume": "hostPath"},
            'models.example.com/volume: "hostPath" is not valid; expected emptyDir, pvc or',
        ),
        ({"source": SOURCE, "volume": "pvc"}, "models.example.com/pvc-name is missing"),
        (
            {"source": SOURCE, "pvc_name": "store"},
            'models.example.com/pvc-name: "store" is not valid; expected no pvc-name unless',
        ),
        (
            {"source": SOURCE, "volume": "pvc", "pvc_name": "store", "size_limit": "5Gi"},
            "expected no size-limit with volume pvc",
        ),
        ({"source": SOURCE, "storage_class": "fast"}, "expected no storage-class unless"),
        ({"source": SOURCE, "extract": "zip"}, 'models.example.com/extract: "zip"'),
        (
            {"source": SOURCE, "read_only": "yes"},
            'models.example.com/read-only: "yes" is not valid',
        ),
        ({"source": SOURCE, "init_first": "1"}, 'models.example.com/init-first: "1"'),
        ({"source": SOURCE, "mount_path": "models"}, 'models.example.com/mount-path: "models"'),
        ({"source": SOURCE, "mount_path": "/models/../etc"}, "a normalised absolute path"),
        ({"source": SOURCE, "mount_path": "/"}, 'models.example.com/mount-path: "/"'),
        ({"source": SOURCE, "ca_bundle": "Bad_Name"}, 'models.example.com/ca-bundle: "Bad_Name"'),
        (
            {"source": SOURCE, "credentials_secret": "a/b"},
            'models.example.com/credentials-secret: "a/b" is not valid; expected the name of a '
            "Secret",
        ),
        ({"source": SOURCE, "containers": "app,"}, 'models.example.com/containers: "app,"'),
        (
            {"source": SOURCE, "containers": "ap"},
            'models.example.com/containers: "ap" is not valid; expected names of this pod\'s '
            "containers (app); no container is named ap",
        ),
        (
            {"tokenizer__sha256": DIGEST, "source": SOURCE},
            "models.example.com/tokenizer.source is missing",
        ),
        ({"default__source": SOURCE}, "the model name 'default' is reserved"),
        ({"Big__source": SOURCE}, '"Big" is not a valid model name'),
        (
            {"source": SOURCE, "tokenizer__source": SOURCE, "tokenizer__mount_path": "/models"},
            'models.example.com/tokenizer.mount-path: "/models" is not valid; expected a path not '
            "already used by model 'default'",
        ),
    ],
)
def test_bad_annotations_are_refused_precisely(keys: dict[str, str], message: str) -> None:
    assert message in refusal(model_annotations(**keys))


def test_every_problem_is_reported_at_once() -> None:
    message = refusal(model_annotations(source=SOURCE, sha256="x", extract="zip"))
    assert "models.example.com/sha256" in message
    assert "models.example.com/extract" in message


def test_host_patterns_and_required_digest_come_from_policy() -> None:
    strict = Settings(allowed_hosts=["*.internal", "models.example.com"], require_sha256=True)
    assert "expected a URL whose host matches one of the allowed hosts *.internal" in refusal(
        model_annotations(source="https://evil.example.org/m", sha256=DIGEST), strict
    )
    assert "models.example.com/sha256 is missing" in refusal(
        model_annotations(source=SOURCE), strict
    )
    mutation = mutate_pod(
        make_pod(model_annotations(source="https://cache.internal/m", sha256=DIGEST)), strict
    )
    assert mutation.models == ("default",)
    assert mutation.warnings == ()


def test_missing_digest_is_a_warning_when_not_required() -> None:
    mutation = mutate_pod(make_pod(model_annotations(source=SOURCE)), DEFAULTS)
    assert mutation.warnings == (
        "models.example.com/sha256 is not set: the download will not be verified",
    )


def test_known_keys_without_a_source_inject_nothing_but_warn() -> None:
    mutation = mutate_pod(make_pod(model_annotations(sha256=DIGEST)), DEFAULTS)
    assert mutation.patch == []
    assert mutation.warnings == (
        "models.example.com/source is not set, so models.example.com/sha256 have no effect",
    )


def test_other_prefixes_and_a_custom_prefix() -> None:
    custom = Settings(annotation_prefix="ml.corp.io")
    pod = make_pod({"ml.corp.io/source": SOURCE, "models.example.com/sorce": "ignored"})
    mutation = mutate_pod(pod, custom)
    assert mutation.models == ("default",)
    assert mutation.patch[0] == {
        "op": "add",
        "path": "/metadata/annotations/ml.corp.io~1status",
        "value": "injected",
    }


def test_every_option_reaches_the_fetch_container() -> None:
    patched = fetch_of(
        model_annotations(
            source="https://models.example.com/m",
            mirrors="https://a.example.com/m, https://b.example.com/m",
            sha256=DIGEST.upper(),
            mount_path="/data/model",
            read_only="false",
            volume="ephemeral",
            storage_class="fast-ssd",
            size_limit="5Gi",
            extract="none",
            max_bandwidth="50MiB/s",
            max_disk_buffer="256MiB",
            ca_bundle="corp-ca",
            credentials_secret="hf-token",
            cpu_request="250m",
            cpu_limit="2",
            memory_request="256Mi",
            memory_limit="1Gi",
        )
    )
    (fetch,) = patched["spec"]["initContainers"]
    assert fetch["args"] == [
        "https://models.example.com/m",
        "--mirror",
        "https://a.example.com/m",
        "--mirror",
        "https://b.example.com/m",
        "--sha256",
        DIGEST,
        "-o",
        "/data/model",
        "--max-bandwidth",
        "50MiB/s",
        "--max-disk-buffer",
        "256MiB",
        "--format",
        "none",
        "--ca-bundle",
        "/etc/model-fetch/ca/ca.crt",
        "--auth-from",
        "env:AUTHORIZATION",
        "--log-format",
        "json",
    ]
    assert fetch["envFrom"] == [{"secretRef": {"name": "hf-token"}}]
    assert fetch["resources"] == {
        "requests": {"cpu": "250m", "memory": "256Mi", "ephemeral-storage": "64Mi"},
        "limits": {"cpu": "2", "memory": "1Gi"},
    }
    assert fetch["volumeMounts"] == [
        {"name": "model", "mountPath": "/data/model"},
        {"name": "model-ca", "mountPath": "/etc/model-fetch/ca", "readOnly": True},
    ]
    volumes = {volume["name"]: volume for volume in patched["spec"]["volumes"]}
    assert volumes["model"]["ephemeral"] == {
        "volumeClaimTemplate": {
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "5Gi"}},
                "storageClassName": "fast-ssd",
            }
        }
    }
    assert volumes["model-ca"]["configMap"] == {
        "name": "corp-ca",
        "items": [{"key": "ca.crt", "path": "ca.crt"}],
    }
    (app,) = patched["spec"]["containers"]
    assert app["volumeMounts"] == [{"name": "model", "mountPath": "/data/model", "readOnly": False}]
    assert "envFrom" not in app


def test_named_ca_bundle_uses_its_own_volume_and_directory() -> None:
    patched = fetch_of(model_annotations(source=SOURCE, tok__source=SOURCE, tok__ca_bundle="ca"))
    fetch = patched["spec"]["initContainers"][1]
    assert fetch["name"] == "model-fetch-tok"
    assert "/etc/model-fetch/ca-tok/ca.crt" in fetch["args"]
    assert {
        "name": "model-ca-tok",
        "mountPath": "/etc/model-fetch/ca-tok",
        "readOnly": True,
    } in fetch["volumeMounts"]
    assert fetch["volumeMounts"][0] == {"name": "model-tok", "mountPath": "/models/tok"}


def test_settings_shape_the_injected_container() -> None:
    settings = Settings(
        fetcher_image="registry.internal/fetch:9",
        fetcher_pull_policy="Always",
        run_as_user=1234,
        default_mount_path="/var/models",
        default_size_limit="3Gi",
    )
    patched = fetch_of(model_annotations(source=SOURCE), settings)
    (fetch,) = patched["spec"]["initContainers"]
    assert fetch["image"] == "registry.internal/fetch:9"
    assert fetch["imagePullPolicy"] == "Always"
    assert fetch["securityContext"]["runAsUser"] == 1234
    assert fetch["volumeMounts"] == [{"name": "model", "mountPath": "/var/models"}]
    assert patched["spec"]["volumes"] == [{"name": "model", "emptyDir": {"sizeLimit": "3Gi"}}]
