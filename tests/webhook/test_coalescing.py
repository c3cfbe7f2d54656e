"""The server's transport sends what one loop step wrote as one write, and loses none."""

from __future__ import annotations

import asyncio
from typing import Any

from webhook.server import CoalescingTransport


class RecordingTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False
        self.aborted = False

    def write(self, data: Any) -> None:
        assert not self.closed
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 1)}.get(name, default)


def run(test: Any) -> None:
    async def main() -> None:
        inner = RecordingTransport()
        await test(inner, CoalescingTransport(inner, asyncio.get_running_loop()))

    asyncio.run(main())


def test_head_and_body_written_in_one_step_leave_as_one_write() -> None:
    async def test(inner: RecordingTransport, transport: CoalescingTransport) -> None:
        transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
        transport.write(memoryview(b"{}"))
        assert inner.writes == []
        assert transport.get_write_buffer_size() == 40
        await asyncio.sleep(0)
        assert inner.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"]
        transport.writelines([b"a", b"b"])
        await asyncio.sleep(0)
        assert inner.writes[1:] == [b"ab"]
        assert transport.get_extra_info("peername") == ("127.0.0.1", 1)

    run(test)


def test_close_sends_what_is_held_first_and_abort_drops_it() -> None:
    async def closing(inner: RecordingTransport, transport: CoalescingTransport) -> None:
        transport.write(b"last answer")
        transport.close()
        assert inner.writes == [b"last answer"]
        assert transport.is_closing()
        await asyncio.sleep(0)  # the scheduled flush finds nothing left to send
        assert inner.writes == [b"last answer"]

    async def aborting(inner: RecordingTransport, transport: CoalescingTransport) -> None:
        transport.write(b"never sent")
        transport.abort()
        await asyncio.sleep(0)
        assert inner.writes == []
        assert inner.aborted

    run(closing)
    run(aborting)


def test_a_write_held_when_the_peer_goes_away_is_dropped() -> None:
    async def test(inner: RecordingTransport, transport: CoalescingTransport) -> None:
        transport.write(b"too late")
        inner.closed = True  # connection lost before the next step
        await asyncio.sleep(0)
        assert inner.writes == []

    run(test)
