"""Where decoded bytes go: a tar archive unpacked into a tree, or one file written whole."""

from __future__ import annotations

import base64
from typing import Any, Protocol

from fetcher.formats import SNIFF_TAR_BYTES, Layout, looks_like_tar
from fetcher.stages.tar import TarReader
from fetcher.stages.tree import SafeTree


class Sink(Protocol):
    def write(self, data: memoryview) -> None: ...

    def close(self) -> None:
        """Check the stream ended cleanly; raise CorruptArchive otherwise."""

    @property
    def layout(self) -> Layout: ...

    def state(self) -> dict[str, Any]: ...

    def restore(self, state: dict[str, Any]) -> None: ...


class TarSink:
    layout = Layout.TAR

    def __init__(self, tree: SafeTree) -> None:
        self._reader = TarReader(tree)

    def write(self, data: memoryview) -> None:
        self._reader.write(data)

    def close(self) -> None:
        self._reader.close()

    def state(self) -> dict[str, Any]:
        return {"layout": self.layout.value, "tar": self._reader.state()}

    def restore(self, state: dict[str, Any]) -> None:
        self._reader.restore(state["tar"])


class FileSink:
    """The whole decoded stream stored as one file under the given name."""

    layout = Layout.FILE

    def __init__(self, tree: SafeTree, name: str, *, resumed: bool = False) -> None:
        self._tree = tree
        if not resumed:
            tree.begin_file(name, 0o644, 0)
        self._open = True

    def state(self) -> dict[str, Any]:
        return {"layout": self.layout.value}

    def restore(self, state: dict[str, Any]) -> None:
        return None  # the tree reopens the file at its offset

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

    def state(self) -> dict[str, Any]:
        if self._inner is None:
            return {"layout": Layout.DETECT.value, "head": base64.b64encode(self._head).decode()}
        return self._inner.state()

    def restore(self, state: dict[str, Any]) -> None:
        layout = Layout(state["layout"])
        if layout is Layout.DETECT:
            self._head = bytearray(base64.b64decode(state["head"]))
        elif layout is Layout.TAR:
            self._inner = TarSink(self._tree)
            self._inner.restore(state)
        else:
            self._inner = FileSink(self._tree, self._file_name, resumed=True)

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


def resumed_sink(state: dict[str, Any], tree: SafeTree, file_name: str) -> Sink:
    """The sink a checkpoint describes, carrying on where it stopped."""
    layout = Layout(state["layout"])
    if layout is Layout.FILE:
        return FileSink(tree, file_name, resumed=True)
    sink: Sink = TarSink(tree) if layout is Layout.TAR else DetectingSink(tree, file_name)
    sink.restore(state)
    return sink
