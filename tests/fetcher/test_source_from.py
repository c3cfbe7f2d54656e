"""--source-from-configmap: what a ConfigMap's keys delivered, checked and named on failure.

The arguments are those the webhook writes for source-from, after the kubelet's expansion: a
key the ConfigMap has arrives as its value, an optional key it lacks as the literal
`$(MODEL_FETCH_...)` reference.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fetcher.conftest import FAST_RETRIES, run_fetch, sha256
from tests.support.archives import py_archive
from tests.support.origin import Faults, Origin

CONFIG_MAP = "llm-config"
TREE = {"config.json": b'{"hidden_size": 64}\n', "weights/w.bin": bytes(range(256)) * 400}
NO_SHA256 = "$(MODEL_FETCH_SHA256)"
NO_MIRRORS = "$(MODEL_FETCH_MIRRORS)"


def fetch_from_configmap(
    out: Path,
    source: str,
    sha256_value: str = NO_SHA256,
    mirrors: str = NO_MIRRORS,
    *,
    policy: tuple[str, str] = ("https,http,s3,gs", "*"),
) -> int:
    """model-fetch with the webhook's source-from arguments, values as the kubelet gave them."""
    return run_fetch(
        "--source-from-configmap", CONFIG_MAP,
        "--allowed-schemes", policy[0], "--allowed-hosts", policy[1],
        f"--sha256={sha256_value}", f"--mirror={mirrors}",
        "-o", out, *FAST_RETRIES,
        "--", source,
    )  # fmt: skip


def last_line(capsys: pytest.CaptureFixture[str]) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    return lines[-1]


def test_values_from_a_configmap_fetch_the_verified_model(
    origin: Origin, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archive = py_archive(TREE, "zst")
    origin.add("/m.tar.zst", archive)
    out = tmp_path / "out"
    # `kubectl create configmap --from-file` keeps a file's final newline; hex case is free.
    code = fetch_from_configmap(
        out, origin.url("/m.tar.zst") + "\n", sha256(archive).upper() + "\n"
    )
    assert code == 0, capsys.readouterr().err
    files = {path: (out / path).read_bytes() for path in TREE}
    assert files == TREE
    assert (out / ".model-fetch.json").is_file()
    assert f"sha256 {sha256(archive)} verified" in capsys.readouterr().err


def test_a_sha256_key_the_configmap_lacks_is_no_digest_and_says_so(
    origin: Origin, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archive = py_archive(TREE, "zst")
    origin.add("/m.tar.zst", archive)
    assert fetch_from_configmap(tmp_path / "out", origin.url("/m.tar.zst")) == 0
    err = capsys.readouterr().err
    assert f'ConfigMap "{CONFIG_MAP}" has no key "sha256": the download will not be verified' in err
    assert "not checked: no --sha256 given" in err


def test_the_mirrors_key_is_a_comma_separated_list(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archive = py_archive(TREE, "zst")
    with Origin() as gone, Origin() as failing, Origin() as mirror:
        gone.add("/m.tar.zst", b"", faults=Faults(not_found=True))
        failing.add("/m.tar.zst", b"", faults=Faults(not_found=True))
        mirror.add("/m.tar.zst", archive)
        mirrors = f" {failing.url('/m.tar.zst')} , {mirror.url('/m.tar.zst')}\n"
        code = fetch_from_configmap(
            tmp_path / "out", gone.url("/m.tar.zst"), sha256(archive), mirrors
        )
        assert code == 0, capsys.readouterr().err
        assert failing.requests and mirror.requests


@pytest.mark.parametrize(
    ("delivered", "line"),
    [
        (
            ("$(MODEL_FETCH_SOURCE)", NO_SHA256, NO_MIRRORS),
            'ConfigMap "llm-config" key "source" is missing; add the URL of the model under '
            "that key",
        ),
        (
            (" \n", NO_SHA256, NO_MIRRORS),
            'ConfigMap "llm-config" key "source" is empty; put the URL of the model under that '
            "key",
        ),
        (
            ("ftp://models.example.com/m.tar.zst", NO_SHA256, NO_MIRRORS),
            "ConfigMap \"llm-config\" key \"source\": 'ftp://models.example.com/m.tar.zst' is "
            "not an http(s), s3 or gs URL; give a URL such as",
        ),
        (
            ("https://h/m.tar.zst\nhttps://h/other.tar.zst", NO_SHA256, NO_MIRRORS),
            'ConfigMap "llm-config" key "source" has spaces, line breaks or control characters; '
            "expected one URL",
        ),
        (
            ("https://h/m.tar.zst", "", NO_MIRRORS),
            'ConfigMap "llm-config" key "sha256" is empty; expected the 64 hexadecimal '
            "characters of the sha256 of the bytes at the source (or no sha256 key at all)",
        ),
        (
            ("https://h/m.tar.zst", "sha256:" + "ab" * 32, NO_MIRRORS),
            f'ConfigMap "llm-config" key "sha256": "sha256:{"ab" * 32}" is not 64 '
            "hexadecimal characters; expected",
        ),
        (
            ("https://h/m.tar.zst", "ab" * 32 + "  ab", NO_MIRRORS),
            'ConfigMap "llm-config" key "sha256": "' + "ab" * 32 + '  ab" is not 64',
        ),
        (
            ("https://h/m.tar.zst", "x" * 5000, NO_MIRRORS),
            'ConfigMap "llm-config" key "sha256": "' + "x" * 80 + '" (and 4920 more characters)',
        ),
        (
            ("https://h/m.tar.zst", NO_SHA256, ""),
            'ConfigMap "llm-config" key "mirrors" is empty; expected comma-separated URLs',
        ),
        (
            ("https://h/m.tar.zst", NO_SHA256, "https://a/m.tar.zst,,https://b/m.tar.zst"),
            'ConfigMap "llm-config" key "mirrors" has an empty entry; expected comma-separated',
        ),
        (
            ("https://h/m.tar.zst", NO_SHA256, "https://a/m.tar.zst,a.example.com/m.tar.zst"),
            "ConfigMap \"llm-config\" key \"mirrors\": 'a.example.com/m.tar.zst' is not an",
        ),
    ],
    ids=[
        "source-unexpanded", "source-empty", "source-scheme", "source-two-lines",
        "sha256-empty", "sha256-prefixed", "sha256-trailing", "sha256-huge",
        "mirrors-empty", "mirrors-empty-entry", "mirrors-no-scheme",
    ],
)  # fmt: skip
def test_what_a_configmap_key_got_wrong_exits_2_naming_the_key(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    delivered: tuple[str, str, str],
    line: str,
) -> None:
    out = tmp_path / "out"
    assert fetch_from_configmap(out, *delivered) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (reported,) = err.strip().splitlines()  # one line, and nothing fetched before it
    assert reported.startswith(f"model-fetch: error: {line}"), reported
    assert not out.exists() or list(out.iterdir()) == []


@pytest.mark.parametrize(
    ("source", "policy", "line"),
    [
        (
            "http://models.example.com/m.tar.zst", ("https", "*"),
            "ConfigMap \"llm-config\" key \"source\": 'http://models.example.com/m.tar.zst' is "
            "not allowed: its scheme is not one of https://; ask for it to be allowed",
        ),
        (
            "https://evil.example.org/m.tar.zst", ("https", "*.example.com,s3://ml-*"),
            "ConfigMap \"llm-config\" key \"source\": 'https://evil.example.org/m.tar.zst' is "
            "not allowed: evil.example.org matches none of the allowed hosts *.example.com, "
            "s3://ml-*",
        ),
        (
            # A host pattern never admits a bucket, even one of the same name.
            "s3://models.example.com/m.tar.zst", ("https,s3", "*.example.com"),
            "is not allowed: s3://models.example.com matches none of the allowed hosts",
        ),
    ],
    ids=["scheme", "host", "bucket"],
)  # fmt: skip
def test_the_webhooks_policy_holds_for_urls_it_never_saw(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    source: str,
    policy: tuple[str, str],
    line: str,
) -> None:
    assert fetch_from_configmap(tmp_path / "out", source, policy=policy) == 2
    assert line in last_line(capsys)


def test_a_mirror_outside_the_policy_is_refused_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = fetch_from_configmap(
        tmp_path / "out",
        "https://a.example.com/m.tar.zst",
        mirrors="https://b.example.com/m.tar.zst,https://c.example.net/m.tar.zst",
        policy=("https", "*.example.com"),
    )
    assert code == 2
    assert "key \"mirrors\": 'https://c.example.net/m.tar.zst' is not allowed" in last_line(capsys)


def test_patterns_admit_what_the_webhook_admits(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archive = py_archive(TREE, "zst")
    with Origin() as origin:
        origin.add("/m.tar.zst", archive)
        code = fetch_from_configmap(
            tmp_path / "out", origin.url("/m.tar.zst"), policy=("HTTPS,http", "127.0.0.*,x.org")
        )
    assert code == 0, capsys.readouterr().err


def test_a_url_credential_in_the_configmap_is_not_repeated(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = "https://user:hunter2@h/m.tar.zst?sig=abc hunter2"
    assert fetch_from_configmap(tmp_path / "out", source) == 2
    err = capsys.readouterr().err
    assert 'key "source"' in err
    assert "hunter2" not in err and "sig=abc" not in err


def test_without_the_option_a_reference_is_just_a_bad_digest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = run_fetch("https://h/m.tar.zst", f"--sha256={NO_SHA256}", "-o", tmp_path / "o")
    assert code == 2
    assert "--sha256 must be 64 hexadecimal characters" in last_line(capsys)
