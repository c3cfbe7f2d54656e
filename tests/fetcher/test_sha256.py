import ctypes.util
import hashlib
import itertools
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fetcher.stages import digest as sha256
from fetcher.stages.digest import ResumableSha256, Sha256Unavailable

# Layout of a version 1 state, restated here so the tests can forge blobs with valid checksums.
HEADER = struct.Struct("<8sH")
CTX = struct.Struct("<8I2I64s2I")
LENGTH = struct.Struct("<Q")
CTX_OFFSET = HEADER.size
LENGTH_OFFSET = CTX_OFFSET + CTX.size
STATE_SIZE = LENGTH_OFFSET + LENGTH.size + 32


def reseal(body: bytes) -> bytes:
    """Give a (possibly tampered) state body a valid checksum."""
    return body + hashlib.sha256(body).digest()


def tampered_state(hasher: ResumableSha256, **changes: int) -> bytes:
    """Re-encode ``hasher``'s state with some fields replaced, keeping the checksum valid."""
    blob = hasher.export_state()
    magic, version = HEADER.unpack_from(blob)
    *h, nl, nh, data, num, md_len = CTX.unpack_from(blob, CTX_OFFSET)
    (length,) = LENGTH.unpack_from(blob, LENGTH_OFFSET)
    fields = {"version": version, "Nl": nl, "Nh": nh, "num": num, "md_len": md_len}
    fields["length"] = length
    fields.update(changes)
    body = (
        HEADER.pack(magic, fields["version"])
        + CTX.pack(*h, fields["Nl"], fields["Nh"], data, fields["num"], fields["md_len"])
        + LENGTH.pack(fields["length"])
    )
    return reseal(body)


def hashed(data: bytes | bytearray | memoryview) -> ResumableSha256:
    hasher = ResumableSha256()
    hasher.update(data)
    return hasher


@st.composite
def chunked(draw: st.DrawFn) -> tuple[bytes, list[bytes], list[bool]]:
    """A message, the chunks it is fed in, and after which chunks the state is round-tripped."""
    message = draw(st.binary(max_size=1000))
    cuts = sorted(draw(st.lists(st.integers(0, len(message)), max_size=8)))
    bounds = [0, *cuts, len(message)]
    chunks = [message[start:end] for start, end in itertools.pairwise(bounds)]
    round_trips = draw(st.lists(st.booleans(), min_size=len(chunks), max_size=len(chunks)))
    return message, chunks, round_trips


@given(chunked())
def test_digest_matches_hashlib_across_splits_and_restores(
    case: tuple[bytes, list[bytes], list[bool]],
) -> None:
    message, chunks, round_trips = case
    hasher = ResumableSha256()
    for chunk, round_trip in zip(chunks, round_trips, strict=True):
        hasher.update(chunk)
        if round_trip:
            hasher = ResumableSha256.from_state(hasher.export_state())
    assert hasher.digest() == hashlib.sha256(message).digest()
    assert hasher.bytes_hashed == len(message)


@given(st.binary(max_size=300), st.sampled_from(["bytes", "bytearray", "readonly", "writable"]))
def test_every_buffer_kind_is_hashed_in_place(message: bytes, kind: str) -> None:
    buffers: dict[str, bytes | bytearray | memoryview] = {
        "bytes": message,
        "bytearray": bytearray(message),
        "readonly": memoryview(b"<" + message + b">")[1:-1],
        "writable": memoryview(bytearray(b"<" + message + b">"))[1:-1],
    }
    assert hashed(buffers[kind]).hexdigest() == hashlib.sha256(message).hexdigest()


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (b"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
        (b"abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
        (b"a" * 1_000_000, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"),
    ],
    ids=["empty", "abc", "million-a"],
)
def test_known_vectors(message: bytes, expected: str) -> None:
    assert hashed(message).hexdigest() == expected


def test_million_a_fed_as_small_readonly_view_slices() -> None:
    hasher = ResumableSha256()
    view = memoryview(b"a" * 1000)
    for _ in range(1000):
        for start in range(0, 1000, 100):
            hasher.update(view[start : start + 100])
    expected = "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"
    assert hasher.hexdigest() == expected


def test_large_input_in_one_call_and_in_chunks_matches_hashlib() -> None:
    data = bytearray(64 * 1024 * 1024)
    data[::4093] = bytes(i % 251 for i in range(len(data[::4093])))
    expected = hashlib.sha256(data).digest()
    assert hashed(bytes(data)).digest() == expected

    hasher = ResumableSha256()
    view = memoryview(data)
    step = 1024 * 1024 + 7
    for start in range(0, len(data), step):
        hasher.update(view[start : start + step])
    assert hasher.digest() == expected
    assert hasher.bytes_hashed == len(data)


def test_state_survives_a_round_trip_through_a_file(tmp_path: Path) -> None:
    checkpoint = tmp_path / "sha256.state"
    first, rest = b"x" * 100_003, b"y" * 77
    checkpoint.write_bytes(hashed(first).export_state())

    resumed = ResumableSha256.from_state(checkpoint.read_bytes())
    assert resumed.bytes_hashed == len(first)
    resumed.update(rest)
    assert resumed.digest() == hashlib.sha256(first + rest).digest()


def test_digest_is_non_destructive() -> None:
    hasher = hashed(b"abc")
    assert hasher.digest() == hasher.digest() == hashlib.sha256(b"abc").digest()
    hasher.update(b"def")
    assert hasher.digest() == hashlib.sha256(b"abcdef").digest()
    assert hasher.export_state() == hashed(b"abcdef").export_state()


def test_copy_is_independent() -> None:
    original = hashed(b"shared prefix ")
    forked = original.copy()
    original.update(b"left")
    forked.update(b"right")
    assert original.digest() == hashlib.sha256(b"shared prefix left").digest()
    assert forked.digest() == hashlib.sha256(b"shared prefix right").digest()
    assert forked.bytes_hashed == len(b"shared prefix right")


def test_buffers_are_released_after_update() -> None:
    buffer = bytearray(b"grow me")
    hasher = ResumableSha256()
    hasher.update(buffer)
    hasher.update(memoryview(buffer)[1:])
    buffer.extend(b" please")  # BufferError if an export were still held
    assert hasher.bytes_hashed == 13


def test_multibyte_and_empty_views() -> None:
    words = memoryview(bytearray(b"0123456789abcdef")).cast("I")
    readonly_words = memoryview(b"0123456789abcdef").cast("Q")
    hasher = ResumableSha256()
    hasher.update(words)
    hasher.update(readonly_words)
    hasher.update(memoryview(b""))
    hasher.update(bytearray())
    assert hasher.digest() == hashlib.sha256(b"0123456789abcdef" * 2).digest()


def test_non_contiguous_views_are_refused() -> None:
    hasher = ResumableSha256()
    with pytest.raises(BufferError):
        hasher.update(memoryview(bytearray(10))[::2])
    with pytest.raises(BufferError):
        hasher.update(memoryview(bytes(10))[::2])
    assert hasher.bytes_hashed == 0


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_any_bit_flip_is_refused(data: st.DataObject) -> None:
    blob = bytearray(hashed(b"checkpointed bytes" * 7).export_state())
    position = data.draw(st.integers(0, len(blob) - 1))
    blob[position] ^= 1 << data.draw(st.integers(0, 7))
    with pytest.raises(ValueError, match=r"magic|version|checksum"):
        ResumableSha256.from_state(bytes(blob))


def test_truncated_and_extended_states_are_refused() -> None:
    blob = hashed(b"abc").export_state()
    assert len(blob) == STATE_SIZE
    for size in range(len(blob)):
        with pytest.raises(ValueError):
            ResumableSha256.from_state(blob[:size])
    with pytest.raises(ValueError, match="bytes"):
        ResumableSha256.from_state(blob + b"\0")


def test_wrong_magic_and_version_are_refused() -> None:
    hasher = hashed(b"abc")
    with pytest.raises(ValueError, match="version 2"):
        ResumableSha256.from_state(tampered_state(hasher, version=2))
    foreign = reseal(b"NOTSHA25" + hasher.export_state()[8:-32])
    with pytest.raises(ValueError, match="magic"):
        ResumableSha256.from_state(foreign)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"length": 4}, "Nl/Nh"),
        ({"Nl": 8 * 4}, "Nl/Nh"),
        ({"Nh": 1}, "Nl/Nh"),
        ({"num": 4}, "pending"),
        ({"md_len": 28}, "28-byte"),
        ({"length": 1 << 61, "Nl": 0, "Nh": 0}, "limit"),
    ],
)
def test_internally_inconsistent_states_are_refused(changes: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ResumableSha256.from_state(tampered_state(hashed(b"abc"), **changes))


def test_state_counts_bits_beyond_32_bits() -> None:
    # 2**29 bytes is the first length whose bit count no longer fits in Nl alone.
    base = tampered_state(hashed(b""), length=1 << 29, Nl=0, Nh=1)
    assert ResumableSha256.from_state(base).bytes_hashed == 1 << 29


def test_libcrypto_is_the_one_hashlib_uses() -> None:
    origin = sha256.libcrypto_origin()
    assert Path(origin).name.startswith("libcrypto")
    assert origin in {path for _, _, path in sha256._mapped_libraries()}


def test_vendored_libcrypto_copies_do_not_confuse_the_search(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = sha256._mapped_libraries()
    decoy = (1, 2, "/opt/wheel.libs/libcrypto-deadbeef.so.3")
    monkeypatch.setattr(sha256, "_mapped_libraries", lambda: [decoy, *real])
    assert sha256._hashlib_libcrypto_path() == sha256.libcrypto_origin()


def candidates(*names: str | None) -> Iterator[tuple[str, str | None]]:
    for index, name in enumerate(names):
        yield f"candidate {index}", name


def test_unloadable_libraries_raise_sha256unavailable_naming_each_attempt() -> None:
    libc = ctypes.util.find_library("c")
    with pytest.raises(Sha256Unavailable) as raised:
        sha256._load_libcrypto(candidates(None, "/nonexistent/libcrypto.so.99", libc))
    text = str(raised.value)
    assert "candidate 0: nothing found" in text
    assert "/nonexistent/libcrypto.so.99" in text
    assert f"{libc}: " in text and "SHA256_Init" in text


def test_construction_reports_a_missing_libcrypto(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sha256, "_libcrypto", None)
    monkeypatch.setattr(sha256, "_libcrypto_candidates", lambda: candidates("/nonexistent.so"))
    for _ in range(2):  # the failure is remembered, and raised again each time
        with pytest.raises(Sha256Unavailable, match="nonexistent"):
            ResumableSha256()
