"""certs/certs.py: what the apiserver will check of the certificates, and CA rotation end to end."""

from __future__ import annotations

import base64
import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from tests.deploy.support import Outcome, call_certs, load_certs_tool, run_certs

NAMESPACE = "ml-platform"
SERVICE = "injector"
NAMES = [
    "injector",
    "injector.ml-platform",
    "injector.ml-platform.svc",
    "injector.ml-platform.svc.cluster.local",
]


CERTS = load_certs_tool()


@pytest.fixture(scope="module")
def certs() -> ModuleType:
    return CERTS


def certs_py(*args: str) -> Outcome:
    return call_certs(CERTS, *args)


def create(out: Path, *extra: str) -> None:
    result = certs_py(
        "create", "--namespace", NAMESPACE, "--service", SERVICE, "--out", str(out), *extra
    )
    assert result.returncode == 0, result.stderr


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def bundle_of(out: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates((out / "ca-bundle.crt").read_bytes())


def verifies(leaf: x509.Certificate, roots: list[x509.Certificate], name: str) -> bool:
    """A full path validation as a TLS client does it: chain, validity, SAN, serverAuth EKU."""
    verifier = PolicyBuilder().store(Store(roots)).build_server_verifier(x509.DNSName(name))
    try:
        verifier.verify(leaf, [])
    except VerificationError:
        return False
    return True


@contextmanager
def tls_server(out: Path) -> Iterator[int]:
    """A TLS server on loopback presenting the tls.crt/tls.key found in `out` right now."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(out / "tls.crt", out / "tls.key")
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)  # closing a socket does not wake accept(); polling the flag does
    port = listener.getsockname()[1]
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            connection.settimeout(10)
            with connection:
                try:
                    with context.wrap_socket(connection, server_side=True) as tls:
                        tls.sendall(b"ok")
                except (ssl.SSLError, OSError):
                    pass  # the client refused the certificate; the test sees that side

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        stop.set()
        thread.join(timeout=10)
        listener.close()


def handshake(port: int, bundle: Path, server_name: str) -> bytes:
    """Connect as the apiserver does: trust only the bundle, check the Service DNS name."""
    context = ssl.create_default_context(cafile=str(bundle))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=server_name) as tls,
    ):
        return tls.recv(2)


# --- create ----------------------------------------------------------------------------------


@pytest.mark.parametrize("key_type", ["ecdsa", "rsa"])
def test_serving_certificate_names_the_service_and_is_for_servers_only(
    tmp_path: Path, key_type: str
) -> None:
    create(tmp_path, "--key-type", key_type)
    leaf = load(tmp_path / "tls.crt")
    ca = load(tmp_path / "ca.crt")

    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == NAMES
    assert leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == NAMES[2]
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    constraints = leaf.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca is False
    usage = leaf.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical
    assert usage.value.digital_signature
    assert not usage.value.key_cert_sign
    assert leaf.not_valid_after_utc <= ca.not_valid_after_utc
    assert leaf.not_valid_before_utc < leaf.not_valid_after_utc

    key = leaf.public_key()
    if key_type == "ecdsa":
        assert isinstance(key, ec.EllipticCurvePublicKey)
        assert key.curve.name == "secp256r1"
    else:
        assert isinstance(key, rsa.RSAPublicKey)
        assert key.key_size >= 2048


def test_the_ca_can_sign_only_leaf_certificates(tmp_path: Path) -> None:
    create(tmp_path)
    ca = load(tmp_path / "ca.crt")
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca is True
    assert constraints.value.path_length == 0
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical
    assert usage.value.key_cert_sign
    assert ca.issuer == ca.subject
    ca.verify_directly_issued_by(ca)


def test_the_chain_verifies_for_every_service_name_and_no_other(tmp_path: Path) -> None:
    create(tmp_path)
    leaf, roots = load(tmp_path / "tls.crt"), bundle_of(tmp_path)
    for name in NAMES:
        assert verifies(leaf, roots, name), name
    assert not verifies(leaf, roots, "other.ml-platform.svc")
    assert not verifies(leaf, roots, "injector.default.svc")
    create(tmp_path / "unrelated")
    assert not verifies(leaf, bundle_of(tmp_path / "unrelated"), NAMES[2])


def test_python_ssl_handshake_succeeds_for_the_service_dns_names(tmp_path: Path) -> None:
    create(tmp_path)
    with tls_server(tmp_path) as port:
        for name in NAMES:
            assert handshake(port, tmp_path / "ca-bundle.crt", name) == b"ok"
        with pytest.raises(ssl.SSLCertVerificationError):
            handshake(port, tmp_path / "ca-bundle.crt", "model-injector.elsewhere.svc")


def test_manifests_carry_the_same_pair_and_bundle(tmp_path: Path) -> None:
    create(tmp_path)
    secret = yaml.safe_load((tmp_path / "secret.yaml").read_text())
    assert secret["kind"] == "Secret"
    assert secret["type"] == "kubernetes.io/tls"
    assert secret["metadata"] == {
        "name": "model-injector-tls",
        "namespace": NAMESPACE,
        "labels": {"app.kubernetes.io/name": "model-injector"},
    }
    data = {key: base64.b64decode(value) for key, value in secret["data"].items()}
    assert data["tls.crt"] == (tmp_path / "tls.crt").read_bytes()
    assert data["tls.key"] == (tmp_path / "tls.key").read_bytes()
    assert data["ca.crt"] == (tmp_path / "ca.crt").read_bytes()
    ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(
        tmp_path / "tls.crt", tmp_path / "tls.key"
    )  # raises if the key does not match the certificate

    carrier = yaml.safe_load((tmp_path / "ca-bundle.yaml").read_text())
    assert carrier["metadata"]["annotations"] == {"config.kubernetes.io/local-config": "true"}
    bundle = base64.b64decode(carrier["data"]["caBundle"], validate=True)
    assert bundle == (tmp_path / "ca-bundle.crt").read_bytes()


def test_private_keys_are_readable_by_their_owner_only(tmp_path: Path) -> None:
    create(tmp_path)
    for name in ("ca.key", "tls.key", "secret.yaml"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o600, name
    assert (tmp_path / "ca.crt").stat().st_mode & 0o077 == 0o044


def test_create_refuses_to_replace_a_ca_in_use(tmp_path: Path) -> None:
    create(tmp_path)
    before = (tmp_path / "ca.key").read_bytes()
    result = certs_py("create", "--out", str(tmp_path))
    assert result.returncode == 1
    assert "rotate" in result.stderr
    assert (tmp_path / "ca.key").read_bytes() == before
    create(tmp_path, "--force")
    assert (tmp_path / "ca.key").read_bytes() != before


def test_invalid_validity_is_a_usage_error(tmp_path: Path) -> None:
    result = certs_py("create", "--out", str(tmp_path), "--days", "0")
    assert result.returncode == 2
    assert "--days must be at least 1" in result.stderr
    assert not (tmp_path / "ca.key").exists()


def test_commands_other_than_create_need_create_first(tmp_path: Path) -> None:
    for command in ("renew", "rotate", "finish-rotation"):
        result = certs_py(command, "--out", str(tmp_path))
        assert result.returncode == 1, command
        assert "create" in result.stderr or "nothing to do" in result.stderr


# --- renew and rotate ------------------------------------------------------------------------


def test_renew_issues_a_new_leaf_from_the_same_ca(tmp_path: Path) -> None:
    create(tmp_path)
    old_leaf, ca_pem = load(tmp_path / "tls.crt"), (tmp_path / "ca.crt").read_bytes()
    bundle = (tmp_path / "ca-bundle.crt").read_bytes()
    assert certs_py("renew", "--out", str(tmp_path), "--days", "30").returncode == 0
    new_leaf = load(tmp_path / "tls.crt")
    assert new_leaf.serial_number != old_leaf.serial_number
    assert (tmp_path / "ca.crt").read_bytes() == ca_pem
    assert (tmp_path / "ca-bundle.crt").read_bytes() == bundle
    lifetime = new_leaf.not_valid_after_utc - new_leaf.not_valid_before_utc
    assert 29 < lifetime.days <= 30
    # The Service names come from settings.json, not from flags repeated by hand.
    assert verifies(new_leaf, bundle_of(tmp_path), NAMES[3])


def test_rotation_trusts_old_and_new_until_finished(tmp_path: Path) -> None:
    """The sequence an operator runs, with the TLS handshakes the apiserver would make."""
    live = tmp_path / "live"
    create(live)
    old_pair = tmp_path / "old-pair"
    old_pair.mkdir()
    for name in ("tls.crt", "tls.key"):
        (old_pair / name).write_bytes((live / name).read_bytes())
    old_ca = load(live / "ca.crt")

    result = certs_py("rotate", "--out", str(live))
    assert result.returncode == 0, result.stderr
    new_ca = load(live / "ca.crt")
    assert new_ca != old_ca
    assert bundle_of(live) == [old_ca, new_ca]
    assert load(live / "previous-ca.crt") == old_ca
    load(live / "tls.crt").verify_directly_issued_by(new_ca)
    carrier = yaml.safe_load((live / "ca-bundle.yaml").read_text())
    assert base64.b64decode(carrier["data"]["caBundle"]) == (live / "ca-bundle.crt").read_bytes()

    # While the Secret propagates, pods serve either pair: the bundle must accept both.
    bundle = live / "ca-bundle.crt"
    for pair in (old_pair, live):
        with tls_server(pair) as port:
            assert handshake(port, bundle, NAMES[2]) == b"ok"

    again = certs_py("rotate", "--out", str(live))
    assert again.returncode == 1
    assert "finish-rotation" in again.stderr

    result = certs_py("finish-rotation", "--out", str(live))
    assert result.returncode == 0, result.stderr
    assert bundle_of(live) == [new_ca]
    assert not (live / "previous-ca.crt").exists()
    carrier = yaml.safe_load((live / "ca-bundle.yaml").read_text())
    assert base64.b64decode(carrier["data"]["caBundle"]) == new_ca.public_bytes(Encoding.PEM)
    with tls_server(live) as port:
        assert handshake(port, bundle, NAMES[2]) == b"ok"
    with tls_server(old_pair) as port, pytest.raises(ssl.SSLCertVerificationError):
        handshake(port, bundle, NAMES[2])

    finished = certs_py("finish-rotation", "--out", str(live))
    assert finished.returncode == 1
    assert "no rotation is pending" in finished.stderr


def test_renew_during_a_rotation_keeps_both_cas(tmp_path: Path) -> None:
    create(tmp_path)
    old_ca = load(tmp_path / "ca.crt")
    assert certs_py("rotate", "--out", str(tmp_path)).returncode == 0
    assert certs_py("renew", "--out", str(tmp_path)).returncode == 0
    assert bundle_of(tmp_path) == [old_ca, load(tmp_path / "ca.crt")]


# --- the library functions -------------------------------------------------------------------


def test_dns_names_follow_the_cluster_domain(certs: ModuleType) -> None:
    target = certs.Target(
        namespace="a", service="b", secret_name="c", cluster_domain="corp.example"
    )
    assert target.dns_names == ["b", "b.a", "b.a.svc", "b.a.svc.corp.example"]


def test_a_leaf_never_outlives_its_ca(certs: ModuleType) -> None:
    ca_key, ca_cert = certs.new_ca("short-lived CA", "ecdsa", days=10)
    target = certs.Target(namespace="n", service="s", secret_name="x")
    _, leaf = certs.new_serving_cert(ca_key, ca_cert, target, days=365)
    assert leaf.not_valid_after_utc == ca_cert.not_valid_after_utc


def test_the_script_runs_on_its_own(tmp_path: Path) -> None:
    result = run_certs("create", "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    assert verifies(
        load(tmp_path / "out" / "tls.crt"),
        bundle_of(tmp_path / "out"),
        "model-injector.model-injector.svc",
    )
