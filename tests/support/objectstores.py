"""Real object-store APIs on 127.0.0.1 for the s3:// and gs:// tests.

- S3: moto's server, started as a process (as a user would run MinIO next to the tests), filled
  through botocore as the administrator, then locked: from then on every request must be signed
  by a known key and allowed by an IAM policy, so a wrong secret or a missing permission is
  refused as AWS refuses it.
- GCS: gcp-storage-emulator, in memory, and a token endpoint that grants access tokens to a
  service-account key made here, so google-auth runs its real JWT-grant refresh.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl

import botocore.session
import httpx
from botocore.config import Config
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

REGION = "us-east-1"
ADMIN = ("admin", "admin")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_server(command: list[str], url: str, ready_path: str = "/") -> subprocess.Popen[bytes]:
    """Start `command` and wait until `url + ready_path` answers at all."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(url + ready_path, timeout=1)
            return process
        except httpx.TransportError:
            if process.poll() is not None:
                raise RuntimeError(f"{command} exited with {process.returncode}") from None
            time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"{command} did not answer within 30s")


def stop_server(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def moto_server(port: int) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    return start_server(command, f"http://127.0.0.1:{port}", "/moto-api/")


def admin_client(url: str, service: str) -> Any:

    return botocore.session.Session().create_client(
        service,
        region_name=REGION,
        endpoint_url=url,
        aws_access_key_id=ADMIN[0],
        aws_secret_access_key=ADMIN[1],
        config=Config(s3={"addressing_style": "path"}),
    )


@dataclass
class S3:
    url: str
    reader: tuple[str, str]  # access key id and secret allowed s3:GetObject on every object
    outsider: tuple[str, str]  # valid keys without any permission


@contextmanager
def s3_with_iam(objects: Mapping[tuple[str, str], bytes]) -> Iterator[S3]:
    """A locked S3 holding `objects` ((bucket, key) -> bytes), with a reader and an outsider."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = moto_server(port)
    try:
        s3 = admin_client(url, "s3")
        for bucket in sorted({bucket for bucket, _ in objects}):
            s3.create_bucket(Bucket=bucket)
        for (bucket, key), body in objects.items():
            s3.put_object(Bucket=bucket, Key=key, Body=body)
        iam = admin_client(url, "iam")
        keys = {}
        for user in ("reader", "outsider"):
            iam.create_user(UserName=user)
            key = iam.create_access_key(UserName=user)["AccessKey"]
            keys[user] = (key["AccessKeyId"], key["SecretAccessKey"])
        buckets = sorted({bucket for bucket, _ in objects})
        policy = {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Action": "s3:GetObject",
                    "Resource": [f"arn:aws:s3:::{bucket}/*" for bucket in buckets],
                }
            ],
        }
        iam.put_user_policy(
            UserName="reader", PolicyName="read-models", PolicyDocument=json.dumps(policy)
        )
        # From here on every request must be signed by a known key and allowed by IAM.
        httpx.post(f"{url}/moto-api/reset-auth", content=b"0").raise_for_status()
        yield S3(url, keys["reader"], keys["outsider"])
    finally:
        stop_server(process)


@contextmanager
def gcs_emulator(objects: Mapping[tuple[str, str], bytes]) -> Iterator[str]:
    """gcp-storage-emulator in memory, holding `objects`; yields its URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [
        sys.executable, "-m", "gcp_storage_emulator", "start",
        "--host", "127.0.0.1", "--port", str(port), "--in-memory", "--quiet",
    ]  # fmt: skip
    process = start_server(command, url)
    try:
        for bucket in sorted({bucket for bucket, _ in objects}):
            httpx.post(
                f"{url}/storage/v1/b", params={"project": "test"}, json={"name": bucket}
            ).raise_for_status()
        for (bucket, key), body in objects.items():
            httpx.put(f"{url}/{bucket}/{key}", content=body).raise_for_status()
        yield url
    finally:
        stop_server(process)


ACCESS_TOKEN = "ya29.example-access-token"


class TokenServer(ThreadingHTTPServer):
    """Google's OAuth token endpoint as a service account's JWT grant meets it: every POST is
    recorded (form fields decoded) and answered with ACCESS_TOKEN."""

    def __init__(self) -> None:
        self.grants: list[dict[str, str]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"])).decode()
                server.grants.append(dict(parse_qsl(body)))
                answer = json.dumps({"access_token": ACCESS_TOKEN, "expires_in": 3600}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *_args: object) -> None:
                return None

        super().__init__(("127.0.0.1", 0), Handler)

    @property
    def token_uri(self) -> str:
        return f"http://127.0.0.1:{self.server_port}/token"

    def __enter__(self) -> TokenServer:
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.shutdown()
        self.server_close()


JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"


def service_account_key(token_uri: str) -> str:
    """A service-account key file's JSON, with a fresh RSA key and the token endpoint given."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return json.dumps(
        {
            "type": "service_account",
            "project_id": "models-project",
            "private_key_id": "0123456789abcdef",
            "private_key": pem,
            "client_email": "model-reader@models-project.iam.gserviceaccount.com",
            "client_id": "1234567890",
            "token_uri": token_uri,
        }
    )
