"""Admission latency and throughput of `model-webhook serve` over TLS with keep-alive.

Starts the real server as a subprocess on 127.0.0.1 with a fresh self-signed certificate, then
drives /mutate with a captured kube-apiserver request (a Deployment-made Pod that gets the
fetcher injected) from N keep-alive connections, each sending its next request as soon as the
previous answer arrived. Prints one Markdown table row per concurrency level.

    .venv/bin/python bench/webhook.py [--seconds 5] [--concurrency 1 16 64]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import ipaddress
import json
import os
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

ROOT = Path(__file__).resolve().parent.parent
REQUEST = ROOT / "tests" / "data" / "admission" / "pod-llama-from-deployment.json"


def self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "model-webhook bench")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "tls.crt", directory / "tls.key"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Connection:
    """A minimal HTTP/1.1 keep-alive client: enough to time one request at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def post(self, request: bytes) -> int:
        self.writer.write(request)
        status_line = await self.reader.readline()
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        body = await self.reader.readexactly(length)
        status = int(status_line.split()[1])
        if status == 200 and b'"patchType"' not in body:
            return -1  # answered, but without the expected patch
        return status


async def run_level(
    port: int, context: ssl.SSLContext, request: bytes, concurrency: int, seconds: float
) -> dict[str, float]:
    connections = []
    for _ in range(concurrency):
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
        connections.append(Connection(reader, writer))
    latencies: list[float] = []
    errors = 0
    warmup_end = time.perf_counter() + min(1.0, seconds / 4)
    end = warmup_end + seconds

    async def worker(connection: Connection) -> None:
        nonlocal errors
        while (now := time.perf_counter()) < end:
            try:
                status = await connection.post(request)
            except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
                errors += 1
                return
            done = time.perf_counter()
            if now >= warmup_end:
                latencies.append(done - now)
                if status != 200:
                    errors += 1

    await asyncio.gather(*(worker(connection) for connection in connections))
    for connection in connections:
        connection.writer.close()
    latencies.sort()
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
        "throughput": len(latencies) / seconds,
        "errors": errors,
    }


def wait_until_ready(port: int, context: ssl.SSLContext, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit("model-webhook serve exited during start-up")
        try:
            with (
                socket.create_connection(("127.0.0.1", port), timeout=1) as raw,
                context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
            ):
                tls.sendall(b"GET /readyz HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
                if tls.recv(64).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("model-webhook serve did not become ready")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measured time per level")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    args = parser.parse_args()

    body = REQUEST.read_bytes()
    request = (
        b"POST /mutate HTTP/1.1\r\nHost: model-webhook\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    with tempfile.TemporaryDirectory() as directory:
        cert_file, key_file = self_signed(Path(directory))
        context = ssl.create_default_context(cafile=str(cert_file))
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("MODEL_INJECTOR_")}
        command = [sys.executable, "-m", "webhook", "serve", "--host", "127.0.0.1"]
        command += ["--port", str(port), "--tls-cert", str(cert_file), "--tls-key", str(key_file)]
        # The admission log lines are written as in production, then discarded.
        server = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL, cwd=ROOT)
        try:
            wait_until_ready(port, context, server)
            results = [
                asyncio.run(run_level(port, context, request, level, args.seconds))
                for level in args.concurrency
            ]
        finally:
            server.terminate()
            server.wait(timeout=30)

    print(f"request: {REQUEST.name} ({len(body)} bytes), {args.seconds:g} s per level, TLS")
    print()
    print("| concurrency | requests | p50 (ms) | p99 (ms) | throughput (req/s) | errors |")
    print("|---:|---:|---:|---:|---:|---:|")
    for row in results:
        print(
            f"| {row['concurrency']} | {row['requests']} | {row['p50_ms']:.2f} "
            f"| {row['p99_ms']:.2f} | {row['throughput']:.0f} | {row['errors']} |"
        )
    print()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
