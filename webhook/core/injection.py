"""The pure core of /mutate: a raw pod and the policy in, the JSONPatch (or a refusal) out."""

from __future__ import annotations

from dataclasses import dataclass

from webhook.core.annotations import INJECTED, annotation_key, parse_models, status_key
from webhook.core.bodies import AddOperation, Container, Pod, Volume
from webhook.core.errors import Refused, invalid_value
from webhook.core.fetchcontainer import app_env, app_mount, fetch_container, volumes_for
from webhook.core.modelspec import FETCH_CONTAINER, ModelSpec
from webhook.core.patch import Additions, build_patch
from webhook.core.pods import annotations_of, containers_of, os_of, read_pod
from webhook.core.settings import Settings


@dataclass(frozen=True)
class Mutation:
    patch: list[AddOperation]
    models: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


def mutate_pod(obj: object, settings: Settings) -> Mutation:
    """The patch that injects the models `obj`'s annotations ask for.

    Raises Refused for annotations that cannot be honoured and MalformedReview when `obj` is not
    shaped like a pod. A pod injected before (reinvocation) gets an empty patch.
    """
    pod = read_pod(obj)
    if _already_injected(pod, settings):
        return Mutation(patch=[])
    parsed = parse_models(annotations_of(pod), settings)
    if not parsed.models:
        return Mutation(patch=[], warnings=parsed.warnings)
    os_name = os_of(pod)
    if os_name not in (None, "linux"):
        # The apiserver would refuse the fetch container's Linux security context on such a
        # pod, naming fields of a container its author never wrote.
        raise Refused(
            [
                f"spec.os.name is {os_name!r}, but {_key(settings, parsed.models[0], 'source')} "
                "asks for a model, whose fetch container runs on Linux only; expected a Linux "
                "pod (spec.os.name linux or unset)"
            ]
        )
    additions = _plan(pod, parsed.models, settings)
    return Mutation(
        patch=build_patch(pod, additions),
        models=tuple(spec.name for spec in parsed.models),
        warnings=parsed.warnings,
    )


def _already_injected(pod: Pod, settings: Settings) -> bool:
    status = annotations_of(pod).get(status_key(settings))
    if status is not None:
        if status.strip() != INJECTED:
            # Any other value would still switch injection off, and every check with it.
            raise Refused(
                [
                    invalid_value(
                        status_key(settings),
                        status,
                        f"{INJECTED!r}, which the webhook itself sets on a pod it injected "
                        "(leave this key out)",
                    )
                ]
            )
        return True
    return any(
        _is_fetch_container_name(container["name"])
        for field in ("initContainers", "containers")
        for container in containers_of(pod, field)
    )


def _is_fetch_container_name(name: str) -> bool:
    return name == FETCH_CONTAINER or name.startswith(f"{FETCH_CONTAINER}-")


def _plan(pod: Pod, models: tuple[ModelSpec, ...], settings: Settings) -> Additions:
    containers = containers_of(pod)
    container_names = [container["name"] for container in containers]
    existing_volumes = {volume["name"] for volume in pod.get("spec", {}).get("volumes") or []}
    problems: list[str] = []
    additions = Additions(annotations={status_key(settings): INJECTED})
    planned: dict[str, str] = {}  # volume name: the annotation that adds it
    for spec in models:
        for volume, key in _volumes_and_keys(spec, settings):
            name = volume["name"]
            if name in existing_volumes:
                problems.append(
                    f"the pod already has a volume named {name!r}, which {key} would add; "
                    "expected no volume of that name"
                )
            elif name in planned:
                problems.append(
                    f"{key} and {planned[name]} would both add a volume named {name!r}; "
                    f"expected model names whose volumes do not clash (rename model "
                    f"{spec.name!r})"
                )
            planned.setdefault(name, key)
        problems += _fetch_mount_clashes(spec, settings)
        targets = _targets(spec, container_names, settings, problems)
        for index in targets:
            taken = {mount["mountPath"] for mount in containers[index].get("volumeMounts") or []}
            if spec.mount_path in taken:
                problems.append(
                    invalid_value(
                        _key(settings, spec, "mount-path"),
                        spec.mount_path,
                        f"a path not already mounted in container {container_names[index]!r}",
                    )
                )
            additions.mounts.setdefault(index, []).append(app_mount(spec))
            env = app_env(spec)
            if env is not None:
                problems += _env_clash(spec, containers[index], additions, index, settings)
                additions.env.setdefault(index, []).append(env)
        additions.volumes += volumes_for(spec)
        container = fetch_container(spec, settings)
        if spec.init_first:
            additions.leading_init_containers.append(container)
        else:
            additions.trailing_init_containers.append(container)
    if problems:
        raise Refused(problems)
    return additions


def _volumes_and_keys(spec: ModelSpec, settings: Settings) -> list[tuple[Volume, str]]:
    """Each volume the model adds, with the annotation that makes it."""
    keys = {
        spec.volume_name: "source-from" if spec.source_from else "source",
        spec.ca_volume_name: "ca-bundle",
        spec.credentials_volume_name: "credentials-secret",
    }
    return [(volume, _key(settings, spec, keys[volume["name"]])) for volume in volumes_for(spec)]


def _fetch_mount_clashes(spec: ModelSpec, settings: Settings) -> list[str]:
    """The fetch container also mounts the CA bundle and the Google key file at fixed paths: the
    model's mount may not be one of them, nor lie inside one or hold one (a read-only mount
    inside the model would leave an empty folder in the model's tree, a model inside a
    read-only mount cannot be created)."""
    fixed = []
    if spec.ca_bundle:
        fixed.append((spec.ca_dir, "the CA bundle of ca-bundle"))
    if spec.gcs_key_file:
        fixed.append((spec.credentials_dir, "the key file of credentials-secret"))
    return [
        invalid_value(
            _key(settings, spec, "mount-path"),
            spec.mount_path,
            f"a path apart from {path}, where the fetch container reads {what}",
        )
        for path, what in fixed
        if _overlap(spec.mount_path, path)
    ]


def _overlap(one: str, other: str) -> bool:
    """Whether one of two absolute paths is the other or lies inside it."""
    one, other = one.rstrip("/") + "/", other.rstrip("/") + "/"
    return one.startswith(other) or other.startswith(one)


def _env_clash(
    spec: ModelSpec, container: Container, additions: Additions, index: int, settings: Settings
) -> list[str]:
    """The env annotation's variable must be new to the container: overriding a variable it
    sets (by value or valueFrom) would change what the app was configured with."""
    name = spec.env
    own = {var.get("name") for var in container.get("env") or []}
    added = {var["name"] for var in additions.env.get(index, [])}
    if name not in own | added:
        return []
    setter = "another model's env annotation sets" if name in added else "its env sets"
    return [
        invalid_value(
            _key(settings, spec, "env"),
            name or "",
            f"a variable that container {container['name']!r} does not set already ({setter} "
            f"{name})",
        )
    ]


def _targets(
    spec: ModelSpec, container_names: list[str], settings: Settings, problems: list[str]
) -> list[int]:
    if spec.containers is None:
        return list(range(len(container_names)))
    missing = [name for name in spec.containers if name not in container_names]
    if missing:
        key = _key(settings, spec, "containers")
        problems.append(
            invalid_value(
                key,
                ",".join(spec.containers),
                f"names of this pod's containers ({', '.join(container_names)}); "
                f"no container is named {', '.join(missing)}",
            )
        )
        return []
    return [container_names.index(name) for name in spec.containers]


def _key(settings: Settings, spec: ModelSpec, key: str) -> str:
    return annotation_key(settings, spec.name, key)
