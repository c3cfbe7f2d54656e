"""s3:// and gs:// sources: the policy that admits them and what the fetch container gets."""

from __future__ import annotations

from typing import Any

import pytest

from tests.webhook.kube import (
    apply_response,
    assert_valid_pod,
    injected_init_containers,
    make_pod,
    model_annotations,
)
from tests.webhook.kube import review_for as review
from tests.webhook.restricted import restricted_violations
from webhook.core.errors import Refused
from webhook.core.injection import mutate_pod
from webhook.core.review import mutate_review
from webhook.core.settings import Settings

DIGEST = "cd" * 32
STORES = Settings(allowed_schemes=["https", "http", "s3", "gs"])


def patched(annotations: dict[str, str], settings: Settings = STORES) -> dict[str, Any]:
    pod = make_pod(annotations)
    response = mutate_review(review(pod), settings).review["response"]
    assert response["allowed"] is True, response
    result = apply_response(pod, response)
    assert_valid_pod(result)
    return result


def refusal(annotations: dict[str, str], settings: Settings = STORES) -> str:
    with pytest.raises(Refused) as caught:
        mutate_pod(make_pod(annotations), settings)
    return caught.value.message


def test_s3_source_with_endpoint_region_and_credentials_secret() -> None:
    pod = patched(
        model_annotations(
            source="s3://ml-models/llama/model.tar.zst",
            mirrors="https://cdn.example.com/llama/model.tar.zst",
            sha256=DIGEST,
            s3_endpoint="http://minio.storage.svc:9000",
            s3_region="eu-west-1",
            credentials_secret="s3-reader",
        )
    )
    (fetch,) = injected_init_containers(pod)
    args = fetch["args"]
    assert args[0] == "s3://ml-models/llama/model.tar.zst"
    assert args[args.index("--s3-endpoint") + 1] == "http://minio.storage.svc:9000"
    assert args[args.index("--s3-region") + 1] == "eu-west-1"
    # The Secret's AWS_* keys reach the fetcher's credential chain as environment variables.
    assert fetch["envFrom"] == [{"secretRef": {"name": "s3-reader"}}]
    # The https mirror may take the Secret's AUTHORIZATION key as well.
    assert args[args.index("--auth-from") + 1] == "env:AUTHORIZATION"
    assert "env" not in fetch  # nothing for Google without a gs:// URL
    assert restricted_violations(pod, "model-fetch") == []
    for app in pod["spec"]["containers"]:
        assert "envFrom" not in app


def test_s3_only_sources_do_not_ask_for_an_authorization_header() -> None:
    pod = patched(
        model_annotations(source="s3://ml-models/m.tar.zst", credentials_secret="s3-reader")
    )
    (fetch,) = injected_init_containers(pod)
    assert "--auth-from" not in fetch["args"]
    assert "--s3-endpoint" not in fetch["args"]
    assert fetch["envFrom"] == [{"secretRef": {"name": "s3-reader"}}]


def test_gs_source_with_a_key_file_secret_mounts_only_that_key() -> None:
    pod = patched(
        model_annotations(
            source="gs://ml-models/llama/model.tar.zst",
            credentials_secret="gcs-key",
            tokenizer__source="gs://ml-models/tok.tar.zst",
            tokenizer__credentials_secret="gcs-key",
        )
    )
    default, tokenizer = injected_init_containers(pod)
    assert default["env"] == [
        {
            "name": "GOOGLE_APPLICATION_CREDENTIALS",
            "value": "/var/run/secrets/model-fetch/key.json",
        }
    ]
    assert {
        "name": "model-credentials",
        "mountPath": "/var/run/secrets/model-fetch",
        "readOnly": True,
    } in default["volumeMounts"]
    assert tokenizer["env"][0]["value"] == "/var/run/secrets/model-fetch-tokenizer/key.json"
    volumes = {volume["name"]: volume for volume in pod["spec"]["volumes"]}
    for name in ("model-credentials", "model-credentials-tokenizer"):
        assert volumes[name] == {
            "name": name,
            "secret": {
                "secretName": "gcs-key",
                "items": [{"key": "key.json", "path": "key.json"}],
            },
        }
    # The app containers see the models, never the credentials.
    for app in pod["spec"]["containers"]:
        assert {m["name"] for m in app["volumeMounts"]} == {"model", "model-tokenizer"}
    for name in ("model-fetch", "model-fetch-tokenizer"):
        assert restricted_violations(pod, name) == []


def test_gs_source_without_a_secret_uses_workload_identity() -> None:
    pod = patched(model_annotations(source="gs://ml-models/llama/model.tar.zst"))
    (fetch,) = injected_init_containers(pod)
    assert "env" not in fetch
    assert "envFrom" not in fetch
    assert [v["name"] for v in pod["spec"]["volumes"]] == ["model"]


def test_a_pod_volume_named_like_the_credentials_volume_is_a_collision() -> None:
    pod = make_pod(
        model_annotations(source="gs://ml-models/m.tar.zst", credentials_secret="gcs-key")
    )
    pod["spec"]["volumes"] = [{"name": "model-credentials", "emptyDir": {}}]
    with pytest.raises(Refused, match="already has a volume named 'model-credentials'"):
        mutate_pod(pod, STORES)


@pytest.mark.parametrize(
    ("annotations", "expected"),
    [
        (
            model_annotations(source="s3://Bad_Bucket/m.tar.zst"),
            'models.example.com/source: "s3://Bad_Bucket/m.tar.zst" is not valid; expected '
            "s3://BUCKET/KEY with a valid bucket name",
        ),
        (
            model_annotations(source="gs://ml-models/"),
            "expected gs://BUCKET/KEY with a valid bucket name",
        ),
        (
            model_annotations(source="s3://ml-models/m.tar.zst?versionId=3"),
            "and an object key, without query or fragment",
        ),
        (
            model_annotations(source="s3://key:secret@ml-models/m.tar.zst"),
            "expected a URL without user or password: it would be written into the pod spec",
        ),
        (
            model_annotations(source="https://cdn.example.com/m", s3_region="eu-west-1"),
            'models.example.com/s3-region: "eu-west-1" is not valid; expected no s3-region '
            "unless the source or a mirror is an s3:// URL",
        ),
        (
            model_annotations(source="gs://ml-models/m", s3_endpoint="http://minio:9000"),
            "expected no s3-endpoint unless the source or a mirror is an s3:// URL",
        ),
        (
            model_annotations(source="s3://ml-models/m", s3_endpoint="ftp://minio:9000"),
            'models.example.com/s3-endpoint: "ftp://minio:9000" is not valid; expected a '
            "https:// or http:// or s3:// or gs:// URL (scheme ftp:// is not allowed)",
        ),
        (
            model_annotations(source="s3://ml-models/m", s3_endpoint="s3://other/bucket"),
            'models.example.com/s3-endpoint: "s3://other/bucket" is not valid; expected the '
            "http(s) URL of an S3-compatible endpoint",
        ),
        (
            model_annotations(source="s3://ml-models/m", s3_endpoint="http://minio:9000/?a=b"),
            "expected the http(s) URL of an S3-compatible endpoint, without query",
        ),
        (
            model_annotations(source="s3://ml-models/m", s3_region="EU West"),
            'models.example.com/s3-region: "EU West" is not valid; expected an S3 region name',
        ),
    ],
)
def test_bad_object_store_annotations_are_refused_with_the_key(
    annotations: dict[str, str], expected: str
) -> None:
    assert expected in refusal(annotations)


def test_object_store_schemes_are_refused_unless_policy_allows_them() -> None:
    message = refusal(model_annotations(source="s3://ml-models/m.tar.zst"), Settings())
    assert message == (
        'models.example.com/source: "s3://ml-models/m.tar.zst" is not valid; expected a '
        "https:// URL (scheme s3:// is not allowed)"
    )


def test_allowed_host_patterns_name_buckets_with_their_scheme() -> None:
    settings = Settings(
        allowed_schemes=["https", "s3", "gs"], allowed_hosts=["*.example.com", "s3://team-*"]
    )
    assert patched(model_annotations(source="s3://team-llm/m.tar.zst"), settings)
    # A host pattern never admits a bucket of the same shape, nor another store's bucket.
    for url in ("s3://models.example.com/m", "gs://team-llm/m"):
        message = refusal(model_annotations(source=url), settings)
        assert "matches one of the allowed hosts *.example.com, s3://team-*" in message
    # And the s3-endpoint is a host like any other.
    message = refusal(
        model_annotations(source="s3://team-llm/m", s3_endpoint="https://minio.internal"),
        settings,
    )
    assert 'models.example.com/s3-endpoint: "https://minio.internal" is not valid' in message
