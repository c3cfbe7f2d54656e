"""Certificates for the admission webhook: a private CA, a serving certificate, and CA rotation.

    python certs/certs.py create --namespace model-injector --service model-injector --out DIR
    python certs/certs.py renew --out DIR            # new serving certificate, same CA
    python certs/certs.py rotate --out DIR           # new CA; the bundle trusts old and new
    python certs/certs.py finish-rotation --out DIR  # drop the old CA from the bundle

The kube-apiserver trusts the webhook through `caBundle` in the webhook configurations, and the
webhook serves the certificate from a TLS Secret. Every command rewrites the same files in DIR:

    ca.crt, ca.key          the current CA (the key never leaves DIR)
    previous-ca.crt         the CA being retired, only while a rotation is pending
    tls.crt, tls.key        the serving certificate for the Service's DNS names
    ca-bundle.crt           what the apiserver must trust: the current CA (+ previous-ca.crt)
    secret.yaml             the kubernetes.io/tls Secret the webhook pods mount
    ca-bundle.yaml          a kustomize-local ConfigMap carrying the base64 caBundle, which the
                            overlay copies into every webhook with a replacement
    settings.json           namespace, service and Secret name, so later commands need only --out

Rotating a CA without refusing a single admission takes two applies. `rotate` issues a new CA and
a new serving certificate and writes a bundle holding both CAs, so whichever certificate a pod
serves while the Secret propagates (the kubelet refreshes Secret volumes within a minute or two,
and the webhook reloads it without a restart) is trusted. Once every pod serves the new
certificate, `finish-rotation` writes a bundle with the new CA only.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
KeyType = Literal["ecdsa", "rsa"]

CA_DAYS = 3650
SERVING_DAYS = 365
# Certificates start a little in the past so a node whose clock lags still accepts them.
BACKDATE = datetime.timedelta(minutes=5)
RSA_BITS = 3072

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
PREVIOUS_CA = "previous-ca.crt"
TLS_CERT = "tls.crt"
TLS_KEY = "tls.key"
BUNDLE = "ca-bundle.crt"
SECRET_MANIFEST = "secret.yaml"  # noqa: S105  (a file name)
BUNDLE_MANIFEST = "ca-bundle.yaml"
SETTINGS = "settings.json"
BUNDLE_CONFIGMAP = "model-injector-ca-bundle"


class CertsError(Exception):
    """A refusal with a sentence that says what to do instead."""


@dataclass(frozen=True)
class Target:
    namespace: str
    service: str
    secret_name: str
    cluster_domain: str = "cluster.local"
    key_type: KeyType = "ecdsa"

    @property
    def dns_names(self) -> list[str]:
        """Every name a client inside the cluster may use for the Service."""
        svc, ns = self.service, self.namespace
        return [svc, f"{svc}.{ns}", f"{svc}.{ns}.svc", f"{svc}.{ns}.svc.{self.cluster_domain}"]


def new_key(key_type: KeyType) -> PrivateKey:
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    return ec.generate_private_key(ec.SECP256R1())


def _validity(days: int) -> tuple[datetime.datetime, datetime.datetime]:
    now = datetime.datetime.now(datetime.UTC)
    return now - BACKDATE, now + datetime.timedelta(days=days)


def new_ca(
    common_name: str, key_type: KeyType, days: int = CA_DAYS
) -> tuple[PrivateKey, x509.Certificate]:
    key = new_key(key_type)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "model-injector"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    not_before, not_after = _validity(days)
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        # pathlen 0: this CA signs serving certificates only, never another CA.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def new_serving_cert(
    ca_key: PrivateKey, ca_cert: x509.Certificate, target: Target, days: int = SERVING_DAYS
) -> tuple[PrivateKey, x509.Certificate]:
    key = new_key(target.key_type)
    names = target.dns_names
    not_before, not_after = _validity(days)
    # A leaf must not outlive the CA that vouches for it.
    not_after = min(not_after, ca_cert.not_valid_after_utc)
    public = key.public_key()
    ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[2])]))
        .issuer_name(ca_cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                # RSA key exchange encrypts with the key; ECDSA keys only ever sign.
                key_encipherment=isinstance(key, rsa.RSAPrivateKey),
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def secret_manifest(target: Target, tls_crt: bytes, tls_key: bytes, ca_crt: bytes) -> str:
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": target.secret_name,
            "namespace": target.namespace,
            "labels": {"app.kubernetes.io/name": "model-injector"},
        },
        "type": "kubernetes.io/tls",
        "data": {"tls.crt": _b64(tls_crt), "tls.key": _b64(tls_key), "ca.crt": _b64(ca_crt)},
    }
    return yaml.safe_dump(secret, sort_keys=False)


def bundle_manifest(target: Target, bundle: bytes) -> str:
    carrier = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": BUNDLE_CONFIGMAP,
            "namespace": target.namespace,
            # kustomize reads it for the caBundle replacement and leaves it out of the output.
            "annotations": {"config.kubernetes.io/local-config": "true"},
        },
        "data": {"caBundle": _b64(bundle)},
    }
    return yaml.safe_dump(carrier, sort_keys=False)


def _write(path: Path, data: bytes | str, *, private: bool = False) -> None:
    """Write next to the destination and rename, so a reader never sees half a file."""
    content = data.encode("utf-8") if isinstance(data, str) else data
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o600 if private else 0o644)
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
        Path(temp).replace(path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def _read_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except FileNotFoundError as error:
        raise CertsError(f"{path} is missing; run `create` first") from error


def _read_key(path: Path) -> PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError as error:
        raise CertsError(f"{path} is missing; run `create` first") from error
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise CertsError(f"{path} holds a {type(key).__name__}; expected an ECDSA or RSA key")
    return key


def _load_target(out: Path) -> Target:
    path = out / SETTINGS
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise CertsError(f"{path} is missing; run `create` first") from error
    try:
        return Target(**raw)
    except TypeError as error:
        raise CertsError(f"{path} is not a settings file this tool wrote: {error}") from error


def _publish(
    out: Path,
    target: Target,
    ca_key: PrivateKey,
    ca_cert: x509.Certificate,
    *,
    previous_ca: x509.Certificate | None,
    serving_days: int,
) -> None:
    """Issue a serving certificate from the CA and write every output file consistently."""
    tls_key, tls_cert = new_serving_cert(ca_key, ca_cert, target, serving_days)
    trusted = [previous_ca, ca_cert] if previous_ca is not None else [ca_cert]
    bundle = b"".join(cert_pem(cert) for cert in trusted)
    # The retiring CA goes to disk before anything replaces it, so no crash can lose it.
    if previous_ca is not None:
        _write(out / PREVIOUS_CA, cert_pem(previous_ca))
    _write(out / CA_KEY, key_pem(ca_key), private=True)
    _write(out / CA_CERT, cert_pem(ca_cert))
    _write(out / TLS_KEY, key_pem(tls_key), private=True)
    _write(out / TLS_CERT, cert_pem(tls_cert))
    _write(out / BUNDLE, bundle)
    manifest = secret_manifest(target, cert_pem(tls_cert), key_pem(tls_key), cert_pem(ca_cert))
    _write(out / SECRET_MANIFEST, manifest, private=True)
    _write(out / BUNDLE_MANIFEST, bundle_manifest(target, bundle))
    _write(out / SETTINGS, json.dumps(asdict(target), indent=2) + "\n")


def create(out: Path, target: Target, *, ca_days: int, serving_days: int, force: bool) -> None:
    if (out / CA_KEY).exists() and not force:
        raise CertsError(
            f"{out / CA_KEY} already exists; use `renew` or `rotate` to keep the cluster's trust, "
            "or --force to start over"
        )
    out.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = new_ca(
        f"{target.service}.{target.namespace} webhook CA", target.key_type, ca_days
    )
    _publish(out, target, ca_key, ca_cert, previous_ca=None, serving_days=serving_days)


def renew(out: Path, *, serving_days: int) -> None:
    """A new serving certificate from the current CA; the bundle does not change."""
    target = _load_target(out)
    previous = _read_cert(out / PREVIOUS_CA) if (out / PREVIOUS_CA).exists() else None
    ca_key, ca_cert = _read_key(out / CA_KEY), _read_cert(out / CA_CERT)
    _publish(out, target, ca_key, ca_cert, previous_ca=previous, serving_days=serving_days)


def rotate(out: Path, *, ca_days: int, serving_days: int) -> None:
    target = _load_target(out)
    if (out / PREVIOUS_CA).exists():
        raise CertsError(
            f"a rotation is already pending ({out / PREVIOUS_CA} exists); once every webhook pod "
            "serves the new certificate, run `finish-rotation` first"
        )
    old_ca = _read_cert(out / CA_CERT)
    ca_key, ca_cert = new_ca(
        f"{target.service}.{target.namespace} webhook CA", target.key_type, ca_days
    )
    _publish(out, target, ca_key, ca_cert, previous_ca=old_ca, serving_days=serving_days)


def finish_rotation(out: Path) -> None:
    if not (out / PREVIOUS_CA).exists():
        raise CertsError(
            f"no rotation is pending in {out} ({PREVIOUS_CA} is absent); nothing to do"
        )
    target = _load_target(out)
    ca_cert = _read_cert(out / CA_CERT)
    bundle = cert_pem(ca_cert)
    _write(out / BUNDLE, bundle)
    _write(out / BUNDLE_MANIFEST, bundle_manifest(target, bundle))
    (out / PREVIOUS_CA).unlink()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="certs.py", description="CA and serving certificate for the model-injector webhook."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    def add_out(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--out", type=Path, required=True, help="folder holding the certificates")

    def add_days(sub: argparse.ArgumentParser, *, ca: bool) -> None:
        if ca:
            sub.add_argument(
                "--ca-days", type=int, default=CA_DAYS, help=f"CA validity ({CA_DAYS})"
            )
        sub.add_argument(
            "--days", type=int, default=SERVING_DAYS, help=f"serving cert validity ({SERVING_DAYS})"
        )

    create_cmd = commands.add_parser("create", help="a new CA, serving certificate and manifests")
    add_out(create_cmd)
    create_cmd.add_argument("--namespace", default="model-injector")
    create_cmd.add_argument("--service", default="model-injector")
    create_cmd.add_argument("--secret-name", default="model-injector-tls")
    create_cmd.add_argument("--cluster-domain", default="cluster.local")
    create_cmd.add_argument("--key-type", choices=["ecdsa", "rsa"], default="ecdsa")
    create_cmd.add_argument("--force", action="store_true", help="replace an existing CA")
    add_days(create_cmd, ca=True)

    renew_cmd = commands.add_parser("renew", help="a new serving certificate from the same CA")
    add_out(renew_cmd)
    add_days(renew_cmd, ca=False)

    rotate_cmd = commands.add_parser("rotate", help="a new CA; the bundle trusts old and new")
    add_out(rotate_cmd)
    add_days(rotate_cmd, ca=True)

    finish_cmd = commands.add_parser("finish-rotation", help="drop the old CA from the bundle")
    add_out(finish_cmd)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    out: Path = args.out
    for option in ("days", "ca_days"):
        if getattr(args, option, 1) < 1:
            parser.error(f"--{option.replace('_', '-')} must be at least 1")
    try:
        if args.command == "create":
            target = Target(
                namespace=args.namespace,
                service=args.service,
                secret_name=args.secret_name,
                cluster_domain=args.cluster_domain,
                key_type=args.key_type,
            )
            create(out, target, ca_days=args.ca_days, serving_days=args.days, force=args.force)
        elif args.command == "renew":
            renew(out, serving_days=args.days)
        elif args.command == "rotate":
            rotate(out, ca_days=args.ca_days, serving_days=args.days)
        else:
            finish_rotation(out)
    except CertsError as error:
        print(f"certs: {error}", file=sys.stderr)
        return 1
    print(f"certs: wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
