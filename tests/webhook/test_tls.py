"""Real TLS on loopback: the certificate is replaced on disk while requests keep flowing."""

from __future__ import annotations

import threading
from pathlib import Path

from tests.support.events import wait_until
from tests.webhook.certs import issue, make_authority, write_pair
from tests.webhook.kube import load_review
from tests.webhook.serving import (
    client_context,
    connect,
    peer_serial,
    post_json,
    running_server,
)
from webhook.tls import ReloadingTLS

REVIEW = load_review("pod-llama-from-deployment.json")


def wait_for_serial(port: int, context, serial: int) -> None:  # type: ignore[no-untyped-def]
    wait_until(lambda: peer_serial(port, context) == serial, what=f"certificate {serial} served")


def test_rotation_under_load_fails_no_request(tmp_path: Path) -> None:
    authority = make_authority()
    first, second, third = issue(authority), issue(authority), issue(authority)
    cert_file, key_file = tmp_path / "tls.crt", tmp_path / "tls.key"
    write_pair(first, cert_file, key_file)
    context = client_context(authority)
    failures: list[str] = []
    counts = {"keep-alive": 0, "fresh": 0}
    stop = threading.Event()

    def keep_alive_client() -> None:
        connection = connect(server.port, context)
        while not stop.is_set():
            try:
                status, review = post_json(connection, "/mutate", REVIEW)
                assert status == 200 and review["response"]["allowed"], review
                counts["keep-alive"] += 1
            except Exception as error:  # every failure is recorded, none is expected
                failures.append(f"keep-alive: {error!r}")
                connection = connect(server.port, context)
        connection.close()

    def fresh_connection_client() -> None:
        while not stop.is_set():
            connection = connect(server.port, context)
            try:
                status, _ = post_json(connection, "/mutate", REVIEW)
                assert status == 200
                counts["fresh"] += 1
            except Exception as error:
                failures.append(f"fresh: {error!r}")
            finally:
                connection.close()

    with running_server(cert_file, key_file) as server:
        assert peer_serial(server.port, context) == first.serial
        clients = [threading.Thread(target=keep_alive_client) for _ in range(2)]
        clients += [threading.Thread(target=fresh_connection_client) for _ in range(2)]

        def traffic() -> None:
            """Every kind of client gets 10 more answers (or a failure ends the wait)."""
            wanted = {kind: count + 10 for kind, count in counts.items()}
            wait_until(
                lambda: failures or all(counts[kind] >= n for kind, n in wanted.items()),
                what=f"10 more answers to each kind of client, at {counts}",
            )

        for client in clients:
            client.start()
        traffic()
        write_pair(second, cert_file, key_file)  # in place, certificate and key one after another
        traffic()  # requests during the rotation, on both kinds of connection
        wait_for_serial(server.port, context, second.serial)
        traffic()
        staged_cert, staged_key = tmp_path / "new.crt", tmp_path / "new.key"
        write_pair(third, staged_cert, staged_key)
        staged_key.replace(key_file)  # renamed into place, key first this time
        staged_cert.replace(cert_file)
        traffic()
        wait_for_serial(server.port, context, third.serial)
        traffic()
        stop.set()
        for client in clients:
            client.join()
        # a server name (SNI) gets the same certificate as a bare address
        assert peer_serial(server.port, context, "localhost") == third.serial

    assert failures == []


def test_files_that_do_not_load_keep_the_previous_certificate(tmp_path: Path) -> None:
    authority = make_authority()
    first, second = issue(authority), issue(authority)
    cert_file, key_file = tmp_path / "tls.crt", tmp_path / "tls.key"
    write_pair(first, cert_file, key_file)
    tls = ReloadingTLS(cert_file, key_file)
    served = tls.current

    cert_file.write_bytes(second.cert_pem)  # key not written yet: a mismatched pair
    assert tls.reload_if_changed() is False
    assert tls.current is served
    key_file.write_bytes(b"-----BEGIN PRIVATE KEY-----\ntruncated")
    assert tls.reload_if_changed() is False
    key_file.unlink()
    assert tls.reload_if_changed() is False

    key_file.write_bytes(second.key_pem)
    assert tls.reload_if_changed() is True
    assert tls.current is not served
    assert tls.reload_if_changed() is False
