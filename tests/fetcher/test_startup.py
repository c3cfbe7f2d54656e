"""What a fetch loads: only the readers its source and format need, since every pod start pays
for each import (the zip reader alone, with its AES and cffi, is about 18 ms of it)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.fetcher.conftest import sha256
from tests.support.archives import Codec, py_archive
from tests.support.origin import Origin
from tests.support.zips import py_zip

# Loaded only by the format or the source that needs it.
OPTIONAL = ["stream_unzip", "Crypto", "botocore", "google.auth", "fetcher.pack"]

# Runs the command line in a fresh interpreter, then says which of OPTIONAL it loaded.
_LOADED = textwrap.dedent(
    """
    import json, sys
    from fetcher.cli import main
    code = main(sys.argv[2:])
    optional = json.loads(sys.argv[1])
    loaded = [name for name in optional if name in sys.modules]
    print(json.dumps({"code": code, "loaded": loaded}))
    """
)


def _fetch_loading(url: str, out: Path, digest: str) -> list[str]:
    args = [url, "-o", str(out), "--sha256", digest, "--connections", "1"]
    result = subprocess.run(
        [sys.executable, "-c", _LOADED, json.dumps(OPTIONAL), *args],
        capture_output=True,
        text=True,
        check=True,
    )
    answer = json.loads(result.stdout.splitlines()[-1])
    assert answer["code"] == 0, result.stderr
    return list(answer["loaded"])


@pytest.mark.parametrize("codec", ["zst", "gz"])
def test_a_tar_fetch_loads_no_zip_reader_and_no_object_store_sdk(
    origin: Origin, tmp_path: Path, codec: Codec
) -> None:
    archive = py_archive({"weights.bin": b"w" * 10_000, "config.json": b"{}"}, codec)
    origin.add(f"/model.tar.{codec}", archive)
    url = origin.url(f"/model.tar.{codec}")
    assert _fetch_loading(url, tmp_path / "out", sha256(archive)) == []


def test_a_zip_fetch_loads_the_zip_reader(origin: Origin, tmp_path: Path) -> None:
    """The check above can fail: the same probe sees the zip reader once a zip needs it."""
    archive = py_zip({"weights.bin": b"w" * 10_000})
    origin.add("/model.zip", archive)
    loaded = _fetch_loading(origin.url("/model.zip"), tmp_path / "out", sha256(archive))
    assert "stream_unzip" in loaded
    assert "botocore" not in loaded
