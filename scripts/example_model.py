"""Write the small model archive deploy/examples serves: `python scripts/example_model.py`.

The archive is committed (deploy/examples/origin/model.tar.zst) so that `kubectl apply -k
deploy/examples` needs nothing else. It is kept small because client-side apply copies the
origin's ConfigMap, archive included, into an annotation limited to 256 KiB. After changing it,
put the printed sha256 into both Deployments' `models.example.com/sha256` annotations;
tests/deploy/test_examples.py checks that they name these exact bytes.
"""

from __future__ import annotations

import hashlib
import io
import sys
import tarfile
from pathlib import Path

import zstandard

ARCHIVE = Path(__file__).resolve().parents[1] / "deploy" / "examples" / "origin" / "model.tar.zst"


def model_files() -> dict[str, bytes]:
    """A model-shaped tree; pseudo-random weights so the archive is not all zeros."""
    seed = hashlib.sha256(b"model-injector example").digest()
    weights = b"".join(hashlib.sha256(seed + n.to_bytes(4, "big")).digest() for n in range(256))
    vocabulary = "\n".join(f"token-{index}" for index in range(500)).encode() + b"\n"
    return {
        "config.json": b'{"architectures": ["TinyForCausalLM"], "hidden_size": 64}\n',
        "tokenizer/vocab.txt": vocabulary,
        "weights/model.safetensors": weights,
    }


def tar_zst(files: dict[str, bytes]) -> bytes:
    """A reproducible tar (fixed order, mode and mtime), compressed with zstd."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, data in sorted(files.items()):
            info = tarfile.TarInfo(path)
            info.size = len(data)
            info.mode = 0o644
            info.mtime = 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
    compressed: bytes = zstandard.ZstdCompressor(level=19).compress(raw.getvalue())
    return compressed


def main() -> int:
    archive = tar_zst(model_files())
    ARCHIVE.write_bytes(archive)
    print(f"{ARCHIVE}: {len(archive)} bytes, sha256 {hashlib.sha256(archive).hexdigest()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
