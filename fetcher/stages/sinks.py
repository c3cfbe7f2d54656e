"""Where decoded bytes go: a tar or zip archive unpacked into a tree, or one file written whole."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from fetcher.errors import UsageError
from fetcher.formats import SNIFF_TAR_BYTES, Layout, looks_like_tar
from fetcher.stages.tar import TarReader
from fetcher.stages.tree import RESERVED_NAMES, SafeTree
from fetcher.state.checkpoint import SinkState, StateError

if TYPE_CHECKING:
    from fetcher.stages.zip import ZipReader

# Called with a stream position where the sink could be restored (zip: an entry boundary).
OnSinkBoundary = Callable[[int], None]


class Sink(Protocol):
    def write(self, data: memoryview) -> None: ...

    def close(self) -> None:
        """Check the stream ended cleanly; raise CorruptArchive otherwise."""

    @property
    def layout(self) -> Layout: ...

    def state(self) -> SinkState: ...

    @property
    def at_boundary(self) -> bool:
        """Whether it is restorable after any byte (else only where it calls its callback)."""

    def release(self) -> None:
        """Let go of what it holds, on the way out after a failure too."""


class TarSink:
    layout = Layout.TAR
    at_boundary = True

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

    def release(self) -> None:
        return None


class ZipSink:
    """Entries read as they stream; restorable only at the entry boundaries it reports."""

    layout = Layout.ZIP
    at_boundary = False

    def __init__(
        self, tree: SafeTree, on_boundary: OnSinkBoundary, *, password: bytes | None,
        start: int = 0, resumed: SinkState | None = None,
    ) -> None:  # fmt: skip
        # Imported here: the zip reader brings stream-unzip, its AES and cffi, about 18 ms of
        # every start (docs/benchmarks.md), which a fetch of anything else never needs.
        from fetcher.stages.zip import ZipReader  # noqa: PLC0415

        self._reader: ZipReader = ZipReader(
            tree,
            lambda boundary: on_boundary(boundary.position),
            password=password,
            start=start,
            resumed=resumed.zip if resumed else None,
        )

    def write(self, data: memoryview) -> None:
        self._reader.write(data)

    def close(self) -> None:
        self._reader.close()

    def state(self) -> SinkState:
        return SinkState(self.layout.value, zip=self._reader.state())

    def release(self) -> None:
        self._reader.release()


class FileSink:
    """The whole decoded stream stored as one file under the given name."""

    layout = Layout.FILE
    at_boundary = True

    def __init__(self, tree: SafeTree, name: str, *, resumed: bool = False) -> None:
        self._tree = tree
        if name in RESERVED_NAMES:
            # Not an archive member: the name is the URL's, so the fix is at the source.
            raise UsageError(
                f"the file would be stored as {name!r}, a name model-fetch keeps for its own "
                "files in DIR",
                "serve it under another name (the name is the URL's last path segment)",
            )
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

    def release(self) -> None:
        return None


class DetectingSink:
    """Holds the first 512 decoded bytes, then hands everything to a tar or a file sink."""

    at_boundary = True

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

    def release(self) -> None:
        return None


def make_sink(
    layout: Layout, tree: SafeTree, file_name: str, on_boundary: OnSinkBoundary,
    *, password: bytes | None = None,
) -> Sink:  # fmt: skip
    if layout is Layout.TAR:
        return TarSink(tree)
    if layout is Layout.ZIP:
        return ZipSink(tree, on_boundary, password=password)
    if layout is Layout.FILE:
        return FileSink(tree, file_name)
    return DetectingSink(tree, file_name)


def resumed_sink(
    state: SinkState, tree: SafeTree, file_name: str, wanted: Layout,
    on_boundary: OnSinkBoundary, *, start: int, password: bytes | None = None,
) -> Sink:  # fmt: skip
    """The sink a checkpoint describes, carrying on where it stopped at byte start."""
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
    if layout is Layout.ZIP:
        if open_file is not None:
            raise StateError("a zip is restorable only between entries, not inside a file")
        return ZipSink(tree, on_boundary, password=password, start=start, resumed=state)
    return DetectingSink(tree, file_name, head=state.head)
