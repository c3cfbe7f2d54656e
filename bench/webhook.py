"""Admission latency and throughput of `model-webhook serve` over TLS with keep-alive.

Starts the real server as a subprocess on 127.0.0.1 with a fresh self-signed certificate, then
drives /mutate with a captured kube-apiserver request (a Deployment-made Pod that gets the
fetcher injected) from N keep-alive connections, each sending its next request as soon as the
previous answer arrived (a closed loop). Prints one Markdown table per run and, with several
runs, the median of each cell.

The load generator shares the machine with the server, so it is kept lean and out of the
server's way: by default the server is pinned to the first CPU and the client to the second.
Two clients:

- `python` (default): one process on uvloop, one asyncio Protocol per
  connection that writes the pre-encoded request and parses the answer in data_received, with
  no streams or tasks in between; an answer counts as an error unless it is a 200 carrying the
  expected patch.
- `wrk`: Debian's wrk with one thread and a Lua script for the POST; errors are wrk's socket
  errors and non-2xx answers (it does not read the bodies).

    .venv/bin/python bench/webhook.py [--seconds 5] [--concurrency 1 16 64] [--runs 3]
        [--client python|wrk] [--no-pin]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import ipaddress
import json
import math
import os
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import cast

import uvloop
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

ROOT = Path(__file__).resolve().parent.parent
REQUEST = ROOT / "tests" / "data" / "admission" / "pod-llama-from-deployment.json"

Row = dict[str, float]


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


class Level:
    """What all connections of one concurrency level share: the clock and the results."""

    def __init__(self, request: bytes, warmup_end: float, end: float) -> None:
        self.request = request
        self.warmup_end = warmup_end
        self.end = end
        self.latencies: list[float] = []
        self.errors = 0
        self.running = 0
        self.finished = asyncio.get_running_loop().create_future()

    def stopped(self) -> None:
        self.running -= 1
        if self.running == 0 and not self.finished.done():
            self.finished.set_result(None)


class Client(asyncio.Protocol):
    """One keep-alive connection sending the next request from the callback of the last answer."""

    def __init__(self, level: Level) -> None:
        self.level = level
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.length = -1  # of the whole answer, head and body, once the head is in
        self.status = 0
        self.sent = 0.0
        self.done = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def start(self) -> None:
        self.level.running += 1
        self._send()

    def _send(self) -> None:
        assert self.transport is not None
        self.sent = time.perf_counter()
        self.transport.write(self.level.request)

    def _stop(self) -> None:
        if not self.done:
            self.done = True
            self.level.stopped()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.length < 0:
            head_end = self.buffer.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = self.buffer[:head_end].lower()
            self.status = int(head[9:12])
            at = head.find(b"\r\ncontent-length:")
            if at < 0:
                self.level.errors += 1
                self._stop()
                return
            line_end = head.find(b"\r\n", at + 2)
            value = head[at + 17 : line_end if line_end >= 0 else len(head)]
            self.length = head_end + 4 + int(value)
        if len(self.buffer) < self.length:
            return
        answer, self.buffer, self.length = self.buffer[: self.length], b"", -1
        now = time.perf_counter()
        level = self.level
        if self.sent >= level.warmup_end:
            level.latencies.append(now - self.sent)
            if self.status != 200 or b'"patchType"' not in answer:
                level.errors += 1
        if now < level.end:
            self._send()
        else:
            self._stop()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done:
            self.level.errors += 1
            self._stop()


async def python_level(
    port: int, context: ssl.SSLContext, request: bytes, concurrency: int, seconds: float
) -> Row:
    loop = asyncio.get_running_loop()
    level = Level(request, math.inf, math.inf)
    clients: list[Client] = []
    for _ in range(concurrency):
        _, client = await loop.create_connection(
            lambda: Client(level), "127.0.0.1", port, ssl=context, server_hostname="127.0.0.1"
        )
        clients.append(client)
    level.warmup_end = time.perf_counter() + min(1.0, seconds / 4)
    level.end = level.warmup_end + seconds
    for client in clients:
        client.start()
    await level.finished
    for client in clients:
        if client.transport is not None:
            client.transport.close()
    latencies = sorted(level.latencies)
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[math.ceil(len(latencies) * 0.99) - 1] * 1000,
        "throughput": len(latencies) / seconds,
        "errors": level.errors,
    }


WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
wrk.body = f:read("*a")
f:close()

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'RESULT {"requests": %d, "p50_us": %d, "p99_us": %d, "errors": %d}\\n',
    summary.requests, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.status + e.timeout))
end
"""


def wrk_level(port: int, concurrency: int, seconds: float, work: Path) -> Row:
    script = work / "post.lua"
    script.write_text(WRK_SCRIPT)
    url = f"https://127.0.0.1:{port}/mutate"
    env = {**os.environ, "BENCH_BODY": str(REQUEST)}

    def run(duration: int) -> dict[str, int]:
        command = ["wrk", "-t1", f"-c{concurrency}", f"-d{duration}s", "-s", str(script), url]
        output = subprocess.run(
            command,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        line = next(line for line in output.splitlines() if line.startswith("RESULT "))
        result: dict[str, int] = json.loads(line.removeprefix("RESULT "))
        return result

    run(1)  # warm-up: wrk has no warm-up phase of its own
    duration = max(1, round(seconds))
    result = run(duration)
    return {
        "concurrency": concurrency,
        "requests": result["requests"],
        "p50_ms": result["p50_us"] / 1000,
        "p99_ms": result["p99_us"] / 1000,
        "throughput": result["requests"] / duration,
        "errors": result["errors"],
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


def table(rows: list[Row]) -> str:
    lines = [
        "| concurrency | requests | p50 (ms) | p99 (ms) | throughput (req/s) | errors |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {row['concurrency']:.0f} | {row['requests']:.0f} | {row['p50_ms']:.2f} "
        f"| {row['p99_ms']:.2f} | {row['throughput']:.0f} | {row['errors']:.0f} |"
        for row in rows
    ]
    return "\n".join(lines)


def medians(runs: list[list[Row]]) -> list[Row]:
    """Cell by cell: the median of each number over the runs, errors summed."""
    merged = []
    for rows in zip(*runs, strict=True):
        row = {key: statistics.median(r[key] for r in rows) for key in rows[0]}
        row["errors"] = sum(r["errors"] for r in rows)
        merged.append(row)
    return merged


def load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measured time per level")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--runs", type=int, default=3, help="runs against one server process")
    parser.add_argument("--client", choices=["python", "wrk"], default="python")
    parser.add_argument(
        "--no-pin", action="store_true", help="let server and client run on any CPU"
    )
    args = parser.parse_args()
    if args.client == "wrk" and shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    server_cpus: set[int] | None = None
    client_cpus: set[int] | None = None
    available = sorted(os.sched_getaffinity(0))
    if not args.no_pin and len(available) >= 2:
        server_cpus, client_cpus = {available[0]}, {available[1]}

    body = REQUEST.read_bytes()
    request = (
        b"POST /mutate HTTP/1.1\r\nHost: model-webhook\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    runs: list[list[Row]] = []
    with tempfile.TemporaryDirectory() as directory:
        work = Path(directory)
        cert_file, key_file = self_signed(work)
        context = ssl.create_default_context(cafile=str(cert_file))
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("MODEL_INJECTOR_")}
        command = [sys.executable, "-m", "webhook", "serve", "--host", "127.0.0.1"]
        command += ["--port", str(port), "--tls-cert", str(cert_file), "--tls-key", str(key_file)]
        # The admission log lines are written as in production, then discarded.
        # Affinity is inherited: the server gets the bench's CPU set at the fork, then the bench
        # (and wrk, which it starts) moves to the client's.
        if server_cpus is not None:
            os.sched_setaffinity(0, server_cpus)
        server = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL, cwd=ROOT)
        if client_cpus is not None:
            os.sched_setaffinity(0, client_cpus)
        try:
            wait_until_ready(port, context, server)
            for number in range(1, args.runs + 1):
                before = load()
                if args.client == "wrk":
                    rows = [
                        wrk_level(port, level, args.seconds, work) for level in args.concurrency
                    ]
                else:
                    rows = [
                        uvloop.run(python_level(port, context, request, level, args.seconds))
                        for level in args.concurrency
                    ]
                runs.append(rows)
                print(f"run {number}: load average before {before}, after {load()}")
                print(table(rows))
                print(flush=True)
        finally:
            server.terminate()
            server.wait(timeout=30)

    pinned = (
        f"server on CPU {min(server_cpus)}, client on CPU {min(client_cpus)}"
        if server_cpus and client_cpus
        else "not pinned"
    )
    print(
        f"request: {REQUEST.name} ({len(body)} bytes), {args.seconds:g} s per level, TLS, "
        f"client {args.client}, {pinned}"
    )
    if len(runs) > 1:
        print(f"median of {len(runs)} runs (errors summed):")
        print(table(medians(runs)))
    print()
    print(json.dumps(runs))


if __name__ == "__main__":
    main()
