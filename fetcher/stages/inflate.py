"""Raw deflate through the zlib that CPython already loads, able to stop at block ends.

Python's zlib module hides the three calls a restart inside a deflate stream needs:
``inflate(Z_BLOCK)``, which returns at a block end and reports how many bits of the last byte
it read are still unused; ``inflateGetDictionary``, the last 32 KiB of output; and
``inflatePrime`` with ``inflateSetDictionary``, which start a fresh raw inflater at such a point
(zlib's examples/zran.c). This module drives them through ctypes on the same libz.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import weakref
import zlib
from collections.abc import Callable, Iterator
from typing import Any, Final

__all__ = ["WINDOW_SIZE", "InflateError", "InflateUnavailable", "Inflater"]

WINDOW_SIZE: Final = 1 << 15  # deflate's largest distance: 32 KiB of history
_RAW_WINDOW_BITS: Final = -15  # negative: no zlib or gzip wrapper, the caller parses those

_Z_NO_FLUSH: Final = 0
_Z_BLOCK: Final = 5
_Z_OK: Final = 0
_Z_STREAM_END: Final = 1
_Z_BUF_ERROR: Final = -5
_Z_ERRORS: Final = {
    2: "a preset dictionary is needed",
    -1: "file error",
    -2: "inconsistent stream state",
    -3: "invalid deflate data",
    -4: "out of memory",
    -6: "incompatible zlib version",
}
# data_type after inflate(Z_BLOCK): bits 0-2 unused bits in the last byte read, 64 while in
# the last block, 128 when stopped at a block end.
_UNUSED_BITS_MASK: Final = 7
_LAST_BLOCK: Final = 64
_AT_BLOCK_END: Final = 128
_MAX_AVAIL: Final = 1 << 30  # avail_in and avail_out are 32-bit


class InflateError(ValueError):
    """The deflate data is invalid; the message is zlib's."""


class InflateUnavailable(RuntimeError):
    """No libz with the calls this module needs could be loaded."""


class _ZStream(ctypes.Structure):
    # z_stream from zlib.h: Bytef* and voidpf are pointers, uInt is unsigned int and uLong is
    # unsigned long.
    _fields_ = (
        ("next_in", ctypes.c_void_p),
        ("avail_in", ctypes.c_uint),
        ("total_in", ctypes.c_ulong),
        ("next_out", ctypes.c_void_p),
        ("avail_out", ctypes.c_uint),
        ("total_out", ctypes.c_ulong),
        ("msg", ctypes.c_char_p),
        ("state", ctypes.c_void_p),
        ("zalloc", ctypes.c_void_p),
        ("zfree", ctypes.c_void_p),
        ("opaque", ctypes.c_void_p),
        ("data_type", ctypes.c_int),
        ("adler", ctypes.c_ulong),
        ("reserved", ctypes.c_ulong),
    )


_STREAM_POINTER = ctypes.POINTER(_ZStream)


class _Libz:
    def __init__(self, library: ctypes.CDLL) -> None:
        version = library.zlibVersion
        version.argtypes = ()
        version.restype = ctypes.c_char_p
        self.version: bytes = version()
        if not self.version.startswith(b"1."):
            raise OSError(f"zlib {self.version!r} is not zlib 1.x")
        self.init = _bind(
            library, "inflateInit2_", (_STREAM_POINTER, ctypes.c_int, ctypes.c_char_p, ctypes.c_int)
        )
        self.inflate = _bind(library, "inflate", (_STREAM_POINTER, ctypes.c_int))
        self.end = _bind(library, "inflateEnd", (_STREAM_POINTER,))
        self.prime = _bind(library, "inflatePrime", (_STREAM_POINTER, ctypes.c_int, ctypes.c_int))
        self.set_dictionary = _bind(
            library, "inflateSetDictionary", (_STREAM_POINTER, ctypes.c_char_p, ctypes.c_uint)
        )
        self.get_dictionary = _bind(
            library,
            "inflateGetDictionary",
            (_STREAM_POINTER, ctypes.c_char_p, ctypes.POINTER(ctypes.c_uint)),
        )


def _bind(library: ctypes.CDLL, name: str, argtypes: tuple[Any, ...]) -> Callable[..., int]:
    function = getattr(library, name)  # AttributeError when the symbol is missing
    function.argtypes = argtypes
    function.restype = ctypes.c_int
    return function  # type: ignore[no-any-return]


def _candidates() -> Iterator[tuple[str, str | None]]:
    # Looking a symbol up through the zlib extension's handle finds the libz it is linked
    # against, already mapped; find_library runs ldconfig, so it only comes second.
    yield "CPython's zlib module", getattr(zlib, "__file__", None)
    yield "ctypes.util.find_library('z')", ctypes.util.find_library("z")
    yield "soname", "libz.so.1"


@functools.cache
def _libz() -> _Libz:
    tried = []
    for how, name in _candidates():
        if name is None:
            tried.append(f"{how}: nothing found")
            continue
        try:
            return _Libz(ctypes.CDLL(name))
        except (OSError, AttributeError) as error:
            tried.append(f"{how}: {name}: {error}")
    raise InflateUnavailable(
        "decoding gzip needs libz with inflatePrime and inflateGetDictionary; tried "
        + "; ".join(tried)
    )


def _address(buffer: bytes | bytearray) -> int:
    """Where buffer's bytes are; valid while buffer lives and (bytearray) keeps its size."""
    if isinstance(buffer, bytes):
        address = ctypes.cast(ctypes.c_char_p(buffer), ctypes.c_void_p).value
    else:
        address = ctypes.addressof(ctypes.c_char.from_buffer(buffer))
    assert address is not None
    return address


def _fail(code: int, stream: _ZStream) -> InflateError:
    message = stream.msg.decode("utf-8", "replace") if stream.msg else _Z_ERRORS.get(code, "")
    return InflateError(message or f"zlib error {code}")


class Inflater:
    """One raw deflate stream; optionally started at a block end of an earlier one.

    ``bits`` and ``value`` are the still unused low bits of the byte before the first one fed,
    ``history`` the output before that point (at most WINDOW_SIZE bytes).
    """

    def __init__(self, *, history: bytes = b"", bits: int = 0, value: int = 0) -> None:
        self._libz = libz = _libz()
        self._stream = stream = _ZStream()
        self.finished = False
        self.at_block_end = False
        self.unused_bits = 0
        self.consumed = 0
        code = libz.init(
            ctypes.byref(stream), _RAW_WINDOW_BITS, libz.version, ctypes.sizeof(_ZStream)
        )
        if code != _Z_OK:
            raise _fail(code, stream)
        # inflateEnd frees zlib's state (about 40 KiB) however this object is dropped.
        self._end = weakref.finalize(self, libz.end, ctypes.byref(stream))
        if bits and (code := libz.prime(ctypes.byref(stream), bits, value)) != _Z_OK:
            self.close()
            raise _fail(code, stream)
        if history:
            code = libz.set_dictionary(ctypes.byref(stream), history, len(history))
            if code != _Z_OK:
                self.close()
                raise _fail(code, stream)

    def inflate(
        self, data: bytes, start: int, scratch: bytearray, *, stop_at_block: bool
    ) -> memoryview:
        """Inflate data[start:] into at most len(scratch) new bytes; return them.

        scratch is only written to: the caller reuses one, since a fresh one per call costs a
        memset of its whole size. Then ``consumed`` tells how many bytes of data it read. With
        stop_at_block it also returns at the next block end, and at_block_end and
        unused_bits say so.
        """
        stream = self._stream
        out_size = min(len(scratch), _MAX_AVAIL)
        avail_in = min(len(data) - start, _MAX_AVAIL)
        stream.next_in = _address(data) + start
        stream.avail_in = avail_in
        stream.next_out = _address(scratch)
        stream.avail_out = out_size
        code = self._libz.inflate(ctypes.byref(stream), _Z_BLOCK if stop_at_block else _Z_NO_FLUSH)
        self.consumed = avail_in - stream.avail_in
        output = bytes(memoryview(scratch)[: out_size - stream.avail_out])
        stream.next_in = stream.next_out = None  # no pointers into Python buffers kept
        if code == _Z_STREAM_END:
            self.finished = True
        elif code not in (_Z_OK, _Z_BUF_ERROR):
            raise _fail(code, stream)
        data_type = stream.data_type
        self.at_block_end = (
            stop_at_block
            and not self.finished
            and data_type & (_AT_BLOCK_END | _LAST_BLOCK) == _AT_BLOCK_END
        )
        self.unused_bits = data_type & _UNUSED_BITS_MASK
        return memoryview(output)

    def history(self) -> bytes:
        """The last WINDOW_SIZE bytes of output (all of it, if less)."""
        buffer = ctypes.create_string_buffer(WINDOW_SIZE)
        length = ctypes.c_uint(0)
        code = self._libz.get_dictionary(ctypes.byref(self._stream), buffer, ctypes.byref(length))
        if code != _Z_OK:
            raise _fail(code, self._stream)
        return buffer.raw[: length.value]

    def close(self) -> None:
        """Free zlib's state now (it is freed on collection otherwise); idempotent."""
        self._end()
