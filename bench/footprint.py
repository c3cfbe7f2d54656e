"""The fetcher's dependency set with and without the object-store extras, and its start-up time.

    .venv/bin/python bench/footprint.py            # builds the venvs once, 15 start-ups each
    .venv/bin/python bench/footprint.py --runs 30 --rebuild

For each install flavour (`model-injector`, `[s3]`, `[gcs]`, `[s3,gcs]`) a virtualenv is built in
bench/.work/footprint/ from a wheel of the working tree, as Dockerfile.fetcher builds its venv
(pip compiles the bytecode, so what is measured is what the image holds). Printed per flavour:

- the distributions installed besides pip, and their size on disk (du of site-packages);
- start-up: from spawning `model-fetch` to the first request reaching a loopback origin, the
  median and the slowest of --runs runs, for an https-style URL and for each object-store
  scheme the flavour supports (s3:// with keys in the environment, path-style against the
  loopback origin; gs:// anonymously through STORAGE_EMULATOR_HOST). Neither credential chain
  is allowed to reach out to a metadata server (AWS_EC2_METADATA_DISABLED, NO_GCE_CHECK).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "bench" / ".work" / "footprint"
FLAVOURS = {"base": "", "s3": "s3", "gcs": "gcs", "s3+gcs": "s3,gcs"}


@dataclass
class Flavour:
    name: str
    venv: Path
    extras: str

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def fetch(self) -> Path:
        return self.venv / "bin" / "model-fetch"

    def site_packages(self) -> Path:
        (path,) = (self.venv / "lib").glob("python3*/site-packages")
        return path


def build_wheel(out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.whl"):
        old.unlink()
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(out), str(ROOT)],
        check=True,
    )
    (wheel,) = out.glob("model_injector-*.whl")
    return wheel


def build_venv(flavour: Flavour, wheel: Path) -> None:
    print(f"building the {flavour.name} venv ...", file=sys.stderr, flush=True)
    shutil.rmtree(flavour.venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(flavour.venv)], check=True)
    target = f"{wheel}[{flavour.extras}]" if flavour.extras else str(wheel)
    subprocess.run(
        [str(flavour.python), "-m", "pip", "install", "--quiet", "--prefer-binary", target],
        check=True,
    )


def distributions(flavour: Flavour) -> list[str]:
    listed = subprocess.run(
        [str(flavour.python), "-m", "pip", "list", "--format=freeze", "--exclude", "pip"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    return sorted(line.split("==")[0] for line in listed if not line.startswith("setuptools"))


def disk_usage(path: Path) -> int:
    """Allocated bytes below `path`, less pip and setuptools, which the image does not carry."""
    total = 0
    for file in path.rglob("*"):
        relative = file.relative_to(path).parts
        if relative and relative[0].startswith(("pip", "setuptools", "_distutils_hack")):
            continue
        if file.is_file() and not file.is_symlink():
            total += file.stat().st_blocks * 512
    return total


class FirstRequest(ThreadingHTTPServer):
    """Notes when a request arrives and answers 404, which ends the fetcher quickly."""

    arrived: float | None = None
    event: threading.Event

    def __init__(self) -> None:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if server.arrived is None:
                    server.arrived = time.monotonic()
                    server.event.set()
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args: object) -> None:
                return None

        super().__init__(("127.0.0.1", 0), Handler)
        self.event = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}"

    def reset(self) -> None:
        self.arrived = None
        self.event.clear()


def startup_seconds(flavour: Flavour, scheme: str, origin: FirstRequest, out: Path) -> float:
    env = {
        "PATH": f"{flavour.venv / 'bin'}:/usr/bin:/bin",
        "HOME": str(out),
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": str(out / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(out / "no-aws-credentials"),
        "NO_GCE_CHECK": "true",
        "CLOUDSDK_CONFIG": str(out / "no-gcloud"),
    }
    if scheme == "s3":
        url = "s3://models/llama/model.tar.zst"
        env |= {"AWS_ACCESS_KEY_ID": "AKIABENCH", "AWS_SECRET_ACCESS_KEY": "bench-secret"}
        extra = ["--s3-endpoint", origin.url]
    elif scheme == "gs":
        url = "gs://models/llama/model.tar.zst"
        env["STORAGE_EMULATOR_HOST"] = origin.url
        extra = []
    else:
        url, extra = f"{origin.url}/llama/model.tar.zst", []
    origin.reset()
    started = time.monotonic()
    process = subprocess.run(
        [str(flavour.fetch), url, "-o", str(out / "model"), "--retries", "0", *extra],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if process.returncode != 5 or origin.arrived is None:
        raise RuntimeError(f"{flavour.name} {scheme}: exit {process.returncode}\n{process.stderr}")
    return origin.arrived - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--rebuild", action="store_true", help="build the venvs again")
    args = parser.parse_args(argv)

    flavours = [Flavour(name, WORK / name, extras) for name, extras in FLAVOURS.items()]
    if args.rebuild or not all(f.fetch.exists() for f in flavours):
        wheel = build_wheel(WORK / "wheel")
        for flavour in flavours:
            build_venv(flavour, wheel)

    origin = FirstRequest()
    threading.Thread(target=origin.serve_forever, daemon=True).start()
    base_size = disk_usage(flavours[0].site_packages())
    rows = []
    try:
        for flavour in flavours:
            schemes = [
                "https",
                *(s for s in ("s3", "gs") if s in flavour.extras.replace("gcs", "gs")),
            ]
            timings: dict[str, list[float]] = {}
            for _ in range(args.runs):  # interleaved, so a noisy moment hits every scheme alike
                for scheme in schemes:
                    with tempfile.TemporaryDirectory() as out:
                        seconds = startup_seconds(flavour, scheme, origin, Path(out))
                    timings.setdefault(scheme, []).append(seconds)
            size = disk_usage(flavour.site_packages())
            rows.append((flavour, distributions(flavour), size, timings))
    finally:
        origin.shutdown()

    print(f"\nfetcher footprint, {args.runs} start-ups per cell (median / slowest, ms)\n")
    header = f"{'install':<26} {'dists':>5} {'site-packages':>14} {'vs base':>9}"
    print(f"{header}  start-up to first request")
    for flavour, dists, size, timings in rows:
        name = f"model-injector[{flavour.extras}]" if flavour.extras else "model-injector"
        cells = "  ".join(
            f"{scheme} {statistics.median(t) * 1000:.0f} / {max(t) * 1000:.0f}"
            for scheme, t in timings.items()
        )
        print(
            f"{name:<26} {len(dists):>5} {size / 2**20:>11.1f} MiB "
            f"{(size - base_size) / 2**20:>+8.1f}  {cells}"
        )
    print()
    for flavour, dists, _, _ in rows:
        print(f"{flavour.name}: {', '.join(dists)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
