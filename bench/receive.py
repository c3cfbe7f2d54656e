"""What receiving a body costs the fetcher's network thread, reader by reader.

    .venv/bin/python bench/receive.py [--size-gib 2] [--archive zstd|pack] [--runs 5]

Reads the archive ``fetch.py`` serves (the same cache in ``bench/.work/``) from a private
loopback nginx and hashes it with SHA-256, as the fetcher's network thread does, then drops
the bytes: no file write or decoder is in the numbers. Each reader runs in a fresh
interpreter, the readers interleaved round by round:

- ``recv_into``: the socket read into one reused buffer, no HTTP parsing (the floor);
- ``httpx iter_raw``: the body through h11 and httpcore with the fetcher's 256 KiB reads,
  as model-fetch read every body before it read its stream's off the connection;
- ``model-fetch paced_body``: the fetcher's own body reader (``fetcher.http.body``), as its
  single stream uses it;
- ``httpx ranges``: the file as 16 MiB ranges (the fetcher's default ``--chunk-size``), one
  after another on one kept connection, each body through the parser (every range before
  74edd37);
- ``model-fetch ranges``: the same ranges as the fetcher's range workers read them: off the
  connection, which is kept for the next range.

Prints the median wall time and CPU seconds (user + system of the reading process only,
from the request on: the interpreter's start and imports left out) of each, and per GB.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import _dataset  # bench/ is on sys.path when this file runs as a script
import _nginx
import _pack

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
WORK = BENCH / ".work"

_PRELUDE = """
import hashlib, json, resource, sys, time
digest = hashlib.sha256()
sys.path.insert(0, REPO)
url = URL
def cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
def begin():
    return time.monotonic(), cpu()
def report(received, started):
    print(json.dumps({"bytes": received, "wall": time.monotonic() - started[0],
                      "cpu": cpu() - started[1]}))
"""

# Before the clock starts, for every HTTP reader: the imports, and the ranges to ask for (16
# MiB, the fetcher's default --chunk-size).
HTTP = """
from fetcher.http.body import paced_body
from fetcher.http.client import make_client
from fetcher.http.exchange import open_response
from fetcher.http.ratelimit import Unlimited
from fetcher.http.retry import RetryPolicy
from fetcher.http.target import Target
from fetcher.http.wire import bodies_kept_from_parser
chunk = 16 << 20
spans = [(a, min(a + chunk, SIZE) - 1) for a in range(0, SIZE, chunk)]
started = begin()
received = 0
"""

READERS = {
    "recv_into": """
import socket, urllib.parse
parts = urllib.parse.urlsplit(url)
started = begin()
sock = socket.create_connection((parts.hostname, parts.port))
sock.sendall(f"GET {parts.path} HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n".encode())
buffer = bytearray(1 << 20)
view = memoryview(buffer)
received = 0
head = -1
while n := sock.recv_into(view):
    digest.update(view[:n])
    received += n
    if head < 0:
        head = buffer.find(b"\\r\\n\\r\\n") + 4
        received -= head
report(received, started)
""",
    "httpx iter_raw": HTTP
    + """
with make_client(ca_bundle=None, authorization=None, read_timeout=30, connect_timeout=30) as c:
    with c.stream("GET", url) as response:
        for piece in response.iter_raw():
            digest.update(piece)
            received += len(piece)
report(received, started)
""",
    "model-fetch paced_body": HTTP
    + """
with make_client(ca_bundle=None, authorization=None, read_timeout=30, connect_timeout=30) as c:
    with open_response(c, Target(url, url), {}, 30) as response:
        for piece in paced_body(response, Unlimited(), RetryPolicy(), lambda: None, direct=True):
            digest.update(piece)
            received += len(piece)
report(received, started)
""",
    "httpx ranges": HTTP
    + """
with make_client(ca_bundle=None, authorization=None, read_timeout=30, connect_timeout=30) as c:
    for first, last in spans:
        with c.stream("GET", url, headers={"Range": f"bytes={first}-{last}"}) as response:
            for piece in response.iter_raw():
                digest.update(piece)
                received += len(piece)
report(received, started)
""",
    "model-fetch ranges": HTTP
    + """
with make_client(ca_bundle=None, authorization=None, read_timeout=30, connect_timeout=30) as c:
    for first, last in spans:
        headers = {"Range": f"bytes={first}-{last}"}
        with bodies_kept_from_parser(), open_response(c, Target(url, url), headers, 30) as r:
            for piece in paced_body(r, Unlimited(), RetryPolicy(), lambda: None, direct=True):
                digest.update(piece)
                received += len(piece)
report(received, started)
""",
}


def run_reader(name: str, url: str, size: int) -> dict[str, float]:
    program = _PRELUDE.replace("REPO", repr(str(REPO))).replace("URL", repr(url))
    program = program + READERS[name].replace("SIZE", str(size))
    done = subprocess.run(
        [sys.executable, "-c", program],
        check=True,
        capture_output=True,
        text=True,
    )
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gib", type=float, default=2.0)
    parser.add_argument("--archive", choices=("zstd", "pack"), default="zstd")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    size = int(args.size_gib * 2**30)
    dataset = (
        _pack.ensure(size, args.seed)
        if args.archive == "pack"
        else _dataset.ensure(WORK / "data", size, args.seed)
    )
    archive = dataset.archive
    binary = _nginx.ensure_installed()
    config = _nginx.NginxConfig(
        root=archive.parent, prefix=WORK / "nginx-receive", port=_nginx.free_port(18480)
    )
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in READERS}
    with _nginx.Nginx(binary, config).start(probe_path=f"/{archive.name}") as nginx:
        url = nginx.url(archive.name)
        for round_ in range(args.runs):
            for name in READERS:
                sample = run_reader(name, url, archive.stat().st_size)
                if sample["bytes"] != archive.stat().st_size:
                    raise SystemExit(f"{name} received {sample['bytes']} bytes, not the archive")
                samples[name].append(sample)
                print(
                    f"round {round_ + 1}: {name}: {sample['wall']:.2f} s, "
                    f"{sample['cpu']:.2f} CPU-s",
                    file=sys.stderr,
                )
    gb = archive.stat().st_size / 1e9
    print(f"\n{archive.name}, {gb:.2f} GB, medians of {args.runs} interleaved runs\n")
    print("| reader | wall (s) | CPU (s) | CPU (s/GB) |")
    print("|---|---:|---:|---:|")
    for name, runs in samples.items():
        wall = statistics.median(s["wall"] for s in runs)
        cpu = statistics.median(s["cpu"] for s in runs)
        print(f"| {name} | {wall:.2f} | {cpu:.2f} | {cpu / gb:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
