"""`python -m webhook serve` as a process: it serves TLS, and drains in-flight work on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.events import PATIENCE_S, wait_until
from tests.webhook.certs import Authority, issue, make_authority, write_pair
from tests.webhook.kube import load_review
from tests.webhook.serving import client_context, connect, post_json


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=PATIENCE_S).close()
    except ConnectionRefusedError:
        return True
    return False


@pytest.fixture
def authority() -> Authority:
    return make_authority()


@pytest.fixture
def webhook_process(tmp_path: Path, authority: Authority) -> Iterator[tuple[subprocess.Popen, int]]:
    cert_file, key_file = tmp_path / "tls.crt", tmp_path / "tls.key"
    write_pair(issue(authority), cert_file, key_file)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODEL_INJECTOR_")}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "webhook",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--tls-cert",
            str(cert_file),
            "--tls-key",
            str(key_file),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    context = client_context(authority)

    def ready() -> bool:
        try:
            connection = connect(port, context)
            connection.request("GET", "/readyz")
            status = connection.getresponse().status
            connection.close()
        except OSError:
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            return False
        return status == 200

    wait_until(ready, what="the webhook to answer /readyz")  # however slow the start
    try:
        yield process, port
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=PATIENCE_S)
        if process.stderr is not None:
            process.stderr.close()


def test_sigterm_lets_a_request_in_flight_finish_then_exits_zero(
    webhook_process: tuple[subprocess.Popen, int], authority: Authority
) -> None:
    process, port = webhook_process
    body = json.dumps(load_review("pod-llama-from-deployment.json")).encode()
    context = client_context(authority)
    with (
        socket.create_connection(("127.0.0.1", port)) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        # Expect: 100-continue makes the server say when the request is in flight: it answers
        # "100 Continue" once the app, past the head, asks for the body.
        head = (
            f"POST /mutate HTTP/1.1\r\nHost: webhook\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n"
        ).encode()
        tls.sendall(head + body[:100])  # the request has started but is not complete
        interim = b""
        while not interim.endswith(b"\r\n\r\n"):
            chunk = tls.recv(65536)
            assert chunk, f"the server closed after {interim!r}"
            interim += chunk
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        process.send_signal(signal.SIGTERM)
        # The listener closes as the shutdown begins; the process must then stay to drain.
        wait_until(lambda: _refused(port), what="the webhook to stop accepting connections")
        assert process.poll() is None  # still draining
        tls.sendall(body[100:])
        reply = b""
        while chunk := tls.recv(65536):
            reply += chunk
    status_line, _, rest = reply.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 200 OK"
    # the loop above ended, so the server closed the connection after answering
    review = json.loads(rest.partition(b"\r\n\r\n")[2])
    assert review["response"]["patchType"] == "JSONPatch"
    assert process.wait(timeout=PATIENCE_S) == 0
    assert process.stderr is not None
    lines = [json.loads(line) for line in process.stderr.read().decode().splitlines()]
    admissions = [line for line in lines if line["msg"] == "admission"]
    assert [line["decision"] for line in admissions] == ["injected"]


def test_idle_keep_alive_connections_are_closed_and_new_ones_refused(
    webhook_process: tuple[subprocess.Popen, int], authority: Authority
) -> None:
    process, port = webhook_process
    connection = connect(port, client_context(authority))
    status, _ = post_json(connection, "/mutate", load_review("pod-plain-bare.json"))
    assert status == 200
    process.send_signal(signal.SIGTERM)
    assert connection.sock is not None
    assert connection.sock.recv(1) == b""  # the server closes the idle connection cleanly
    connection.close()
    assert process.wait(timeout=PATIENCE_S) == 0
    with pytest.raises(OSError):
        connect(port, client_context(authority)).request("GET", "/healthz")
