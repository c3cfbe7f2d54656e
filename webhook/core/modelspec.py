"""One model to fetch into a pod, as read from its annotations, and the names derived from it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

DEFAULT_MODEL = "default"
FETCH_CONTAINER = "model-fetch"
VOLUME = "model"
CA_VOLUME = "model-ca"
CA_DIR = "/etc/model-fetch/ca"
CREDENTIALS_VOLUME = "model-credentials"
CREDENTIALS_DIR = "/var/run/secrets/model-fetch"
GCS_KEY_FILE = "key.json"  # the credentials Secret's key holding a Google credentials JSON
# The keys of a source-from ConfigMap, as the fetch container's env vars deliver them. The names
# are the fetcher's own, so that no key of a credentials Secret (envFrom) can stand in for an
# optional key the ConfigMap lacks.
CONFIGMAP_SOURCE_KEY = "source"
CONFIGMAP_SHA256_KEY = "sha256"
CONFIGMAP_MIRRORS_KEY = "mirrors"
SOURCE_ENV = "MODEL_FETCH_SOURCE"
SHA256_ENV = "MODEL_FETCH_SHA256"
MIRRORS_ENV = "MODEL_FETCH_MIRRORS"
PASSWORD_ENV = "MODEL_FETCH_PASSWORD"  # noqa: S105 (a variable name, not a password)

VolumeKind = Literal["emptyDir", "pvc", "ephemeral"]
ExtractMode = Literal["auto", "none"]


@dataclass(frozen=True)
class FetchResources:
    cpu_request: str
    cpu_limit: str
    memory_request: str
    memory_limit: str


@dataclass(frozen=True)
class SecretKey:
    name: str
    key: str


@dataclass(frozen=True)
class ModelSpec:
    name: str
    source: str  # "" when the URL comes from the source_from ConfigMap
    mount_path: str
    size_limit: str
    max_disk_buffer: str
    resources: FetchResources
    mirrors: tuple[str, ...] = ()
    sha256: str | None = None
    containers: tuple[str, ...] | None = None  # None: every app container
    read_only: bool = True
    volume: VolumeKind = "emptyDir"
    pvc_name: str | None = None
    storage_class: str | None = None
    extract: ExtractMode = "auto"
    max_bandwidth: str | None = None
    ca_bundle: str | None = None
    credentials_secret: str | None = None
    s3_endpoint: str | None = None
    s3_region: str | None = None
    init_first: bool = False
    source_from: str | None = None  # a ConfigMap holding source, sha256 and mirrors
    password_secret: SecretKey | None = None
    env: str | None = None  # set to mount_path in each target container

    def _suffixed(self, base: str) -> str:
        return base if self.name == DEFAULT_MODEL else f"{base}-{self.name}"

    @property
    def volume_name(self) -> str:
        return self._suffixed(VOLUME)

    @property
    def fetch_container_name(self) -> str:
        return self._suffixed(FETCH_CONTAINER)

    @property
    def ca_volume_name(self) -> str:
        return self._suffixed(CA_VOLUME)

    @property
    def ca_dir(self) -> str:
        return self._suffixed(CA_DIR)

    @property
    def credentials_volume_name(self) -> str:
        return self._suffixed(CREDENTIALS_VOLUME)

    @property
    def credentials_dir(self) -> str:
        return self._suffixed(CREDENTIALS_DIR)

    @property
    def gcs_key_file(self) -> str | None:
        """Where a gs:// source's Google credentials file sits, when the Secret provides one."""
        uses_gcs = any(url.lower().startswith("gs://") for url in self.urls)
        if not (uses_gcs and self.credentials_secret):
            return None
        return f"{self.credentials_dir}/{GCS_KEY_FILE}"

    @property
    def urls(self) -> tuple[str, ...]:
        """The URLs known at admission: none when they come from a ConfigMap."""
        if self.source_from:
            return ()
        return (self.source, *self.mirrors)
