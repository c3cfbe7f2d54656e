"""Apply-time warnings for annotations that would be silently ignored, over the real app.

The captured workload reviews are sent to /validate with their template's model annotations
moved to the workload's own metadata, or with the prefix misspelt: the answer is allowed, with a
warning (kubectl prints `warnings`) that says where the keys belong or which key was meant.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.webhook.asgi import Client
from tests.webhook.kube import decode_patch, fixture_names, load_review, make_pod, review_for
from webhook.app import create_app
from webhook.cli import main
from webhook.core.hints import edit_distance, is_near_miss
from webhook.core.settings import Settings
from webhook.core.workloads import TEMPLATE_PATHS

PREFIX = "models.example.com/"
WORKLOADS = fixture_names("workload-")
# (An upper-case prefix never arrives: the apiserver requires a lower-case DNS subdomain.)
TYPOS = ["model.example.com", "models.example.org", "models.exampel.com", "models.example.cm"]


@pytest.fixture(scope="module")
def client() -> Client:
    return Client(create_app(Settings(allowed_schemes=["https", "s3"])))


def template_of(review: dict[str, Any], side: str = "object") -> dict[str, Any]:
    """The pod template inside the request's object (or oldObject), itself, not a copy."""
    request = review["request"]
    node: dict[str, Any] = request[side]
    for step in TEMPLATE_PATHS[(request["kind"]["group"], request["kind"]["kind"])]:
        node = node[step]
    return node


def sides(review: dict[str, Any]) -> list[str]:
    return [side for side in ("object", "oldObject") if review["request"].get(side)]


def template_path(review: dict[str, Any]) -> str:
    kind = review["request"]["kind"]
    return ".".join((*TEMPLATE_PATHS[(kind["group"], kind["kind"])], "metadata", "annotations"))


def model_keys(annotations: dict[str, str]) -> dict[str, str]:
    return {key: value for key, value in annotations.items() if key.startswith(PREFIX)}


def validate(client: Client, review: dict[str, Any]) -> dict[str, Any]:
    reply = client.post("/validate", json=review)
    assert reply.status_code == 200
    response: dict[str, Any] = reply.json()["response"]
    return response


def test_every_captured_workload_carries_model_keys() -> None:
    assert len(WORKLOADS) >= 6
    for name in WORKLOADS:
        review = load_review(name)
        assert model_keys(template_of(review)["metadata"]["annotations"]), name


@pytest.mark.parametrize("name", WORKLOADS)
def test_keys_on_the_workload_metadata_are_allowed_with_a_warning(
    client: Client, name: str
) -> None:
    review = load_review(name)
    moved = model_keys(template_of(review)["metadata"]["annotations"])
    for side in sides(review):
        annotations = template_of(review, side)["metadata"]["annotations"]
        for key in moved:
            del annotations[key]
        metadata = review["request"][side]["metadata"]
        metadata["annotations"] = {**(metadata.get("annotations") or {}), **moved}
    response = validate(client, review)
    assert response["allowed"] is True, response
    kind = review["request"]["kind"]["kind"]
    (warning,) = [w for w in response["warnings"] if "own metadata.annotations" in w]
    for key in moved:
        assert key in warning
    assert f"on the {kind}'s own metadata.annotations" in warning
    assert warning.endswith(f"model annotations belong under {template_path(review)}")


def test_keys_on_both_still_warn_about_the_misplaced_ones(client: Client) -> None:
    review = load_review("workload-deployment-create.json")
    review["request"]["object"]["metadata"]["annotations"][f"{PREFIX}read-only"] = "false"
    response = validate(client, review)
    assert response["allowed"] is True
    assert response["warnings"] == [
        f"{PREFIX}read-only is on the Deployment's own metadata.annotations, where the webhook "
        "never reads it; model annotations belong under spec.template.metadata.annotations"
    ]


@pytest.mark.parametrize("typo", TYPOS)
@pytest.mark.parametrize("name", WORKLOADS)
def test_a_near_miss_prefix_on_a_template_is_allowed_with_the_intended_key(
    client: Client, name: str, typo: str
) -> None:
    review = load_review(name)
    for side in sides(review):
        metadata = template_of(review, side)["metadata"]
        metadata["annotations"] = {
            key.replace(PREFIX, f"{typo}/", 1): value
            for key, value in metadata["annotations"].items()
        }
    response = validate(client, review)
    assert response["allowed"] is True, response
    assert (
        f"{typo}/source: the prefix {typo} is not models.example.com, so this annotation has "
        f"no effect; did you mean {PREFIX}source?"
    ) in response["warnings"]
    assert not any("prometheus.io" in warning for warning in response["warnings"])


@pytest.mark.parametrize("typo", TYPOS)
def test_a_near_miss_prefix_on_a_pod_at_mutate_is_a_warning_not_a_refusal(
    client: Client, typo: str
) -> None:
    pod = make_pod(
        {f"{typo}/source": "https://models.example.com/m", f"{typo}/tokenizer.sha256": "x"}
    )
    reply = client.post("/mutate", json=review_for(pod))
    response = reply.json()["response"]
    assert response["allowed"] is True
    assert decode_patch(response) == []
    assert response["warnings"] == [
        f"{typo}/source: the prefix {typo} is not models.example.com, so this annotation has no "
        f"effect; did you mean {PREFIX}source?",
        f"{typo}/tokenizer.sha256: the prefix {typo} is not models.example.com, so this "
        f"annotation has no effect; did you mean {PREFIX}tokenizer.sha256?",
    ]


@pytest.mark.parametrize(
    "key",
    [
        "prometheus.io/scrape",
        "kubectl.kubernetes.io/last-applied-configuration",
        "modelz.exampel.com/source",  # three edits
        "models.examples.org/source",  # two labels differ
        "models.somewhere.com/source",  # one label, far off
        "example.com/source",
        "models.example.com.source",  # no prefix at all
    ],
)
def test_other_annotations_get_no_warning(client: Client, key: str) -> None:
    reply = client.post("/mutate", json=review_for(make_pod({key: "x"})))
    assert reply.json()["response"] == {"uid": review_for({})["request"]["uid"], "allowed": True}


def test_near_misses() -> None:
    prefix = "models.example.com"
    for domain in ("model.example.com", "models.exampel.com", "models.example.org"):
        assert is_near_miss(domain, prefix), domain
    for domain in (prefix, "models.example.co.uk", "team.example.com", "kubernetes.io"):
        assert not is_near_miss(domain, prefix), domain


def test_edit_distance_is_levenshtein() -> None:
    assert edit_distance("models.example.com", "models.example.com", 2) == 0
    assert edit_distance("model.example.com", "models.example.com", 2) == 1
    assert edit_distance("models.exampel.com", "models.example.com", 2) == 2
    assert edit_distance("kitten", "sitting", 5) == 3
    assert edit_distance("kitten", "sitting", 2) == 3  # past the limit: limit + 1
    assert edit_distance("", "abc", 5) == 3


def test_render_prints_the_same_warnings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MODEL_INJECTOR_ANNOTATION_PREFIX", raising=False)
    review = load_review("workload-job-create.json")
    job = review["request"]["object"]
    job["metadata"]["annotations"] = {f"{PREFIX}source": "https://models.example.com/m"}
    path = tmp_path / "job.json"
    path.write_text(json.dumps(job))
    assert main(["render", "-f", str(path)]) == 0
    err = capsys.readouterr().err
    assert (
        f"warning: {PREFIX}source is on the Job's own metadata.annotations, where the webhook "
        "never reads it; model annotations belong under spec.template.metadata.annotations"
    ) in err
