"""SHA-256 whose intermediate state can be saved and restored.

The fetcher checkpoints how far it has hashed a download so that a restart after kill -9 resumes
hashing instead of re-reading everything. ``hashlib`` cannot export its state, so this drives
OpenSSL's low-level ``SHA256_Init``/``SHA256_Update``/``SHA256_Final`` through ctypes on a
``SHA256_CTX`` whose layout is public (``openssl/sha.h``). These functions are deprecated in
OpenSSL 3 but still exported, and they use the same assembly block functions as ``hashlib``.

Exported state (version 1, 162 bytes, all integers little-endian)::

    magic "RSHA256\\0" | u16 version | SHA256_CTX fields (112 bytes) | u64 bytes hashed
    | SHA-256 of everything before it (32 bytes)

The context is written field by field rather than as raw memory so that a blob does not depend on
the host's byte order.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import struct
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

try:
    # Importing it maps the libcrypto CPython was built against into this process.
    import _hashlib

    _HASHLIB_FILE: str | None = getattr(_hashlib, "__file__", None)
except ImportError:  # a CPython built without OpenSSL
    _HASHLIB_FILE = None

__all__ = ["ResumableSha256", "Sha256Unavailable"]

DIGEST_SIZE: Final = 32
BLOCK_SIZE: Final = 64

_STATE_MAGIC: Final = b"RSHA256\0"
_STATE_VERSION: Final = 1
_HEADER = struct.Struct("<8sH")
_CTX_FIELDS = struct.Struct("<8I2I64s2I")
_LENGTH = struct.Struct("<Q")
_CHECKSUM_SIZE: Final = 32
_STATE_SIZE: Final = _HEADER.size + _CTX_FIELDS.size + _LENGTH.size + _CHECKSUM_SIZE

# SHA-256 counts message length in bits in a 64-bit field.
_MAX_MESSAGE_BYTES: Final = (1 << 61) - 1


class Sha256Unavailable(RuntimeError):
    """No usable OpenSSL libcrypto with the low-level SHA-256 functions could be loaded."""


class _Sha256Ctx(ctypes.Structure):
    # Field names follow openssl/sha.h. ``data`` is declared there as SHA_LONG[16] but OpenSSL
    # only ever memcpy's message bytes into it, so bytes is the faithful view.
    _fields_ = (
        ("h", ctypes.c_uint32 * 8),
        ("Nl", ctypes.c_uint32),
        ("Nh", ctypes.c_uint32),
        ("data", ctypes.c_ubyte * BLOCK_SIZE),
        ("num", ctypes.c_uint),
        ("md_len", ctypes.c_uint),
    )


assert ctypes.sizeof(_Sha256Ctx) == _CTX_FIELDS.size == 112


class _PyBuffer(ctypes.Structure):
    # Py_buffer from Include/pybuffer.h (part of the stable ABI since 3.11).
    _fields_ = (
        ("buf", ctypes.c_void_p),
        ("obj", ctypes.c_void_p),
        ("len", ctypes.c_ssize_t),
        ("itemsize", ctypes.c_ssize_t),
        ("readonly", ctypes.c_int),
        ("ndim", ctypes.c_int),
        ("format", ctypes.c_char_p),
        ("shape", ctypes.c_void_p),
        ("strides", ctypes.c_void_p),
        ("suboffsets", ctypes.c_void_p),
        ("internal", ctypes.c_void_p),
    )


_PyBUF_SIMPLE: Final = 0
_get_buffer = ctypes.pythonapi.PyObject_GetBuffer
_get_buffer.argtypes = (ctypes.py_object, ctypes.POINTER(_PyBuffer), ctypes.c_int)
_get_buffer.restype = ctypes.c_int
_release_buffer = ctypes.pythonapi.PyBuffer_Release
_release_buffer.argtypes = (ctypes.POINTER(_PyBuffer),)
_release_buffer.restype = None


class _Libcrypto:
    def __init__(self, library: ctypes.CDLL, origin: str) -> None:
        self.origin = origin
        ctx_pointer = ctypes.POINTER(_Sha256Ctx)
        self.init: Callable[..., int] = _bind(library, "SHA256_Init", (ctx_pointer,))
        self.update: Callable[..., int] = _bind(
            library, "SHA256_Update", (ctx_pointer, ctypes.c_void_p, ctypes.c_size_t)
        )
        self.final: Callable[..., int] = _bind(
            library, "SHA256_Final", (ctypes.c_char_p, ctx_pointer)
        )
        self._check_layout()

    def _check_layout(self) -> None:
        """Refuse a library whose SHA256_CTX does not match the layout this module assumes."""
        ctx = _Sha256Ctx()
        self.init(ctypes.byref(ctx))
        if ctx.h[0] != 0x6A09E667 or ctx.md_len != DIGEST_SIZE or ctx.num != 0:
            raise OSError("SHA256_CTX after SHA256_Init does not have the expected layout")
        self.update(ctypes.byref(ctx), b"abc", 3)
        if (ctx.Nl, ctx.Nh, ctx.num) != (24, 0, 3):
            raise OSError("SHA256_CTX after SHA256_Update does not have the expected layout")
        digest = ctypes.create_string_buffer(DIGEST_SIZE)
        self.final(digest, ctypes.byref(ctx))
        if digest.raw != hashlib.sha256(b"abc").digest():
            raise OSError("SHA256_Final produced a wrong digest for 'abc'")


def _bind(library: ctypes.CDLL, name: str, argtypes: tuple[Any, ...]) -> Callable[..., int]:
    function = getattr(library, name)  # AttributeError when the symbol is missing
    function.argtypes = argtypes
    function.restype = ctypes.c_int
    return function  # type: ignore[no-any-return]


def _mapped_libraries() -> list[tuple[int, int, str]]:
    """(start, end, path) of every file-backed mapping of this process, in address order."""
    mappings = []
    try:
        with Path("/proc/self/maps").open(encoding="utf-8", errors="replace") as maps:
            for line in maps:
                fields = line.split(maxsplit=5)
                if len(fields) == 6 and fields[5].startswith("/"):
                    start, end = fields[0].split("-")
                    mappings.append((int(start, 16), int(end, 16), fields[5].rstrip("\n")))
    except OSError:
        return []
    return mappings


def _hashlib_libcrypto_path() -> str | None:
    """Path of the libcrypto that CPython's own ``_hashlib`` is linked against, if it is mapped.

    This needs no compiler and no ldconfig cache, which slim container images lack.
    """
    if _HASHLIB_FILE is None:
        return None
    mappings = _mapped_libraries()
    paths = list(dict.fromkeys(p for _, _, p in mappings if Path(p).name.startswith("libcrypto")))
    if len(paths) <= 1:
        return paths[0] if paths else None
    # Wheels may vendor further copies of libcrypto; the dynamic linker resolves a symbol looked
    # up through _hashlib's handle in _hashlib's own dependencies, which identifies the right one.
    try:
        address = ctypes.cast(ctypes.CDLL(_HASHLIB_FILE).SHA256_Init, ctypes.c_void_p).value
    except (AttributeError, OSError):
        return paths[0]
    for start, end, path in mappings:
        if address is not None and start <= address < end:
            return path
    return paths[0]


def _libcrypto_candidates() -> Iterator[tuple[str, str | None]]:
    """(how it was found, name to dlopen) in order of preference; evaluated lazily."""
    yield "libcrypto mapped by CPython's _hashlib", _hashlib_libcrypto_path()
    found = ctypes.util.find_library("crypto")
    if sys.platform == "darwin" and found == "/usr/lib/libcrypto.dylib":
        # macOS aborts the process (not an OSError) when this unversioned stub is loaded.
        found = None
    yield "ctypes.util.find_library('crypto')", found
    yield "soname", "libcrypto.so.3"


def _load_libcrypto(candidates: Iterator[tuple[str, str | None]]) -> _Libcrypto:
    tried = []
    for how, name in candidates:
        if name is None:
            tried.append(f"{how}: nothing found")
            continue
        try:
            return _Libcrypto(ctypes.CDLL(name), origin=name)
        except (OSError, AttributeError) as error:
            tried.append(f"{how}: {name}: {error}")
    raise Sha256Unavailable(
        "resumable SHA-256 needs OpenSSL libcrypto with SHA256_Init/Update/Final; tried "
        + "; ".join(tried)
    )


_libcrypto_lock = threading.Lock()
_libcrypto: _Libcrypto | Sha256Unavailable | None = None


def _shared_libcrypto() -> _Libcrypto:
    # Loaded on first use rather than at import so that a missing library surfaces as
    # Sha256Unavailable where a hasher is constructed. A failure is remembered because the
    # search runs ldconfig/compiler subprocesses.
    global _libcrypto  # noqa: PLW0603
    with _libcrypto_lock:
        if _libcrypto is None:
            try:
                _libcrypto = _load_libcrypto(_libcrypto_candidates())
            except Sha256Unavailable as error:
                _libcrypto = error
        if isinstance(_libcrypto, Sha256Unavailable):
            raise Sha256Unavailable(*_libcrypto.args)
        return _libcrypto


def libcrypto_origin() -> str:
    """Which libcrypto backs ResumableSha256 (for diagnostics); raises Sha256Unavailable."""
    return _shared_libcrypto().origin


class ResumableSha256:
    """SHA-256 with ``hashlib``-like methods plus ``export_state``/``from_state``.

    ``update`` runs in OpenSSL with the GIL released and reads ``bytes``, ``bytearray`` and
    C-contiguous memoryviews in place. An instance is safe to share between threads.
    """

    digest_size: Final = DIGEST_SIZE
    block_size: Final = BLOCK_SIZE
    name: Final = "sha256"

    def __init__(self) -> None:
        self._crypto = _shared_libcrypto()
        self._ctx = _Sha256Ctx()
        self._bytes_hashed = 0
        self._lock = threading.Lock()
        self._crypto.init(ctypes.byref(self._ctx))

    @property
    def bytes_hashed(self) -> int:
        return self._bytes_hashed

    def update(self, data: bytes | bytearray | memoryview) -> None:
        if isinstance(data, bytes):
            self._update_from(data, len(data))
            return
        view = memoryview(data)
        if not view.c_contiguous:
            raise BufferError("ResumableSha256.update needs a C-contiguous buffer")
        size = view.nbytes
        if size == 0:
            return
        if view.readonly:
            self._update_from_readonly(view, size)
        else:
            self._update_from((ctypes.c_char * size).from_buffer(view), size)

    def _update_from_readonly(self, view: memoryview, size: int) -> None:
        # ctypes' from_buffer insists on writable memory, so read-only views (slices of bytes)
        # are pinned through the buffer protocol directly: the export keeps the memory alive and
        # in place while OpenSSL reads it with the GIL released.
        pinned = _PyBuffer()
        _get_buffer(view, ctypes.byref(pinned), _PyBUF_SIMPLE)
        try:
            self._update_from(pinned.buf, size)
        finally:
            _release_buffer(ctypes.byref(pinned))

    def _update_from(self, source: object, size: int) -> None:
        with self._lock:
            if self._bytes_hashed + size > _MAX_MESSAGE_BYTES:
                raise OverflowError("SHA-256 input is limited to 2**61 - 1 bytes")
            self._crypto.update(ctypes.byref(self._ctx), source, size)
            self._bytes_hashed += size

    def digest(self) -> bytes:
        with self._lock:
            finishing = _Sha256Ctx.from_buffer_copy(self._ctx)
        digest = ctypes.create_string_buffer(DIGEST_SIZE)
        self._crypto.final(digest, ctypes.byref(finishing))
        return digest.raw

    def hexdigest(self) -> str:
        return self.digest().hex()

    def copy(self) -> ResumableSha256:
        with self._lock:
            return self._from_ctx(_Sha256Ctx.from_buffer_copy(self._ctx), self._bytes_hashed)

    @classmethod
    def _from_ctx(cls, ctx: _Sha256Ctx, bytes_hashed: int) -> ResumableSha256:
        clone = cls.__new__(cls)
        clone._crypto = _shared_libcrypto()
        clone._ctx = ctx
        clone._bytes_hashed = bytes_hashed
        clone._lock = threading.Lock()
        return clone

    def export_state(self) -> bytes:
        """Opaque, versioned snapshot of the hash state; restore it with ``from_state``."""
        with self._lock:
            ctx = self._ctx
            body = b"".join(
                (
                    _HEADER.pack(_STATE_MAGIC, _STATE_VERSION),
                    _CTX_FIELDS.pack(*ctx.h, ctx.Nl, ctx.Nh, bytes(ctx.data), ctx.num, ctx.md_len),
                    _LENGTH.pack(self._bytes_hashed),
                )
            )
        return body + hashlib.sha256(body).digest()

    @classmethod
    def from_state(cls, blob: bytes) -> ResumableSha256:
        """Rebuild a hasher from ``export_state`` output; ValueError if the blob is not sound."""
        blob = bytes(blob)
        if len(blob) < _HEADER.size:
            raise ValueError(f"SHA-256 state is truncated: {len(blob)} bytes")
        magic, version = _HEADER.unpack_from(blob)
        if magic != _STATE_MAGIC:
            raise ValueError("not a resumable SHA-256 state (bad magic)")
        if version != _STATE_VERSION:
            raise ValueError(f"unsupported SHA-256 state version {version}")
        if len(blob) != _STATE_SIZE:
            raise ValueError(f"SHA-256 state must be {_STATE_SIZE} bytes, got {len(blob)}")
        body, checksum = blob[:-_CHECKSUM_SIZE], blob[-_CHECKSUM_SIZE:]
        if hashlib.sha256(body).digest() != checksum:
            raise ValueError("SHA-256 state checksum mismatch (corrupted)")

        *h, nl, nh, data, num, md_len = _CTX_FIELDS.unpack_from(body, _HEADER.size)
        (bytes_hashed,) = _LENGTH.unpack_from(body, _HEADER.size + _CTX_FIELDS.size)
        if md_len != DIGEST_SIZE:
            raise ValueError(f"state is for a {md_len}-byte digest, not SHA-256")
        if bytes_hashed > _MAX_MESSAGE_BYTES:
            raise ValueError(f"state claims {bytes_hashed} bytes hashed, beyond SHA-256's limit")
        if (nh << 32 | nl) != bytes_hashed * 8:
            raise ValueError("state bit count (Nl/Nh) disagrees with its byte count")
        if num != bytes_hashed % BLOCK_SIZE:
            raise ValueError("state pending-block size disagrees with its byte count")

        ctx = _Sha256Ctx()
        ctx.h[:] = h
        ctx.Nl, ctx.Nh, ctx.num, ctx.md_len = nl, nh, num, md_len
        ctypes.memmove(ctx.data, data, BLOCK_SIZE)
        return cls._from_ctx(ctx, bytes_hashed)
