"""Fixtures for the MCP front-end against the real Docker Engine, driven by the SDK's own client."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx2
import pytest
import uvicorn
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp_types import CallToolResult

from mcp_server import HttpConfig, ServerConfig, ThunderServer, build_server, create_http_app
from mcp_server.programs import ProgramRegistry
from tests.docker import conftest as docker_fixtures
from thunder_env import EnvManager

# The Docker tier's fixtures (engine and image checks; managers that fail the test on leaks), shared.
backend = docker_fixtures.backend
make_manager = docker_fixtures.make_manager
manager = docker_fixtures.manager
leftovers = docker_fixtures.leftovers
BASE_IMAGE = docker_fixtures.BASE_IMAGE

ServerFactory = Callable[..., Awaitable[ThunderServer]]


@pytest.fixture
async def make_server(make_manager: Any) -> AsyncIterator[ServerFactory]:
    """Servers on fresh managers (one namespace each); closed, and checked for leaks, after the test.

    ``share_with`` builds a second server on the same manager and program registry, so that two
    programs (each a server's default program) can meet.
    """
    made: list[ThunderServer] = []

    async def factory(share_with: ThunderServer | None = None, **config: Any) -> ThunderServer:
        config.setdefault("default_program_id", "prog-a")
        server_config = ServerConfig(**config)
        if share_with is not None:
            server = build_server(share_with.manager, server_config, programs=share_with.programs)
        else:
            mgr: EnvManager = await make_manager()
            server = build_server(mgr, server_config, programs=ProgramRegistry(mgr, server_config))
        made.append(server)
        return server

    yield factory
    for server in reversed(made):
        await server.aclose()


@pytest.fixture
async def server(make_server: ServerFactory) -> ThunderServer:
    return await make_server()


@pytest.fixture
async def client(server: ThunderServer) -> AsyncIterator[Client]:
    async with held_client(Client(server)) as connected:
        yield connected


@contextlib.asynccontextmanager
async def held_client(client: Client) -> AsyncIterator[Client]:
    """Enter and exit ``client`` in one task of its own.

    pytest-asyncio sets a fixture up and tears it down in different tasks, which anyio's cancel scopes
    (inside the SDK client) refuse; a holder task keeps both ends in one task.
    """
    entered: asyncio.Future[Client] = asyncio.get_running_loop().create_future()
    leave = asyncio.Event()

    async def hold() -> None:
        async with client as connected:
            entered.set_result(connected)
            await leave.wait()

    def failed(task: asyncio.Task[None]) -> None:
        if not entered.done():
            error = None if task.cancelled() else task.exception()
            entered.set_exception(error or RuntimeError("the MCP client closed before it connected"))

    holder = asyncio.create_task(hold())
    holder.add_done_callback(failed)
    try:
        yield await entered
    finally:
        leave.set()
        await holder


async def call(client: Client, tool: str, **arguments: Any) -> dict[str, Any]:
    """Call a tool that must succeed; its structured result."""
    result = await client.call_tool(tool, arguments)
    assert not result.is_error, f"{tool} failed: {_text(result)}"
    assert result.structured_content is not None
    assert _text(result), f"{tool} returned no text part"
    return result.structured_content


async def call_error(client: Client, tool: str, **arguments: Any) -> str:
    """Call a tool that must fail; the message the model reads."""
    result = await client.call_tool(tool, arguments)
    assert result.is_error, f"{tool} unexpectedly succeeded: {_text(result)}"
    return _text(result)


def text_of(result: CallToolResult) -> str:
    return _text(result)


def _text(result: CallToolResult) -> str:
    return "\n".join(getattr(block, "text", "") for block in result.content)


async def create_sandbox(client: Client, **arguments: Any) -> str:
    arguments.setdefault("template", "base")
    return str((await call(client, "sandbox_create", **arguments))["sandbox_id"])


async def sh(client: Client, sandbox_id: str, command: str, **arguments: Any) -> dict[str, Any]:
    return await call(client, "sandbox_exec", sandbox_id=sandbox_id, command=command, **arguments)


TOKEN = "test-token-" + "0123456789abcdef"
PROGRAM_TOKEN = "program-token-" + "0123456789abcdef"
NOTIFIER_TOKEN = "notifier-token-" + "0123456789abcdef"


@dataclass
class HttpTarget:
    base_url: str
    server: ThunderServer

    def url(self, program_id: str | None = None) -> str:
        return f"{self.base_url}/p/{program_id}/mcp" if program_id else f"{self.base_url}/mcp"

    def client(self, url: str, headers: dict[str, str] | None = None, *, mode: str = "auto") -> Client:
        """An SDK client over streamable HTTP; the bearer token is sent unless headers say otherwise."""
        http = httpx2.AsyncClient(
            headers={"Authorization": f"Bearer {TOKEN}", **(headers or {})}, timeout=httpx2.Timeout(30, read=300)
        )
        return Client(_owning(http, streamable_http_client(url, http_client=http)), mode=mode)


@contextlib.asynccontextmanager
async def _owning(http: httpx2.AsyncClient, transport: Any) -> AsyncIterator[Any]:
    async with http, transport as streams:
        yield streams


@pytest.fixture
async def http_target(make_server: ServerFactory) -> AsyncIterator[HttpTarget]:
    """The HTTP app under uvicorn on a free loopback port, with a server, a program and a notifier token."""
    server = await make_server(default_program_id=None)
    http = HttpConfig(port=0, token=TOKEN, program_tokens={PROGRAM_TOKEN: "prog-tok"}, notifier_token=NOTIFIER_TOKEN)
    config = uvicorn.Config(create_http_app(server, http), host="127.0.0.1", port=0, log_level="warning")
    uvicorn_server = uvicorn.Server(config)
    serving = asyncio.create_task(uvicorn_server.serve())
    for _ in range(200):
        if uvicorn_server.started or serving.done():
            break
        await asyncio.sleep(0.05)
    assert uvicorn_server.started, "uvicorn did not start"
    port = uvicorn_server.servers[0].sockets[0].getsockname()[1]
    try:
        yield HttpTarget(f"http://127.0.0.1:{port}", server)
    finally:
        uvicorn_server.should_exit = True
        await serving
