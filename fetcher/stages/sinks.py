"""Where decoded bytes go: a tar archive unpacked into a tree, or one file written whole."""

from __future__ import annotations

from typing import Protocol

from fetcher.formats import SNIFF_TAR_BYTES, Layout, looks_like_tar
from fetcher.stages.tar import TarReader
from fetcher.stages.tree import SafeTree
from fetcher.state.checkpoint import SinkState, StateError


class Sink(Protocol):
    def write(self, data: memoryview) -> None: ...

    def close(self) -> None:
        """Check the stream ended cleanly; raise CorruptArchive otherwise."""

    @property
    def layout(self) -> Layout: ...

    def state(self) -> SinkState: ...


class TarSink:
    layout = Layout.TAR

    def __init__(self, tree: SafeTree) -> None:
        self._reader = TarReader(tree)

    def write(self, data: memoryview) -> None:
        self._reader.write(data)

    def close(self) -> None:
        self._reader.close()

    def state(self) -> SinkState:
        return SinkState(self.layout.value, tar=self._reader.state())

    def restore(self, state: SinkState) -> None:
        assert state.tar is not None  # SinkState.from_json guarantees it for the tar layout
        self._reader.restore(state.tar)


class FileSink:
    """The whole decoded stream stored as one file under the given name."""

    layout = Layout.FILE

    def __init__(self, tree: SafeTree, name: str, *, resumed: bool = False) -> None:
        self._tree = tree
        if not resumed:
            tree.begin_file(name, 0o644, 0, ordinal=0)
        self._open = True

    def state(self) -> SinkState:
        return SinkState(self.layout.value)

    def write(self, data: memoryview) -> None:
        self._tree.check_cap(len(data))
        self._tree.write(data)

    def close(self) -> None:
        if self._open:
            self._tree.end_file(None)
            self._open = False


class DetectingSink:
    """Holds the first 512 decoded bytes, then hands everything to a tar or a file sink."""

    def __init__(self, tree: SafeTree, file_name: str, *, head: bytes = b"") -> None:
        self._tree = tree
        self._file_name = file_name
        self._head = bytearray(head)
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

    def state(self) -> SinkState:
        if self._inner is None:
            return SinkState(Layout.DETECT.value, head=bytes(self._head))
        return self._inner.state()

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


def resumed_sink(state: SinkState, tree: SafeTree, file_name: str, wanted: Layout) -> Sink:
    """The sink a checkpoint describes, carrying on where it stopped."""
    layout = Layout(state.layout)
    if wanted is not Layout.DETECT and layout not in (wanted, Layout.DETECT):
        raise StateError(f"the checkpoint's layout {layout.value} is not the {wanted.value} asked")
    open_file = tree.state().open_file
    if layout is Layout.FILE:
        # One file holds every byte decoded so far, so its offset is all of them.
        if open_file is None or open_file.offset != tree.bytes_written:
            raise StateError("the single file's offset does not match the bytes extracted")
        return FileSink(tree, file_name, resumed=True)
    if layout is Layout.TAR:
        assert state.tar is not None
        if state.tar.in_file != (open_file is not None) or (
            open_file is not None and open_file.offset + state.tar.remaining != open_file.size
        ):
            raise StateError("the tar reader and the file being written disagree")
        sink = TarSink(tree)
        sink.restore(state)
        return sink
    return DetectingSink(tree, file_name, head=state.head)
