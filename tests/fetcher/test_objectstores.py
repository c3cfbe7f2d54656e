"""s3:// and gs:// sources against real S3 and GCS API implementations on 127.0.0.1.

Two moto servers (one enforcing IAM and SigV4 signatures, one open, for anonymous reads of a
public object, which moto's IAM mode cannot serve) and gcp-storage-emulator are started here as
processes. The errors no emulator produces (S3's wrong-region and expired-token answers, GCS's
401 and 403) are served by a small server below with the clouds' documented error bodies.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.fetcher.conftest import run_fetch, sha256
from tests.support.archives import fetched_tree, make_tree, py_archive, tree_snapshot, write_tree
from tests.support.events import checkpoint_progress, wait_until
from tests.support.objectstores import (
    ACCESS_TOKEN,
    JWT_BEARER,
    REGION,
    S3,
    TokenServer,
    admin_client,
    free_port,
    gcs_emulator,
    moto_server,
    s3_with_iam,
    service_account_key,
    stop_server,
)
from tests.support.origin import Faults, Origin

TREE = dict(make_tree(seed=11, n_files=12, total_bytes=1_500_000))
ARCHIVE = py_archive(TREE, "zst", parts=24)
DIGEST = sha256(ARCHIVE)
FAST = ["--retry-wait", "0.01", "--retries", "1", "--timeout", "5"]


@pytest.fixture(scope="module")
def s3() -> Iterator[S3]:
    """A moto server that checks signatures and IAM policies, with a private bucket."""
    with s3_with_iam({("private-models", "llama/model.tar.zst"): ARCHIVE}) as server:
        yield server


@pytest.fixture(scope="module")
def public_s3() -> Iterator[str]:
    """A moto server without IAM: a public-read object and a private one."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = moto_server(port)
    try:
        client = admin_client(url, "s3")
        client.create_bucket(Bucket="open-models")
        client.put_object(
            Bucket="open-models", Key="public/model.tar.zst", Body=ARCHIVE, ACL="public-read"
        )
        client.put_object(Bucket="open-models", Key="private/model.tar.zst", Body=ARCHIVE)
        yield url
    finally:
        stop_server(process)


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """Nothing from this machine's AWS setup: no files, no instance metadata, no keys."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_REGION", REGION)
    return monkeypatch


def _keys(env: pytest.MonkeyPatch, keys: tuple[str, str]) -> None:
    env.setenv("AWS_ACCESS_KEY_ID", keys[0])
    env.setenv("AWS_SECRET_ACCESS_KEY", keys[1])


def _expected_tree(tmp_path: Path) -> object:
    return tree_snapshot(write_tree(TREE, tmp_path / "expected"))


def _last_line(err: str) -> str:
    return err.strip().splitlines()[-1]


# --- S3 ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("connections", ["1", "4"])
def test_private_s3_object_with_keys_single_and_parallel_ranges(
    s3: S3, aws_env: pytest.MonkeyPatch, tmp_path: Path, connections: str
) -> None:
    _keys(aws_env, s3.reader)
    out = tmp_path / "out"
    code = run_fetch(
        "s3://private-models/llama/model.tar.zst", "-o", out, "--sha256", DIGEST,
        "--s3-endpoint", s3.url, "--connections", connections, "--chunk-size", "256K", *FAST,
    )  # fmt: skip
    assert code == 0
    assert fetched_tree(out) == _expected_tree(tmp_path)


def test_endpoint_from_aws_endpoint_url_and_keys_never_logged(
    s3: S3, aws_env: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _keys(aws_env, s3.reader)
    aws_env.setenv("AWS_ENDPOINT_URL", s3.url)
    code = run_fetch("s3://private-models/llama/model.tar.zst", "-o", tmp_path / "o", *FAST)
    output = capsys.readouterr()
    assert code == 0
    assert s3.reader[1] not in output.err + output.out
    assert s3.reader[0] not in output.err + output.out
    assert "s3://private-models/llama/model.tar.zst" in output.err


def test_public_s3_object_anonymously(
    public_s3: str, aws_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    code = run_fetch(
        "s3://open-models/public/model.tar.zst", "-o", out, "--sha256", DIGEST,
        "--s3-endpoint", public_s3, "--chunk-size", "256K", *FAST,
    )  # fmt: skip
    assert code == 0
    assert fetched_tree(out) == _expected_tree(tmp_path)


def test_mirror_pair_s3_then_https_takes_over_when_s3_refuses(
    s3: S3, aws_env: pytest.MonkeyPatch, tmp_path: Path, origin: Origin
) -> None:
    _keys(aws_env, s3.outsider)  # valid keys, no permission: S3 refuses, the mirror serves
    origin.add("/model.tar.zst", ARCHIVE)
    out = tmp_path / "out"
    code = run_fetch(
        "s3://private-models/llama/model.tar.zst", "--mirror", origin.url("/model.tar.zst"),
        "-o", out, "--sha256", DIGEST, "--s3-endpoint", s3.url, "--chunk-size", "256K", *FAST,
    )  # fmt: skip
    assert code == 0
    assert fetched_tree(out) == _expected_tree(tmp_path)
    assert origin.requests  # the https mirror did the work


def test_mirror_pair_s3_and_https_share_parallel_ranges(
    s3: S3, aws_env: pytest.MonkeyPatch, tmp_path: Path, origin: Origin
) -> None:
    _keys(aws_env, s3.reader)
    origin.add("/model.tar.zst", ARCHIVE)
    out = tmp_path / "out"
    code = run_fetch(
        "s3://private-models/llama/model.tar.zst", "--mirror", origin.url("/model.tar.zst"),
        "-o", out, "--sha256", DIGEST, "--s3-endpoint", s3.url, "--chunk-size", "128K",
        "--connections", "4", *FAST,
    )  # fmt: skip
    assert code == 0
    assert fetched_tree(out) == _expected_tree(tmp_path)
    assert any(r.status == 206 for r in origin.requests)


def test_s3_resume_after_sigkill(s3: S3, aws_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _keys(aws_env, s3.reader)
    # Checkpoints sync the output's filesystem: on a tmpfs when there is one, so a busy shared
    # disk does not set the pace.
    shm = Path("/dev/shm")
    base = Path(tempfile.mkdtemp(dir=shm)) if shm.is_dir() else tmp_path
    out = base / "out"
    command = [
        sys.executable, "-m", "fetcher", "s3://private-models/llama/model.tar.zst", "-o", str(out),
        "--sha256", DIGEST, "--s3-endpoint", s3.url, "--connections", "2",
        "--chunk-size", "128K", "--max-disk-buffer", "512K", "--checkpoint-interval", "0.1",
        "--max-bandwidth", "300K", *FAST,
    ]  # fmt: skip
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    # Killed as soon as a checkpoint with progress in it is on disk, however long the start
    # took: the throttle (about 4 s for the whole archive) keeps the run going until then.
    checkpoint = out / ".model-fetch" / "checkpoint.json"
    wait_until(
        lambda: checkpoint_progress(checkpoint) > 0 or process.poll() is not None,
        what="a checkpoint with progress",
    )
    assert process.poll() is None, process.communicate()[1]
    process.send_signal(signal.SIGKILL)
    process.communicate()
    assert 0 < checkpoint_progress(checkpoint) < len(ARCHIVE)
    command[command.index("--max-bandwidth") + 1] = "100M"
    try:
        final = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert final.returncode == 0, final.stderr
        assert "resuming from a checkpoint" in final.stderr
        assert f"sha256 {DIGEST} verified" in final.stderr
        assert fetched_tree(out) == _expected_tree(tmp_path)
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize("connections", ["1", "4"])
def test_s3_missing_object_ends_with_one_line_naming_it(
    *,
    s3: S3,
    aws_env: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    connections: str,
) -> None:
    _keys(aws_env, s3.reader)
    code = run_fetch(
        "s3://private-models/llama/missing.tar.zst", "-o", tmp_path / "o",
        "--s3-endpoint", s3.url, "--connections", connections, *FAST,
    )  # fmt: skip
    last = _last_line(capsys.readouterr().err)
    assert code == 5
    assert "s3://private-models/llama/missing.tar.zst: the object does not exist" in last
    assert "NoSuchKey" in last
    assert "check the key" in last


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        (
            "outsider",  # valid keys without permission on the object
            [
                "s3://private-models/llama/model.tar.zst: access denied (HTTP 403 AccessDenied)",
                "s3:GetObject",
            ],
        ),
        (
            "wrong-secret",
            ["the credentials were refused (HTTP 403 SignatureDoesNotMatch)", "check"],
        ),
    ],
)
def test_s3_refused_keys_end_with_what_to_check(
    *,
    s3: S3,
    aws_env: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    keys: str,
    expected: list[str],
) -> None:
    access_key, secret = s3.outsider if keys == "outsider" else (s3.reader[0], "not-the-secret")
    _keys(aws_env, (access_key, secret))
    code = run_fetch(
        "s3://private-models/llama/model.tar.zst", "-o", tmp_path / "o",
        "--s3-endpoint", s3.url, *FAST,
    )  # fmt: skip
    output = capsys.readouterr()
    last = _last_line(output.err)
    assert code == 5
    for part in expected:
        assert part in last
    assert secret not in output.err + output.out


def test_s3_private_object_anonymously_says_no_credentials_were_found(
    public_s3: str, aws_env: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = run_fetch(
        "s3://open-models/private/model.tar.zst", "-o", tmp_path / "o",
        "--s3-endpoint", public_s3, *FAST,
    )  # fmt: skip
    last = _last_line(capsys.readouterr().err)
    assert code == 5
    assert "s3://open-models/private/model.tar.zst: access denied" in last
    assert "no AWS credentials were found" in last


WRONG_REGION = b"""<?xml version="1.0" encoding="UTF-8"?>
<Error><Code>AuthorizationHeaderMalformed</Code><Message>The authorization header is malformed;
the region 'us-east-1' is wrong; expecting 'eu-west-1'</Message><Region>eu-west-1</Region>
<RequestId>X</RequestId></Error>"""
PERMANENT_REDIRECT = b"""<?xml version="1.0" encoding="UTF-8"?>
<Error><Code>PermanentRedirect</Code><Message>The bucket you are attempting to access must be
addressed using the specified endpoint.</Message><Endpoint>models.s3.eu-west-1.amazonaws.com
</Endpoint><Bucket>models</Bucket></Error>"""
EXPIRED = b"""<?xml version="1.0" encoding="UTF-8"?>
<Error><Code>ExpiredToken</Code><Message>The provided token has expired.</Message></Error>"""


@pytest.mark.parametrize(
    ("status", "body", "headers", "expected"),
    [
        (400, WRONG_REGION, {}, "the bucket is in region eu-west-1, not us-east-1"),
        (
            301,
            PERMANENT_REDIRECT,
            {"x-amz-bucket-region": "eu-west-1"},
            "the bucket is in region eu-west-1, not us-east-1",
        ),
        (400, EXPIRED, {}, "the credentials have expired (HTTP 400 ExpiredToken)"),
    ],
    ids=["authorization-header-malformed", "permanent-redirect", "expired-token"],
)
def test_s3_answers_no_emulator_gives(
    *,
    aws_env: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    status: int,
    body: bytes,
    headers: dict[str, str],
    expected: str,
) -> None:
    _keys(aws_env, ("AKIAEXAMPLE", "secret-example"))
    aws_env.setenv("AWS_SESSION_TOKEN", "session-token-example")
    with _ErrorServer(status, body, headers) as url:
        code = run_fetch(
            "s3://models/llama/model.tar.zst", "-o", tmp_path / "o", "--s3-endpoint", url, *FAST
        )
    output = capsys.readouterr()
    last = _last_line(output.err)
    assert code == 5
    assert last.endswith(last.split("; ", 1)[1])
    assert f"s3://models/llama/model.tar.zst: {expected}" in last
    if "region" in expected:
        assert "set AWS_REGION=eu-west-1" in last
    for secret in ("secret-example", "session-token-example"):
        assert secret not in output.err + output.out


# --- GCS ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gcs() -> Iterator[str]:
    with gcs_emulator({("gcs-models", "llama/model.tar.zst"): ARCHIVE}) as url:
        yield url


@pytest.fixture
def token_server() -> Iterator[TokenServer]:
    with TokenServer() as server:
        yield server


def _service_account(tmp_path: Path, token_server: TokenServer) -> Path:
    key = tmp_path / "key.json"
    key.write_text(service_account_key(token_server.token_uri))
    return key


@pytest.fixture
def gcp_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    for name in ("GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_CLOUD_PROJECT", "CLOUDSDK_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "no-gcloud"))
    monkeypatch.setenv("NO_GCE_CHECK", "true")  # no metadata server here
    return monkeypatch


@pytest.mark.parametrize("connections", ["1", "4"])
def test_gcs_object_with_application_default_credentials(
    *,
    gcs: str,
    gcp_env: pytest.MonkeyPatch,
    token_server: TokenServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    connections: str,
) -> None:
    key = _service_account(tmp_path, token_server)
    gcp_env.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key))
    gcp_env.setenv("STORAGE_EMULATOR_HOST", gcs)
    out = tmp_path / "out"
    code = run_fetch(
        "gs://gcs-models/llama/model.tar.zst", "-o", out, "--sha256", DIGEST,
        "--connections", connections, "--chunk-size", "256K", *FAST,
    )  # fmt: skip
    output = capsys.readouterr()
    assert code == 0
    assert fetched_tree(out) == _expected_tree(tmp_path)
    # One JWT grant, shared by every connection; neither the key nor the token is shown.
    assert [grant["grant_type"] for grant in token_server.grants] == [JWT_BEARER]
    private_key = json.loads(key.read_text())["private_key"]
    for secret in (ACCESS_TOKEN, private_key.splitlines()[1]):
        assert secret not in output.err + output.out


def test_gcs_anonymous_and_missing_object(
    gcs: str, gcp_env: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gcp_env.setenv("STORAGE_EMULATOR_HOST", gcs)
    assert run_fetch("gs://gcs-models/llama/model.tar.zst", "-o", tmp_path / "a", *FAST) == 0
    capsys.readouterr()
    code = run_fetch("gs://gcs-models/llama/missing.tar.zst", "-o", tmp_path / "b", *FAST)
    last = _last_line(capsys.readouterr().err)
    assert code == 5
    assert "gs://gcs-models/llama/missing.tar.zst: the object does not exist" in last


def test_gcs_mirror_after_https(
    gcs: str, gcp_env: pytest.MonkeyPatch, tmp_path: Path, origin: Origin
) -> None:
    gcp_env.setenv("STORAGE_EMULATOR_HOST", gcs)
    origin.add("/model.tar.zst", ARCHIVE, faults=Faults(not_found=True))
    out = tmp_path / "out"
    code = run_fetch(
        origin.url("/model.tar.zst"), "--mirror", "gs://gcs-models/llama/model.tar.zst",
        "-o", out, "--sha256", DIGEST, *FAST,
    )  # fmt: skip
    assert code == 0
    assert fetched_tree(out) == _expected_tree(tmp_path)


GCS_DENIED = b"""<?xml version='1.0' encoding='UTF-8'?><Error><Code>AccessDenied</Code>
<Message>Access denied.</Message><Details>reader@p.iam.gserviceaccount.com does not have
storage.objects.get access</Details></Error>"""
GCS_EXPIRED = b"""<?xml version='1.0' encoding='UTF-8'?><Error><Code>AuthenticationRequired
</Code><Message>Invalid Credentials</Message></Error>"""


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (403, GCS_DENIED, "access denied (HTTP 403 AccessDenied); check that the service account"),
        (401, GCS_EXPIRED, "the credentials were refused or have expired (HTTP 401"),
    ],
    ids=["access-denied", "expired-token"],
)
def test_gcs_answers_no_emulator_gives(
    *,
    gcp_env: pytest.MonkeyPatch,
    token_server: TokenServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    status: int,
    body: bytes,
    expected: str,
) -> None:
    key = _service_account(tmp_path, token_server)
    gcp_env.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key))
    with _ErrorServer(status, body, {}) as url:
        gcp_env.setenv("STORAGE_EMULATOR_HOST", url)
        code = run_fetch("gs://models/llama/model.tar.zst", "-o", tmp_path / "o", *FAST)
    output = capsys.readouterr()
    assert code == 5
    assert f"gs://models/llama/model.tar.zst: {expected}" in _last_line(output.err)
    assert ACCESS_TOKEN not in output.err + output.out


class _ErrorServer:
    """Answers every request with one status, body and headers, as a cloud's error reply."""

    def __init__(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self._status, self._body, self._headers = status, body, headers

    def __enter__(self) -> str:
        status, body, headers = self._status, self._body, self._headers

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: object) -> None:
                return None

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self._server.server_port}"

    def __exit__(self, *_exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def test_s3_region_option_is_the_region_requests_are_signed_for(
    aws_env: pytest.MonkeyPatch, tmp_path: Path, origin: Origin, capsys: pytest.CaptureFixture[str]
) -> None:
    _keys(aws_env, ("AKIAEXAMPLE", "secret-example"))
    origin.add("/models/llama/model.tar.zst", ARCHIVE)  # path style: /BUCKET/KEY
    out = tmp_path / "out"
    code = run_fetch(
        "s3://models/llama/model.tar.zst", "-o", out, "--sha256", DIGEST,
        "--s3-endpoint", origin.base_url, "--s3-region", "eu-west-1", "--connections", "4",
        "--chunk-size", "256K", *FAST,
    )  # fmt: skip
    output = capsys.readouterr()
    assert code == 0, output.err
    assert fetched_tree(out) == _expected_tree(tmp_path)
    signed = [r.authorization or "" for r in origin.requests]
    assert signed
    assert all(
        a.startswith("AWS4-HMAC-SHA256 Credential=AKIAEXAMPLE/")
        and "/eu-west-1/s3/aws4_request" in a
        for a in signed
    ), signed
    assert "s3://models/llama/model.tar.zst: env credentials, region eu-west-1" in output.err
    assert "secret-example" not in output.err + output.out


def test_gcs_key_file_that_cannot_be_loaded_is_not_taken_for_anonymous(
    gcs: str,
    gcp_env: pytest.MonkeyPatch,
    tmp_path: Path,
    origin: Origin,
    capsys: pytest.CaptureFixture[str],
) -> None:
    gcp_env.setenv("STORAGE_EMULATOR_HOST", gcs)  # would serve the object anonymously
    gcp_env.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing" / "key.json"))
    code = run_fetch("gs://gcs-models/llama/model.tar.zst", "-o", tmp_path / "a", *FAST)
    last = _last_line(capsys.readouterr().err)
    assert code == 5
    assert (
        "gs://gcs-models/llama/model.tar.zst: GOOGLE_APPLICATION_CREDENTIALS "
        f"names {tmp_path / 'missing' / 'key.json'}, which could not be loaded"
    ) in last
    assert "the key key.json" in last
    assert not (tmp_path / "a" / ".model-fetch.json").exists()

    # An https mirror still serves the model when the gs:// origin cannot be used.
    origin.add("/model.tar.zst", ARCHIVE)
    code = run_fetch(
        "gs://gcs-models/llama/model.tar.zst", "--mirror", origin.url("/model.tar.zst"),
        "-o", tmp_path / "b", "--sha256", DIGEST, "--connections", "4", *FAST,
    )  # fmt: skip
    assert code == 0
    assert fetched_tree(tmp_path / "b") == _expected_tree(tmp_path)
