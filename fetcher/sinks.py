"""Where decoded bytes go: a tar archive unpacked into a tree, or one file written whole."""

from __future__ import annotations

from typing import Protocol

from fetcher.formats import SNIFF_TAR_BYTES, Layout, looks_like_tar
from fetcher.tar import TarReader
from fetcher.tree import SafeTree


class Sink(Protocol):
    def write(self, data: memoryview) -> None: ...

    def close(self) -> None:
        """Check the stream ended cleanly; raise CorruptArchive otherwise."""

    @property
    def layout(self) -> Layout: ...


class TarSink:
    layout = Layout.TAR

    def __init__(self, tree: SafeTree) -> None:
        self._reader = TarReader(tree)

    def write(self, data: memoryview) -> None:
        self._reader.write(data)

    def close(self) -> None:
        self._reader.close()


class FileSink:
    """The whole decoded stream stored as one file under the given name."""

    layout = Layout.FILE

    def __init__(self, tree: SafeTree, name: str) -> None:
        self._tree = tree
        tree.begin_file(name, 0o644, 0)
        self._open = True

    def write(self, data: memoryview) -> None:
        self._tree.check_cap(len(data))
        self._tree.write(data)

    def close(self) -> None:
        if self._open:
            self._tree.end_file(None)
            self._open = False


class DetectingSink:
    """Holds the first 512 decoded bytes, then hands everything to a tar or a file sink."""

    def __init__(self, tree: SafeTree, file_name: str) -> None:
        self._tree = tree
        self._file_name = file_name
        self._head = bytearray()
        self._inner: TarSink | FileSink | None = None

    @property
    def layout(self) -> Layout:
        return self._inner.layout if self._inner else Layout.DETECT

    def write(self, data: memoryview) -> None:
        if self._inner is None:
            needed = SNIFF_TAR_BYTES - len(self._head)
            self._head += data[:needed]
            data = data[needed:]
            if len(self._head) < SNIFF_TAR_BYTES:
                return
            self._choose()
        assert self._inner is not None
        if data:
            self._inner.write(data)

    def _choose(self) -> None:
        head = bytes(self._head)
        self._inner = (
            TarSink(self._tree) if looks_like_tar(head) else FileSink(self._tree, self._file_name)
        )
        self._inner.write(memoryview(head))

    def close(self) -> None:
        if self._inner is None:
            self._choose()
        assert self._inner is not None
        self._inner.close()


def make_sink(layout: Layout, tree: SafeTree, file_name: str) -> Sink:
    if layout is Layout.TAR:
        return TarSink(tree)
    if layout is Layout.FILE:
        return FileSink(tree, file_name)
    return DetectingSink(tree, file_name)
