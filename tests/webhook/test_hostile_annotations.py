"""Hostile annotation values, through the real app over ASGI: whitespace, and secrets in URLs.

Every key the parser knows is tried, for the default model and for a named one: the value a YAML
`|` block gives (a trailing newline), CRLF, leading spaces and tabs must give exactly the patch
the clean value gives, at /mutate, and the same answer at /validate; an interior newline must be
refused by both, naming the key. No secret a URL carries may come back in a refusal, a warning,
a log line, /metrics or `model-webhook render`.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from tests.webhook.asgi import Client
from tests.webhook.kube import apply_response, decode_patch, load_review, make_pod, review_for
from webhook.app import create_app
from webhook.cli import main
from webhook.core.annotations import MODEL_KEYS
from webhook.core.redact import MASK, redact
from webhook.core.settings import Settings
from webhook.logs import JsonFormatter

PREFIX = "models.example.com/"
SETTINGS = Settings(allowed_schemes=["https", "http", "s3"])
HTTPS_SOURCE = "https://models.example.com/m.tar.zst"
S3_SOURCE = "s3://ml-models/m.tar.zst"

# key -> (a valid value, the other keys it needs; None: a key it excludes)
VALID: dict[str, tuple[str, dict[str, str | None]]] = {
    "source": (HTTPS_SOURCE, {}),
    "sha256": ("ab" * 32, {}),
    "mirrors": ("https://mirror.example.com/m.tar.zst, https://b.example.com/m.tar.zst", {}),
    "mount-path": ("/data/m", {}),
    "containers": ("app", {}),
    "read-only": ("false", {}),
    "volume": ("ephemeral", {}),
    "pvc-name": ("model-store", {"volume": "pvc"}),
    "storage-class": ("standard-rwo", {"volume": "ephemeral"}),
    "size-limit": ("5Gi", {}),
    "extract": ("none", {}),
    "max-bandwidth": ("100MB/s", {}),
    "max-disk-buffer": ("256MiB", {}),
    "ca-bundle": ("origin-ca", {}),
    "credentials-secret": ("hf-token", {}),
    "s3-endpoint": ("http://minio.storage.svc:9000", {"source": S3_SOURCE}),
    "s3-region": ("eu-west-1", {"source": S3_SOURCE}),
    "cpu-request": ("200m", {}),
    "cpu-limit": ("2", {}),
    "memory-request": ("256Mi", {}),
    "memory-limit": ("1Gi", {}),
    "init-first": ("true", {}),
    "source-from": ("llm-config", {"source": None, "sha256": None}),
    "password-secret": ("model-zip/password", {}),
    "env": ("MODEL_DIR", {}),
}
SURROUNDINGS = {
    "trailing-newline": ("", "\n"),
    "crlf": ("", "\r\n"),
    "leading-spaces": ("   ", ""),
    "tabs": ("\t", "\t"),
    "folded-block": ("  ", " \n"),
}
SCOPES = {"default": "", "named": "tokenizer."}


@pytest.fixture(scope="module")
def client() -> Client:
    return Client(create_app(SETTINGS))


def annotations_for(scope: str, key: str, value: str) -> dict[str, str]:
    _, needs = VALID[key]
    keys = {"source": HTTPS_SOURCE, "sha256": "cd" * 32, **needs, key: value}
    return {f"{PREFIX}{scope}{name}": text for name, text in keys.items() if text is not None}


def deployment_review(template_annotations: dict[str, str] | None = None) -> dict[str, Any]:
    """The captured Deployment CREATE with its template's model annotations replaced."""
    review = load_review("workload-deployment-create.json")
    template = review["request"]["object"]["spec"]["template"]
    kept = {k: v for k, v in template["metadata"]["annotations"].items() if PREFIX not in k}
    template["metadata"]["annotations"] = {**kept, **(template_annotations or {})}
    template["spec"]["containers"][0]["name"] = "app"
    return review


def mutate(client: Client, annotations: dict[str, str]) -> dict[str, Any]:
    reply = client.post("/mutate", json=review_for(make_pod(annotations)))
    assert reply.status_code == 200
    response: dict[str, Any] = reply.json()["response"]
    return response


def validate(client: Client, annotations: dict[str, str]) -> dict[str, Any]:
    reply = client.post("/validate", json=deployment_review(annotations))
    assert reply.status_code == 200
    response: dict[str, Any] = reply.json()["response"]
    return response


def test_the_table_covers_every_key_the_parser_knows() -> None:
    assert set(VALID) == set(MODEL_KEYS)


@pytest.mark.parametrize("scope", SCOPES.values(), ids=SCOPES.keys())
@pytest.mark.parametrize("around", SURROUNDINGS.values(), ids=SURROUNDINGS.keys())
@pytest.mark.parametrize("key", MODEL_KEYS)
def test_surrounding_whitespace_is_dropped_for_every_key(
    client: Client, key: str, around: tuple[str, str], scope: str
) -> None:
    valid = VALID[key][0]
    clean = mutate(client, annotations_for(scope, key, valid))
    assert clean["allowed"] is True, clean
    spaced = mutate(client, annotations_for(scope, key, around[0] + valid + around[1]))
    assert spaced["allowed"] is True, spaced
    assert decode_patch(spaced) == decode_patch(clean)
    assert "\n" not in json.dumps(decode_patch(spaced)).replace("\\n", "")
    assert spaced.get("warnings") == clean.get("warnings")
    validated = validate(client, annotations_for(scope, key, around[0] + valid + around[1]))
    assert validated["allowed"] is True, validated
    assert validated.get("warnings") == clean.get("warnings")


@pytest.mark.parametrize("scope", SCOPES.values(), ids=SCOPES.keys())
@pytest.mark.parametrize("key", MODEL_KEYS)
def test_an_interior_newline_is_refused_naming_the_key(
    client: Client, key: str, scope: str
) -> None:
    valid = VALID[key][0]
    broken = f"{valid}\n{valid}\n"
    full_key = f"{PREFIX}{scope}{key}"
    for response in (
        mutate(client, annotations_for(scope, key, broken)),
        validate(client, annotations_for(scope, key, broken)),
    ):
        assert response["allowed"] is False
        assert response["status"]["code"] == 400
        message = response["status"]["message"]
        assert f"{full_key}: " in message
        assert "interior newline" in message


def test_a_sha256_from_a_yaml_block_reaches_the_fetcher_clean(client: Client) -> None:
    digest = "ab" * 32
    pod = make_pod({f"{PREFIX}source": HTTPS_SOURCE, f"{PREFIX}sha256": digest + "\n"})
    reply = client.post("/mutate", json=review_for(pod))
    patched = apply_response(pod, reply.json()["response"])
    (fetch,) = patched["spec"]["initContainers"]
    assert fetch["args"][fetch["args"].index("--sha256") + 1] == digest


# --- secrets in URLs ------------------------------------------------------------------------

SECRET = "Zq9-hunter2-Secret"
# (annotation key, value): several places and shapes a secret takes in a URL.
SECRET_SHAPES = {
    "userinfo": ("source", f"https://alice:{SECRET}@models.example.com/m.tar.zst"),
    "user-only-token": ("source", f"https://{SECRET}@models.example.com/m.tar.zst"),
    "encoded-password": ("source", f"https://u:p%40{SECRET}@models.example.com/m"),
    "slash-in-password": ("source", f"https://u:{SECRET}/x@models.example.com/m"),
    "space-in-password": ("source", f"https://u:a {SECRET}@models.example.com/m"),
    "s3-userinfo": ("source", f"s3://AKIA:{SECRET}@ml-models/m.tar.zst"),
    "amz-signature": (
        "source",
        f"https://b.s3.amazonaws.com/m?X-Amz-Date=20250101T000000Z&X-Amz-Signature={SECRET}",
    ),
    "amz-security-token": ("source", f"https://h.example.com/m?X-Amz-Security-Token={SECRET}"),
    "goog-signature": ("source", f"https://storage.googleapis.com/b/m?X-Goog-Signature={SECRET}"),
    "sas-sig": ("source", f"https://acct.blob.core.windows.net/c/m?sv=2022&sig={SECRET}"),
    "token": ("source", f"https://h.example.com/m?token={SECRET}"),
    "access-token-fragment": ("source", f"https://h.example.com/m#access_token={SECRET}"),
    "api-key": ("source", f"https://h.example.com/m?key={SECRET}&x=1"),
    "mirror-userinfo": (
        "mirrors",
        f"https://ok.example.com/m,https://bob:{SECRET}@mirror.example.com/m",
    ),
    "mirror-signature": ("mirrors", f"https://mirror.example.com/m?signature={SECRET}"),
    "mirror-empty-entry": ("mirrors", f"https://u:{SECRET}@mirror.example.com/m,,"),
    "named-model": ("tokenizer.source", f"https://u:{SECRET}@models.example.com/t"),
    "unknown-key": ("sourse", f"https://u:{SECRET}@models.example.com/m"),
    "s3-endpoint": ("s3-endpoint", f"http://minio:{SECRET}@minio.storage.svc:9000"),
    # A mistyped separator: the refusal quotes exactly such a value.
    "one-slash": ("source", f"https:/alice:{SECRET}@models.example.com/m"),
    "no-colon": ("source", f"https//alice:{SECRET}@models.example.com/m"),
    "no-slashes": ("source", f"https:alice:{SECRET}@models.example.com/m"),
    "backslashes": ("source", f"https:\\\\alice:{SECRET}@models.example.com/m"),
    "mirror-one-slash": (
        "mirrors",
        f"https://ok.example.com/m,https:/bob:{SECRET}@mirror.example.com/m",
    ),
    # A parameter name percent-encoded is the same name to the origin.
    "encoded-token-name": ("source", f"https://h.example.com/m?%74oken={SECRET}"),
    "encoded-signature-name": (
        "source",
        f"https://b.s3.amazonaws.com/m?X-Amz-%53ignature={SECRET}",
    ),
    "twice-encoded-key-name": ("source", f"https://h.example.com/m?api%255Fk%2565y={SECRET}"),
}


def secret_annotations(key: str, value: str) -> dict[str, str]:
    base = {"source": HTTPS_SOURCE, "sha256": "ab" * 32}
    if key == "s3-endpoint":
        base["source"] = S3_SOURCE
    return {f"{PREFIX}{name}": text for name, text in {**base, key: value}.items()}


def log_text(caplog: pytest.LogCaptureFixture) -> str:
    formatter = JsonFormatter()
    return "\n".join(formatter.format(record) for record in caplog.records)


@pytest.mark.parametrize(("key", "value"), SECRET_SHAPES.values(), ids=SECRET_SHAPES.keys())
def test_no_secret_in_refusal_log_or_metrics(
    key: str, value: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client = Client(create_app(SETTINGS))
    annotations = secret_annotations(key, value)
    pod_review = review_for(make_pod(annotations))
    replies = [
        client.post("/mutate", json=pod_review),
        client.post("/validate", json=deployment_review(annotations)),
    ]
    for reply in replies:
        assert reply.status_code == 200
        response = reply.json()["response"]
        assert response["allowed"] is False
        assert f"{PREFIX}{key}: " in response["status"]["message"]
        assert MASK in response["status"]["message"]
        assert SECRET not in reply.text
    lines = log_text(caplog)
    assert lines.count('"decision":"refused"') == 2
    assert SECRET not in lines
    assert SECRET not in client.get("/metrics").text


@pytest.mark.parametrize(("key", "value"), SECRET_SHAPES.values(), ids=SECRET_SHAPES.keys())
def test_no_secret_in_render_output(
    key: str,
    value: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MODEL_INJECTOR_ALLOWED_SCHEMES", "https,http,s3")
    review = deployment_review(secret_annotations(key, value))
    manifest = copy.deepcopy(review["request"]["object"])
    del manifest["metadata"]["annotations"]  # kubectl's last-applied copy is the user's own
    path = tmp_path / "deployment.json"
    path.write_text(json.dumps(manifest))
    assert main(["render", "-f", str(path)]) == 1
    captured = capsys.readouterr()
    assert captured.err.startswith(f"refused: {PREFIX}{key}: ")
    assert SECRET not in captured.out + captured.err


def test_the_refusal_says_why_a_url_with_credentials_is_refused(client: Client) -> None:
    message = mutate(client, secret_annotations(*SECRET_SHAPES["userinfo"]))["status"]["message"]
    assert message == (
        f'{PREFIX}source: "https://***@models.example.com/m.tar.zst" is not valid; expected a '
        "URL without user or password: it would be written into the pod spec in clear text; "
        "put the credentials in a Secret and name it in credentials-secret"
    )
    message = mutate(client, secret_annotations(*SECRET_SHAPES["amz-signature"]))["status"][
        "message"
    ]
    assert "X-Amz-Signature=***" in message
    assert "expected a URL without credentials in it (X-Amz-Signature)" in message


def test_a_secret_in_a_warning_is_redacted(client: Client) -> None:
    # A stray key without a source is only a warning; its value is never repeated, and the
    # warning path goes through the same redaction as every other text.
    response = mutate(client, {f"{PREFIX}mirrors": f"https://u:{SECRET}@m.example.com/m"})
    assert response["allowed"] is True
    assert response["warnings"]
    assert SECRET not in json.dumps(response)


_SECRET_TEXT = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc", "Zs", "Zl", "Zp")), min_size=4
).filter(lambda s: not set(s) & set("<>&#;") and "://" not in s)


@given(secret=_SECRET_TEXT)
def test_redact_hides_any_password_and_any_credential_parameter(secret: str) -> None:
    for template in (
        "https://user:{}@host.example.com/path",
        'models.example.com/source: "https://user:{}@host.example.com/p" is not valid',
        "https://host.example.com/p?a=1&X-Amz-Signature={}&b=2",
        "see https://host.example.com/p#access_token={}",
        "https:/user:{}@host.example.com/path",
        'models.example.com/source: "https//user:{}@host.example.com/p" is not valid',
        "https://host.example.com/p?%74oken={}",
    ):
        # A secret that is also part of the text around it ("http") cannot be told apart.
        assume(secret not in template.replace("{}", "\0"))
        text = template.replace("{}", secret)
        redacted = redact(text)
        assert secret not in redacted.replace(MASK, "\0"), (text, redacted)
        assert redact(redacted) == redacted


def test_redact_leaves_urls_without_secrets_alone() -> None:
    for text in (
        "https://models.example.com/llama.tar.zst",
        "https://internal-cache.models.svc.cluster.local:8443/m@v1?download=true",
        "s3://ml-models/m.tar.zst, gs://ml-models/m.tar.zst",
        "no url here: user:password@host",
    ):
        assert redact(text) == text
