"""source-from, password-secret and env, on the pod the replicaset controller really submitted.

The captured Deployment-made pod (tests/data/admission/pod-llama-from-deployment.json) gets the
new annotations set here; everything else of the request is what kube-apiserver v1.36 sent.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.webhook.kube import apply_response, assert_valid_pod, load_review
from tests.webhook.restricted import restricted_violations
from webhook.core.review import mutate_review, validate_review
from webhook.core.settings import Settings

PREFIX = "models.example.com/"
CAPTURED = "pod-llama-from-deployment.json"
DEFAULTS = Settings()
DIGEST_REQUIRED = Settings(require_sha256=True)
# The captured pod's own source annotations, which source-from replaces.
WITHOUT_SOURCE: dict[str, str | None] = {"source": None, "sha256": None, "mirrors": None}


def captured(annotations: dict[str, str | None]) -> dict[str, Any]:
    """The captured review with model annotations set (None removes one)."""
    review = load_review(CAPTURED)
    current = review["request"]["object"]["metadata"]["annotations"]
    for key, value in annotations.items():
        current.pop(PREFIX + key, None)
        if value is not None:
            current[PREFIX + key] = value
    return review


def refusal(review: dict[str, Any], settings: Settings = DEFAULTS) -> str:
    response = mutate_review(review, settings).review["response"]
    assert response["allowed"] is False, response
    assert response["status"]["code"] == 400
    message: str = response["status"]["message"]
    return message


def admitted(
    review: dict[str, Any], settings: Settings = DEFAULTS
) -> tuple[dict[str, Any], dict[str, Any]]:
    response = mutate_review(review, settings).review["response"]
    assert response["allowed"] is True, response
    pod = apply_response(review["request"]["object"], response)
    assert_valid_pod(pod)
    return pod, response


def container(pod: dict[str, Any], name: str) -> dict[str, Any]:
    spec = pod["spec"]
    (found,) = [c for c in spec.get("initContainers", []) + spec["containers"] if c["name"] == name]
    return dict(found)


# --- refusals -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "model-zip",  # no key
        "model-zip/pass/word",  # two slashes
        "/password",
        "model-zip/",
        "Model_Zip/password",  # not a DNS subdomain
        "model-zip./password",
        "model-zip/pass word",
        "model-zip/pass:word",
        "model-zip/..",
        "model-zip/..hidden",
        "model-zip/.",
        "model-zip/" + "k" * 254,
        "m" * 254 + "/password",
    ],
)
def test_a_malformed_password_secret_is_refused_naming_the_key(value: str) -> None:
    message = refusal(captured({"password-secret": value}))
    assert message.startswith(f"{PREFIX}password-secret: ")
    assert "NAME/KEY" in message


def test_the_longest_valid_password_secret_is_accepted() -> None:
    name, key = "m" * 253, "k" * 253
    pod, _ = admitted(captured({"password-secret": f"{name}/{key}"}))
    (var,) = [v for v in container(pod, "model-fetch")["env"] if "secretKeyRef" in v["valueFrom"]]
    assert var["valueFrom"]["secretKeyRef"] == {"name": name, "key": key}


@pytest.mark.parametrize("value", ["LLM-config", "llm_config", "llm config", "-llm", "a" * 254])
def test_a_malformed_source_from_name_is_refused_naming_the_key(value: str) -> None:
    message = refusal(captured({**WITHOUT_SOURCE, "source-from": value}))
    assert message.startswith(f"{PREFIX}source-from: ")
    assert "ConfigMap" in message


@pytest.mark.parametrize("other", ["source", "sha256", "mirrors"])
def test_source_from_with_a_source_key_in_the_annotations_is_refused_naming_both(
    other: str,
) -> None:
    # The captured pod carries source, sha256 and mirrors: keep only `other` of them.
    kept = {key: None for key in WITHOUT_SOURCE if key != other}
    message = refusal(captured({**kept, "source-from": "llm-config"}))
    assert message == (
        f"{PREFIX}{other} and {PREFIX}source-from are both set; expected one place for the "
        'source: either the annotations, or ConfigMap "llm-config" with keys source and '
        "optionally sha256 and mirrors"
    )


def test_source_with_source_from_is_refused_alongside_every_other_problem() -> None:
    message = refusal(captured({"source-from": "llm-config"}))
    for key in ("source", "sha256", "mirrors"):
        assert f"{PREFIX}{key} and {PREFIX}source-from are both set" in message


def test_source_from_hands_the_host_and_scheme_policy_to_the_fetcher() -> None:
    policy = Settings(allowed_schemes=["https", "s3"], allowed_hosts=["*.example.com", "s3://ml-*"])
    pod, _ = admitted(captured({**WITHOUT_SOURCE, "source-from": "llm-config"}), policy)
    args = container(pod, "model-fetch")["args"]
    assert args[2:6] == [
        "--allowed-schemes",
        "https,s3",
        "--allowed-hosts",
        "*.example.com,s3://ml-*",
    ]


@pytest.mark.parametrize("value", ["1MODEL", "MODEL-DIR", "MODEL DIR", "MODEL.DIR", "$(X)", "é"])
def test_an_invalid_env_name_is_refused_naming_the_key(value: str) -> None:
    message = refusal(captured({"env": value}))
    assert message.startswith(f"{PREFIX}env: ")
    assert "environment variable name" in message


def test_an_empty_env_name_is_refused() -> None:
    assert refusal(captured({"env": "  "})).startswith(f"{PREFIX}env: ")


@pytest.mark.parametrize(
    "existing",
    [
        {"name": "MODEL_DIR", "value": "/srv/models"},
        {"name": "MODEL_DIR", "valueFrom": {"configMapKeyRef": {"name": "app", "key": "dir"}}},
        {"name": "MODEL_DIR", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
    ],
    ids=["value", "configMapKeyRef", "fieldRef"],
)
def test_an_env_name_the_container_already_sets_is_refused(existing: dict[str, Any]) -> None:
    review = captured({"env": "MODEL_DIR"})
    metrics = review["request"]["object"]["spec"]["containers"][1]
    assert metrics["name"] == "metrics"
    metrics["env"] = [{"name": "OTHER", "value": "x"}, existing]
    message = refusal(review)
    assert message == (
        f'{PREFIX}env: "MODEL_DIR" is not valid; expected a variable that container '
        "'metrics' does not set already (its env sets MODEL_DIR)"
    )


def test_a_collision_outside_the_target_containers_is_no_collision() -> None:
    review = captured({"env": "MODEL_DIR", "containers": "server"})
    review["request"]["object"]["spec"]["containers"][1]["env"] = [
        {"name": "MODEL_DIR", "value": "/elsewhere"}
    ]
    pod, _ = admitted(review)
    assert container(pod, "server")["env"] == [{"name": "MODEL_DIR", "value": "/models"}]
    assert container(pod, "metrics")["env"] == [{"name": "MODEL_DIR", "value": "/elsewhere"}]


def test_two_models_may_not_set_the_same_env_name_in_one_container() -> None:
    review = captured(
        {
            "env": "MODEL_DIR",
            "tokenizer.source": "https://models.example.com/tokenizer.tar.zst",
            "tokenizer.sha256": "cd" * 32,
            "tokenizer.env": "MODEL_DIR",
        }
    )
    message = refusal(review)
    assert message.startswith(f'{PREFIX}tokenizer.env: "MODEL_DIR" is not valid')
    assert "another model's env annotation sets MODEL_DIR" in message


def test_password_secret_for_a_file_stored_as_is_is_refused() -> None:
    message = refusal(captured({"password-secret": "model-zip/password", "extract": "none"}))
    assert message.startswith(f"{PREFIX}password-secret: ")
    assert "extract none" in message


def test_validate_refuses_a_workload_with_the_same_message_as_its_pods() -> None:
    workload = load_review("workload-deployment-create.json")
    template = workload["request"]["object"]["spec"]["template"]
    template["metadata"]["annotations"][PREFIX + "password-secret"] = "model-zip"
    response = validate_review(workload, DEFAULTS).review["response"]
    assert response["allowed"] is False
    assert response["status"]["code"] == 400
    assert response["status"]["message"].startswith(f"{PREFIX}password-secret: ")


# --- what is injected -----------------------------------------------------------------------


def test_source_from_gives_the_fetch_container_alone_configmap_env_and_references() -> None:
    pod, response = admitted(captured({**WITHOUT_SOURCE, "source-from": "llm-config"}))
    fetch = container(pod, "model-fetch")
    assert fetch["env"] == [
        {
            "name": "MODEL_FETCH_SOURCE",
            "valueFrom": {"configMapKeyRef": {"name": "llm-config", "key": "source"}},
        },
        {
            "name": "MODEL_FETCH_SHA256",
            "valueFrom": {
                "configMapKeyRef": {"name": "llm-config", "key": "sha256", "optional": True}
            },
        },
        {
            "name": "MODEL_FETCH_MIRRORS",
            "valueFrom": {
                "configMapKeyRef": {"name": "llm-config", "key": "mirrors", "optional": True}
            },
        },
    ]
    assert fetch["args"] == [
        "--source-from-configmap",
        "llm-config",
        "--allowed-schemes",
        "https",
        "--allowed-hosts",
        "*",
        "--sha256=$(MODEL_FETCH_SHA256)",
        "--mirror=$(MODEL_FETCH_MIRRORS)",
        "-o",
        "/models",
        "--max-bandwidth",
        "200MB/s",
        "--max-disk-buffer",
        "1GiB",
        "--format",
        "auto",
        "--log-format",
        "json",
        "--",
        "$(MODEL_FETCH_SOURCE)",
    ]
    for app in pod["spec"]["containers"]:
        assert "env" not in app
        assert "llm-config" not in str(app)
    assert container(pod, "migrate").get("env") == load_review(CAPTURED)["request"]["object"][
        "spec"
    ]["initContainers"][0].get("env")
    assert restricted_violations(pod, "model-fetch") == []
    # The webhook cannot tell whether the ConfigMap has a digest: no "sha256 is not set" guess.
    assert "warnings" not in response


def test_a_required_digest_makes_the_configmap_sha256_key_required() -> None:
    pod, _ = admitted(captured({**WITHOUT_SOURCE, "source-from": "llm-config"}), DIGEST_REQUIRED)
    env = {var["name"]: var["valueFrom"]["configMapKeyRef"] for var in pod_env(pod)}
    # The kubelet refuses to start the container without the key ("couldn't find key sha256
    # in ConfigMap"): the policy holds although the webhook never reads the ConfigMap.
    assert env["MODEL_FETCH_SHA256"] == {"name": "llm-config", "key": "sha256"}
    assert env["MODEL_FETCH_SOURCE"] == {"name": "llm-config", "key": "source"}
    assert env["MODEL_FETCH_MIRRORS"]["optional"] is True


def pod_env(pod: dict[str, Any]) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = container(pod, "model-fetch")["env"]
    return env


def test_a_named_model_from_a_configmap_gets_its_own_references() -> None:
    pod, _ = admitted(
        captured({"tokenizer.source-from": "tokenizer-config", "tokenizer.mount-path": "/tok"})
    )
    fetch = container(pod, "model-fetch-tokenizer")
    assert {var["valueFrom"]["configMapKeyRef"]["name"] for var in fetch["env"]} == {
        "tokenizer-config"
    }
    assert fetch["args"][:2] == ["--source-from-configmap", "tokenizer-config"]
    assert fetch["args"][-2:] == ["--", "$(MODEL_FETCH_SOURCE)"]
    assert "env" not in container(pod, "model-fetch")  # the default model is unchanged
    assert restricted_violations(pod, "model-fetch-tokenizer") == []


def test_password_secret_reaches_the_fetch_container_alone_by_reference() -> None:
    pod, _ = admitted(captured({"password-secret": "model-zip/password"}))
    fetch = container(pod, "model-fetch")
    assert fetch["env"] == [
        {
            "name": "MODEL_FETCH_PASSWORD",
            "valueFrom": {"secretKeyRef": {"name": "model-zip", "key": "password"}},
        }
    ]
    args = fetch["args"]
    assert args[-4:] == ["--password-from", "env:MODEL_FETCH_PASSWORD", "--log-format", "json"]
    for app in pod["spec"]["containers"]:
        assert "env" not in app and "envFrom" not in app
        assert "model-zip" not in str(app)
    assert restricted_violations(pod, "model-fetch") == []


def test_env_points_every_mounted_container_at_the_mount() -> None:
    review = captured({"env": "MODEL_DIR", "mount-path": "/opt/llm"})
    server = review["request"]["object"]["spec"]["containers"][0]
    server["env"] = [{"name": "PORT", "value": "8000"}]
    pod, _ = admitted(review)
    assert container(pod, "server")["env"] == [
        {"name": "PORT", "value": "8000"},
        {"name": "MODEL_DIR", "value": "/opt/llm"},
    ]
    assert container(pod, "metrics")["env"] == [{"name": "MODEL_DIR", "value": "/opt/llm"}]
    assert "env" not in container(pod, "model-fetch")
    assert container(pod, "migrate").get("env") == copy.deepcopy(
        load_review(CAPTURED)["request"]["object"]["spec"]["initContainers"][0].get("env")
    )
    assert restricted_violations(pod, "model-fetch") == []


def test_env_reaches_only_the_containers_that_get_the_mount() -> None:
    pod, _ = admitted(captured({"env": "MODEL_DIR", "containers": "metrics"}))
    assert container(pod, "metrics")["env"] == [{"name": "MODEL_DIR", "value": "/models"}]
    assert "env" not in container(pod, "server")


def test_all_three_together_on_the_captured_pod() -> None:
    pod, _ = admitted(
        captured(
            {
                **WITHOUT_SOURCE,
                "source-from": "llm-config",
                "password-secret": "model-zip/password",
                "env": "MODEL_DIR",
            }
        ),
        DIGEST_REQUIRED,
    )
    names = [var["name"] for var in pod_env(pod)]
    assert names == [
        "MODEL_FETCH_SOURCE",
        "MODEL_FETCH_SHA256",
        "MODEL_FETCH_MIRRORS",
        "MODEL_FETCH_PASSWORD",
    ]
    for app in pod["spec"]["containers"]:
        assert app["env"] == [{"name": "MODEL_DIR", "value": "/models"}]
    assert restricted_violations(pod, "model-fetch") == []
    again = copy.deepcopy(load_review(CAPTURED))
    again["request"]["object"] = pod
    assert mutate_review(again, DIGEST_REQUIRED).decision == "unchanged"


def test_a_dollar_in_an_annotation_reaches_the_fetcher_unexpanded() -> None:
    source = "https://models.example.com/$(MODEL_FETCH_PASSWORD)/m$$.tar.zst"
    pod, _ = admitted(
        captured({"source": source, "password-secret": "model-zip/password", "env": "MODEL_DIR"})
    )
    args = container(pod, "model-fetch")["args"]
    # `$$` is the kubelet's escape for `$`: the Secret is never expanded into the URL.
    assert args[0] == "https://models.example.com/$$(MODEL_FETCH_PASSWORD)/m$$$$.tar.zst"


def test_source_from_with_credentials_warns_what_the_secret_still_does() -> None:
    _, response = admitted(
        captured({**WITHOUT_SOURCE, "source-from": "llm-config", "credentials-secret": "hf"})
    )
    (warning,) = response["warnings"]
    assert warning.startswith(f"{PREFIX}credentials-secret with {PREFIX}source-from: ")
