"""The rendered overlays: valid Kubernetes 1.36 objects, registered as DESIGN says, consistent."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from cryptography import x509

from tests.deploy.support import (
    KIND_GENERATED,
    KUBERNETES_VERSION,
    Manifest,
    namespace_labels,
    only,
    selector_matches,
    settings_from,
)
from webhook.core.hints import MAX_PREFIX_LENGTH_CHANGE
from webhook.core.quantities import parse_quantity
from webhook.core.settings import ENV_PREFIX, Settings
from webhook.core.workloads import TEMPLATE_PATHS

OVERLAYS = ["kind", "cert-manager"]
RENDERS = ["base", *OVERLAYS]
UID = 65532

BASE_KINDS = {
    "Namespace",
    "ServiceAccount",
    "ConfigMap",
    "Service",
    "Deployment",
    "PodDisruptionBudget",
    "MutatingWebhookConfiguration",
    "ValidatingWebhookConfiguration",
}
EXTRA_KINDS = {
    "base": set(),
    "kind": {"Secret"},
    "cert-manager": {"Issuer", "Certificate"},
}
# Resource names as registered in rules, to the kinds the webhook knows the templates of.
WORKLOAD_RESOURCES = {
    ("apps", "deployments"): "Deployment",
    ("apps", "statefulsets"): "StatefulSet",
    ("apps", "daemonsets"): "DaemonSet",
    ("apps", "replicasets"): "ReplicaSet",
    ("batch", "jobs"): "Job",
    ("batch", "cronjobs"): "CronJob",
}
RESOURCE_KINDS = {("", "pods"): "Pod", **WORKLOAD_RESOURCES}


# --- helpers ---------------------------------------------------------------------------------


def webhooks(objects: list[Manifest]) -> list[tuple[str, dict[str, Any]]]:
    found: list[tuple[str, dict[str, Any]]] = []
    for obj in objects:
        if obj["kind"] in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
            found.extend((obj["kind"], hook) for hook in obj["webhooks"])
    return found


def effective_security(pod_spec: dict[str, Any], container: dict[str, Any]) -> dict[str, Any]:
    return {**(pod_spec.get("securityContext") or {}), **(container.get("securityContext") or {})}


def annotation_path(resource: tuple[str, str]) -> str:
    """The CEL path of the pod template's annotations, from the webhook's own template table."""
    group = resource[0]
    steps = TEMPLATE_PATHS[(group, RESOURCE_KINDS[resource])]
    return ".".join(("object", *steps, "metadata", "annotations"))


def container_port(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container["ports"] if p.get("name") == port]
    return int(number)


def webhook_container(objects: list[Manifest]) -> tuple[dict[str, Any], dict[str, Any]]:
    spec = only(objects, "Deployment")["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    return spec, container


def tls_secret_name(objects: list[Manifest]) -> str:
    spec, container = webhook_container(objects)
    mount_names = {mount["name"] for mount in container["volumeMounts"]}
    secrets = [v["secret"]["secretName"] for v in spec["volumes"] if "secret" in v]
    assert len(secrets) == 1
    assert {v["name"] for v in spec["volumes"] if "secret" in v} <= mount_names
    return str(secrets[0])


# --- every object is valid -------------------------------------------------------------------


@pytest.mark.parametrize("name", RENDERS)
def test_every_object_validates_against_the_kubernetes_schema(
    rendered: dict[str, list[Manifest]], name: str
) -> None:
    without_schema = set()
    for obj in rendered[name]:
        label = f"{obj['kind']}/{obj['metadata']['name']}"
        try:
            version = kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            without_schema.add(obj["apiVersion"])
            continue
        except kubernetes_validate.ValidationError as error:
            path = ".".join(str(step) for step in error.path)
            pytest.fail(f"{name}: {label} is invalid at {path}: {error.message}")
        assert version == KUBERNETES_VERSION
    # Only cert-manager's own resources lack a built-in schema; they are checked further below.
    assert without_schema <= {"cert-manager.io/v1"}


def test_the_strict_validation_catches_a_misspelt_field(
    rendered: dict[str, list[Manifest]],
) -> None:
    deployment = only(rendered["base"], "Deployment")
    broken = {**deployment, "spec": {**deployment["spec"], "replica": 2}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("name", RENDERS)
def test_each_render_holds_exactly_the_expected_objects(
    rendered: dict[str, list[Manifest]], name: str
) -> None:
    kinds = [obj["kind"] for obj in rendered[name]]
    assert set(kinds) == BASE_KINDS | EXTRA_KINDS[name]
    # The kind overlay's caBundle carrier is local to kustomize and must never be applied.
    assert kinds.count("ConfigMap") == 1
    namespaced = [obj for obj in rendered[name] if obj["kind"] not in ("Namespace",)]
    for obj in namespaced:
        if obj["kind"].endswith("WebhookConfiguration"):
            assert "namespace" not in obj["metadata"]
        else:
            assert obj["metadata"]["namespace"] == "model-injector", obj["kind"]


@pytest.mark.parametrize("name", RENDERS)
def test_the_webhook_gets_no_api_access(rendered: dict[str, list[Manifest]], name: str) -> None:
    objects = rendered[name]
    rbac = {"Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"}
    assert not [obj for obj in objects if obj["kind"] in rbac]
    account = only(objects, "ServiceAccount")
    assert account["automountServiceAccountToken"] is False
    spec, _ = webhook_container(objects)
    assert spec["serviceAccountName"] == account["metadata"]["name"]
    assert spec["automountServiceAccountToken"] is False


# --- registration ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", RENDERS)
def test_every_webhook_follows_the_registration_rules(
    rendered: dict[str, list[Manifest]], name: str
) -> None:
    objects = rendered[name]
    service = only(objects, "Service")
    (service_port,) = service["spec"]["ports"]
    hooks = webhooks(objects)
    assert len(hooks) == 3
    for kind, hook in hooks:
        assert hook["admissionReviewVersions"] == ["v1"]
        assert hook["sideEffects"] == "None"
        assert hook["failurePolicy"] == "Fail"
        assert 1 <= hook["timeoutSeconds"] <= 10
        assert hook["matchConditions"], hook["name"]
        assert "url" not in hook["clientConfig"]
        assert hook["clientConfig"]["service"] == {
            "name": service["metadata"]["name"],
            "namespace": service["metadata"]["namespace"],
            "path": "/mutate" if kind == "MutatingWebhookConfiguration" else "/validate",
            "port": service_port["port"],
        }
        for rule in hook["rules"]:
            assert rule["scope"] == "Namespaced"
            assert rule["apiVersions"] == ["v1"]


@pytest.mark.parametrize("name", RENDERS)
def test_pods_are_mutated_on_create_only(rendered: dict[str, list[Manifest]], name: str) -> None:
    mutating = only(rendered[name], "MutatingWebhookConfiguration")
    (hook,) = mutating["webhooks"]
    assert hook["rules"] == [
        {
            "apiGroups": [""],
            "apiVersions": ["v1"],
            "operations": ["CREATE"],
            "resources": ["pods"],
            "scope": "Namespaced",
        }
    ]
    assert hook["reinvocationPolicy"] == "IfNeeded"


@pytest.mark.parametrize("name", RENDERS)
def test_every_workload_template_is_validated_on_create_and_update(
    rendered: dict[str, list[Manifest]], name: str
) -> None:
    validating = only(rendered[name], "ValidatingWebhookConfiguration")
    registered: list[tuple[str, str]] = []
    for hook in validating["webhooks"]:
        for rule in hook["rules"]:
            assert sorted(rule["operations"]) == ["CREATE", "UPDATE"]
            registered += [(g, r) for g in rule["apiGroups"] for r in rule["resources"]]
    assert sorted(registered) == sorted(WORKLOAD_RESOURCES)
    # The webhook must know where each registered kind keeps its pod template.
    for group, resource in registered:
        assert (group, WORKLOAD_RESOURCES[(group, resource)]) in TEMPLATE_PATHS


@pytest.mark.parametrize("name", RENDERS)
def test_match_conditions_look_at_the_right_annotations_with_the_configured_prefix(
    rendered: dict[str, list[Manifest]], name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    prefix = settings_from(only(rendered[name], "ConfigMap"), monkeypatch).annotation_prefix
    for _, hook in webhooks(rendered[name]):
        resources = {
            (g, r) for rule in hook["rules"] for g in rule["apiGroups"] for r in rule["resources"]
        }
        paths = {annotation_path(resource) for resource in resources}
        assert len(paths) == 1, f"{hook['name']} mixes templates at {sorted(paths)}"
        (path,) = paths
        (condition,) = hook["matchConditions"]
        expression = " ".join(condition["expression"].split())
        assert f"{path}.exists(k, k.startsWith('{prefix}/'))" in expression
        # An expression that errors falls to failurePolicy (Fail): every optional step is guarded.
        steps = path.split(".")
        for end in range(2, len(steps) + 1):
            step = ".".join(steps[:end])
            if step != "object.metadata":
                assert f"has({step})" in expression, f"{hook['name']}: has({step}) missing"


@pytest.mark.parametrize("name", RENDERS)
def test_workloads_are_also_sent_for_misplaced_keys_and_near_miss_prefixes(
    rendered: dict[str, list[Manifest]], name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """/validate warns about both (webhook.core.hints); the apiserver must call it for them."""
    prefix = settings_from(only(rendered[name], "ConfigMap"), monkeypatch).annotation_prefix
    source = f"{prefix}/source"
    shortest = len(source) - MAX_PREFIX_LENGTH_CHANGE
    longest = len(source) + MAX_PREFIX_LENGTH_CHANGE
    validating = only(rendered[name], "ValidatingWebhookConfiguration")
    for hook in validating["webhooks"]:
        (condition,) = hook["matchConditions"]
        expression = " ".join(condition["expression"].split())
        # The workload's own metadata: its keys are warned about, never refused.
        assert (
            "(has(object.metadata.annotations) && "
            f"object.metadata.annotations.exists(k, k.startsWith('{prefix}/')))"
        ) in expression, hook["name"]
        # A template key that may be `source` under a misspelt prefix: the same length as
        # `<prefix>/source`, give or take the edits the webhook forgives.
        assert (
            f".exists(k, k.endsWith('/source') && k.size() >= {shortest} && k.size() <= {longest})"
        ) in expression, hook["name"]
        for typo in ("model.example.com", "models.example.org", "models.exampel.com"):
            assert shortest <= len(f"{typo}/source") <= longest


@pytest.mark.parametrize("name", RENDERS)
def test_namespace_selector_excludes_system_own_and_opted_out_namespaces(
    rendered: dict[str, list[Manifest]], name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    objects = rendered[name]
    prefix = settings_from(only(objects, "ConfigMap"), monkeypatch).annotation_prefix
    own = only(objects, "Deployment")["metadata"]["namespace"]
    opt_out = f"{prefix}/injection"
    for _, hook in webhooks(objects):
        selector = hook["namespaceSelector"]
        for excluded in ("kube-system", "kube-public", own):
            assert not selector_matches(selector, namespace_labels(excluded)), excluded
        assert not selector_matches(selector, namespace_labels("ml", **{opt_out: "disabled"}))
        assert selector_matches(selector, namespace_labels("default"))
        assert selector_matches(selector, namespace_labels("ml", **{opt_out: "enabled"}))
        assert selector_matches(selector, namespace_labels("ml", team="search"))


def test_kind_trusts_the_generated_ca_bundle(
    rendered: dict[str, list[Manifest]], deploy_copy: Path
) -> None:
    generated = deploy_copy / KIND_GENERATED
    bundle = (generated / "ca-bundle.crt").read_bytes()
    serving = x509.load_pem_x509_certificate((generated / "tls.crt").read_bytes())
    for _, hook in webhooks(rendered["kind"]):
        decoded = base64.b64decode(hook["clientConfig"]["caBundle"], validate=True)
        assert decoded == bundle
        (ca,) = x509.load_pem_x509_certificates(decoded)
        serving.verify_directly_issued_by(ca)
    secret = only(rendered["kind"], "Secret")
    assert secret["type"] == "kubernetes.io/tls"
    assert secret["metadata"]["name"] == tls_secret_name(rendered["kind"])
    assert base64.b64decode(secret["data"]["tls.crt"]) == (generated / "tls.crt").read_bytes()


def test_cert_manager_issues_the_mounted_secret_and_injects_its_ca(
    rendered: dict[str, list[Manifest]],
) -> None:
    objects = rendered["cert-manager"]
    issuers = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Issuer"}
    certificates = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Certificate"}
    service = only(objects, "Service")
    svc, ns = service["metadata"]["name"], service["metadata"]["namespace"]

    (serving_name,) = [n for n, c in certificates.items() if not c["spec"].get("isCA")]
    (ca_name,) = [n for n, c in certificates.items() if c["spec"].get("isCA")]
    serving, ca = certificates[serving_name]["spec"], certificates[ca_name]["spec"]

    assert serving["secretName"] == tls_secret_name(objects)
    assert serving["dnsNames"] == [
        svc,
        f"{svc}.{ns}",
        f"{svc}.{ns}.svc",
        f"{svc}.{ns}.svc.cluster.local",
    ]
    assert "server auth" in serving["usages"]
    # serving <- CA Issuer (holding the CA Certificate's Secret) <- CA Certificate <- self-signed
    ca_issuer = issuers[serving["issuerRef"]["name"]]
    assert serving["issuerRef"]["kind"] == "Issuer"
    assert ca_issuer["spec"]["ca"]["secretName"] == ca["secretName"]
    assert "selfSigned" in issuers[ca["issuerRef"]["name"]]["spec"]
    for certificate in (serving, ca):
        assert certificate["privateKey"]["algorithm"] in ("ECDSA", "RSA")
    for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
        configuration = only(objects, kind)
        annotations = configuration["metadata"]["annotations"]
        assert annotations["cert-manager.io/inject-ca-from"] == f"{ns}/{serving_name}"
        assert all("caBundle" not in hook["clientConfig"] for hook in configuration["webhooks"])


def test_the_base_leaves_trust_to_an_overlay(rendered: dict[str, list[Manifest]]) -> None:
    for _, hook in webhooks(rendered["base"]):
        assert "caBundle" not in hook["clientConfig"]


# --- the Deployment --------------------------------------------------------------------------


@pytest.mark.parametrize("name", RENDERS)
def test_two_replicas_stay_up_through_rollouts_and_drains(
    rendered: dict[str, list[Manifest]], name: str
) -> None:
    objects = rendered[name]
    deployment = only(objects, "Deployment")
    spec = deployment["spec"]
    pod_labels = spec["template"]["metadata"]["labels"]
    assert spec["replicas"] == 2
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert selector_matches(spec["selector"], pod_labels)

    budget = only(objects, "PodDisruptionBudget")["spec"]
    assert budget["minAvailable"] == 1
    assert selector_matches(budget["selector"], pod_labels)

    (term,) = spec["template"]["spec"]["affinity"]["podAntiAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"
    ]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert selector_matches(term["podAffinityTerm"]["labelSelector"], pod_labels)


@pytest.mark.parametrize("name", RENDERS)
def test_the_service_reaches_the_https_port_that_is_probed(
    rendered: dict[str, list[Manifest]], name: str
) -> None:
    objects = rendered[name]
    _, container = webhook_container(objects)
    pod_labels = only(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    service = only(objects, "Service")["spec"]
    assert selector_matches({"matchLabels": service["selector"]}, pod_labels)
    (port,) = service["ports"]
    assert port["port"] == 443
    assert container_port(container, port["targetPort"]) == 8443

    args = container["args"]
    assert args[0] == "serve"
    assert args[args.index("--port") + 1] == "8443"
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = container[probe]["httpGet"]
        assert get["path"] == path
        assert get["scheme"] == "HTTPS"
        assert container_port(container, get["port"]) == 8443


@pytest.mark.parametrize("name", RENDERS)
def test_the_server_reads_its_certificate_from_the_mounted_secret(
    rendered: dict[str, list[Manifest]], name: str
) -> None:
    spec, container = webhook_container(rendered[name])
    (secret_volume,) = [v for v in spec["volumes"] if "secret" in v]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == secret_volume["name"]]
    assert mount["readOnly"] is True
    assert "subPath" not in mount  # a subPath mount never sees the Secret's updates
    args = container["args"]
    for flag, key in (("--tls-cert", "tls.crt"), ("--tls-key", "tls.key")):
        assert Path(args[args.index(flag) + 1]) == Path(mount["mountPath"]) / key


@pytest.mark.parametrize("name", RENDERS)
def test_the_pod_meets_the_restricted_profile(
    rendered: dict[str, list[Manifest]], name: str
) -> None:
    objects = rendered[name]
    spec, container = webhook_container(objects)
    context = effective_security(spec, container)
    assert context["runAsNonRoot"] is True
    assert context["runAsUser"] == UID
    assert context["runAsGroup"] == UID
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context.get("privileged") in (None, False)
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    assert all("hostPort" not in port for port in container["ports"])
    assert {key for volume in spec["volumes"] for key in volume} <= {"name", "secret"}
    labels = only(objects, "Namespace")["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


@pytest.mark.parametrize("name", RENDERS)
def test_resources_are_bounded(rendered: dict[str, list[Manifest]], name: str) -> None:
    _, container = webhook_container(rendered[name])
    resources = container["resources"]
    for resource in ("cpu", "memory"):
        request = parse_quantity(resources["requests"][resource])
        limit = parse_quantity(resources["limits"][resource])
        assert request is not None
        assert limit is not None
        assert 0 < request <= limit, resource


@pytest.mark.parametrize("name", RENDERS)
def test_termination_leaves_time_to_leave_the_service_and_drain(
    rendered: dict[str, list[Manifest]], name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    objects = rendered[name]
    spec, container = webhook_container(objects)
    settings = settings_from(only(objects, "ConfigMap"), monkeypatch)
    # No shell in the image: the kubelet's own sleep action, never an exec of `sleep`.
    pre_stop = container["lifecycle"]["preStop"]
    assert set(pre_stop) == {"sleep"}
    sleep = pre_stop["sleep"]["seconds"]
    assert sleep >= 3
    assert spec["terminationGracePeriodSeconds"] > sleep + settings.shutdown_timeout


# --- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", RENDERS)
def test_the_config_map_holds_only_settings_the_webhook_accepts(
    rendered: dict[str, list[Manifest]], name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    objects = rendered[name]
    config_map = only(objects, "ConfigMap")
    for key in config_map["data"]:
        assert key.startswith(ENV_PREFIX), key
        assert key.removeprefix(ENV_PREFIX).lower() in Settings.model_fields, key
    settings_from(config_map, monkeypatch)  # raises on a value the webhook would refuse
    _, container = webhook_container(objects)
    assert container["envFrom"] == [{"configMapRef": {"name": config_map["metadata"]["name"]}}]


def test_kind_runs_the_locally_built_images_without_pulling(
    rendered: dict[str, list[Manifest]], monkeypatch: pytest.MonkeyPatch
) -> None:
    objects = rendered["kind"]
    _, container = webhook_container(objects)
    assert container["image"] == "model-injector/webhook:dev"
    assert container["imagePullPolicy"] == "Never"
    settings = settings_from(only(objects, "ConfigMap"), monkeypatch)
    assert settings.fetcher_image == "model-injector/fetcher:dev"
    assert settings.fetcher_pull_policy == "Never"


@pytest.mark.parametrize("name", OVERLAYS)
def test_overlays_keep_the_base_policy_on_schemes_or_widen_it_knowingly(
    rendered: dict[str, list[Manifest]], name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_from(only(rendered[name], "ConfigMap"), monkeypatch)
    assert "https" in settings.allowed_schemes
    # Only the local kind overlay lets the fetcher use plain HTTP (its test origin is in-cluster).
    assert ("http" in settings.allowed_schemes) == (name == "kind")
