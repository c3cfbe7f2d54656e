"""The Pod Security Standards "restricted" profile, checked for one container of a pod.

Written from the published profile (baseline plus restricted controls) so the tests do not trust
the webhook's own idea of what is safe.
"""

from __future__ import annotations

from typing import Any

ALLOWED_VOLUME_TYPES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


def restricted_violations(pod: dict[str, Any], container_name: str) -> list[str]:
    spec = pod["spec"]
    pod_context = spec.get("securityContext") or {}
    containers = spec.get("initContainers", []) + spec.get("containers", [])
    (container,) = [c for c in containers if c["name"] == container_name]
    context = container.get("securityContext") or {}
    problems = []
    if context.get("privileged"):
        problems.append("privileged")
    if context.get("allowPrivilegeEscalation") is not False:
        problems.append("allowPrivilegeEscalation must be false")
    capabilities = context.get("capabilities") or {}
    if "ALL" not in (capabilities.get("drop") or []):
        problems.append("capabilities must drop ALL")
    if set(capabilities.get("add") or []) - {"NET_BIND_SERVICE"}:
        problems.append("only NET_BIND_SERVICE may be added")
    run_as_non_root = context.get("runAsNonRoot", pod_context.get("runAsNonRoot"))
    if run_as_non_root is not True:
        problems.append("runAsNonRoot must be true")
    if context.get("runAsUser", pod_context.get("runAsUser")) == 0:
        problems.append("runAsUser must not be 0")
    seccomp = context.get("seccompProfile") or pod_context.get("seccompProfile") or {}
    if seccomp.get("type") not in ("RuntimeDefault", "Localhost"):
        problems.append("seccompProfile must be RuntimeDefault or Localhost")
    if context.get("procMount", "Default") != "Default":
        problems.append("procMount must be Default")
    if any(port.get("hostPort") for port in container.get("ports", [])):
        problems.append("hostPort")
    se_linux = context.get("seLinuxOptions") or {}
    if se_linux.get("user") or se_linux.get("role"):
        problems.append("seLinuxOptions user/role")
    return problems + _volume_violations(spec, container)


def _volume_violations(spec: dict[str, Any], container: dict[str, Any]) -> list[str]:
    mounted = {mount["name"] for mount in container.get("volumeMounts", [])}
    problems = []
    for volume in spec.get("volumes", []):
        kinds = set(volume) - {"name"}
        if volume["name"] in mounted and not kinds <= ALLOWED_VOLUME_TYPES:
            problems.append(f"volume {volume['name']} of type {kinds}")
    return problems
