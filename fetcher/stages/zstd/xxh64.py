"""XXH64 with a state that can be exported and imported, for zstd's content checksum.

The xxhash package hashes well but keeps its state opaque; its compiled module also exports
the C API, whose XXH64_state_t is a plain struct. Binding that API with a state buffer we
own makes the state's bytes the exportable state.
"""

from __future__ import annotations

import ctypes
import importlib.util
from functools import cache

_BUFFER_WORDS = 16  # 128 bytes: room for XXH64_state_t (88 bytes in xxHash 0.8), 8-aligned


def _library_path() -> str:
    spec = importlib.util.find_spec("xxhash._xxhash")
    if spec is None or spec.origin is None:
        raise RuntimeError("the xxhash package's compiled module is not installed")
    return spec.origin


class _Api:
    def __init__(self) -> None:
        lib = ctypes.CDLL(_library_path())
        self.reset = lib.XXH64_reset
        self.reset.argtypes = [ctypes.c_void_p, ctypes.c_uint64]
        self.reset.restype = ctypes.c_int
        self.update = lib.XXH64_update
        self.update.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
        self.update.restype = ctypes.c_int
        self.digest = lib.XXH64_digest
        self.digest.argtypes = [ctypes.c_void_p]
        self.digest.restype = ctypes.c_uint64
        copy = lib.XXH64_copyState
        copy.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        copy.restype = None
        self.state_size = _measure_state_size(copy)


def _measure_state_size(copy: ctypes._NamedFuncPointer) -> int:
    """sizeof(XXH64_state_t), read off XXH64_copyState: it copies exactly that many bytes."""
    source = (ctypes.c_uint8 * (_BUFFER_WORDS * 8))()
    target = (ctypes.c_uint8 * (_BUFFER_WORDS * 8))(*([0xA5] * (_BUFFER_WORDS * 8)))
    copy(ctypes.addressof(target), ctypes.addressof(source))
    size = bytes(target).find(0xA5)
    if size <= 0 or size % 8 or bytes(target)[size:].count(0xA5) != len(target) - size:
        raise RuntimeError(f"unexpected XXH64_state_t layout in {_library_path()}")
    return size


@cache
def _api() -> _Api:
    return _Api()


class Xxh64:
    """XXH64 (seed 0) of everything updated so far; state() and from_state() carry it over."""

    def __init__(self) -> None:
        self._api = _api()
        self._buffer = (ctypes.c_uint64 * _BUFFER_WORDS)()
        self._address = ctypes.addressof(self._buffer)
        self._api.reset(self._address, 0)

    @classmethod
    def from_state(cls, state: bytes) -> Xxh64:
        """Raises ValueError when state is not the size of an exported state."""
        hasher = cls()
        if len(state) != hasher._api.state_size:
            raise ValueError(f"an XXH64 state is {hasher._api.state_size} bytes, not {len(state)}")
        ctypes.memmove(hasher._address, state, len(state))
        return hasher

    def update(self, data: bytes) -> None:
        self._api.update(self._address, data, len(data))

    def digest(self) -> int:
        return int(self._api.digest(self._address))

    def state(self) -> bytes:
        return ctypes.string_at(self._address, self._api.state_size)
