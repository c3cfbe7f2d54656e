"""Whether a faster gzip decoder would pay: zlib against python-isal and zlib-ng, by content.

    .venv/bin/pip install isal zlib-ng   # not dependencies of the project: only for this
    .venv/bin/python bench/gzip_decoders.py [--mb 600] [--runs 2]

Two contents, each ``--mb`` MB, compressed once by the real ``gzip -6``: the benchmark's model
tree (``_dataset.py``: weight shards that gzip shrinks by under 10%, as it does real weights)
and Python sources (the venv's own, repeated: text that gzip shrinks 2-3x). Each is decoded
in 1 MiB pieces by every decoder that is installed, in this interpreter; the table gives the
best CPU seconds of ``--runs`` and MB/s of output.
"""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
import time
import zlib
from pathlib import Path
from types import ModuleType

import _dataset  # bench/ is on sys.path when this file runs as a script

BENCH = Path(__file__).resolve().parent
WORK = BENCH / ".work"
DECODERS = {"zlib": "zlib", "python-isal": "isal.isal_zlib", "zlib-ng": "zlib_ng.zlib_ng"}


def _gzip(content: bytes) -> bytes:
    return subprocess.run(
        ["gzip", "-6", "-c"], input=content, capture_output=True, check=True
    ).stdout


def _weights(size: int) -> bytes:
    dataset = _dataset.ensure(WORK / "data", 2 << 30)
    zstd = subprocess.Popen(["zstd", "-dc", str(dataset.archive)], stdout=subprocess.PIPE)
    assert zstd.stdout is not None
    content = zstd.stdout.read(size)
    zstd.kill()
    zstd.wait()
    return content


def _sources(size: int) -> bytes:
    text = bytearray()
    for path in sorted(Path(sys.prefix).rglob("*.py")):
        text += path.read_bytes()
        if len(text) >= size // 3:
            break
    return bytes((text * (size // max(len(text), 1) + 1))[:size])


def _decode(module: ModuleType, data: bytes) -> tuple[float, int]:
    decoder = module.decompressobj(31)
    started, produced = time.process_time(), 0
    for at in range(0, len(data), 1 << 20):
        produced += len(decoder.decompress(data[at : at + (1 << 20)]))
    return time.process_time() - started, produced


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=600)
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    modules: dict[str, ModuleType] = {}
    for name, module_name in DECODERS.items():
        try:
            modules[name] = importlib.import_module(module_name)
        except ImportError:
            print(f"{name}: not installed, left out", flush=True)
    size = args.mb * 1_000_000
    print("| content | gzip ratio | decoder | CPU (s) | MB/s | vs zlib |")
    print("|---|---:|---|---:|---:|---:|")
    for label, make in (("model tree", _weights), ("Python sources", _sources)):
        content = make(size)
        packed = _gzip(content)
        assert zlib.decompress(packed, 31) == content
        base = None
        for name, module in modules.items():
            timings = [_decode(module, packed) for _ in range(args.runs)]
            assert all(produced == len(content) for _, produced in timings), name
            seconds = min(seconds for seconds, _ in timings)
            base = base or seconds
            print(
                f"| {label} | {len(content) / len(packed):.2f} | {name} | {seconds:.2f} | "
                f"{len(content) / 1e6 / seconds:.0f} | {base / seconds:.2f}x |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
