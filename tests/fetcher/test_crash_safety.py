"""Crash safety: kill -9 over duplicate paths, crashes while one model replaces another,
damaged checkpoints, and hostile tar headers.

Every stop here is driven by progress (bytes the origin has sent, calls the fetcher has made),
never by a clock: each case dies at the same point of its work however loaded the machine is.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fetcher.commit
from fetcher.errors import FetchError
from fetcher.formats import Compression, Layout
from fetcher.stages.chain import Stages
from fetcher.stages.digest import ResumableSha256
from fetcher.stages.tree import RESERVED_NAMES, SafeTree
from fetcher.state.checkpoint import OpenFile, StateError, TreeState
from fetcher.state.marker import MARKER_NAME
from tests.fetcher.conftest import run_fetch, sha256
from tests.support.archives import Tree, compress, make_tree, py_archive, tree_snapshot, write_tree
from tests.support.origin import Faults, Origin

ATTEMPT_TIMEOUT = 60
# syncfs flushes the whole volume: on a shared disk every checkpoint and commit waits for
# everyone's dirty pages. What is tested here is order, not flushing, so the many-file cases
# live on tmpfs when there is one.
_TMPFS = Path("/dev/shm")


@contextlib.contextmanager
def _scratch(fallback: Path) -> Iterator[Path]:
    if not (_TMPFS.is_dir() and os.access(_TMPFS, os.W_OK)):
        yield fallback
        return
    where = Path(tempfile.mkdtemp(prefix="model-fetch-crash-", dir=_TMPFS))
    try:
        yield where
    finally:
        shutil.rmtree(where, ignore_errors=True)


def _model_snapshot(out: Path) -> dict[str, Any]:
    """What DIR holds apart from model-fetch's own files (marker, lock, state folder)."""
    return {
        path: entry
        for path, entry in tree_snapshot(out).items()
        if path.split("/")[0] not in RESERVED_NAMES
    }


def _expected_snapshot(tree: Tree, where: Path) -> dict[str, Any]:
    return tree_snapshot(write_tree(tree, where))


# --- 1. an archive holding one path twice, killed around the copies --------------------------

FIRST = random.Random(101).randbytes(1_200_000)
SECOND_SAME = random.Random(102).randbytes(1_200_000)
SECOND_OTHER = random.Random(103).randbytes(700_000)
MIDDLE = random.Random(104).randbytes(400_000)


def _duplicate_tar(second: bytes) -> tuple[bytes, dict[str, tuple[int, int]]]:
    """A plain tar holding weights.bin twice (as ``tar -r`` leaves it), and where each
    member's content lies: name -> (first byte, end) in the tar."""
    members = [
        ("config.json", b'{"layers": 2}'),
        ("weights.bin", FIRST),
        ("middle.bin", MIDDLE),
        ("weights.bin", second),
        ("tail.txt", b"the end\n"),
    ]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 1_700_000_000
            archive.addfile(info, io.BytesIO(data))
    blob = buffer.getvalue()
    spans: dict[str, tuple[int, int]] = {}
    with tarfile.open(fileobj=io.BytesIO(blob)) as archive:
        seen = 0
        for member in archive:
            key = member.name
            if key == "weights.bin":
                seen += 1
                key = f"weights.bin#{seen}"
            spans[key] = (member.offset_data, member.offset_data + member.size)
    return blob, spans


def _kill_offset(spans: dict[str, tuple[int, int]], where: str) -> int:
    if where == "inside the first copy":
        start, end = spans["weights.bin#1"]
    elif where == "between the copies":
        start, end = spans["middle.bin"]
    else:
        start, end = spans["weights.bin#2"]
    return (start + end) // 2


DUPLICATE_CASES = [
    pytest.param(codec, where, size, id=f"{codec}-{size}-{where.replace(' ', '-')}")
    for codec, wheres in (
        ("tar", ("inside the first copy", "between the copies", "inside the second copy")),
        ("zst", ("inside the second copy",)),
    )
    for where in wheres
    for size in ("same size", "other size")
]


@pytest.mark.parametrize(("codec", "where", "size"), DUPLICATE_CASES)
def test_a_path_held_twice_ends_as_its_last_copy_after_kill_9(
    tmp_path: Path, codec: str, where: str, size: str
) -> None:
    second = SECOND_SAME if size == "same size" else SECOND_OTHER
    tar, spans = _duplicate_tar(second)
    # Random content does not compress: zstd keeps it in raw blocks, so an offset in the tar
    # is the same offset in the .zst give or take a few block headers.
    archive = tar if codec == "tar" else compress(tar, "zst")
    digest = sha256(archive)
    threshold = _kill_offset(spans, where)
    out = tmp_path / "out"
    with Origin() as origin:
        path = "/model.tar" if codec == "tar" else "/model.tar.zst"
        origin.add(path, archive, faults=Faults(drip_bytes_per_s=4_000_000))
        command = [
            sys.executable, "-m", "fetcher", origin.url(path), "-o", str(out),
            "--sha256", digest, "--connections", "1", "--checkpoint-interval", "0.1",
            "--retry-wait", "0.05", "--format", "tar" if codec == "tar" else "tar.zst",
        ]  # fmt: skip
        process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
        switch = origin.kill_after(path, threshold, process.pid)
        _, killed_err = process.communicate(timeout=ATTEMPT_TIMEOUT)
        origin.on_body_progress(path, None)
        origin.wait_idle()
        assert switch.fired, killed_err
        assert process.returncode == -signal.SIGKILL, killed_err
        origin.set_faults(path, None)
        final = subprocess.run(command, capture_output=True, text=True, timeout=ATTEMPT_TIMEOUT)
    assert final.returncode == 0, final.stderr
    assert f"sha256 {digest} verified" in final.stderr
    weights = (out / "weights.bin").read_bytes()
    assert weights == second, (
        f"weights.bin holds {len(weights)} bytes, "
        f"{'the FIRST copy' if weights == FIRST else 'neither copy'}; the second has "
        f"{len(second)}\n{killed_err}\n{final.stderr}"
    )
    expected = {
        "config.json": b'{"layers": 2}',
        "weights.bin": second,
        "middle.bin": MIDDLE,
        "tail.txt": b"the end\n",
    }
    assert _model_snapshot(out) == _expected_snapshot(expected, tmp_path / "expected")


# --- 2. one model replacing another, crashed while removing and while moving into place -----

V1 = make_tree(seed=21, n_files=3_000, total_bytes=3_000_000)
V2 = make_tree(seed=22, n_files=160, total_bytes=600_000)


@dataclass
class Replacement:
    origin: Origin
    template: Path  # DIR holding v1, committed
    v1_entries: list[str]
    v2_entries: list[str]
    v2_digest: str
    expected: dict[str, Any]


@pytest.fixture(scope="module")
def replacement(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replacement]:
    v1, v2 = py_archive(V1, "zst"), py_archive(V2, "zst")
    with _scratch(tmp_path_factory.mktemp("replacement")) as base, Origin() as origin:
        origin.add("/v1.tar.zst", v1)
        origin.add("/v2.tar.zst", v2)
        template = base / "template"
        assert run_fetch(origin.url("/v1.tar.zst"), "-o", template, "--sha256", sha256(v1)) == 0
        v1_entries = json.loads((template / MARKER_NAME).read_text())["entries"]
        yield Replacement(
            origin,
            template,
            v1_entries,
            sorted({path.split("/")[0] for path in V2}),
            sha256(v2),
            _expected_snapshot(V2, base / "expected"),
        )


def _crash_points() -> list[Any]:
    rng = random.Random(2024)
    v1_top = len({path.split("/")[0] for path in V1})
    v2_top = len({path.split("/")[0] for path in V2})
    points = [("remove", 1, "before"), ("remove", 2, "after"), ("rename", 1, "before")]
    points += [
        ("remove", rng.randint(1, v1_top), rng.choice(["before", "after"])) for _ in range(5)
    ]
    points += [("remove", v1_top, "after"), ("rename", v2_top, "before")]
    # The first entries are v1's directories: a crash inside the walk of one of them.
    points += [("remove", 1, "partway"), ("remove", 3, "partway")]
    points += [("rename", rng.randint(2, v2_top), "before") for _ in range(4)]
    return [pytest.param(*point, id=f"{point[0]}-{point[1]}-{point[2]}") for point in points]


class Crash(KeyboardInterrupt):
    """Stands in for kill -9: nothing after it runs, nothing catches it."""


@pytest.mark.parametrize(("phase", "at_call", "when"), _crash_points())
def test_a_replacement_crashed_anywhere_ends_as_exactly_the_new_model(
    replacement: Replacement,
    monkeypatch: pytest.MonkeyPatch,
    phase: str,
    at_call: int,
    when: str,
) -> None:
    out = replacement.template.parent / f"out-{phase}-{at_call}-{when}"
    shutil.copytree(replacement.template, out, symlinks=True)
    args = (replacement.origin.url("/v2.tar.zst"), "-o", out, "--sha256", replacement.v2_digest)
    calls = 0
    real_remove, real_rename = fetcher.commit.remove_tree, Path.rename

    def crashing_remove(path: Path) -> None:
        nonlocal calls
        calls += 1
        if calls == at_call and when == "before":
            raise Crash
        if calls == at_call and when == "partway":
            # What a kill -9 inside remove_tree leaves: some files gone, the rest there.
            for victim in sorted(p for p in path.rglob("*") if p.is_file())[::2]:
                victim.unlink()
            raise Crash
        real_remove(path)
        if calls == at_call:
            raise Crash

    def crashing_rename(self: Path, target: Any) -> Path:
        nonlocal calls
        if "/.model-fetch/tree/" in str(self):
            calls += 1
            if calls == at_call:
                raise Crash
        return real_rename(self, target)

    if phase == "remove":
        monkeypatch.setattr(fetcher.commit, "remove_tree", crashing_remove)
    else:
        monkeypatch.setattr(Path, "rename", crashing_rename)
    with pytest.raises(Crash):
        run_fetch(*args)
    monkeypatch.undo()
    for _ in range(3):
        code = run_fetch(*args)
        if code == 0:
            break
    assert code == 0
    snapshot = _model_snapshot(out)
    left_of_v1 = sorted(
        name for name in replacement.v1_entries if name not in replacement.v2_entries
        if (out / name).exists() or (out / name).is_symlink()
    )  # fmt: skip
    assert not left_of_v1, f"v1 entries left behind: {left_of_v1[:10]}"
    assert snapshot == replacement.expected
    marker = json.loads((out / MARKER_NAME).read_text())
    assert marker["source"].endswith("/v2.tar.zst")
    assert marker["sha256"] == replacement.v2_digest
    assert sorted(marker["entries"]) == replacement.v2_entries
    shutil.rmtree(out)


# --- 3. damaged checkpoints: whatever was damaged, the rerun ends right -----------------------

FUZZ_TREE = make_tree(seed=31, n_files=40, total_bytes=2_000_000)
FUZZ_ARCHIVE = py_archive(FUZZ_TREE, "zst", parts=8)
FUZZ_PATH = "/fuzz.tar.zst"


@dataclass
class Stopped:
    origin: Origin
    template: Path
    body: dict[str, Any]
    expected: dict[str, Any]

    def command(self, out: Path) -> list[str]:
        return [
            self.origin.url(FUZZ_PATH), "-o", str(out), "--sha256", sha256(FUZZ_ARCHIVE),
            "--connections", "1", "--checkpoint-interval", "0.1", "--retry-wait", "0.05",
        ]  # fmt: skip


@pytest.fixture(scope="module")
def stopped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stopped]:
    """A fetch stopped by SIGTERM at 40%, with the checkpoint it wrote on the way out."""
    with _scratch(tmp_path_factory.mktemp("fuzz")) as base, Origin() as origin:
        template = base / "template"
        origin.add(FUZZ_PATH, FUZZ_ARCHIVE, faults=Faults(drip_bytes_per_s=2_000_000))
        stopped = Stopped(origin, template, {}, _expected_snapshot(FUZZ_TREE, base / "expected"))
        process = subprocess.Popen(
            [sys.executable, "-m", "fetcher", *stopped.command(template)],
            stderr=subprocess.PIPE,
            text=True,
        )
        switch = origin.kill_after(
            FUZZ_PATH, len(FUZZ_ARCHIVE) * 4 // 10, process.pid, signal.SIGTERM
        )
        _, err = process.communicate(timeout=ATTEMPT_TIMEOUT)
        origin.on_body_progress(FUZZ_PATH, None)
        origin.wait_idle()
        assert switch.fired, err
        assert process.returncode == 128 + signal.SIGTERM, err
        origin.set_faults(FUZZ_PATH, None)
        document = json.loads((template / ".model-fetch" / "checkpoint.json").read_text())
        stopped.body = document["body"]
        assert stopped.body["restore"] is not None, "the stop left no restore point to damage"
        yield stopped


def _encode(body: Any) -> bytes:
    canonical = json.dumps(body, separators=(",", ":"), sort_keys=True)
    digest = hashlib.sha256(canonical.encode()).hexdigest()
    return json.dumps({"version": 2, "sha256": digest, "body": body}).encode()


def _nodes(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    """Every value inside the body, with the keys and indices that lead to it."""
    if path:
        yield path, value
    if isinstance(value, dict):
        for key in sorted(value):
            yield from _nodes(value[key], (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _nodes(item, (*path, index))


_REPLACEMENTS: list[tuple[type, Callable[[Any], list[Any]]]] = [
    (bool, lambda v: [not v, 0, 1, None, "true"]),
    (int, lambda v: [v + 1, v - 1, v * 2 + 1, -1, -v - 1, 10**30, v + 0.5, str(v), None, True]),
    (float, lambda v: [v + 1, -v - 1, 1e300, int(v) + 1, None, "1.0"]),
    (str, lambda v: ["", "../x", "x" * 10_000, v[:-1], v + "A", None, 0]),
    (list, lambda v: [[], [[1, 0]], [[0, 1]], None, {}, [*v, *v]]),
    (dict, lambda v: [{}, None, []]),
]


def _replacements(value: Any) -> list[Any]:
    """Values to put in place of value: off by one, negative, huge, of another type."""
    for kind, make in _REPLACEMENTS:  # bool before int: True is an int too
        if isinstance(value, kind):
            return make(value)
    return [0, 1, -1, "x", "", [], {}, True, 10**30]  # null


def _set(body: Any, path: tuple[Any, ...], value: Any) -> Any:
    body = json.loads(json.dumps(body))
    target = body
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return body


Mutation = tuple[str, Callable[[bytes, dict[str, Any]], bytes]]


def _mutations() -> list[Mutation]:
    rng = random.Random(4040)
    raw: list[Mutation] = []
    for n in range(4):
        seed = rng.randrange(1 << 30)

        def flip(blob: bytes, _: dict[str, Any], seed: int = seed, count: int = n + 1) -> bytes:
            picker = random.Random(seed)
            damaged = bytearray(blob)
            for _ in range(count):
                damaged[picker.randrange(len(damaged))] ^= 1 << picker.randrange(8)
            return bytes(damaged)

        raw.append((f"flip {n + 1} bit(s), seed {seed}", flip))
    raw += [
        ("truncate to half", lambda blob, _: blob[: len(blob) // 2]),
        ("drop the last byte", lambda blob, _: blob[:-1]),
        ("empty file", lambda blob, _: b""),
        ("null", lambda blob, _: b"null"),
        ("[]", lambda blob, _: b"[]"),
        ("{}", lambda blob, _: b"{}"),
        ("not JSON", lambda blob, _: b"\x00\xffcheckpoint?"),
        ("edited body, old sum", lambda blob, _: blob.replace(b'"body":{', b'"body":{"x":1,')),
    ]  # fmt: skip
    return raw


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[: limit - 20]}...({len(text)} chars)"


def _edits(body: dict[str, Any], count: int) -> list[tuple[str, dict[str, Any]]]:
    """Seeded one-field edits of the body, checksum recomputed: every leaf once, then more."""
    rng = random.Random(5050)
    nodes = list(_nodes(body))
    leaves = [(path, value) for path, value in nodes if not isinstance(value, dict | list)]
    chosen = list(leaves)
    while len(chosen) < count:
        chosen.append(rng.choice(nodes))
    edits = []
    for path, value in chosen[: max(count, len(leaves))]:
        new = rng.choice(_replacements(value))
        where = ".".join(map(str, path))
        shown = f"{_short(repr(value), 40)} -> {_short(repr(new), 40)}"
        edits.append((f"{where}: {shown}", _set(body, path, new)))
    return edits


def test_a_damaged_checkpoint_never_spoils_the_result(
    stopped: Stopped, capsys: pytest.CaptureFixture[str]
) -> None:
    template_blob = (stopped.template / ".model-fetch" / "checkpoint.json").read_bytes()
    cases: list[tuple[str, bytes]] = [
        (f"raw: {name}", damage(template_blob, stopped.body)) for name, damage in _mutations()
    ]
    cases += [(f"field: {name}", _encode(body)) for name, body in _edits(stopped.body, 40)]
    assert len(cases) >= 48
    digest = sha256(FUZZ_ARCHIVE)
    failures = []
    capsys.readouterr()
    for index, (name, blob) in enumerate(cases):
        out = stopped.template.parent / f"o{index}"
        shutil.copytree(stopped.template, out, symlinks=True)
        (out / ".model-fetch" / "checkpoint.json").write_bytes(blob)
        try:
            code = run_fetch(*stopped.command(out))
        except BaseException as error:  # every escape is a finding
            code = f"raised {type(error).__name__}: {error}"
        err = capsys.readouterr().err
        problems = []
        if code != 0:
            problems.append(f"exit {code}")
        if "Traceback" in err or "internal error" in err:
            problems.append("a traceback or an internal error")
        if f"sha256 {digest} verified" not in err:
            problems.append("no 'verified' line")
        if code == 0 and _model_snapshot(out) != stopped.expected:
            got = _model_snapshot(out)
            wrong = sorted(p for p in set(got) | set(stopped.expected)
                           if got.get(p) != stopped.expected.get(p))  # fmt: skip
            problems.append(f"a wrong tree (differs at {wrong[:5]})")
        if problems:
            last = [_short(line, 240) for line in err.splitlines() if line.strip()][-2:]
            failures.append(f"{name}: {', '.join(problems)}; last lines: {last}")
        shutil.rmtree(out, ignore_errors=True)
    assert not failures, f"{len(failures)} of {len(cases)} damaged checkpoints went wrong:\n" + (
        "\n".join(failures)
    )


# --- 4. hostile tar headers: a clean refusal or tarfile's reading, never anything else --------

DATA = b"model bytes " * 100


def _one_member(pax: dict[str, str] | None = None) -> bytes:
    info = tarfile.TarInfo("weights/part.bin")
    info.size, info.mode, info.mtime = len(DATA), 0o644, 1_700_000_000
    fmt = tarfile.USTAR_FORMAT
    if pax is not None:
        info.pax_headers = dict(pax)
        fmt = tarfile.PAX_FORMAT
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt) as archive:
        archive.addfile(info, io.BytesIO(DATA))
    return buffer.getvalue()


def _with_checksum(header: bytearray) -> bytearray:
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    return header


def _field(width: int) -> st.SearchStrategy[bytes]:
    def fit(value: bytes) -> bytes:
        return value[:width].ljust(width, b"\0")

    octal = st.integers(min_value=0, max_value=8**14).map(lambda n: b"%o" % n)
    return st.one_of(
        octal.map(fit),
        st.just(b"7" * (width - 1) + b"\0"),
        st.just(b"7" * width),
        st.binary(min_size=width - 1, max_size=width - 1).map(lambda b: b"\xff" + b),  # < 0
        st.binary(min_size=width - 1, max_size=width - 1).map(lambda b: b"\x80" + b),  # 256
        st.binary(min_size=width, max_size=width),
        st.text("0123456789 -+xe\0", max_size=width).map(lambda t: fit(t.encode())),
    )


_NAME_PIECES = [b"a", b"b.bin", b"..", b".", b"/", b"\0", b"\xff", b"weights", b".model-fetch"]
NAMES = st.lists(st.sampled_from(_NAME_PIECES), min_size=0, max_size=12).map(
    lambda pieces: b"".join(pieces)[:100].ljust(100, b"\0")
)


@st.composite
def hostile_headers(draw: st.DrawFn) -> bytes:
    blob = bytearray(_one_member())
    header = blob[:512]
    for start, end, values in (
        (0, 100, NAMES),
        (100, 108, st.binary(min_size=8, max_size=8)),
        (124, 136, _field(12)),
        (136, 148, _field(12)),
        (156, 157, st.binary(min_size=1, max_size=1)),
    ):
        if draw(st.booleans()):
            header[start:end] = draw(values)
    blob[:512] = _with_checksum(header)
    return bytes(blob)


PAX_TEXT = st.one_of(
    st.sampled_from(["-1", "1e30", "99999999999999999999", "0x10", "", " 5", "1200", "0", "abc"]),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.text(max_size=20),
)
PAX_PATH = st.one_of(
    st.sampled_from(["../x", "/etc/x", "a/../../b", "", ".", "a\0b", ".model-fetch/x", "ok"]),
    st.text(max_size=30),
)


@st.composite
def hostile_pax(draw: st.DrawFn) -> bytes:
    pax = {}
    for key, values in (("size", PAX_TEXT), ("mtime", PAX_TEXT), ("path", PAX_PATH)):
        if draw(st.booleans()):
            pax[key] = draw(values)
    return _one_member(pax)


def _extract(data: bytes, root: Path) -> None:
    run = Stages(
        root, compression=Compression.NONE, layout=Layout.TAR, file_name="x", max_extracted=10**9
    )
    try:
        hasher = ResumableSha256()
        for start in range(0, len(data), 4096):
            piece = data[start : start + 4096]
            run.feed(piece, hasher.copy())
            hasher.update(piece)
        run.finish()
    finally:
        run.release()


def _tarfile_reading(data: bytes) -> dict[str, bytes] | None:
    """Regular files as Python's tarfile reads them (the last copy of a name wins); None when
    tarfile cannot read the archive."""
    try:
        files: dict[str, bytes] = {}
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as archive:
            for member in archive:
                if member.type in (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE):
                    extracted = archive.extractfile(member)
                    assert extracted is not None
                    files[member.name] = extracted.read()
        return files
    except Exception:  # whatever stops tarfile: no reading to compare
        return None


def _check_header_outcome(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as jail:
        root = Path(jail) / "root"
        started = time.monotonic()
        try:
            _extract(data, root)
        except FetchError as error:
            assert error.exit_code == 4, f"{type(error).__name__} (exit {error.exit_code})"
            refused = True
        else:
            refused = False
        finally:
            elapsed = time.monotonic() - started
        assert elapsed < 5, f"took {elapsed:.1f}s"
        assert sorted(p.name for p in Path(jail).iterdir()) == ["root"]  # nothing beside it
        reading = _tarfile_reading(data)
        if refused or reading is None:
            return
        for name, content in reading.items():
            parts = [part for part in PurePosixPath(name).parts if part != "."]
            assert parts and not name.startswith("/") and ".." not in parts, (
                f"extracted without refusing a member named {name!r}"
            )
            target = root.joinpath(*parts)
            assert target.is_file() and not target.is_symlink(), f"{name!r} was not extracted"
            got = target.read_bytes()
            assert got == content, f"{name!r}: {len(got)} bytes, tarfile reads {len(content)}"


FUZZ_SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@FUZZ_SETTINGS
@given(hostile_headers())
def test_hostile_ustar_headers_are_refused_cleanly_or_read_as_tarfile_does(data: bytes) -> None:
    _check_header_outcome(data)


@FUZZ_SETTINGS
@given(hostile_pax())
def test_hostile_pax_headers_are_refused_cleanly_or_read_as_tarfile_does(data: bytes) -> None:
    _check_header_outcome(data)


@pytest.mark.parametrize(
    ("parts", "mode"),
    [
        pytest.param(["../../../ESCAPED"], 0o755, id="mkdir-beside-DIR"),
        pytest.param(["../../.."], 0o777, id="chmod-DIR's-parent"),
    ],
)
def test_a_checkpoint_naming_a_directory_outside_dir_touches_nothing_there(
    stopped: Stopped, parts: list[str], mode: int
) -> None:
    """A checksum is no signature: anyone who can write DIR can write a checkpoint that
    passes. A directory mode it lists ("dir_modes") must still never reach outside DIR."""
    jail = stopped.template.parent / f"jail-{mode:o}"
    jail.mkdir()
    jail.chmod(0o750)
    out = jail / "out"
    shutil.copytree(stopped.template, out, symlinks=True)
    body = json.loads(json.dumps(stopped.body))
    dir_modes = body["restore"]["tree"]["dir_modes"]
    assert dir_modes, "the checkpoint lists no directory mode to damage"
    dir_modes[0] = [parts, mode, 0]
    (out / ".model-fetch" / "checkpoint.json").write_bytes(_encode(body))
    code = run_fetch(*stopped.command(out))
    beside = sorted(path.name for path in jail.iterdir())
    jail_mode = jail.stat().st_mode & 0o7777
    shutil.rmtree(jail)
    assert beside == ["out"], f"the fetcher created {beside} beside DIR"
    assert jail_mode == 0o750, f"the fetcher changed DIR's parent to mode {jail_mode:o}"
    assert code == 0


@pytest.mark.parametrize("on_disk", [b"", b"partial", None], ids=["empty", "short", "missing"])
def test_a_file_read_past_must_be_whole_on_disk(tmp_path: Path, on_disk: bytes | None) -> None:
    """A checkpoint saying the open file is being read past (complete from an earlier run) is
    refused unless that file is on disk at its full size: otherwise the rest of it is lost."""
    root = tmp_path / "staging"
    root.mkdir()
    if on_disk is not None:
        (root / "weights.bin").write_bytes(on_disk)
    state = TreeState(0, 0, (), OpenFile(("weights.bin",), 0o644, 3, True, 1000))
    tree = SafeTree(root, max_bytes=1 << 20)
    try:
        with pytest.raises(StateError, match="reading past"):
            tree.restore(state, {})
        (root / "weights.bin").write_bytes(b"x" * 1000)
        tree.restore(state, {})  # whole on disk: read past
    finally:
        tree.release()
