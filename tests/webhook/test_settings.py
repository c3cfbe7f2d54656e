from __future__ import annotations

import json
from pathlib import Path

import pydantic
import pytest

from webhook.core.settings import Settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("MODEL_INJECTOR_"):
            monkeypatch.delenv(name)


def test_defaults_match_the_documented_contract() -> None:
    settings = Settings()
    assert settings.annotation_prefix == "models.example.com"
    assert settings.fetcher_image == "ghcr.io/example/model-fetcher:0.1.0"
    assert settings.fetcher_pull_policy == "IfNotPresent"
    assert settings.default_mount_path == "/models"
    assert settings.default_size_limit == "20Gi"
    assert settings.allowed_schemes == ["https"]
    assert settings.allowed_hosts == ["*"]
    assert settings.require_sha256 is False
    assert settings.run_as_user == 65532


def test_environment_variables_override_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODEL_INJECTOR_ALLOWED_SCHEMES", "https, HTTP")
    monkeypatch.setenv("MODEL_INJECTOR_ALLOWED_HOSTS", '["*.example.com", "cache.internal"]')
    monkeypatch.setenv("MODEL_INJECTOR_REQUIRE_SHA256", "true")
    monkeypatch.setenv("MODEL_INJECTOR_FETCHER_MEMORY_LIMIT", "2Gi")
    settings = Settings()
    assert settings.allowed_schemes == ["https", "http"]
    assert settings.allowed_hosts == ["*.example.com", "cache.internal"]
    assert settings.require_sha256 is True
    assert settings.fetcher_memory_limit == "2Gi"


def test_config_file_is_read_and_environment_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        "fetcher_image: registry.internal/fetcher:2\n"
        "MODEL_INJECTOR_DEFAULT_SIZE_LIMIT: 50Gi\n"
        "allowed_hosts: [models.example.com]\n"
    )
    monkeypatch.setenv("MODEL_INJECTOR_CONFIG_FILE", str(config))
    monkeypatch.setenv("MODEL_INJECTOR_FETCHER_IMAGE", "registry.internal/fetcher:3")
    settings = Settings()
    assert settings.fetcher_image == "registry.internal/fetcher:3"
    assert settings.default_size_limit == "50Gi"
    assert settings.allowed_hosts == ["models.example.com"]


def test_config_file_may_be_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"run_as_user": 1001, "allowed_schemes": "https,http"}))
    monkeypatch.setenv("MODEL_INJECTOR_CONFIG_FILE", str(config))
    settings = Settings()
    assert settings.run_as_user == 1001
    assert settings.allowed_schemes == ["https", "http"]


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("MODEL_INJECTOR_DEFAULT_SIZE_LIMIT", "lots"),
        ("MODEL_INJECTOR_FETCHER_CPU_LIMIT", "0"),
        ("MODEL_INJECTOR_RUN_AS_USER", "0"),
        ("MODEL_INJECTOR_FETCHER_PULL_POLICY", "Sometimes"),
        ("MODEL_INJECTOR_DEFAULT_MOUNT_PATH", "models"),
        ("MODEL_INJECTOR_ANNOTATION_PREFIX", "Models_Example"),
        ("MODEL_INJECTOR_DEFAULT_MAX_DISK_BUFFER", "1 GiB"),
    ],
)
def test_invalid_settings_are_refused(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(pydantic.ValidationError):
        Settings()


def test_unknown_key_in_config_file_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("alowed_hosts: ['*']\n")
    monkeypatch.setenv("MODEL_INJECTOR_CONFIG_FILE", str(config))
    with pytest.raises(pydantic.ValidationError, match="alowed_hosts"):
        Settings()
