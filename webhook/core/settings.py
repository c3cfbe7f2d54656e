"""Policy and defaults, from MODEL_INJECTOR_* environment variables and an optional mounted file.

Precedence, highest first: keyword arguments, environment variables, the file named by
MODEL_INJECTOR_CONFIG_FILE (YAML or JSON), the defaults below.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from webhook.core.quantities import is_fetcher_size, is_positive_quantity

ENV_PREFIX = "MODEL_INJECTOR_"
CONFIG_FILE_VARIABLE = f"{ENV_PREFIX}CONFIG_FILE"

_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")

StringList = Annotated[list[str], NoDecode]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True)

    annotation_prefix: str = "models.example.com"
    fetcher_image: str = "ghcr.io/example/model-fetcher:0.1.0"
    fetcher_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    default_mount_path: str = "/models"
    default_size_limit: str = "20Gi"
    default_max_disk_buffer: str = "1GiB"
    allowed_schemes: StringList = Field(default_factory=lambda: ["https"])
    allowed_hosts: StringList = Field(default_factory=lambda: ["*"])
    require_sha256: bool = False
    fetcher_cpu_request: str = "100m"
    fetcher_cpu_limit: str = "1"
    fetcher_memory_request: str = "128Mi"
    fetcher_memory_limit: str = "512Mi"
    fetcher_ephemeral_storage_request: str = "64Mi"
    run_as_user: int = Field(default=65532, ge=1)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    cert_reload_interval: float = Field(default=1.0, gt=0)
    shutdown_timeout: float = Field(default=25.0, ge=0)

    @field_validator("allowed_schemes", "allowed_hosts", mode="before")
    @classmethod
    def _split_list(cls, value: object) -> object:
        """Accept a JSON list or a comma-separated string (friendlier in a Deployment env)."""
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [item.strip() for item in text.split(",") if item.strip()]
        return value

    @field_validator("allowed_schemes")
    @classmethod
    def _lowercase_schemes(cls, value: list[str]) -> list[str]:
        return [scheme.lower().removesuffix("://") for scheme in value]

    @field_validator("annotation_prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        if len(value) > 253 or not _DNS_SUBDOMAIN.match(value):
            raise ValueError("must be a DNS subdomain such as models.example.com")
        return value

    @field_validator("default_mount_path")
    @classmethod
    def _check_mount_path(cls, value: str) -> str:
        if not value.startswith("/") or value == "/":
            raise ValueError("must be an absolute path other than /")
        return value.rstrip("/")

    @field_validator(
        "default_size_limit",
        "fetcher_cpu_request",
        "fetcher_cpu_limit",
        "fetcher_memory_request",
        "fetcher_memory_limit",
        "fetcher_ephemeral_storage_request",
    )
    @classmethod
    def _check_quantity(cls, value: str) -> str:
        if not is_positive_quantity(value):
            raise ValueError("must be a positive Kubernetes quantity such as 500m, 2 or 20Gi")
        return value

    @field_validator("default_max_disk_buffer")
    @classmethod
    def _check_fetcher_size(cls, value: str) -> str:
        if not is_fetcher_size(value):
            raise ValueError("must be a size such as 256MiB or 1GiB")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, ConfigFileSource(settings_cls))


class ConfigFileSource(PydanticBaseSettingsSource):
    """The YAML or JSON file named by MODEL_INJECTOR_CONFIG_FILE.

    Keys may be written as field names (`allowed_hosts`) or as the environment variable names
    (`MODEL_INJECTOR_ALLOWED_HOSTS`), so a ConfigMap can serve both as env and as a file.
    """

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ reads the whole file at once

    def __call__(self) -> dict[str, Any]:
        path = os.environ.get(CONFIG_FILE_VARIABLE)
        if not path:
            return {}
        loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        if loaded is None:
            return {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: expected a mapping of settings, got {type(loaded).__name__}")
        values: dict[str, Any] = {}
        for key, value in loaded.items():
            name = str(key).lower()
            name = name.removeprefix(ENV_PREFIX.lower())
            values[name] = value
        return values
