"""The benchmark's model tree on disk, and its archive as ``model-fetch pack`` makes it.

The tree is ``_dataset``'s plan and content written out as files (one size at a time, in
``bench/.work/pack/tree/``): the same paths and bytes as the ``zstd`` archive. Packing it with
the checkout's own ``model-fetch pack --frame-size SIZE`` gives the archive a publisher of the
project would serve: a PAX tar in independent zstd frames with a seek table, modes normalised
to 0644 / 0755, mtimes 0. Each archive is cached in ``bench/.work/pack/`` with the SHA-256 the
packer printed and every member's digest, until the size, seed, generator or frame size
changes (the packer's code is not part of the key: delete the folder to pack again).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import _dataset  # bench/ is on sys.path when a bench script runs

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
WORK = BENCH / ".work" / "pack"
FRAME_SIZE = "32MiB"  # the packer's default
MODEL_FETCH = ("env", f"PYTHONPATH={REPO}", sys.executable, "-P", "-m", "fetcher")
"""This checkout's fetcher/ on the interpreter running the bench (not the checkout the venv's
editable install points at)."""


def write_tree(total_bytes: int, seed: int) -> tuple[Path, list[_dataset.Member]]:
    """The dataset's files on disk, with their digests; rewritten when size or seed change."""
    root = WORK / "tree"
    meta = WORK / "tree.json"
    key = {"size": total_bytes, "seed": seed, "generator": _dataset.GENERATOR_VERSION}
    if meta.exists() and json.loads(meta.read_text())["key"] == key:
        members = [_dataset.Member(**m) for m in json.loads(meta.read_text())["members"]]
        return root, members
    shutil.rmtree(root, ignore_errors=True)
    meta.unlink(missing_ok=True)
    print(f"writing the {total_bytes / 2**30:.2f} GiB tree to {root} ...", flush=True)
    hashed = _dataset.write_tree(_dataset.plan(total_bytes, seed), root, seed)
    meta.write_text(json.dumps({"key": key, "members": [asdict(m) for m in hashed]}))
    return root, hashed


def stem(total_bytes: int, seed: int = 1, frame_size: str = FRAME_SIZE) -> str:
    """File name (without suffix) of the cached pack for (size, seed, frame size)."""
    return f"{_dataset.stem(total_bytes, seed)}-pack{frame_size}"


def ensure(
    total_bytes: int,
    seed: int = 1,
    frame_size: str = FRAME_SIZE,
    keep: frozenset[str] = frozenset(),
) -> _dataset.Dataset:
    """The cached pack of the dataset's tree, packing it when missing (the time is printed).

    Packing one deletes the other cached packs, except those whose ``stem`` is in ``keep``.
    """
    WORK.mkdir(parents=True, exist_ok=True)
    name = stem(total_bytes, seed, frame_size)
    archive = WORK / f"{name}.tar.zst"
    meta_path = WORK / f"{name}.json"
    if archive.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta["archive_bytes"] == archive.stat().st_size:
            members = tuple(_dataset.Member(**m) for m in meta["members"])
            return _dataset.Dataset(archive, meta["archive_bytes"], meta["sha256"], members)
    for stale in WORK.glob("model-*"):  # few packs at a time: they are large
        if not any(stale.name.startswith(f"{k}.") for k in keep | {name}):
            stale.unlink()
    tree, members = write_tree(total_bytes, seed)
    started = time.perf_counter()
    argv = [*MODEL_FETCH, "pack", str(tree), "-o", str(archive), "--frame-size", frame_size]
    done = subprocess.run([*argv, "--mtime", "0"], stdout=subprocess.PIPE, text=True, check=True)
    seconds = time.perf_counter() - started
    digest = done.stdout.strip()
    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise SystemExit(f"model-fetch pack printed {digest!r}, not a SHA-256")
    size = archive.stat().st_size
    meta = {"archive_bytes": size, "sha256": digest, "members": [asdict(m) for m in members]}
    meta_path.write_text(json.dumps(meta, indent=1))
    content = sum(m.size for m in members)
    print(
        f"packed {content / 2**20:.0f} MiB into {archive.name} ({size / 2**20:.0f} MiB, "
        f"{frame_size} frames) in {seconds:.1f} s ({content / seconds / 1e6:.0f} MB/s)",
        flush=True,
    )
    return _dataset.Dataset(archive, size, digest, tuple(members))
