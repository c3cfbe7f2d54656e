"""`python -m webhook serve` as a process: it serves TLS, and drains in-flight work on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.webhook.certs import Authority, issue, make_authority, write_pair
from tests.webhook.kube import load_review
from tests.webhook.serving import client_context, connect, post_json


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


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
    deadline = time.monotonic() + 15
    while True:
        try:
            connection = connect(port, context)
            connection.request("GET", "/readyz")
            if connection.getresponse().status == 200:
                connection.close()
                break
        except OSError:
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            assert time.monotonic() < deadline, "webhook did not become ready"
            time.sleep(0.05)
    try:
        yield process, port
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
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
        head = (
            f"POST /mutate HTTP/1.1\r\nHost: webhook\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        tls.sendall(head + body[:100])  # the request has started but is not complete
        time.sleep(0.3)
        process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
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
    assert process.wait(timeout=10) == 0
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
    assert process.wait(timeout=10) == 0
    with pytest.raises(OSError):
        connect(port, client_context(authority)).request("GET", "/healthz")
