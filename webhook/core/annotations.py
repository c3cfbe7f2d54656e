"""The annotation contract: `<prefix>/<key>` and `<prefix>/<model>.<key>` read into ModelSpecs.

Every problem is collected, so one refusal lists all of them; each names the key, the value and
what would be accepted. Nothing here looks at the pod's containers: see injection.py for that.
"""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal

from webhook.core.errors import Refused, invalid_value
from webhook.core.modelspec import (
    DEFAULT_MODEL,
    FETCH_CONTAINER,
    ExtractMode,
    FetchResources,
    ModelSpec,
    SecretKey,
    VolumeKind,
)
from webhook.core.quantities import (
    is_fetcher_rate,
    is_fetcher_size,
    is_positive_quantity,
    parse_quantity,
)
from webhook.core.redact import redact
from webhook.core.settings import Settings
from webhook.core.urls import is_http, scheme_of, url_problem

MODEL_KEYS = (
    "source",
    "sha256",
    "mirrors",
    "mount-path",
    "containers",
    "read-only",
    "volume",
    "pvc-name",
    "storage-class",
    "size-limit",
    "extract",
    "max-bandwidth",
    "max-disk-buffer",
    "ca-bundle",
    "credentials-secret",
    "s3-endpoint",
    "s3-region",
    "cpu-request",
    "cpu-limit",
    "memory-request",
    "memory-limit",
    "init-first",
    "source-from",
    "password-secret",
    "env",
)
# Either key names where the model comes from, and its presence triggers injection.
SOURCE_KEYS = ("source", "source-from")
STATUS = "status"
INJECTED = "injected"

_VOLUME_KINDS: dict[str, VolumeKind] = {
    "emptyDir": "emptyDir",
    "pvc": "pvc",
    "ephemeral": "ephemeral",
}
_EXTRACT_MODES: dict[str, ExtractMode] = {"auto": "auto", "none": "none"}
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
_REGION_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# model-fetch-<name> must still be a 63-character DNS label.
_MAX_MODEL_NAME = 63 - len(FETCH_CONTAINER) - 1


@dataclass(frozen=True)
class ParsedModels:
    models: tuple[ModelSpec, ...]
    warnings: tuple[str, ...]


def status_key(settings: Settings) -> str:
    return f"{settings.annotation_prefix}/{STATUS}"


def parse_models(annotations: Mapping[str, str], settings: Settings) -> ParsedModels:
    """The models a pod's annotations ask for; raises Refused listing every problem."""
    prefix = f"{settings.annotation_prefix}/"
    grouped: dict[str, dict[str, str]] = {}
    problems: list[str] = []
    for full_key, value in annotations.items():
        if not full_key.startswith(prefix):
            continue
        rest = full_key.removeprefix(prefix)
        if rest == STATUS:
            continue
        model_key = _model_and_key(prefix, full_key, rest, value)
        if isinstance(model_key, str):
            problems.append(model_key)
            continue
        model, key = model_key
        # A YAML `|` block ends in a newline, `>-` with indentation may lead with spaces: what
        # surrounds the value is dropped, for every key alike, before any check or any use.
        clean = value.strip()
        if not clean.isprintable():
            problems.append(
                invalid_value(
                    full_key,
                    clean,
                    "a single line (the value has an interior newline, tab or other control "
                    "character)",
                )
            )
            continue
        grouped.setdefault(model, {})[key] = clean

    if not any(key in keys for keys in grouped.values() for key in SOURCE_KEYS):
        if problems:
            raise Refused(problems)
        stray = [
            f"{prefix}source is not set, so {', '.join(_full_keys(prefix, model, keys))} "
            "have no effect"
            for model, keys in grouped.items()
        ]
        return ParsedModels((), tuple(stray))

    models: list[ModelSpec] = []
    warnings: list[str] = []
    for model in sorted(grouped, key=lambda name: (name != DEFAULT_MODEL, name)):
        reader = _ModelReader(model, grouped[model], settings)
        spec = reader.read()
        problems.extend(reader.problems)
        warnings.extend(reader.warnings)
        if spec is not None:
            models.append(spec)
    problems.extend(_mount_path_clashes(models, settings))
    if problems:
        raise Refused(problems)
    return ParsedModels(tuple(models), tuple(warnings))


def _model_and_key(prefix: str, full_key: str, rest: str, value: str) -> tuple[str, str] | str:
    """(model, key) of an annotation under the prefix, or the sentence refusing its key."""
    model, dot, key = rest.partition(".")
    if not dot:
        model, key = DEFAULT_MODEL, rest
    elif model == DEFAULT_MODEL:
        return (
            f"{full_key}: the model name {DEFAULT_MODEL!r} is reserved; expected the "
            f"unnamed key {prefix}{key} for the default model"
        )
    elif len(model) > _MAX_MODEL_NAME or not _DNS_LABEL.match(model):
        return (
            f"{full_key}: {json.dumps(model)} is not a valid model name; expected lower-case "
            f"letters, digits and '-', at most {_MAX_MODEL_NAME} characters"
        )
    if key not in MODEL_KEYS:
        return (
            f"{full_key}: unknown annotation key (value {json.dumps(redact(value))}); "
            f"expected one of {', '.join(MODEL_KEYS)}, optionally as <model>.<key>"
        )
    return model, key


def _full_keys(prefix: str, model: str, keys: Mapping[str, str]) -> list[str]:
    scope = "" if model == DEFAULT_MODEL else f"{model}."
    return [f"{prefix}{scope}{key}" for key in keys]


def _mount_path_clashes(models: list[ModelSpec], settings: Settings) -> list[str]:
    owners: dict[str, str] = {}
    problems = []
    for spec in models:
        if spec.mount_path in owners:
            key = annotation_key(settings, spec.name, "mount-path")
            problems.append(
                invalid_value(
                    key,
                    spec.mount_path,
                    f"a path not already used by model {owners[spec.mount_path]!r}",
                )
            )
        owners.setdefault(spec.mount_path, spec.name)
    return problems


def annotation_key(settings: Settings, model: str, key: str) -> str:
    """The full annotation key of `key` for `model`, e.g. models.example.com/tokenizer.source."""
    scope = "" if model == DEFAULT_MODEL else f"{model}."
    return f"{settings.annotation_prefix}/{scope}{key}"


class _ModelReader:
    """Reads one model's keys; a bad value is recorded in `problems` and replaced by its default."""

    def __init__(self, model: str, values: Mapping[str, str], settings: Settings) -> None:
        self.model = model
        self.values = values
        self.settings = settings
        self.problems: list[str] = []
        self.warnings: list[str] = []

    def key(self, key: str) -> str:
        return annotation_key(self.settings, self.model, key)

    def refuse(self, key: str, expected: str) -> None:
        self.problems.append(invalid_value(self.key(key), self.values[key], expected))

    def read(self) -> ModelSpec | None:
        if not any(key in self.values for key in SOURCE_KEYS):
            present = ", ".join(self.key(key) for key in self.values)
            self.problems.append(
                f"{self.key('source')} is missing: {present} are set, so a source URL (or "
                f"{self.key('source-from')}, a ConfigMap holding it) is expected for model "
                f"{self.model!r}"
            )
            return None
        source_from = self.source_from()
        if source_from and "credentials-secret" in self.values:
            self.warnings.append(
                f"{self.key('credentials-secret')} with {self.key('source-from')}: the Secret "
                "reaches the fetcher as environment variables only (AWS keys for s3:// work); "
                "an Authorization header for http(s) or a key.json for gs:// is passed only "
                f"with {self.key('source')}, whose URL the webhook can see"
            )
        source = "" if "source-from" in self.values else self.url("source")
        mirrors = () if "source-from" in self.values else self.mirrors()
        volume = self.volume()
        extract = self.extract()
        # A URL read from a ConfigMap may be s3://: its options cannot be refused unseen.
        uses_s3 = "source-from" in self.values or any(
            scheme_of(url) == "s3" for url in (source, *mirrors)
        )
        return ModelSpec(
            name=self.model,
            source=source,
            source_from=source_from,
            mirrors=mirrors,
            sha256=None if "source-from" in self.values else self.sha256(),
            mount_path=self.mount_path(),
            containers=self.containers(),
            read_only=self.flag("read-only", default=True),
            volume=volume,
            pvc_name=self.pvc_name(volume),
            storage_class=self.storage_class(volume),
            size_limit=self.size_limit(volume),
            extract=extract,
            max_bandwidth=self.optional("max-bandwidth", is_fetcher_rate, _RATE),
            max_disk_buffer=self.max_disk_buffer(),
            ca_bundle=self.optional("ca-bundle", _is_dns_subdomain, _CONFIGMAP),
            credentials_secret=self.optional("credentials-secret", _is_dns_subdomain, _CREDENTIALS),
            s3_endpoint=self.s3_endpoint(uses_s3=uses_s3),
            s3_region=self.s3_only("s3-region", _is_region, _REGION, uses_s3=uses_s3),
            resources=self.resources(),
            init_first=self.flag("init-first", default=False),
            password_secret=self.password_secret(extract),
            env=self.optional("env", _is_env_name, _ENV),
        )

    def source_from(self) -> str | None:
        """The ConfigMap the source, sha256 and mirrors come from, which excludes those keys.

        The digest and mirrors belong to the bytes at the source: written in two places, one
        would be updated without the other, so they go in the ConfigMap with it or not at all.
        """
        name = self.values.get("source-from")
        if name is None:
            return None
        for key in ("source", "sha256", "mirrors"):
            if key in self.values:
                self.problems.append(
                    f"{self.key(key)} and {self.key('source-from')} are both set; expected one "
                    f"place for the source: either the annotations, or ConfigMap "
                    f"{json.dumps(name)} with keys source and optionally sha256 and mirrors"
                )
        if not _is_dns_subdomain(name):
            self.refuse("source-from", _SOURCE_CONFIGMAP)
            return None
        return name

    def password_secret(self, extract: ExtractMode) -> SecretKey | None:
        value = self.values.get("password-secret")
        if value is None:
            return None
        name, slash, key = value.partition("/")
        if not slash or "/" in key or not _is_dns_subdomain(name) or not _is_secret_key(key):
            self.refuse("password-secret", _NAME_SLASH_KEY)
            return None
        if extract == "none":
            self.refuse("password-secret", "no password-secret with extract none")
            return None
        return SecretKey(name, key)

    def url(self, key: str) -> str:
        value = self.values[key]
        problem = url_problem(self.key(key), value, self.settings)
        if problem:
            self.problems.append(problem)
        return value

    def mirrors(self) -> tuple[str, ...]:
        if "mirrors" not in self.values:
            return ()
        items = [item.strip() for item in self.values["mirrors"].split(",")]
        if not all(items):
            self.refuse("mirrors", "comma-separated URLs with no empty entries")
            return ()
        for item in items:
            problem = url_problem(self.key("mirrors"), item, self.settings)
            if problem:
                self.problems.append(problem)
        return tuple(items)

    def sha256(self) -> str | None:
        value = self.values.get("sha256")
        if value is None:
            if self.settings.require_sha256:
                self.problems.append(
                    f"{self.key('sha256')} is missing; expected the 64-hex-character sha256 of "
                    "the bytes at the source (required by policy)"
                )
            else:
                self.warnings.append(
                    f"{self.key('sha256')} is not set: the download will not be verified"
                )
            return None
        if not _SHA256.match(value):
            self.refuse("sha256", "64 hexadecimal characters (the sha256 of the bytes at source)")
            return None
        return value.lower()

    def mount_path(self) -> str:
        default = self.settings.default_mount_path
        if self.model != DEFAULT_MODEL:
            default = posixpath.join(default, self.model)
        value = self.values.get("mount-path")
        if value is None:
            return default
        if not _is_clean_absolute_path(value):
            self.refuse("mount-path", "a normalised absolute path other than /, such as /models")
            return default
        return value

    def containers(self) -> tuple[str, ...] | None:
        value = self.values.get("containers")
        if value is None:
            return None
        names = [name.strip() for name in value.split(",")]
        if not all(names) or not all(_DNS_LABEL.match(name) for name in names):
            self.refuse("containers", "comma-separated container names, such as app,sidecar")
            return None
        return tuple(dict.fromkeys(names))

    def flag(self, key: str, *, default: bool) -> bool:
        value = self.values.get(key)
        if value is None:
            return default
        if value.lower() not in ("true", "false"):
            self.refuse(key, "true or false")
            return default
        return value.lower() == "true"

    def volume(self) -> VolumeKind:
        value = self.values.get("volume", "emptyDir")
        if value not in _VOLUME_KINDS:
            self.refuse("volume", "emptyDir, pvc or ephemeral")
            return "emptyDir"
        return _VOLUME_KINDS[value]

    def pvc_name(self, volume: VolumeKind) -> str | None:
        value = self.values.get("pvc-name")
        if volume != "pvc":
            if value is not None:
                self.refuse("pvc-name", "no pvc-name unless volume is pvc")
            return None
        if value is None:
            self.problems.append(
                f"{self.key('pvc-name')} is missing; expected the name of an existing "
                f"PersistentVolumeClaim because {self.key('volume')} is pvc"
            )
            return None
        if not _is_dns_subdomain(value):
            self.refuse("pvc-name", _CLAIM)
            return None
        return value

    def storage_class(self, volume: VolumeKind) -> str | None:
        value = self.values.get("storage-class")
        if value is None:
            return None
        if volume != "ephemeral":
            self.refuse("storage-class", "no storage-class unless volume is ephemeral")
            return None
        if not _is_dns_subdomain(value):
            self.refuse("storage-class", "a StorageClass name such as standard-rwo")
            return None
        return value

    def size_limit(self, volume: VolumeKind) -> str:
        default = self.settings.default_size_limit
        value = self.values.get("size-limit")
        if value is None:
            return default
        if volume == "pvc":
            self.refuse("size-limit", "no size-limit with volume pvc (the claim's size applies)")
            return default
        if not is_positive_quantity(value):
            self.refuse("size-limit", "a positive Kubernetes quantity such as 20Gi or 500M")
            return default
        return value

    def extract(self) -> ExtractMode:
        value = self.values.get("extract", "auto")
        if value not in _EXTRACT_MODES:
            self.refuse("extract", "auto or none")
            return "auto"
        return _EXTRACT_MODES[value]

    def max_disk_buffer(self) -> str:
        value = self.optional("max-disk-buffer", is_fetcher_size, _SIZE)
        return value if value is not None else self.settings.default_max_disk_buffer

    def optional(self, key: str, is_valid: Callable[[str], bool], expected: str) -> str | None:
        value = self.values.get(key)
        if value is None:
            return None
        if not is_valid(value):
            self.refuse(key, expected)
            return None
        return value

    def s3_endpoint(self, *, uses_s3: bool) -> str | None:
        value = self.s3_only("s3-endpoint", _has_no_query, _ENDPOINT, uses_s3=uses_s3)
        if value is None:
            return None
        problem = url_problem(self.key("s3-endpoint"), value, self.settings)
        if problem:
            self.problems.append(problem)
            return None
        if not is_http(value):
            self.refuse("s3-endpoint", _ENDPOINT)
            return None
        return value

    def s3_only(
        self, key: str, is_valid: Callable[[str], bool], expected: str, *, uses_s3: bool
    ) -> str | None:
        """An option of s3:// sources, refused where no source or mirror is on S3."""
        if key in self.values and not uses_s3:
            self.refuse(key, f"no {key} unless the source or a mirror is an s3:// URL")
            return None
        return self.optional(key, is_valid, expected)

    def resources(self) -> FetchResources:
        settings = self.settings
        cpu_request = self.quantity("cpu-request", settings.fetcher_cpu_request, _CPU)
        cpu_limit = self.quantity("cpu-limit", settings.fetcher_cpu_limit, _CPU)
        memory_request = self.quantity("memory-request", settings.fetcher_memory_request, _MEMORY)
        memory_limit = self.quantity("memory-limit", settings.fetcher_memory_limit, _MEMORY)
        self.request_within_limit("cpu", cpu_request, cpu_limit)
        self.request_within_limit("memory", memory_request, memory_limit)
        return FetchResources(cpu_request, cpu_limit, memory_request, memory_limit)

    def quantity(self, key: str, default: str, expected: str) -> str:
        value = self.values.get(key)
        if value is None:
            return default
        if not is_positive_quantity(value):
            self.refuse(key, expected)
            return default
        return value

    def request_within_limit(self, resource: str, request: str, limit: str) -> None:
        request_value = parse_quantity(request) or Decimal(0)
        limit_value = parse_quantity(limit) or Decimal(0)
        if request_value <= limit_value:
            return
        request_key, limit_key = f"{resource}-request", f"{resource}-limit"
        blamed = request_key if request_key in self.values else limit_key
        self.refuse(
            blamed,
            f"a {resource} request no greater than the {resource} limit "
            f"(request {request}, limit {limit}; set {self.key(limit_key)} as well)",
        )


def _is_dns_subdomain(value: str) -> bool:
    return len(value) <= 253 and _DNS_SUBDOMAIN.match(value) is not None


def _is_secret_key(value: str) -> bool:
    """A Secret or ConfigMap data key, as the apiserver validates it."""
    return (
        len(value) <= 253
        and _SECRET_KEY.match(value) is not None
        and value != "."
        and not value.startswith("..")
    )


def _is_env_name(value: str) -> bool:
    return _ENV_NAME.match(value) is not None


def _has_no_query(url: str) -> bool:
    return "?" not in url and "#" not in url


def _is_region(value: str) -> bool:
    return _REGION_NAME.match(value) is not None


def _is_clean_absolute_path(value: str) -> bool:
    return (
        value.startswith("/")
        and value != "/"
        and value.isprintable()
        and ":" not in value
        and "//" not in value
        and posixpath.normpath(value) == value
    )


_RATE = "a rate such as 200MB/s or 50MiB/s (units K, M, G, Ki, Mi, Gi, optional B and /s)"
_SIZE = "a size such as 256MiB or 1G (units K, M, G, Ki, Mi, Gi, optional B)"
_CPU = "a positive Kubernetes quantity such as 500m or 2"
_MEMORY = "a positive Kubernetes quantity such as 512Mi or 2Gi"
_CONFIGMAP = "the name of a ConfigMap in the pod's namespace (key ca.crt)"
_CREDENTIALS = "the name of a Secret in the pod's namespace"
_ENDPOINT = (
    "the http(s) URL of an S3-compatible endpoint, without query, such as "
    "http://minio.storage.svc:9000"
)
_REGION = "an S3 region name such as eu-west-1"
_SOURCE_CONFIGMAP = (
    "the name of a ConfigMap in the pod's namespace (keys source, and optionally sha256 and "
    "mirrors), such as llm-config"
)
_NAME_SLASH_KEY = (
    "NAME/KEY: the name of a Secret in the pod's namespace and the key holding the archive "
    "password, such as model-zip/password"
)
_ENV = (
    "an environment variable name: letters, digits and '_', not starting with a digit, such "
    "as MODEL_DIR"
)
_CLAIM = "the name of a PersistentVolumeClaim in the pod's namespace"
