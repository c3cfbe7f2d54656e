"""The simulated kubelet's env resolution and `$(VAR)` expansion, held to the Kubernetes rules.

The expansion cases are those of kubernetes third_party/forked/golang/expansion/expand_test.go;
the env cases are what pkg/kubelet/kubelet_pods.go makeEnvironmentVariables does with optional
and required ConfigMap and Secret key references.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.support.kubelet import ContainerConfigError, Kubelet, expand, host_image
from webhook.core.fetchcontainer import literal

ENV = {
    "VAR_A": "A",
    "VAR_B": "B",
    "VAR_C": "C",
    "VAR_REF": "$(VAR_A)",
    "VAR_EMPTY": "",
    "BIG_MONEY": "$$$",
}


@pytest.mark.parametrize(
    ("given_value", "expected"),
    [
        ("$(VAR_A)", "A"),
        ("___$(VAR_B)___", "___B___"),
        ("$(VAR_A)-$(VAR_A)", "A-A"),
        ("$(VAR_A)-1", "A-1"),
        ("$(VAR_A)_$(VAR_B)_$(VAR_C)", "A_B_C"),
        ("$$(VAR_B)_$(VAR_A)", "$(VAR_B)_A"),
        ("$$(VAR_A)", "$(VAR_A)"),
        ("$$$$(VAR_A)", "$$(VAR_A)"),
        ("$$$(VAR_A)", "$A"),
        ("foo$$bar", "foo$bar"),
        ("$(VAR_DNE)", "$(VAR_DNE)"),
        ("$(VAR_EMPTY)", ""),
        ("$(VAR_REF)", "$(VAR_A)"),  # a value is not expanded again
        ("$(BIG_MONEY)", "$$$"),
        ("$$$$$$(BIG_MONEY)", "$$$(BIG_MONEY)"),
        ("$(foo$$var)", "$(foo$$var)"),  # the name runs to the first ')', escapes and all
        ("$(VAR_A$(VAR_B))", "$(VAR_A$(VAR_B))"),
        ("$(", "$("),
        ("$(VAR_A", "$(VAR_A"),
        ("$(VAR_A)$(VAR_B", "A$(VAR_B"),
        ("$()", "$()"),
        ("$VAR_A", "$VAR_A"),
        ("$", "$"),
        ("VAR_A$", "VAR_A$"),
        ("$$", "$"),
        ("$$$", "$$"),
        ("$(VAR_A)$", "A$"),
        ("--sha256=$(VAR_A)", "--sha256=A"),
        ("", ""),
    ],
)
def test_expansion_follows_the_kubernetes_rules(given_value: str, expected: str) -> None:
    assert expand(given_value, ENV) == expected


@given(
    st.text(alphabet="$()AB_ x", max_size=30),
    st.dictionaries(st.sampled_from(["A", "B", "A_B", "x"]), st.text(max_size=5)),
)
def test_a_literal_escaped_by_the_webhook_reaches_the_process_unchanged(
    value: str, env: dict[str, str]
) -> None:
    assert expand(literal(value), env) == value


def pod_with(container: dict[str, Any]) -> dict[str, Any]:
    return {
        "metadata": {"generateName": "llm-", "namespace": "ml"},
        "spec": {"containers": [{"name": "c", "image": "img", **container}]},
    }


def kubelet(container: dict[str, Any], tmp_path: Path, **objects: Any) -> Kubelet:
    return Kubelet(pod_with(container), tmp_path, images={"img": host_image("img")}, **objects)


def ref(kind: str, name: str, key: str, **extra: bool) -> dict[str, Any]:
    return {"valueFrom": {kind: {"name": name, "key": key, **extra}}}


def test_an_optional_key_the_configmap_lacks_leaves_the_variable_undefined(
    tmp_path: Path,
) -> None:
    container = {
        "env": [
            {"name": "SOURCE", **ref("configMapKeyRef", "llm", "source")},
            {"name": "SHA256", **ref("configMapKeyRef", "llm", "sha256", optional=True)},
            {"name": "GONE", **ref("configMapKeyRef", "nowhere", "x", optional=True)},
            {"name": "PASSWORD", **ref("secretKeyRef", "zip", "password")},
        ],
        "command": ["fetch", "$(SOURCE)", "--sha256=$(SHA256)", "$(GONE)", "$$(SOURCE)"],
    }
    node = kubelet(
        container,
        tmp_path,
        config_maps={"llm": {"source": "https://h/m"}},
        secrets={"zip": {"password": "p"}},
    )
    declared = node.declared_environment(node.container("c"))
    assert declared == {"SOURCE": "https://h/m", "PASSWORD": "p"}
    image = host_image("img")
    assert node.argv(node.container("c"), image, declared) == [
        "fetch",
        "https://h/m",
        "--sha256=$(SHA256)",
        "$(GONE)",
        "$(SOURCE)",
    ]


def test_args_refer_to_the_declared_env_only_not_the_image_env(tmp_path: Path) -> None:
    node = kubelet({"command": ["run", "$(PATH)", "$(HOSTNAME)"]}, tmp_path)
    container = node.container("c")
    image = host_image("img")
    assert node.argv(container, image, node.declared_environment(container)) == [
        "run",
        "$(PATH)",
        "$(HOSTNAME)",
    ]


@pytest.mark.parametrize(
    ("env", "reason"),
    [
        (ref("configMapKeyRef", "llm", "sha256"), "couldn't find key sha256 in ConfigMap ml/llm"),
        (ref("configMapKeyRef", "other", "source"), 'configmap "other" not found'),
        (ref("secretKeyRef", "zip", "pass"), "couldn't find key pass in Secret ml/zip"),
        (ref("secretKeyRef", "nope", "pass"), 'secret "nope" not found'),
    ],
)
def test_a_required_reference_that_cannot_be_resolved_fails_the_container(
    tmp_path: Path, env: dict[str, Any], reason: str
) -> None:
    node = kubelet(
        {"env": [{"name": "X", **env}], "command": ["true"]},
        tmp_path,
        config_maps={"llm": {"source": "https://h/m"}},
        secrets={"zip": {"password": "p"}},
    )
    with pytest.raises(ContainerConfigError, match=reason):
        node.declared_environment(node.container("c"))


def test_env_values_expand_earlier_variables_only(tmp_path: Path) -> None:
    node = kubelet(
        {
            "env": [
                {"name": "LATER_REF", "value": "$(B)"},
                {"name": "B", "value": "b"},
                {"name": "BOTH", "value": "$(B)-$$(B)-$(LATER_REF)"},
            ],
            "command": ["true"],
        },
        tmp_path,
    )
    assert node.declared_environment(node.container("c")) == {
        "LATER_REF": "$(B)",
        "B": "b",
        "BOTH": "b-$(B)-$(B)",
    }
