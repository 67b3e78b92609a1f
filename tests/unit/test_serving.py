"""The one uvicorn start-and-wait helper (thunder_common.serving): it serves on the current loop, and a port
already in use is a typed error instead of uvicorn's SystemExit taking the whole process down."""

from __future__ import annotations

import socket

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from thunder_common.errors import ThunderError
from thunder_common.serving import ServerStartError, serving


async def _hello(_: object) -> PlainTextResponse:
    return PlainTextResponse("hello")


APP = Starlette(routes=[Route("/", _hello)])


async def test_it_serves_until_the_block_ends() -> None:
    async with serving(APP) as running, httpx.AsyncClient(base_url=running.url) as client:
        assert running.url.startswith("http://127.0.0.1:") and (await client.get("/")).text == "hello"
    assert running.task.done()
    with pytest.raises(httpx.ConnectError):
        await httpx.AsyncClient().get(running.url)


async def test_a_port_in_use_is_a_typed_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ServerStartError, match=f"did not start on 127.0.0.1:{port}") as caught:
            async with serving(APP, port=port):
                pass
    assert isinstance(caught.value, ThunderError)
