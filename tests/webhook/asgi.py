"""The real webhook app called in-process over ASGI, and the admission log lines it wrote."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from webhook.logs import ADMISSION_LOGGER, JsonFormatter


class Client:
    """Synchronous requests to the app in-process, with its lifespan started."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app

    def _run(self, call: Callable[[httpx.AsyncClient], Coroutine[Any, Any, httpx.Response]]):
        async def main() -> httpx.Response:
            async with (
                self.app.router.lifespan_context(self.app),
                httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=self.app), base_url="http://webhook"
                ) as client,
            ):
                return await call(client)

        return asyncio.run(main())

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self._run(lambda client: client.post(path, **kwargs))

    def get(self, path: str) -> httpx.Response:
        return self._run(lambda client: client.get(path))


def admission_lines(caplog: pytest.LogCaptureFixture) -> list[dict]:
    formatter = JsonFormatter()
    return [
        json.loads(formatter.format(record))
        for record in caplog.records
        if record.name == ADMISSION_LOGGER and record.getMessage() == "admission"
    ]
