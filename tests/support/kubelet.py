"""Run a container of a Pod the way a node would, without a node, a runtime or real root.

What a container sees is rebuilt from the Pod spec, not approximated by rewriting paths: each
container gets a private mount namespace (util-linux ``unshare --map-root-user --mount``) with a
fresh root directory in which

- the image's files (the host's ``/usr``, ``/etc``, the Python prefix, the virtualenv and the
  project, which is what the fetcher image holds) are bind-mounted read-only at their own paths;
- every ``volumeMount`` binds that volume's host directory at ``mountPath``, read-only when the
  mount says so, and always read-only for configMap, secret, downwardAPI and projected volumes
  (as the kubelet mounts them);
- ``/dev`` is a small tmpfs with the usual device nodes and ``terminationMessagePath`` bound to a
  per-container file, ``/proc`` is bound from the host;
- the root itself is read-only when ``securityContext.readOnlyRootFilesystem`` is true, so there
  is no writable ``/tmp`` then, exactly as in a cluster.

The process is then started in a nested user namespace under the uid and gid the securityContext
(or the image) asks for, chrooted into that root, with no capabilities, ``no_new_privs`` when
``allowPrivilegeEscalation`` is false, and an environment made only of the image's ``ENV`` and the
container's ``env``/``envFrom`` (Secrets and ConfigMaps resolved as the kubelet does), with
``$(VAR)`` references in ``command``/``args`` expanded. ``command``/``args`` replace the image's
entrypoint/cmd by the Kubernetes rules.

Limits of the simulation: one uid is mapped at a time (every uid in the pod is the same host
user, so permission bits between containers must be checked explicitly), no network, pid or
cgroup isolation (loopback origins stay reachable; resources are not enforced), and volumes other
than emptyDir, configMap, secret, projected and persistentVolumeClaim (a host directory standing
for the bound volume, handed in by claim name) are refused with a message.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "ContainerConfigError",
    "ContainerResult",
    "Image",
    "Kubelet",
    "NamespacesUnavailable",
    "check_namespaces",
    "host_image",
]

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_TERMINATION_PATH = "/dev/termination-log"
TERMINATION_MESSAGE_LIMIT = 4096
# The kubelet's FallbackToLogsOnError keeps the last 80 lines of the log, at most 2048 bytes.
_FALLBACK_LINES = 80
_FALLBACK_BYTES = 2048
_DEVICES = ("null", "zero", "full", "random", "urandom")
_API_DATA_VOLUMES = ("configMap", "secret", "downwardAPI", "projected")
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")


class NamespacesUnavailable(RuntimeError):
    """Unprivileged user and mount namespaces are needed and this machine refuses them."""


class ContainerConfigError(RuntimeError):
    """What the kubelet reports as CreateContainerConfigError: the container never starts."""


@dataclass(frozen=True)
class Image:
    """What the simulation knows of an image: its config and the host paths that are its files."""

    ref: str
    paths: tuple[Path, ...]
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    user: tuple[int, int] | None = None
    """Numeric ``USER uid:gid``; None means root, as in an image without ``USER``."""
    workdir: str = "/"


def host_image(
    ref: str,
    *,
    entrypoint: Sequence[str] = (),
    cmd: Sequence[str] = (),
    user: tuple[int, int] | None = None,
    env: Mapping[str, str] | None = None,
) -> Image:
    """An image whose files are this machine's system, Python and project, read-only.

    ``PATH`` starts with the virtualenv's ``bin``, as the fetcher image's starts with its venv's;
    ``PYTHONPATH`` is the checkout, so the container runs the code the tests import.
    """
    venv = Path(sys.prefix)
    paths = {Path("/usr"), Path("/etc"), venv, Path(sys.base_prefix).resolve()}
    # The project under test is this checkout, which an editable install of the virtualenv may
    # not point at (a worktree sharing another checkout's venv): it goes first on the path.
    project = Path(__file__).resolve().parents[2]
    paths.add(project)
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        top = Path("/") / name
        if top.is_dir() and not top.is_symlink():
            paths.add(top)
    base_env = {
        "PATH": f"{venv / 'bin'}:{DEFAULT_PATH}",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": str(project),
        **(env or {}),
    }
    return Image(
        ref=ref,
        paths=tuple(sorted(paths)),
        entrypoint=tuple(entrypoint),
        cmd=tuple(cmd),
        env=base_env,
        user=user,
    )


def check_namespaces() -> None:
    """Fail loudly (never skip) when ``unshare --map-root-user --mount`` cannot work here."""
    hint = (
        "the pod simulation needs util-linux `unshare` with unprivileged user namespaces "
        "(check `unshare --map-root-user --mount true`; on Debian/Ubuntu install util-linux and "
        "set `sysctl kernel.unprivileged_userns_clone=1`, and on Ubuntu 24.04 also "
        "`kernel.apparmor_restrict_unprivileged_userns=0`)"
    )
    for tool in ("unshare", "chroot", "setpriv", "mount", "env"):
        if shutil.which(tool) is None:
            raise NamespacesUnavailable(f"`{tool}` is not installed; {hint}")
    probe = subprocess.run(
        ["unshare", "--map-root-user", "--mount", "true"],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    if probe.returncode != 0:
        raise NamespacesUnavailable(f"{probe.stderr.strip()}; {hint}")


@dataclass
class ContainerResult:
    name: str
    argv: list[str]
    env: dict[str, str]
    uid: int
    gid: int
    returncode: int
    stdout: str
    stderr: str
    termination_message: str
    """What ``kubectl describe pod`` shows as the container's last state message."""


def expand(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion, as third_party/forked/golang/expansion/expand.go does it.

    ``$$`` is one ``$``; ``$(NAME)`` is NAME's value when NAME is defined and stays as written
    when it is not; a ``$`` before anything else (or at the end), and a ``$(`` never closed,
    stay as they are. Every name up to the first ``)`` is looked up, whatever its characters,
    and nothing a value brings in is expanded again.
    """
    out: list[str] = []
    checkpoint = 0
    cursor = 0
    while cursor < len(value):
        if value[cursor] == "$" and cursor + 1 < len(value):
            out.append(value[checkpoint:cursor])
            after = value[cursor + 1 :]
            if after[0] == "$":
                out.append("$")  # escaped operator
                advance = 1
            elif after[0] == "(":
                closer = after.find(")", 1)
                if closer == -1:
                    out.append("$(")  # incomplete reference: kept, scanning goes on after it
                    advance = 1
                else:
                    name = after[1:closer]
                    out.append(env.get(name, f"$({name})"))
                    advance = closer + 1
            else:
                out.append("$" + after[0])
                advance = 1
            cursor += advance
            checkpoint = cursor + 1
        cursor += 1
    return "".join(out) + value[checkpoint:]


class Kubelet:
    """Runs containers of one Pod; emptyDir volumes live as long as this object's directory."""

    def __init__(
        self,
        pod: Mapping[str, Any],
        workdir: Path,
        *,
        images: Mapping[str, Image],
        secrets: Mapping[str, Mapping[str, str]] | None = None,
        config_maps: Mapping[str, Mapping[str, str]] | None = None,
        claims: Mapping[str, Path] | None = None,
        pod_name: str | None = None,
    ) -> None:
        """``secrets`` and ``config_maps`` map a name to the object's data, as in the pod's
        namespace; ``claims`` maps a PersistentVolumeClaim's name to the host directory of its
        bound volume, which outlives this pod (another Kubelet may mount it after this one)."""
        self.pod = pod
        self.workdir = workdir
        self.images = images
        self.secrets = secrets or {}
        self.config_maps = config_maps or {}
        self.claims = claims or {}
        meta = pod.get("metadata", {})
        generated = hashlib.sha256(repr(meta.get("generateName")).encode()).hexdigest()[:5]
        self.pod_name = (
            pod_name or meta.get("name") or f"{meta.get('generateName', 'pod-')}{generated}"
        )
        self.namespace = meta.get("namespace", "default")
        self._volumes: dict[str, Path] = {}

    # volumes

    def volume_dir(self, name: str) -> Path:
        """The host directory behind a pod volume (created, and filled for API data, once)."""
        if name in self._volumes:
            return self._volumes[name]
        volumes = {v["name"]: v for v in self.pod["spec"].get("volumes", [])}
        if name not in volumes:
            raise ContainerConfigError(f"volumeMount refers to volume {name!r}, not in the pod")
        volume = volumes[name]
        if "persistentVolumeClaim" in volume:
            claim = volume["persistentVolumeClaim"]["claimName"]
            if claim not in self.claims:
                raise ContainerConfigError(f'persistentvolumeclaim "{claim}" not found')
            self._volumes[name] = self.claims[claim]
            return self.claims[claim]
        path = self.workdir / "volumes" / name
        path.mkdir(parents=True)
        if "emptyDir" in volume:
            path.chmod(0o777)  # the kubelet creates emptyDir world-writable
        elif "configMap" in volume:
            self._project(path, self._config_map(volume["configMap"]), volume["configMap"])
        elif "secret" in volume:
            source = volume["secret"]
            self._project(path, self._secret(source.get("secretName", "")), source)
        elif "projected" in volume:
            for source in volume["projected"].get("sources", []):
                self._projected_source(path, source)
        else:
            kinds = sorted(set(volume) - {"name"})
            raise ContainerConfigError(f"volume {name!r} of type {kinds} is not simulated")
        self._volumes[name] = path
        return path

    def _config_map(self, source: Mapping[str, Any]) -> Mapping[str, str]:
        name = source.get("name", "")
        if name not in self.config_maps:
            raise ContainerConfigError(f'configmap "{name}" not found')
        return self.config_maps[name]

    def _secret(self, name: str) -> Mapping[str, str]:
        if name not in self.secrets:
            raise ContainerConfigError(f'secret "{name}" not found')
        return self.secrets[name]

    @staticmethod
    def _project(path: Path, data: Mapping[str, str], source: Mapping[str, Any]) -> None:
        items = source.get("items")
        wanted = [(i["key"], i["path"]) for i in items] if items else [(k, k) for k in data]
        for key, relative in wanted:
            if key not in data:
                raise ContainerConfigError(f"key {key!r} is not in the projected data")
            target = path / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(data[key])
            target.chmod(0o644)

    def _projected_source(self, path: Path, source: Mapping[str, Any]) -> None:
        if "serviceAccountToken" in source:
            token_file = path / source["serviceAccountToken"]["path"]
            token_file.write_text("simulated-service-account-token")
        elif "configMap" in source:
            self._project(path, self._config_map(source["configMap"]), source["configMap"])
        elif "secret" in source:
            self._project(path, self._secret(source["secret"]["name"]), source["secret"])
        elif "downwardAPI" in source:
            fields = {"metadata.namespace": self.namespace, "metadata.name": self.pod_name}
            for item in source["downwardAPI"].get("items", []):
                (path / item["path"]).write_text(fields[item["fieldRef"]["fieldPath"]])
        else:
            raise ContainerConfigError(f"projected source {sorted(source)} is not simulated")

    # environment

    def environment(self, container: Mapping[str, Any], image: Image) -> dict[str, str]:
        """Image ENV, then ``envFrom`` in order, then ``env``, as the kubelet and runtime do."""
        return {**image.env, "HOSTNAME": self.pod_name, **self.declared_environment(container)}

    def declared_environment(self, container: Mapping[str, Any]) -> dict[str, str]:
        """What the kubelet makes of ``envFrom`` and ``env`` (no image ENV: the kubelet never
        sees it), which is also all that ``$(VAR)`` in ``command``/``args`` can refer to.

        An optional reference to a missing object or key leaves its variable undefined; a
        required one fails the container before it starts (CreateContainerConfigError).
        """
        declared: dict[str, str] = {}
        for source in container.get("envFrom", []):
            prefix = source.get("prefix", "")
            if "secretRef" in source:
                ref = source["secretRef"]
                data = self._optional(self._secret, ref["name"], ref.get("optional", False))
            else:
                ref = source["configMapRef"]
                data = self._optional(
                    lambda name: self._config_map({"name": name}),
                    ref["name"],
                    ref.get("optional", False),
                )
            for key, value in data.items():
                if _ENV_NAME.match(prefix + key):  # the kubelet skips invalid names
                    declared[prefix + key] = value
        for var in container.get("env", []):
            resolved = self._env_value(var, declared)
            if resolved is not None:
                declared[var["name"]] = resolved
        return declared

    @staticmethod
    def _optional(lookup: Any, name: str, optional: bool) -> Mapping[str, str]:
        try:
            data: Mapping[str, str] = lookup(name)
        except ContainerConfigError:
            if optional:
                return {}
            raise
        return data

    def _env_value(self, var: Mapping[str, Any], declared: Mapping[str, str]) -> str | None:
        """The variable's value, or None when an optional reference leaves it undefined."""
        if "valueFrom" not in var:
            return expand(var.get("value", ""), declared)
        source = var["valueFrom"]
        lookup: Callable[[str], Mapping[str, str]]
        if "secretKeyRef" in source:
            ref, kind, lookup = source["secretKeyRef"], "Secret", self._secret
        elif "configMapKeyRef" in source:
            ref, kind = source["configMapKeyRef"], "ConfigMap"

            def lookup(name: str) -> Mapping[str, str]:
                return self._config_map({"name": name})

        elif "fieldRef" in source:
            fields = {"metadata.namespace": self.namespace, "metadata.name": self.pod_name}
            return str(fields[source["fieldRef"]["fieldPath"]])
        else:
            raise ContainerConfigError(f"env {var['name']}: {sorted(source)} is not simulated")
        optional = bool(ref.get("optional", False))
        try:
            data = lookup(ref["name"])
        except ContainerConfigError:
            if optional:
                return None
            raise
        if ref["key"] not in data:
            if optional:
                return None
            raise ContainerConfigError(
                f"couldn't find key {ref['key']} in {kind} {self.namespace}/{ref['name']}"
            )
        value: str = data[ref["key"]]
        return value

    # containers

    def container(self, name: str) -> dict[str, Any]:
        spec = self.pod["spec"]
        found = [
            c for c in spec.get("initContainers", []) + spec.get("containers", [])
            if c["name"] == name
        ]  # fmt: skip
        if len(found) != 1:
            raise ContainerConfigError(f"the pod has no container named {name!r}")
        return dict(found[0])

    def argv(self, container: Mapping[str, Any], image: Image, env: Mapping[str, str]) -> list[str]:
        """The Kubernetes rules: ``command`` replaces ENTRYPOINT, ``args`` replaces CMD."""
        command, args = container.get("command"), container.get("args")
        if command:
            argv = [*command, *(args or [])]
        else:
            argv = [*image.entrypoint, *(args if args else image.cmd)]
        if not argv:
            raise ContainerConfigError("no command specified")
        return [expand(a, env) for a in argv]

    def identity(self, container: Mapping[str, Any], image: Image) -> tuple[int, int]:
        pod_context = self.pod["spec"].get("securityContext") or {}
        context = container.get("securityContext") or {}
        image_uid, image_gid = image.user if image.user is not None else (0, 0)
        uid = context.get("runAsUser", pod_context.get("runAsUser", image_uid))
        gid = context.get("runAsGroup", pod_context.get("runAsGroup", image_gid))
        if context.get("privileged"):
            raise ContainerConfigError("privileged containers are not simulated")
        if context.get("runAsNonRoot", pod_context.get("runAsNonRoot")) and uid == 0:
            raise ContainerConfigError("container has runAsNonRoot and image will run as root")
        return int(uid), int(gid)

    def run(
        self, name: str, *, exec_argv: Sequence[str] | None = None, timeout: float = 60
    ) -> ContainerResult:
        """Start container ``name`` and wait for it; ``exec_argv`` runs that instead of the
        container's own process, in the same filesystem view and identity (``kubectl exec``)."""
        container = self.container(name)
        image = self.images.get(container["image"])
        if image is None:
            raise ContainerConfigError(f"image {container['image']!r} is not known here")
        env = self.environment(container, image)
        declared = self.declared_environment(container)
        argv = list(exec_argv) if exec_argv is not None else self.argv(container, image, declared)
        uid, gid = self.identity(container, image)
        env.setdefault("HOME", "/root" if uid == 0 else "/")  # runtime default, no passwd
        home = self.workdir / "containers" / name
        if home.exists():
            shutil.rmtree(home)
        root = home / "rootfs"
        root.mkdir(parents=True)
        root.chmod(0o755)
        termination = home / "termination-log"
        termination.touch()
        script = self._script(
            container, image, root=root, termination=termination, uid=uid, gid=gid, env=env,
            argv=argv,
        )  # fmt: skip
        process = subprocess.run(
            [
                "unshare",
                "--map-root-user",
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-ec",
                script,
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={"PATH": DEFAULT_PATH},
            check=False,
        )
        # The kubelet reads at most 4 KiB of the file (kubelet: maxMessageLength).
        message = termination.read_bytes()[:TERMINATION_MESSAGE_LIMIT].decode(errors="replace")
        policy = container.get("terminationMessagePolicy", "File")
        if not message and process.returncode != 0 and policy == "FallbackToLogsOnError":
            message = _log_tail(process.stdout + process.stderr)
        return ContainerResult(
            name, argv, env, uid, gid, process.returncode, process.stdout, process.stderr, message
        )

    def _script(
        self,
        container: Mapping[str, Any],
        image: Image,
        *,
        root: Path,
        termination: Path,
        uid: int,
        gid: int,
        env: Mapping[str, str],
        argv: Sequence[str],
    ) -> str:
        """The shell script run as root of a new user and mount namespace: build the view,
        then start the process as the container's user, chrooted into it."""
        context = container.get("securityContext") or {}
        q = shlex.quote
        lines = [f"mount --bind {q(str(root))} {q(str(root))}"]
        readonly: list[Path] = []

        def bind(source: Path, target: str, *, ro: bool, recursive: bool = False) -> None:
            inside = root / target.lstrip("/")
            kind = "--rbind" if recursive else "--bind"
            make = "mkdir -p" if source.is_dir() else "touch"
            lines.append(f"{make} {q(str(inside))}")
            lines.append(f"mount {kind} {q(str(source))} {q(str(inside))}")
            if ro:
                readonly.append(inside)

        for top in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
            link = Path("/") / top
            if link.is_symlink():
                (root / top).symlink_to(os.readlink(link))
        for path in image.paths:
            bind(path, str(path), ro=True, recursive=True)
        dev = root / "dev"
        lines.append(f"mkdir -p {q(str(dev))}")
        lines.append(f"mount -t tmpfs -o mode=755,size=1m,nosuid tmpfs {q(str(dev))}")
        for device in _DEVICES:
            bind(Path("/dev") / device, f"/dev/{device}", ro=False)
        lines.append(f"mkdir -p {q(str(dev / 'shm'))}")
        lines.append(
            f"mount -t tmpfs -o mode=1777,size=64m,nosuid,nodev tmpfs {q(str(dev / 'shm'))}"
        )
        bind(Path("/proc"), "/proc", ro=False, recursive=True)
        (root / "tmp").mkdir(mode=0o1777)
        (root / "tmp").chmod(0o1777)
        path = container.get("terminationMessagePath", DEFAULT_TERMINATION_PATH)
        bind(termination, path, ro=False)
        volumes = {v["name"]: v for v in self.pod["spec"].get("volumes", [])}
        mounts = sorted(
            container.get("volumeMounts", []), key=lambda m: len(Path(m["mountPath"]).parts)
        )
        for mount in mounts:
            if mount.get("subPath") or mount.get("subPathExpr"):
                raise ContainerConfigError("subPath mounts are not simulated")
            volume = volumes.get(mount["name"], {})
            api_data = any(kind in volume for kind in _API_DATA_VOLUMES)
            ro = bool(mount.get("readOnly")) or api_data
            bind(self.volume_dir(mount["name"]), mount["mountPath"], ro=ro)
        # Read-only last: inner mount points are created before their parents are frozen.
        for inside in reversed(readonly):
            lines.append(f"mount -o remount,bind,ro {q(str(inside))}")
        if context.get("readOnlyRootFilesystem"):
            lines.append(f"mount -o remount,bind,ro {q(str(root))}")
        workdir = container.get("workingDir") or image.workdir
        drop = ["--inh-caps=-all", "--ambient-caps=-all", "--bounding-set=-all"]
        if context.get("allowPrivilegeEscalation") is False:
            drop.append("--no-new-privs")
        final = [
            "unshare", "--user", f"--map-user={uid}", f"--map-group={gid}", "--keep-caps", "--",
            "chroot", str(root),
            "setpriv", *drop, "--",
            "env", "-i", f"--chdir={workdir}", "--", *(f"{k}={v}" for k, v in env.items()),
            *argv,
        ]  # fmt: skip
        lines.append("exec " + " ".join(q(part) for part in final))
        return "\n".join(lines)


def _log_tail(log: str) -> str:
    tail = "\n".join(log.splitlines()[-_FALLBACK_LINES:])
    return tail.encode()[-_FALLBACK_BYTES:].decode(errors="replace")
